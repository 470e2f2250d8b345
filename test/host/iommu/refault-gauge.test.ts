// The re-fault gauge: counts per (requester, stream, PASID, page), read in constant time.
import { describe, expect, test } from 'vitest';
import { RefaultGauge } from '../../../host/iommu/refault-gauge.ts';

const PAGE = 4096;

describe('the re-fault gauge', () => {
  test('the same page faulting again and again is one hot page; other pages and requesters stay apart', () => {
    const g = new RefaultGauge();
    for (let i = 0; i < 5; i++) g.record(0, 0x100, 1, 0x7000_0000 + 12); // same page, any offset
    g.record(0, 0x100, 1, 0x7000_0000 + PAGE);
    g.record(0, 0x100, 2, 0x7000_0000); // same address, other PASID
    g.record(1, 0x200, 1, 0x7000_0000); // another requester
    g.record(1, 0x200, 1, 0x7000_0000);
    expect(g.figures(0)).toEqual({
      refaults: 4,
      pagesRefaulted: 1,
      maxFaults: 5,
      hottest: { streamId: 0x100, pasid: 1, address: 0x7000_0000 },
    });
    expect(g.figures(1)).toMatchObject({ refaults: 1, pagesRefaulted: 1, maxFaults: 2 });
    expect(g.figures(7)).toEqual({ refaults: 0, pagesRefaulted: 0, maxFaults: 0, hottest: undefined });
  });

  test('requests attributed to nobody are counted apart from every VM', () => {
    const g = new RefaultGauge();
    g.record(-1, 1, 0, 0);
    g.record(-1, 1, 0, 0);
    expect(g.figures(-1)).toMatchObject({ refaults: 1, maxFaults: 2 });
    expect(g.figures(0).maxFaults).toBe(0);
  });

  test('a full table reuses its coldest slots and says so; counts stay a lower bound', () => {
    const g = new RefaultGauge();
    const hot = 0x1234 * PAGE;
    for (let i = 0; i < 3; i++) g.record(0, 1, 1, hot);
    for (let p = 0; p < 40_000; p++) g.record(0, 1, 1, (0x10_0000 + p) * PAGE);
    expect(g.evictions).toBeGreaterThan(0);
    g.record(0, 1, 1, hot);
    const f = g.figures(0);
    expect(f.maxFaults).toBeGreaterThanOrEqual(3);
    expect(f.refaults).toBeGreaterThanOrEqual(2);
    expect(f.refaults).toBeLessThanOrEqual(3);
  });
});
