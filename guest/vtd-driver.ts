/**
 * The guest's VT-d driver (scalable mode): the page request interrupt handler over the page
 * request queue, page group responses and stage-1 invalidation on the invalidation queue.
 *
 * Rules it keeps (docs/queues.md, Linux prq_event_thread):
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
import { RID_PASID } from '../shared/records/page-request.ts';
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
import { PRS_PPR, PRS_PRO } from '../shared/vtd-prq-registers.ts';
import {
  type CompletionWaitEncoder,
  CompletionWaits,
  FaultGroups,
  GROUP_INVALID,
  GROUP_SUCCESS,
} from './fault-groups.ts';
import type { Misbehaviour } from './misbehave.ts';
import type { DemandPager } from './mm/demand-pager.ts';
import { VtdPrqDriver } from './vtd-prq.ts';

/** An invalidation wait with a status write of the sequence number: VT-d's completion wait. */
const WAIT_ENCODER: CompletionWaitEncoder = { encodeWait: encodeVtdInvWait };

export class VtdDriver {
  /** True when the last poll stopped because the invalidation queue was full. */
  blockedOnCommandQueue = false;

  private readonly prq: VtdPrqDriver;
  private readonly response = newVtdPageGroupResponse();
  private readonly invalidation = newVtdPasidIotlbInvalidation();
  private readonly groups: FaultGroups;
  private readonly waits: CompletionWaits;
  private readonly onRequest = (request: VtdPageRequest): boolean => this.handle(request);
  private readonly onOverflowCleared = (): void => this.groups.dropPartials();

  constructor(
    channel: SharedArrayBuffer,
    prq: { offset: number; log2Size: number },
    private readonly iq: RingProducer,
    pager: DemandPager,
    private readonly stats: GuestStats,
    memory: GuestMemory,
    /** A word of guest RAM that invalidation waits write their status data to. */
    statusWordGpa: number,
    mirror?: RingMirror & RegisterMirror,
    /** A hostile guest's hooks (misbehave.ts); absent for a well-behaved one. */
    misbehave?: Misbehaviour,
  ) {
    this.prq = new VtdPrqDriver(channel, prq.offset, prq.log2Size, mirror);
    this.groups = new FaultGroups(pager, stats, misbehave);
    this.waits = new CompletionWaits(iq, WAIT_ENCODER, memory, statusWordGpa);
  }

  /** The page request queue's ring, as the driver consumes it. */
  get pageRequestRing(): RingConsumer {
    return this.prq.ring;
  }

  /** Requests wait in the page request queue, or an overflow waits to be cleared. */
  get pending(): boolean {
    return this.prq.pending() > 0 || (this.prq.status.read() & (PRS_PPR | PRS_PRO)) !== 0;
  }

  /** Drain the page request queue once; returns the number of descriptors consumed. */
  poll(): number {
    this.blockedOnCommandQueue = false;
    this.waits.issue();
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
    const group = this.groups.request(
      r.rid,
      r.prgIndex,
      r.pasidPresent ? r.pasid : RID_PASID,
      r.address,
      r.lpig,
    );
    if (group !== GROUP_SUCCESS && group !== GROUP_INVALID) return true;
    const p = this.response;
    p.rid = r.rid;
    p.pasidPresent = r.pasidPresent;
    p.pasid = r.pasid;
    p.prgIndex = r.prgIndex;
    p.lpig = true;
    p.code = group === GROUP_SUCCESS ? QI_RESP_SUCCESS : QI_RESP_INVALID;
    encodeVtdPageGroupResponse(this.iq.words, this.iq.claim(), p);
    this.groups.commitAnswer(this.iq, p.rid, p.pasidPresent ? p.pasid : -1, p.prgIndex, group);
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
    return this.waits.afterInvalidation();
  }

  /** The status data of the last invalidation wait the IOMMU completed. */
  syncCompleted(): number {
    return this.waits.completed();
  }
}
