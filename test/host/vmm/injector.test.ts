// A device's injector (host/vmm/injector.ts): page-request groups (or fault events) raised at the
// configured rate from a token bucket, paced against the clock and never catching up. The clock is
// the test's (performance.now is stubbed); the device is a stand-in that counts what it is asked to
// raise and refuses a group when it has no PRI credit left.
import { afterEach, describe, expect, test, vi } from 'vitest';
import type { PciFunction } from '../../../host/devices/pci-function.ts';
import { Injector, type InjectorConfig } from '../../../host/vmm/injector.ts';
import { Reactor } from '../../../host/vmm/reactor.ts';
import { InjectorSchema } from '../../../host/vmm/topology.ts';
import { pendingWords } from '../../../shared/host-signal.ts';

const VM = 1;
const BASE = 0x4000_0000_0000;

let clock = 0;

/** The two calls an injector makes of its device. */
class CountingDevice {
  credits = Number.POSITIVE_INFINITY;
  /** Addresses of the groups raised, as page numbers from BASE, and of the events. */
  readonly groups: number[] = [];
  readonly events: number[] = [];
  /** How long each raise takes on the test's clock, ms. */
  costMs = 0;

  injectPageRequest(pasid: number, address: number, _write: boolean, count: number): boolean {
    expect(pasid).toBe(1);
    if (this.credits < count) return false;
    this.credits -= count;
    this.groups.push((address - BASE) / 4096);
    clock += this.costMs;
    return true;
  }

  injectEvents(_pasid: number, address: number, _write: boolean, _count: number): void {
    this.events.push((address - BASE) / 4096);
    clock += this.costMs;
  }
}

function setup(fields: Partial<InjectorConfig> & { ratePerSec: number }) {
  clock = 0;
  vi.spyOn(performance, 'now').mockImplementation(() => clock);
  const config = InjectorSchema.parse({ base: BASE, ...fields });
  const device = new CountingDevice();
  const reactor = new Reactor({
    vms: 2,
    transport: 'sab',
    spinNs: 0,
    onError: (e) => {
      throw e;
    },
  });
  const injector = new Injector(device as unknown as PciFunction, config, reactor, VM);
  const pending = pendingWords(reactor.buffer);
  /** The VM's bit in the host signal was set since the last look; clears it. */
  const woken = () => (Atomics.and(pending, 0, ~(1 << VM)) & (1 << VM)) !== 0;
  /** Groups (or events) raised by a tick at `now`. */
  const tick = (now: number) => {
    const before = device.groups.length + device.events.length;
    clock = now;
    injector.tick(now);
    return device.groups.length + device.events.length - before;
  };
  return { device, reactor, injector, woken, tick };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('Injector', () => {
  test('ticks every 5 ms on the reactor clock, and each sends what the rate earned since the last', () => {
    const { injector, tick } = setup({ ratePerSec: 1000 });
    expect(injector.start().periodMs).toBe(5);
    expect(tick(5)).toBe(5);
    expect(tick(7)).toBe(2);
    expect(tick(7.5)).toBe(0); // half a group earned: it waits
    expect(tick(8)).toBe(1);
  });

  test('a late tick skips what it missed instead of sending it in one burst', () => {
    const { tick } = setup({ ratePerSec: 1000 });
    expect(tick(5)).toBe(5);
    expect(tick(505)).toBe(5); // 500 were due; the bucket holds one tick's worth
    expect(tick(510)).toBe(5);
  });

  test('a rate below one per tick still sends each group when it is due', () => {
    const { tick } = setup({ ratePerSec: 100 });
    const sent = [5, 10, 15, 20, 25, 30].map(tick);
    expect(sent).toEqual([0, 1, 0, 1, 0, 1]);
  });

  test('a group that finds no PRI credit waits for a later tick, and is the next one sent', () => {
    const { device, tick } = setup({ ratePerSec: 1000 });
    device.credits = 3;
    expect(tick(5)).toBe(3);
    device.credits = 10;
    expect(tick(5)).toBe(2); // the 2 it could not send are still in the bucket, no more
    expect(device.groups).toEqual([0, 1, 2, 3, 4]);
  });

  test('each group takes groupSize pages; addresses cycle over `pages`', () => {
    const { device, tick } = setup({ ratePerSec: 1000, groupSize: 4, pages: 10 });
    tick(5);
    expect(device.groups).toEqual([0, 4, 8, 12 % 10, 16 % 10]);
  });

  test('events need no credit', () => {
    const { device, tick } = setup({ ratePerSec: 1000, kind: 'event' });
    device.credits = 0;
    expect(tick(5)).toBe(5);
    expect(device.events).toEqual([0, 1, 2, 3, 4]);
  });

  test('a tick sends for at most 1 ms: a rate faster than the host is sent as fast as the host can', () => {
    const { device, tick } = setup({ ratePerSec: 1_000_000 });
    device.costMs = 0.01; // a raise costs 10 µs: 100 fit in a millisecond
    const sent = tick(5);
    // It looks at the clock every 16 groups: the first look at or past 1 ms ends the tick.
    expect(sent).toBe(112);
    // What it could not send is not owed: the next tick's bucket holds one tick's worth again.
    expect(tick(clock + 5)).toBe(112);
  });

  test('the VM is woken only by a tick that sent something', () => {
    const { device, woken, tick } = setup({ ratePerSec: 1000 });
    tick(5);
    expect(woken()).toBe(true);
    device.credits = 0;
    tick(10);
    expect(woken()).toBe(false);
  });
});
