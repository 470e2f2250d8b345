/**
 * The guest's VT-d driver (scalable mode): the page request interrupt handler over the page
 * request queue, page group responses and stage-1 invalidation on the invalidation queue.
 *
 * Rules it keeps (fault-queues.md 2.2, Linux prq_event_thread):
 * - PPR is cleared before PQT is read; PQH is written after the descriptors are handled; PRO is
 *   cleared only when head == tail, and partial groups are discarded just before (their Last may
 *   have been dropped with the overflow). All of this is VtdPrqDriver.
 * - A group (RID, PRG index) is answered once, when its LPIG request arrives, with the worst
 *   outcome of its pages. Stop markers (LPIG without read or write) need no response.
 * - A request this driver cannot answer for lack of room in the invalidation queue stays in the
 *   page request queue (PQH is not advanced past it) until the host consumes descriptors.
 * - An invalidation is a PASID-based IOTLB invalidation followed by an invalidation wait whose
 *   status write tells the memory manager when the page may be reused.
 */
import type { GuestStats } from '../shared/control.ts';
import type { GuestMemory } from '../shared/guest-memory.ts';
import type { RegisterMirror } from '../shared/posted-link.ts';
import {
  encodeVtdInvWait,
  encodeVtdPasidIotlb,
  newVtdPasidIotlbInvalidation,
  PIOTLB_GRAN_PAGES,
} from '../shared/records/vtd-iq-entry.ts';
import {
  encodeVtdPageGroupResponse,
  isVtdStopMarker,
  newVtdPageGroupResponse,
  QI_RESP_INVALID,
  QI_RESP_SUCCESS,
  type VtdPageRequest,
} from '../shared/records/vtd-prq-entry.ts';
import type { RingConsumer, RingMirror, RingProducer } from '../shared/ring.ts';
import type { Misbehaviour } from './misbehave.ts';
import { type DemandPager, PAGE_IN_OK } from './mm/demand-pager.ts';
import { VtdPrqDriver } from './vtd-prq.ts';

/** Requests without a PASID translate in the RID's own address space (RID_PASID). */
const RID_PASID = 0;
const PRG_INDICES = 512;

/** Answers published at a time while the page request queue drains (a power of two). */
const ANSWER_BATCH = 8;

export class VtdDriver {
  /** True when the last poll stopped because the invalidation queue was full. */
  blockedOnCommandQueue = false;

  private readonly prq: VtdPrqDriver;
  private readonly response = newVtdPageGroupResponse();
  private readonly invalidation = newVtdPasidIotlbInvalidation();
  /** Partial groups by (RID, PRG index): the worst page-in outcome so far. */
  private readonly partial = new Map<number, number>();
  private readonly onRequest = (request: VtdPageRequest): boolean => this.handle(request);
  private readonly onOverflowCleared = (): void => {
    this.stats.partialGroupsDropped += this.partial.size;
    this.partial.clear();
    this.stats.overflowsAcknowledged++;
  };
  private waitSequence = 0;
  private waitOwed = false;

  constructor(
    channel: SharedArrayBuffer,
    prq: { offset: number; log2Size: number },
    private readonly iq: RingProducer,
    private readonly pager: DemandPager,
    private readonly stats: GuestStats,
    private readonly memory: GuestMemory,
    /** A word of guest RAM that invalidation waits write their status data to. */
    private readonly statusWordGpa: number,
    mirror?: RingMirror & RegisterMirror,
    /** A hostile guest's hooks (misbehave.ts); absent for a well-behaved one. */
    private readonly misbehave?: Misbehaviour,
  ) {
    this.prq = new VtdPrqDriver(channel, prq.offset, prq.log2Size, mirror);
  }

  /** The page request queue's ring, as the driver consumes it. */
  get pageRequestRing(): RingConsumer {
    return this.prq.ring;
  }

  /** Requests wait in the page request queue, or an overflow waits to be cleared. */
  get pending(): boolean {
    return this.prq.pending() > 0 || (this.prq.status.read() & 3) !== 0;
  }

  /** Drain the page request queue once; returns the number of descriptors consumed. */
  poll(): number {
    this.blockedOnCommandQueue = false;
    this.issueWait();
    const handled = this.prq.service(this.onRequest, this.onOverflowCleared);
    this.iq.publish();
    return handled;
  }

  private handle(r: VtdPageRequest): boolean {
    if (isVtdStopMarker(r)) {
      this.stats.stopMarkers++;
      return true;
    }
    if (r.lpig && this.iq.claim() < 0) {
      this.blockedOnCommandQueue = true;
      return false;
    }
    if (this.misbehave && !this.misbehave.onFault()) return true;
    this.stats.pageRequests++;
    const key = r.rid * PRG_INDICES + r.prgIndex;
    const outcome = this.pager.pageIn(r.pasidPresent ? r.pasid : RID_PASID, r.address);
    const worst = Math.max(outcome, this.partial.get(key) ?? PAGE_IN_OK);
    if (!r.lpig) {
      this.partial.set(key, worst);
      return true;
    }
    this.partial.delete(key);
    const p = this.response;
    p.rid = r.rid;
    p.pasidPresent = r.pasidPresent;
    p.pasid = r.pasid;
    p.prgIndex = r.prgIndex;
    p.lpig = true;
    p.code = worst === PAGE_IN_OK ? QI_RESP_SUCCESS : QI_RESP_INVALID;
    encodeVtdPageGroupResponse(this.iq.words, this.iq.claim(), p);
    this.iq.commit();
    this.stats.groupsAnswered++;
    // Answers go out in small batches: the host retries these while the rest are paged in.
    if ((this.stats.groupsAnswered & (ANSWER_BATCH - 1)) === 0) this.iq.publish();
    if (p.code === QI_RESP_SUCCESS) this.stats.responses.success++;
    else this.stats.responses.invalid++;
    this.misbehave?.answered(
      false,
      p.rid,
      p.pasidPresent ? p.pasid : -1,
      p.prgIndex,
      p.code === QI_RESP_SUCCESS,
    );
    return true;
  }

  /**
   * Invalidate the IOTLB for `va` of `pasid` (page-selective), then an invalidation wait. Returns
   * the wait's sequence number (reuse the page once `syncCompleted()` reaches it), or -1 if the
   * invalidation queue is full.
   */
  invalidateVa(pasid: number, va: number): number {
    const at = this.iq.claim();
    if (at < 0) return -1;
    const d = this.invalidation;
    d.granularity = PIOTLB_GRAN_PAGES;
    d.domainId = pasid + 1;
    d.pasid = pasid;
    d.addressMask = 0;
    d.address = va;
    encodeVtdPasidIotlb(this.iq.words, at, d);
    this.iq.commit();
    this.waitOwed = true;
    this.issueWait();
    this.iq.publish();
    return this.waitSequence + (this.waitOwed ? 1 : 0);
  }

  /** The status data of the last invalidation wait the IOMMU completed. */
  syncCompleted(): number {
    return Atomics.load(this.memory.words, this.statusWordGpa >>> 2) >>> 0;
  }

  private issueWait(): void {
    if (!this.waitOwed) return;
    const at = this.iq.claim();
    if (at < 0) return;
    this.waitSequence++;
    encodeVtdInvWait(this.iq.words, at, this.statusWordGpa, this.waitSequence);
    this.iq.commit();
    this.waitOwed = false;
  }
}
