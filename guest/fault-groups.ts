/**
 * What a guest's vIOMMU driver does with page requests, whatever its flavour (its driver only
 * decodes the queue entries and encodes the answers):
 * - a group, (device, PRG index), is answered once, when its Last request arrives, with the worst
 *   page-in outcome of its requests; until then its requests are a partial group;
 * - after an overflow is acknowledged, the partial groups whose Last may have been discarded with
 *   it are dropped (the IOMMU answered those itself);
 * - answers are published in small batches while the queue drains, so the host retries the first
 *   ones while the rest are paged in.
 *
 * The completion waits of invalidations (CMD_SYNC, invalidation wait) are the other shared piece:
 * CompletionWaits numbers them, and the IOMMU writes the number into guest RAM when it is done.
 */
import type { GuestStats } from '../shared/control.ts';
import type { GuestMemory } from '../shared/guest-memory.ts';
import { PRG_INDICES } from '../shared/records/page-request.ts';
import type { RingProducer } from '../shared/ring.ts';
import type { Misbehaviour } from './misbehave.ts';
import { type DemandPager, PAGE_IN_OK } from './mm/demand-pager.ts';

/** Answers published at a time while the page request queue drains (a power of two). */
const ANSWER_BATCH = 8;

/** `request()`: the group goes on (no Last yet). */
export const GROUP_OPEN = 0;
/** `request()`: the group is complete and every page is in: answer Success. */
export const GROUP_SUCCESS = 1;
/** `request()`: the group is complete and a page could not be paged in: answer Invalid. */
export const GROUP_INVALID = 2;
/** `request()`: a hostile guest drops the request, consumed and never answered. */
export const GROUP_DROPPED = 3;

export class FaultGroups {
  /** Partial groups by (device, PRG index): the worst page-in outcome so far. */
  private readonly partial = new Map<number, number>();

  constructor(
    private readonly pager: DemandPager,
    private readonly stats: GuestStats,
    private readonly misbehave: Misbehaviour | undefined,
  ) {}

  /** One page request of group (device, PRG index): page in `address` of `pasid`. */
  request(device: number, prgIndex: number, pasid: number, address: number, last: boolean): number {
    if (this.misbehave && !this.misbehave.onFault()) return GROUP_DROPPED;
    this.stats.pageRequests++;
    const key = device * PRG_INDICES + prgIndex;
    const outcome = this.pager.pageIn(pasid, address);
    const worst = Math.max(outcome, this.partial.get(key) ?? PAGE_IN_OK);
    if (!last) {
      this.partial.set(key, worst);
      return GROUP_OPEN;
    }
    this.partial.delete(key);
    return worst === PAGE_IN_OK ? GROUP_SUCCESS : GROUP_INVALID;
  }

  /**
   * The driver committed its answer to a group (`pasid` -1 without one). True when a batch of
   * answers is due: publish the command queue now.
   */
  answered(device: number, pasid: number, prgIndex: number, success: boolean): boolean {
    this.stats.groupsAnswered++;
    if (success) this.stats.responses.success++;
    else this.stats.responses.invalid++;
    this.misbehave?.answered(false, device, pasid, prgIndex, success);
    return (this.stats.groupsAnswered & (ANSWER_BATCH - 1)) === 0;
  }

  /**
   * The driver encoded its answer to a group (`outcome` GROUP_SUCCESS or GROUP_INVALID; `pasid` -1
   * without one) into the slot it claimed on `commands`: commit it, count it, and publish when a
   * batch of answers is due (the host retries those while the rest are paged in).
   */
  commitAnswer(
    commands: RingProducer,
    device: number,
    pasid: number,
    prgIndex: number,
    outcome: number,
  ): void {
    commands.commit();
    if (this.answered(device, pasid, prgIndex, outcome === GROUP_SUCCESS)) commands.publish();
  }

  /** The overflow is acknowledged: partial groups whose Last it discarded are gone for good. */
  dropPartials(): void {
    this.stats.partialGroupsDropped += this.partial.size;
    this.partial.clear();
    this.stats.overflowsAcknowledged++;
  }
}

/** How a flavour writes its completion wait: a command that makes the IOMMU store `sequence` at `gpa`. */
export interface CompletionWaitEncoder {
  encodeWait(words: Int32Array, at: number, gpa: number, sequence: number): void;
}

export class CompletionWaits {
  /** Sequence number of the last wait issued; the IOMMU writes it to `wordGpa` on completion. */
  private sequence = 0;
  private owed = false;

  constructor(
    private readonly commands: RingProducer,
    private readonly encoder: CompletionWaitEncoder,
    private readonly memory: GuestMemory,
    /** A word of guest RAM the IOMMU writes completions to. */
    private readonly wordGpa: number,
  ) {}

  /**
   * An invalidation was committed: issue its wait (now, or at the next `issue()` if the queue is
   * full) and publish. Returns the sequence number that says it is done.
   */
  afterInvalidation(): number {
    this.owed = true;
    this.issue();
    this.commands.publish();
    return this.sequence + (this.owed ? 1 : 0);
  }

  /** Issue the wait an invalidation still owes, if the command queue has room. */
  issue(): void {
    if (!this.owed) return;
    const at = this.commands.claim();
    if (at < 0) return;
    this.sequence++;
    this.encoder.encodeWait(this.commands.words, at, this.wordGpa, this.sequence);
    this.commands.commit();
    this.owed = false;
  }

  /** The sequence number of the last wait the IOMMU completed. */
  completed(): number {
    return Atomics.load(this.memory.words, this.wordGpa >>> 2) >>> 0;
  }
}
