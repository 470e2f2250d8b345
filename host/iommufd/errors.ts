/**
 * The registry's one error type: the kernel's errno name plus which check failed. Fields the kernel
 * writes back alongside an error travel in `output`.
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
  | 'ENOTTY';

export class IommufdError extends Error {
  override readonly name = 'IommufdError';

  constructor(
    readonly errno: Errno,
    message: string,
    readonly output: Record<string, unknown> = {},
  ) {
    super(`${errno}: ${message}`);
  }
}
