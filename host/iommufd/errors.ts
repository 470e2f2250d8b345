/**
 * The registry's one error type: the kernel's errno name plus which check failed. Fields the kernel
 * writes back alongside an error travel in `output`.
 */
import { type Errno, ErrnoError } from '../iommu/errno.ts';

export type { Errno };

export class IommufdError extends ErrnoError {
  override readonly name = 'IommufdError';

  constructor(
    errno: Errno,
    message: string,
    readonly output: Record<string, unknown> = {},
  ) {
    super(errno, message);
  }
}
