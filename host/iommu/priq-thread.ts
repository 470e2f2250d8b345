/**
 * The host driver's PRI-queue interrupt thread (Linux arm_smmu_priq_thread and prq_event_thread,
 * fault-queues.md 1.7, 2.2): on the queue's interrupt it consumes entries into the IOPF layer and
 * keeps re-reading PROD until the queue is empty (an entry that lands mid-drain raises no new edge).
 * Only then, if an overflow was raised, it drops the IOPF layer's partial groups of the devices
 * behind its IOMMU (their Last was discarded and answered by the queue) and acknowledges it.
 *
 * The thread shares the host's one JS thread with the VMM loops, so it has a budget: at most
 * `weight` entries per turn of the event loop (like NAPI's poll weight; the sandbox uses one queue's
 * worth). Within the budget it runs inside the interrupt, so an uncontended fault costs no extra
 * hop; past it the rest waits for its next turn (setImmediate), and devices that outpace it fill
 * the queue, as they do when a real IRQ thread falls behind. `drain()` runs it at once, whatever
 * the budget.
 *
 * Teardown synchronises with the thread through `flush()` (the SMMUv3 fix that drains the hardware
 * queue, the running thread and the IOPF work before a domain switch): the entry the thread has
 * consumed but not handed on yet goes first, then the rest of the queue, even from inside the
 * thread's own pass. `mask()` holds the interrupt (the thread not scheduled yet) so that tests can
 * leave entries in the queue, and `onHolding` runs code at the moment the thread holds an entry.
 */
import { decodePriqEntry, newPriqEntry } from '../../shared/records/priq-entry.ts';
import { newPageRequest, type PageRequest } from './page-request.ts';
import type { PhysicalPriQueue } from './physical-queue.ts';

export interface PriqThreadOptions {
  /** Entries per turn of the event loop (Infinity: never yields, every entry is handled at once). */
  weight: number;
  /** Hand one page request to the IOPF layer (iommu_report_device_fault). */
  report(r: PageRequest): void;
  /** iopf_queue_discard_partial for the devices behind this IOMMU; returns the groups dropped. */
  discardPartial(): number;
  /** Wake the host loop of a requester whose entries the thread handed on. */
  wake?(requester: number): void;
  /** An exception thrown in a turn of the thread's own (nobody up the stack to catch it). */
  onError?(error: unknown): void;
}

export interface PriqThreadStats {
  /** Passes over the queue, and those that ran in a turn of their own (past the budget). */
  passes: number;
  deferredPasses: number;
  /** Partial groups dropped when recovering from an overflow. */
  partialsDiscarded: number;
}

export class PriqThread {
  readonly stats: PriqThreadStats = { passes: 0, deferredPasses: 0, partialsDiscarded: 0 };
  private budget: number;
  private refillPending = false;
  private running = false;
  /** The thread consumed `request` from the queue and has not handed it on yet. */
  private holding = false;
  private masked = false;
  private latched = false;
  /**
   * Runs while the thread holds an entry it consumed and has not handed on (tests place a
   * teardown there: stage "being drained").
   */
  onHolding: ((request: Readonly<PageRequest>) => void) | undefined;
  private readonly entry = newPriqEntry();
  private readonly request = newPageRequest();
  /** Requesters whose entries this pass handed on, to wake once at its end. */
  private touched = new Uint8Array(0);
  private touchedList = new Int32Array(0);
  private touchedCount = 0;

  constructor(
    private readonly queue: PhysicalPriQueue,
    private readonly options: PriqThreadOptions,
  ) {
    if (!(options.weight >= 1))
      throw new RangeError(`a PRI thread's weight is at least 1; got ${options.weight}`);
    this.budget = options.weight;
    queue.irq = () => this.interrupt();
  }

  setRequesters(count: number): void {
    if (count <= this.touched.length) return;
    this.touched = new Uint8Array(count);
    this.touchedList = new Int32Array(count);
    this.touchedCount = 0;
  }

