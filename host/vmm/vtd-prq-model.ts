/**
 * The host model of a guest's VT-d page request queue: what a vIOMMU does with a page request
 * (docs/queues.md; QEMU vtd_pri_request_page, which cites VT-d spec 7.5). It differs from
 * the SMMUv3 queues on every point that matters:
 *
 * - Capacity is 2^n - 1: the queue is full when (PQT + 1) mod size == PQH, one slot always empty.
 * - A request that finds the queue full sets PRO and is dropped. PRO is sticky: while it is set
 *   every request is dropped, with no fault and no event, until software writes 1 to it.
 * - Dropped requests with LPIG set get no automatic response. Whether real hardware answers them
 *   (as an SMMU PRI queue answers a discarded Last with Success) is unverified; this follows QEMU,
 *   which does not. The endpoint's group then stays outstanding until software or a PRI reset
 *   deals with it (Linux discards partial groups when it clears PRO).
 * - After a write, PQT advances and then PPR is set if it was clear. The interrupt fires only when
 *   neither PPR nor PRO was set before (an edge on the aggregate), also when setting PRO.
 *
 * Mapping onto the project's ring (shared/vtd-prq-registers.ts): PQT/PQH are the ring's PROD/CONS,
 * and this model refuses to fill the ring's last slot, which is exactly the VT-d full rule (the
 * mirrored ring would accept one more). The ring's OVFLG/OVACKFLG toggle pair is not used: PRO is a
 * sticky RW1C bit in its own status word, next to PPR, which the ring has no notion of. The ring is
 * built without a doorbell, since its empty -> non-empty edge is the SMMU trigger, not the VT-d one;
 * this model rings the doorbell itself on the PPR/PRO edge.
 *
 * Each request is published on its own (PQT then PPR), as the hardware does: setting PPR before the
 * tail store could let a handler clear PPR, read the old tail and sleep on a record it never saw.
 */
import type { Doorbell } from '../../shared/doorbell.ts';
import type { RegisterMirror } from '../../shared/posted-link.ts';
import { queueIndex } from '../../shared/queue-index.ts';
import {
  encodeVtdPageRequest,
  VTD_PRQ_ENTRY_BYTES,
  type VtdPageRequest,
} from '../../shared/records/vtd-prq-entry.ts';
import type { RingMirror, RingProducer } from '../../shared/ring.ts';
import { type PageRequestStatus, PRS_PPR, PRS_PRO, vtdPrqProducer } from '../../shared/vtd-prq-registers.ts';

export type PageRequestWriteResult = 'written' | 'dropped';

export interface VtdPrqStats {
  written: number;
  /** Requests lost to a full queue (each sets PRO), or to a PRO still set (silently). */
  dropped: { full: number; overflowPending: number };
  /** Page request events raised (doorbell rings). */
  interrupts: number;
  /** Times PRO went from clear to set. */
  overflows: number;
}

export class VtdPageRequestQueue {
  readonly stats: VtdPrqStats = {
    written: 0,
    dropped: { full: 0, overflowPending: 0 },
    interrupts: 0,
    overflows: 0,
  };
  readonly status: PageRequestStatus;
  /** Requests the queue holds at most: one slot is always kept empty. */
  readonly capacity: number;

  private readonly ring: RingProducer;
  private tailIndex = 0;

  /**
   * @param byteOffset start of the region of `vtdPrqBytes(log2Size)` bytes (64-byte aligned).
   * @param interrupt rung for each page request event (the guest's PRQ interrupt line).
   */
  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    log2Size: number,
    private readonly interrupt?: Doorbell,
    /** The postMessage transport's link, when the two sides do not share the channel. */
    mirror?: RingMirror & RegisterMirror,
  ) {
    const { ring, status } = vtdPrqProducer(buffer, byteOffset, log2Size, mirror);
    this.ring = ring;
    this.status = status;
    this.capacity = ring.size - 1;
  }

  /** PQT, as a byte offset into the queue. */
  get tail(): number {
    return this.tailIndex * VTD_PRQ_ENTRY_BYTES;
  }

  /** PQH as software last wrote it, as a byte offset into the queue. */
  get head(): number {
    return queueIndex(this.tailIndex - this.ring.used(), this.ring.log2Size) * VTD_PRQ_ENTRY_BYTES;
  }

  /** Times the guest's PQH claimed an impossible fill level (counted by the ring, treated as full). */
  get corruptIndex(): number {
    return this.ring.corruptIndex;
  }

  /** Requests that fit before the queue is full (what endpoint credits should stay within). */
  get free(): number {
    return Math.max(0, this.capacity - this.ring.used());
  }

  /** Deliver one page request (encoded at once; `request` may be reused by the caller). */
  write(request: VtdPageRequest): PageRequestWriteResult {
    if ((this.status.read() & PRS_PRO) !== 0) {
      this.stats.dropped.overflowPending++;
      return 'dropped';
    }
    // (PQT + 1) mod size == PQH: the last free slot stays empty. A guest CONS that claims an
    // impossible fill level reads as a full ring (counted by the ring) and lands here too.
    const at = this.ring.used() >= this.capacity ? -1 : this.ring.claim();
    if (at < 0) {
      this.stats.dropped.full++;
      const before = this.status.set(PRS_PRO);
      if ((before & PRS_PRO) === 0) this.stats.overflows++;
      this.raiseIfFirst(before);
      return 'dropped';
    }
    encodeVtdPageRequest(this.ring.words, at, request);
    this.ring.push();
    this.tailIndex = queueIndex(this.tailIndex + 1, this.ring.log2Size);
    this.stats.written++;
    // PPR after PQT; a PPR already set needs no read-modify-write (software clears it before it
    // reads PQT, so a handler that cleared it after this load will see the new tail).
    if ((this.status.read() & PRS_PPR) === 0) this.raiseIfFirst(this.status.set(PRS_PPR));
    return 'written';
  }

  /** The page request event fires only when neither PPR nor PRO was set before this update. */
  private raiseIfFirst(before: number): void {
    if ((before & (PRS_PPR | PRS_PRO)) !== 0) return;
    this.stats.interrupts++;
    this.interrupt?.ring();
  }
}
