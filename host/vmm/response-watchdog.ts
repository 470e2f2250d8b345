/**
 * The response watchdog (topology `responseTimeoutMs`): a guest that holds faults and answers none
 * of them for that long is treated as dead, and the VMM gives up on it the way it would on a
 * crashed one. Only the guest's own answers count as progress: the model's overflow auto-answers
 * do not.
 */
import type { Reactor, Ticker } from './reactor.ts';
import type { ViommuModelStats } from './viommu-model.ts';

/** The counters the watchdog reads off the VM's vIOMMU model. */
export type WatchedStats = Pick<
  ViommuModelStats,
  'delivered' | 'stallsDelivered' | 'guestAnswered' | 'stallsTerminated'
>;

/** Who gives up on a hung guest (the Vm). */
export interface HungGuestHandler {
  giveUp(reason: string): void;
}

export class ResponseWatchdog {
  /** The guest's answers at the last check that saw progress, and when that was. */
  private answered: number;
  private since = performance.now();

  constructor(
    private readonly stats: WatchedStats,
    private readonly timeoutMs: number,
    private readonly vm: HungGuestHandler,
  ) {
    this.answered = this.answers();
  }

  /** Check a few times per timeout on the reactor's clock; returns the ticker, to cancel. */
  start(reactor: Reactor): Ticker {
    return reactor.every(Math.max(5, Math.min(50, this.timeoutMs / 4)), (now) => this.check(now));
  }

  check(now: number): void {
    const awaiting = this.stats.delivered + this.stats.stallsDelivered - this.answers();
    if (awaiting <= 0 || this.answers() !== this.answered) {
      this.answered = this.answers();
      this.since = now;
      return;
    }
    if (now - this.since < this.timeoutMs) return;
    this.vm.giveUp(
      `answered none of ${awaiting} fault(s) for ${Math.round(now - this.since)} ms (responseTimeoutMs ${this.timeoutMs})`,
    );
  }

  private answers(): number {
    return this.stats.guestAnswered + this.stats.stallsTerminated;
  }
}
