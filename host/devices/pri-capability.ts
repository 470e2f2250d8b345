/**
 * A PCIe function's PRI capability (PCIe PRI; docs/queues.md): the Outstanding Page Request Allocation
 * (credits), 9-bit PRG indices, and the status bits a response can latch.
 * - A request holds one credit until its group's response arrives.
 * - Success: the pages should be resident, the function retries.
 * - Invalid Request: the access fails; PRI stays enabled.
 * - Response Failure: latches Status.RF and stops page requests until PRI is reset.
 * - A response whose PRG index matches no outstanding group is ignored and latches Status.UPRGI.
 */
import { PRG_INDEX_MASK, PRG_INDICES } from '../../shared/records/page-request.ts';

export class PriCapability {
  enabled = true;
  /** Status.RF: a Response Failure arrived; no page requests until reset. */
  responseFailure = false;
  /** Status.UPRGI: a response named a PRG index with no outstanding group. */
  unexpectedPrgIndex = false;
  unexpectedResponses = 0;
  /** Page requests outstanding (each holds a credit until its group's response). */
  outstanding = 0;
  /** Groups outstanding (each holds a PRG index). */
  groups = 0;

  /** Credits held by the group of each PRG index (0: free). */
  private readonly inUse = new Uint8Array(PRG_INDICES);
  private cursor = 0;

  /** @param allocation Outstanding Page Request Allocation written by software (credits). */
  constructor(public allocation: number) {}

  /** Page requests may be sent at all (enabled and not stopped by a Response Failure). */
  get usable(): boolean {
    return this.enabled && !this.responseFailure;
  }

  /** Credits for a group of `requests` page requests, and a free PRG index, are available. */
  canRequest(requests = 1): boolean {
    return this.usable && this.outstanding + requests <= this.allocation && this.groups < PRG_INDICES;
  }

  /** Take `requests` credits and a PRG index for one group (call only after `canRequest()`). */
  allocate(requests = 1): number {
    for (let n = 0; n < PRG_INDICES; n++) {
      const index = (this.cursor + n) & PRG_INDEX_MASK;
      if (this.inUse[index] === 0) {
        // The index remembers how many credits its group holds; the response returns them all.
        this.inUse[index] = requests;
        this.cursor = (index + 1) & PRG_INDEX_MASK;
        this.outstanding += requests;
        this.groups++;
        return index;
      }
    }
    throw new Error('PRI: no free PRG index although canRequest() said so');
  }

  /**
   * A PRG response arrived. Returns false (and latches UPRGI) when no group with this index is
   * outstanding; otherwise frees the index and its credit and applies the code's latch.
   */
  complete(prgIndex: number, responseFailure: boolean): boolean {
    if (prgIndex < 0 || prgIndex >= PRG_INDICES || this.inUse[prgIndex] === 0) {
      this.unexpectedPrgIndex = true;
      this.unexpectedResponses++;
      return false;
    }
    this.outstanding -= this.inUse[prgIndex];
    this.inUse[prgIndex] = 0;
    this.groups--;
    if (responseFailure) this.responseFailure = true;
    return true;
  }

  /** Reset the capability (Control.Reset): clears the latches. Outstanding groups are forgotten. */
  reset(): void {
    this.inUse.fill(0);
    this.outstanding = 0;
    this.groups = 0;
    this.responseFailure = false;
    this.unexpectedPrgIndex = false;
  }
}
