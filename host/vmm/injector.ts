/**
 * A device's injector (topology `inject`): the device raises page-request groups (or stage-1 fault
 * events) on the host's own initiative, at the configured rate, from a token bucket refilled every
 * few ms. A group that finds no credit waits for the next tick: the injector is paced by the
 * guest's answers like any PRI device. Events need no credit.
 *
 * Paced against the clock, never catching up: the bucket holds one tick's worth, so a tick that
 * comes late skips what it missed instead of sending it in one burst, and a tick sends for at most
 * INJECT_SLICE_MS. A rate faster than the host can raise is sent as fast as the host can.
 */
import type { PciFunction } from '../devices/pci-function.ts';
import type { Reactor, Ticker } from './reactor.ts';
import type { DeviceConfig } from './topology.ts';

/** How often injectors refill their budget and send. */
const INJECT_TICK_MS = 5;
/**
 * Longest an injector's tick may send for: the host's one thread serves every VM between ticks,
 * so an injector faster than the host takes a share of the thread, never all of it.
 */
const INJECT_SLICE_MS = 1;

export type InjectorConfig = NonNullable<DeviceConfig['inject']>;

export class Injector {
  private last = performance.now();
  /** Requests (or events) it may send now. */
  private budget = 0;
  /** Pages injected so far: the next address is `base` plus this, modulo `pages`. */
  private next = 0;
  /** What one tick may hold: the bucket's depth. */
  private readonly perTick: number;

  /** `device` injects; the VM at `vmIndex` is woken when a tick sent anything. */
  constructor(
    private readonly device: PciFunction,
    private readonly inject: InjectorConfig,
    private readonly reactor: Reactor,
    private readonly vmIndex: number,
  ) {
    this.perTick = Math.max(1, (inject.ratePerSec * INJECT_TICK_MS) / 1000);
  }

  /** Tick on the reactor's clock; returns the ticker, to cancel. */
  start(): Ticker {
    return this.reactor.every(INJECT_TICK_MS, (now) => this.tick(now));
  }

  tick(now: number): void {
    const { device, inject } = this;
    this.budget = Math.min(this.budget + ((now - this.last) * inject.ratePerSec) / 1000, this.perTick);
    this.last = now;
    const end = now + INJECT_SLICE_MS;
    let sent = 0;
    while (this.budget >= 1) {
      const address = inject.base + (this.next % inject.pages) * 4096;
      if (inject.kind === 'event') device.injectEvents(inject.pasid, address, inject.write, inject.groupSize);
      else if (!device.injectPageRequest(inject.pasid, address, inject.write, inject.groupSize)) break;
      this.next += inject.groupSize;
      this.budget--;
      sent++;
      if ((sent & 15) === 0 && performance.now() >= end) break;
    }
    if (sent > 0) this.reactor.wake(this.vmIndex);
  }
}
