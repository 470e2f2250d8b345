/**
 * Kernel errno names, shared by the IOMMU drivers (host/iommu) and the registry (host/iommufd): a
 * driver refuses with an ErrnoError and the registry passes the errno on unchanged, the way an
 * iommu_ops callback's return value reaches userspace.
 */
export type Errno =
  | 'ENOENT'
  | 'EBUSY'
  | 'EINVAL'
  | 'EOPNOTSUPP'
  | 'EEXIST'
  | 'EOVERFLOW'
  | 'ENOSPC'
  | 'EADDRINUSE'
  | 'EMSGSIZE'
  | 'EFAULT'
  | 'ESPIPE'
  | 'EPERM'
  | 'E2BIG'
  | 'ENOMEM'
  | 'ENOTTY'
  | 'EBADF'
  | 'EIO'
  | 'ENXIO';

export class ErrnoError extends Error {
  constructor(
    readonly errno: Errno,
    message: string,
  ) {
    super(`${errno}: ${message}`);
  }
}
