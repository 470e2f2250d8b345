/**
 * The guest's SMMUv3 driver: drains the PRI queue, pages in what each request asks for, and answers
 * each page-request group once with CMD_PRI_RESP on the command queue; drains the event queue
 * (faults of terminated transactions are counted; a Stall=1 event is paged in and answered with
 * CMD_RESUME) and acknowledges its overflows; and invalidates the IOTLB for the memory manager
 * (CMD_TLBI_NH_VA, then a CMD_SYNC whose completion the SMMU writes into guest RAM).
 *
 * Ordering rules it keeps (SMMU spec 8; docs/queues.md):
 * - A group is answered after its Last entry; until then its members are partial.
 * - Stop markers need no response.
 * - After the producer reports an overflow, the driver processes every entry up to PROD, drops the
 *   partial groups whose Last may have been lost (the SMMU auto-answered those), and only then
 *   acknowledges the overflow.
 * - One CONS store per drained batch and one PROD store per batch of commands.
 * - Event-queue slots it frees are signalled to the host (the SMMU sees a CONS register write):
 *   the vSMMU may hold stall records waiting for exactly that room.
 * - It reads IDR0.TERM_MODEL; like Linux's driver it terminates a stall it cannot page in with
 *   Ab=1 (abort), which is the same under either terminate model.
 */
import type { GuestStats } from '../shared/control.ts';
import type { Doorbell } from '../shared/doorbell.ts';
import type { GuestMemory } from '../shared/guest-memory.ts';
import {
  encodePriResp,
  encodeResume,
  encodeSync,
  encodeTlbiNhVa,
  newPriRespCommand,
  newResumeCommand,
  PRI_RESP_INVALID,
  PRI_RESP_SUCCESS,
  RESUME_ABORT,
  RESUME_RETRY,
} from '../shared/records/cmdq-entry.ts';
import { decodeEvtqEntry, newEvtqEntry } from '../shared/records/evtq-entry.ts';
import { RID_PASID } from '../shared/records/page-request.ts';
import { decodePriqEntry, isStopMarker, newPriqEntry } from '../shared/records/priq-entry.ts';
import type { RingConsumer, RingProducer } from '../shared/ring.ts';
import { IDR0_TERM_MODEL, termModelOf } from '../shared/smmuv3-idr.ts';
import {
  type CompletionWaitEncoder,
  CompletionWaits,
  FaultGroups,
  GROUP_INVALID,
  GROUP_SUCCESS,
} from './fault-groups.ts';
import type { Misbehaviour } from './misbehave.ts';
import { type DemandPager, PAGE_IN_OK } from './mm/demand-pager.ts';

/** CMD_SYNC with an MSI write of the sequence number: the SMMUv3 completion wait. */
const SYNC_ENCODER: CompletionWaitEncoder = { encodeWait: encodeSync };

export interface Smmuv3DriverOptions {
  /** The VM's line to the host (host-signal.ts): rung when the driver frees event-queue slots. */
  hostBell?: Doorbell;
  /** SMMU_IDR0 as the vSMMU advertises it (shared/smmuv3-idr.ts); unset reads as TERM_MODEL=1. */
  idr0?: number;
}

export class Smmuv3Driver {
  /** True when the last poll stopped because the command queue was full. */
  blockedOnCommandQueue = false;
  /** IDR0.TERM_MODEL: 0, CMD_RESUME with Ab=0 completes a stalled transaction RAZ/WI; 1, it aborts. */
  readonly termModel: 0 | 1;
  private readonly hostBell: Doorbell | undefined;

  private readonly entry = newPriqEntry();
  private readonly event = newEvtqEntry();
  private readonly resume = newResumeCommand();
  private readonly command = newPriRespCommand();
  private readonly groups: FaultGroups;
  private readonly waits: CompletionWaits;

  constructor(
    private readonly priq: RingConsumer,
    private readonly evtq: RingConsumer,
    private readonly cmdq: RingProducer,
    private readonly pager: DemandPager,
    private readonly stats: GuestStats,
    memory: GuestMemory,
    /** A word of guest RAM that CMD_SYNC completions are written to (MSI address). */
    syncWordGpa: number,
    /** A hostile guest's hooks (misbehave.ts); absent for a well-behaved one. */
    private readonly misbehave?: Misbehaviour,
    options: Smmuv3DriverOptions = {},
  ) {
    this.groups = new FaultGroups(pager, stats, misbehave);
    this.waits = new CompletionWaits(cmdq, SYNC_ENCODER, memory, syncWordGpa);
    this.hostBell = options.hostBell;
    this.termModel = termModelOf(options.idr0 ?? IDR0_TERM_MODEL);
  }

  /** The PRI queue, as the driver consumes it. */
  get pageRequestRing(): RingConsumer {
    return this.priq;
  }

  /** The event queue, as the driver consumes it. */
  get eventRing(): RingConsumer {
    return this.evtq;
  }

