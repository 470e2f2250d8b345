import { describe, expect, test } from 'vitest';
import { CycleHistogram } from '../../shared/cycle-histogram.ts';
import { Prng } from '../../shared/prng.ts';

describe('cycle histogram', () => {
  test('percentiles stay within 1/32 of the exact ones, and never above the max', () => {
    const prng = new Prng(5);
    const histogram = new CycleHistogram();
    const values: number[] = [];
    for (let i = 0; i < 20_000; i++) {
      // 0.1 us to ~2 ms, log-uniform.
      const v = 0.1 * Math.exp((prng.nextU32() / 2 ** 32) * 10);
      values.push(v);
      histogram.record(v);
    }
    values.sort((a, b) => a - b);
    const exact = (f: number) => values[Math.ceil(f * values.length) - 1];
    for (const f of [0.5, 0.9, 0.99, 0.999]) {
      const got = histogram.percentile(f);
      expect(got).toBeGreaterThanOrEqual(exact(f) - 0.01);
      expect(got).toBeLessThanOrEqual(exact(f) * (1 + 1 / 32) + 0.01);
    }
    const s = histogram.summary();
    expect(s.count).toBe(values.length);
    expect(s.max).toBeCloseTo(values[values.length - 1], 2);
    expect(s.p99).toBeLessThanOrEqual(s.max);
  });

  test('an empty histogram reports zeros; negative values count as 0', () => {
    const histogram = new CycleHistogram();
    expect(histogram.summary()).toEqual({ p50: 0, p99: 0, max: 0, count: 0 });
    histogram.record(-3);
    expect(histogram.summary()).toMatchObject({ p50: 0, count: 1 });
  });
});
