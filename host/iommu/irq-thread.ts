/**
 * The host driver's threaded interrupt handler for one of a physical IOMMU's queues (Linux
 * arm_smmu_priq_thread, arm_smmu_evtq_thread and VT-d's prq_event_thread; docs/queues.md,
 * SMMU spec 3.18): on the queue's interrupt it consumes entries and keeps re-reading PROD until the queue
 * is empty (an entry that lands mid-drain raises no new edge). Only then, if an overflow was
 * raised, it recovers (the PRI thread drops partial groups) and acknowledges it.
 *
 * The thread shares the host's one JS thread with the VMMs, so it has a budget: at most `weight`
 * entries per turn (like NAPI's poll weight; the sandbox uses one queue's worth). A turn is a pass
 * of the sandbox's reactor (host/vmm/reactor.ts, through `schedule`), or of the event loop
 * (setImmediate) without one. Within the budget it runs inside the interrupt, so an uncontended
 * fault costs no extra hop; past it the rest waits for its next turn, and devices that outpace it
 * fill the queue, as they do when a real IRQ thread falls behind. `drain()` runs it at once, whatever
 * the budget.
 *
 * Teardown synchronises with the thread through `flush()` (the SMMUv3 fix that drains the hardware
 * queue, the running thread and the IOPF work before a domain switch): the entry the thread has
 * taken but not handed on yet goes first, then the rest of the queue, even from inside the
 * thread's own pass. `mask()` and `unmask()` are Linux's disable_irq and enable_irq on the queue's
 * interrupt line: an edge that comes while masked is latched and served on unmask (an edge
 * interrupt is resent), so entries stay in the queue meanwhile and nothing drains it but `drain()`
 * or `flush()`. `onHolding` runs code at the moment the thread holds an entry.
 *
 * A subclass says how to take one entry off its queue (`take`) and where it goes (`handOn`).
 */

/** What the thread needs of its queue. */
export interface InterruptingQueue {
  readonly empty: boolean;
  /** OVFLG differs from OVACKFLG. */
  readonly overflowActive: boolean;
  /** CONS.OVACKFLG := PROD.OVFLG. */
  acknowledgeOverflow(): void;
  /** Set by the thread: the queue calls it on its empty -> non-empty edge. */
  irq: () => void;
}

export interface IrqThreadOptions {
  /** Entries per turn (Infinity: never yields, every entry is handled at once). */
  weight: number;
  /** An exception thrown in a turn of the thread's own (nobody up the stack to catch it). */
  onError?(error: unknown): void;
  /**
   * How the thread gets its next turn (default: setImmediate). The sandbox's reactor runs it at
   * the start of its next pass, so a turn is a pass of the host's data plane (host/vmm/reactor.ts).
   */
  schedule?(turn: () => void): void;
}

export interface IrqThreadStats {
  /** Passes over the queue, and those that ran in a turn of their own (past the budget). */
  passes: number;
  deferredPasses: number;
}

export abstract class IrqThread {
  abstract readonly stats: IrqThreadStats;
  /**
   * Runs while the thread holds an entry it took and has not handed on (tests place a teardown
   * there: stage "being drained").
   */
  onHolding: (() => void) | undefined;
  private budget: number;
  private refillPending = false;
  private running = false;
  /** The thread took an entry from the queue and has not handed it on yet. */
  private holding = false;
  private masked = false;
  private latched = false;

  constructor(
    private readonly drained: InterruptingQueue,
    private readonly threadOptions: IrqThreadOptions,
  ) {
    if (!(threadOptions.weight >= 1))
      throw new RangeError(`an IRQ thread's weight is at least 1; got ${threadOptions.weight}`);
    this.budget = threadOptions.weight;
    drained.irq = () => this.interrupt();
  }

  /** Take the entry at CONS off the queue into the thread's hands; false when it is empty. */
  protected abstract take(): boolean;
  /** Hand on the entry taken last. */
  protected abstract handOn(): void;
  /** The queue is drained and its overflow about to be acknowledged: recover from the loss. */
  protected recoverOverflow(): void {}
  /** A pass ended (whatever it handed on may be woken now). */
  protected endPass(): void {}

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
      this.handOn();
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
    if (this.latched || !this.drained.empty || this.drained.overflowActive) {
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
      if (this.drained.empty && this.drained.overflowActive) {
        this.recoverOverflow();
        this.drained.acknowledgeOverflow();
      }
    } finally {
      this.running = false;
      this.stats.passes++;
      if (charged) this.budget -= handled;
      this.endPass();
      if (!this.drained.empty || this.budget < this.threadOptions.weight) this.scheduleRefill();
    }
    return handled;
  }

  private consume(limit: number): number {
    let handled = 0;
    while (handled < limit && this.take()) {
      handled++;
      if (this.onHolding) {
        this.holding = true;
        this.onHolding();
        // A flush from inside the hook handed the entry on already.
        if (!this.holding) continue;
        this.holding = false;
      }
      this.handOn();
    }
    return handled;
  }

  private scheduleRefill(): void {
    if (this.refillPending) return;
    this.refillPending = true;
    if (this.threadOptions.schedule) this.threadOptions.schedule(this.refill);
    else setImmediate(this.refill);
  }

  /** A new turn: a full budget, and whatever the queue still holds. */
  private readonly refill = (): void => {
    this.refillPending = false;
    this.budget = this.threadOptions.weight;
    if (this.masked || this.running || (this.drained.empty && !this.drained.overflowActive)) return;
    this.stats.deferredPasses++;
    try {
      this.pass(this.budget, true);
    } catch (error) {
      if (!this.threadOptions.onError) throw error;
      this.threadOptions.onError(error);
    }
  };
}