  /** Entries wait in the PRI or event queue. */
  get pending(): boolean {
    return !this.priq.empty() || !this.evtq.empty();
  }

  /**
   * Invalidate the IOTLB for `va` (of every PASID: the model has no ASIDs): CMD_TLBI_NH_VA, then a
   * CMD_SYNC that signals completion. Returns the sync's sequence number (wait for
   * `syncCompleted()` to reach it before reusing the page), or -1 if the command queue is full.
   */
  invalidateVa(_pasid: number, va: number): number {
    const at = this.cmdq.claim();
    if (at < 0) return -1;
    encodeTlbiNhVa(this.cmdq.words, at, va);
    this.cmdq.commit();
    return this.waits.afterInvalidation();
  }

  /** The sequence number of the last CMD_SYNC the SMMU completed. */
  syncCompleted(): number {
    return this.waits.completed();
  }

  /** Drain both output queues once; returns the number of records consumed. */
  poll(): number {
    this.blockedOnCommandQueue = false;
    this.waits.issue();
    const consumed = this.pollEvents() + (this.blockedOnCommandQueue ? 0 : this.pollPageRequests());
    this.cmdq.publish();
    return consumed;
  }

  /**
   * The event queue: drain, re-read PROD until empty, then acknowledge an overflow (the queue kept
   * accepting records meanwhile, so nothing is left to discard; the lost ones are gone).
   */
  private pollEvents(): number {
    let consumed = 0;
    for (let ready = this.evtq.poll(); ready > 0; ready = this.evtq.poll()) {
      let done = 0;
      while (done < ready) {
        decodeEvtqEntry(this.evtq.words, this.evtq.at(done), this.event);
        if (this.event.stall) {
          if (this.cmdq.claim() < 0) {
            this.blockedOnCommandQueue = true;
            break;
          }
          this.resumeStall();
        }
        done++;
      }
      this.evtq.release(done);
      consumed += done;
      if (this.blockedOnCommandQueue) break;
    }
    // The freed slots are what a held stall record waits for: the host sees the CONS write now,
    // not at its next unrelated wake-up.
    if (consumed > 0) this.hostBell?.ring();
    this.stats.events += consumed;
    if (!this.blockedOnCommandQueue && this.evtq.overflowPending() && this.evtq.empty()) {
      this.evtq.acknowledgeOverflow();
      this.stats.eventOverflowsAcknowledged++;
    }
    return consumed;
  }

  /** A stalled transaction: page in what it touched, then CMD_RESUME retry (or abort if that failed). */
  private resumeStall(): void {
    if (this.misbehave && !this.misbehave.onFault()) return;
    const e = this.event;
    const outcome = this.pager.pageIn(e.ssv ? e.substreamId : RID_PASID, e.inputAddress);
    const c = this.resume;
    c.streamId = e.streamId;
    c.stag = e.stag;
    c.action = outcome === PAGE_IN_OK ? RESUME_RETRY : RESUME_ABORT;
    encodeResume(this.cmdq.words, this.cmdq.claim(), c);
    this.cmdq.commit();
    this.stats.stallsResumed++;
    this.misbehave?.answered(true, c.streamId, -1, c.stag, c.action === RESUME_RETRY);
  }

  private pollPageRequests(): number {
    let consumed = 0;
    for (let ready = this.priq.poll(); ready > 0; ready = this.priq.poll()) {
      let done = 0;
      while (done < ready) {
        const at = this.priq.at(done);
        decodePriqEntry(this.priq.words, at, this.entry);
        if (this.entry.last && !isStopMarker(this.entry) && this.cmdq.claim() < 0) {
          this.blockedOnCommandQueue = true;
          break;
        }
        this.handle();
        done++;
      }
      this.priq.release(done);
      consumed += done;
      if (this.blockedOnCommandQueue) break;
    }
    if (!this.blockedOnCommandQueue && this.priq.overflowPending() && this.priq.empty()) {
      // Every entry up to PROD is processed: partials whose Last was discarded are gone for good.
      this.groups.dropPartials();
      this.priq.acknowledgeOverflow();
    }
    return consumed;
  }

  private handle(): void {
    const e = this.entry;
    if (isStopMarker(e)) {
      this.stats.stopMarkers++;
      return;
    }
    const group = this.groups.request(
      e.streamId,
      e.prgIndex,
      e.ssv ? e.substreamId : RID_PASID,
      e.address,
      e.last,
    );
    if (group !== GROUP_SUCCESS && group !== GROUP_INVALID) return;
    const c = this.command;
    c.streamId = e.streamId;
    c.ssv = e.ssv;
    c.substreamId = e.substreamId;
    c.prgIndex = e.prgIndex;
    c.resp = group === GROUP_SUCCESS ? PRI_RESP_SUCCESS : PRI_RESP_INVALID;
    encodePriResp(this.cmdq.words, this.cmdq.claim(), c);
    this.groups.commitAnswer(this.cmdq, c.streamId, c.ssv ? c.substreamId : -1, c.prgIndex, group);
  }
}
