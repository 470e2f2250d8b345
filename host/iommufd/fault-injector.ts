/**
 * Fail-nth fault injection (the kernel's iommufd_fail_nth selftest): every point that can fail in
 * the kernel (id reservation, interval allocation, pinning, domain fill, cookie and table inserts,
 * fd creation) consults the injector; armed with N, the N-th consultation fails with ENOMEM (or the
 * errno the point names). A test sweeps N upward until `reached` stays below N.
 */
import { type Errno, IommufdError } from './errors.ts';

export type FailPoint =
  | 'id-reserve'
  | 'interval-alloc'
  | 'pin'
  | 'domain-fill'
  | 'cookie-insert'
  | 'table-insert'
  | 'fd-create'
  | 'object-alloc';

export class FaultInjector {
  /** Points consulted since the last `arm()`. */
  reached = 0;
  /** The point that failed last, if any. */
  failedAt: FailPoint | undefined;
  private nth = 0;

  /** Fail the `nth` consultation from now on (1-based); 0 disarms. */
  arm(nth: number): void {
    this.nth = nth;
    this.reached = 0;
    this.failedAt = undefined;
  }

  disarm(): void {
    this.nth = 0;
  }

  /** Called at every point that can fail; throws when this is the armed one. */
  check(point: FailPoint, errno: Errno = 'ENOMEM'): void {
    this.reached++;
    if (this.nth !== 0 && this.reached === this.nth) {
      this.failedAt = point;
      throw new IommufdError(errno, `injected failure at ${point} (fail-nth ${this.nth})`);
    }
  }
}