  /** Run the thread now until the queue is empty (or `limit` entries); returns entries handled. */
  drain(limit = Number.POSITIVE_INFINITY): number {
    if (this.running) return 0;
    return this.pass(limit, false);
  }

  /**
   * Synchronise with the thread, for a teardown: hand on the entry it holds, then everything in
   * the queue, masked or not; from inside the thread's own pass too (that pass then finds the
   * queue empty). Returns the entries handed on.
   */
  flush(): number {
    let handled = 0;
    if (this.holding) {
      this.holding = false;
      this.options.report(this.request);
      handled++;
    }
    if (this.running) return handled + this.consume(Number.POSITIVE_INFINITY);
    return handled + this.pass(Number.POSITIVE_INFINITY, false);
  }

  /** Hold the interrupt: edges are latched, not served, until unmask(). */
  mask(): void {
    this.masked = true;
  }

  unmask(): void {
    this.masked = false;
    if (this.latched || !this.queue.empty || this.queue.overflowActive) {
      this.latched = false;
      this.interrupt();
    }
  }

  /** The queue's interrupt: run now within this turn's budget, else in the next turn. */
  private interrupt(): void {
    if (this.masked) {
      this.latched = true;
      return;
    }
    if (this.running) return;
    if (this.budget > 0) this.pass(this.budget, true);
    else this.scheduleRefill();
  }

  private pass(limit: number, charged: boolean): number {
    this.running = true;
    let handled = 0;
    try {
      handled = this.consume(limit);
      if (this.queue.empty && this.queue.overflowActive) {
        this.stats.partialsDiscarded += this.options.discardPartial();
        this.queue.acknowledgeOverflow();
      }
    } finally {
      this.running = false;
      this.stats.passes++;
      if (charged) this.budget -= handled;
      this.wakeTouched();
      if (!this.queue.empty || this.budget < this.options.weight) this.scheduleRefill();
    }
    return handled;
  }

  private consume(limit: number): number {
    const q = this.queue;
    const e = this.entry;
    const r = this.request;
    let handled = 0;
    while (handled < limit) {
      const at = q.pop();
      if (at < 0) break;
      decodePriqEntry(q.words, at, e);
      r.streamId = e.streamId;
      r.pasid = e.substreamId;
      r.ssv = e.ssv;
      r.address = e.address;
      r.prgIndex = e.prgIndex;
      r.read = e.read;
      r.write = e.write;
      r.exec = e.exec;
      r.privileged = e.privileged;
      r.last = e.last;
      handled++;
      this.touch(q.requesterOfLast);
      if (this.onHolding) {
        this.holding = true;
        this.onHolding(r);
        // A flush from inside the hook handed the entry on already.
        if (!this.holding) continue;
        this.holding = false;
      }
      this.options.report(r);
    }
    return handled;
  }

  private scheduleRefill(): void {
    if (this.refillPending) return;
    this.refillPending = true;
    setImmediate(this.refill);
  }

  /** A new turn: a full budget, and whatever the queue still holds. */
  private readonly refill = (): void => {
    this.refillPending = false;
    this.budget = this.options.weight;
    if (this.masked || this.running || (this.queue.empty && !this.queue.overflowActive)) return;
    this.stats.deferredPasses++;
    try {
      this.pass(this.budget, true);
    } catch (error) {
      if (!this.options.onError) throw error;
      this.options.onError(error);
    }
  };

  private touch(requester: number): void {
    if (requester < 0 || requester >= this.touched.length || this.touched[requester] !== 0) return;
    this.touched[requester] = 1;
    this.touchedList[this.touchedCount++] = requester;
  }

  private wakeTouched(): void {
    const wake = this.options.wake;
    for (let i = 0; i < this.touchedCount; i++) {
      const requester = this.touchedList[i];
      this.touched[requester] = 0;
      wake?.(requester);
    }
    this.touchedCount = 0;
  }
}
