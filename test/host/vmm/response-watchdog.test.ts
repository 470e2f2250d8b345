// The response watchdog (host/vmm/response-watchdog.ts): a guest that holds faults and answers none
// of them for responseTimeoutMs is given up on. Checked on the test's clock.
import { afterEach, describe, expect, test, vi } from 'vitest';
import { Reactor } from '../../../host/vmm/reactor.ts';
import { ResponseWatchdog, type WatchedStats } from '../../../host/vmm/response-watchdog.ts';

function setup(timeoutMs = 100) {
  vi.spyOn(performance, 'now').mockReturnValue(0);
  const stats: WatchedStats = { delivered: 0, stallsDelivered: 0, guestAnswered: 0, stallsTerminated: 0 };
  const reasons: string[] = [];
  const watchdog = new ResponseWatchdog(stats, timeoutMs, { giveUp: (reason) => reasons.push(reason) });
  return { stats, reasons, watchdog };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('ResponseWatchdog', () => {
  test('a guest with nothing awaiting an answer is never given up on', () => {
    const { watchdog, reasons } = setup();
    for (const now of [50, 500, 50_000]) watchdog.check(now);
    expect(reasons).toEqual([]);
  });

  test('a guest that answers none of its faults for responseTimeoutMs is given up on, with the count', () => {
    const { stats, watchdog, reasons } = setup();
    stats.delivered = 3;
    watchdog.check(99);
    expect(reasons).toEqual([]);
    watchdog.check(100);
    expect(reasons).toEqual(['answered none of 3 fault(s) for 100 ms (responseTimeoutMs 100)']);
  });

  test("any answer of the guest's restarts the clock", () => {
    const { stats, watchdog, reasons } = setup();
    stats.delivered = 3;
    watchdog.check(60);
    stats.guestAnswered = 1;
    watchdog.check(90);
    watchdog.check(180);
    expect(reasons).toEqual([]);
    watchdog.check(190);
    expect(reasons).toEqual(['answered none of 2 fault(s) for 100 ms (responseTimeoutMs 100)']);
  });

  test('stalls count too: a delivered stall awaits an answer, a terminated one is an answer', () => {
    const { stats, watchdog, reasons } = setup();
    stats.stallsDelivered = 2;
    watchdog.check(50);
    stats.stallsTerminated = 1;
    watchdog.check(120); // progress at 120
    watchdog.check(219);
    expect(reasons).toEqual([]);
    watchdog.check(220);
    expect(reasons).toEqual(['answered none of 1 fault(s) for 100 ms (responseTimeoutMs 100)']);
  });

  test('it checks a few times per timeout, every 5 to 50 ms', () => {
    const reactor = new Reactor({ vms: 1, transport: 'sab', spinNs: 0, onError: () => {} });
    const period = (timeoutMs: number) => setup(timeoutMs).watchdog.start(reactor).periodMs;
    expect([period(8), period(100), period(1000)]).toEqual([5, 25, 50]);
  });
});
