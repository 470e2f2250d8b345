import { describe, expect, test } from 'vitest';
import { STAGE_DEVICE, STAGE_IOMMU, StageClock } from '../../shared/stage-clock.ts';

/** Burn at least `ms` of wall time on this thread. */
function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe('stage clock', () => {
  test('a nested stage pauses the one around it; the rest of a pass is the reactor', () => {
    const clock = new StageClock();
    clock.enable();
    const start = performance.now();
    clock.beginPass();
    busy(2);
    clock.enter(STAGE_DEVICE);
    busy(2);
    clock.enter(STAGE_IOMMU);
    busy(4);
    clock.leave();
    busy(2);
    clock.leave();
    clock.endPass(1);
    const wall = performance.now() - start;
    const { totalMs, ms } = clock.summary();
    expect(ms.iommu).toBeGreaterThanOrEqual(4);
    expect(ms.device).toBeGreaterThanOrEqual(4);
    expect(ms.reactor).toBeGreaterThanOrEqual(2);
    // Time charged to the inner stage is not charged to the outer one as well.
    expect(totalMs).toBeLessThanOrEqual(wall);
    expect(totalMs).toBeCloseTo(ms.reactor + ms.device + ms.iommu, 6);
  });

  test('passes that found no work charge nothing, and a disabled clock charges nothing', () => {
    const clock = new StageClock();
    clock.enable();
    clock.beginPass();
    clock.enter(STAGE_DEVICE);
    busy(1);
    clock.leave();
    clock.endPass(0);
    expect(clock.summary().totalMs).toBe(0);
    clock.disable();
    clock.beginPass();
    clock.enter(STAGE_DEVICE);
    busy(1);
    clock.leave();
    clock.endPass(1);
    expect(clock.summary().totalMs).toBe(0);
  });
});
