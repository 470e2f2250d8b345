import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { ANY_PASID, Iotlb, TLB_PERM_WRITE } from '../../../host/iommu/iotlb.ts';

const PAGE = 4096;

describe('IOTLB', () => {
  test('a filled entry hits for its (domain, PASID, page) only', () => {
    const tlb = new Iotlb(64, 4);
    tlb.insert(1, 5, 0x7000_0000_1234, 0x3000, TLB_PERM_WRITE);
    expect(tlb.lookup(1, 5, 0x7000_0000_1ff0)).toBe(0x3000);
    expect(tlb.lastPerm).toBe(TLB_PERM_WRITE);
    expect(tlb.lookup(2, 5, 0x7000_0000_1234)).toBe(-1);
    expect(tlb.lookup(1, 6, 0x7000_0000_1234)).toBe(-1);
    expect(tlb.lookup(1, 5, 0x7000_0000_2000)).toBe(-1);
    expect(tlb.stats).toMatchObject({ hits: 1, misses: 3, fills: 1 });
  });

  test('a full set evicts one of its entries, never grows past its size', () => {
    const tlb = new Iotlb(8, 2);
    for (let p = 0; p < 100; p++) tlb.insert(1, 0, p * PAGE, p * PAGE, 0);
    expect(tlb.occupancy).toBe(8);
  });

  test('invalidation by range, PASID, domain and all removes exactly what it names', () => {
    const tlb = new Iotlb(256, 4);
    for (let p = 0; p < 16; p++) {
      tlb.insert(1, 1, p * PAGE, p * PAGE, 0);
      tlb.insert(1, 2, p * PAGE, p * PAGE, 0);
      tlb.insert(2, 1, p * PAGE, p * PAGE, 0);
    }
    tlb.invalidateRange(1, 1, 4 * PAGE + 100, 2 * PAGE); // pages 4..6
    expect([3, 4, 5, 6, 7].map((p) => tlb.lookup(1, 1, p * PAGE) >= 0)).toEqual([
      true,
      false,
      false,
      false,
      true,
    ]);
    expect(tlb.lookup(1, 2, 5 * PAGE)).toBe(5 * PAGE);
    tlb.invalidateRange(1, ANY_PASID, 0, 2 * PAGE);
    expect(tlb.lookup(1, 2, 0)).toBe(-1);
    expect(tlb.lookup(2, 1, 0)).toBe(0);
    tlb.invalidatePasid(1, 2);
    expect(tlb.lookup(1, 2, 9 * PAGE)).toBe(-1);
    expect(tlb.lookup(1, 1, 9 * PAGE)).toBe(9 * PAGE);
    tlb.invalidateDomain(1);
    expect(tlb.lookup(1, 1, 9 * PAGE)).toBe(-1);
    expect(tlb.lookup(2, 1, 9 * PAGE)).toBe(9 * PAGE);
    tlb.invalidateAll();
    expect(tlb.occupancy).toBe(0);
  });

  test("every IOTLB invalidation also drops the walk cache's entries it names, by 2 MiB region", () => {
    const tlb = new Iotlb(256, 4);
    const walks = tlb.walks;
    const MB2 = 2 ** 21;
    for (let r = 0; r < 4; r++) {
      walks.insert(1, 1, r * MB2, 0x1000 * (r + 1), 0);
      walks.insert(1, 2, r * MB2, 0x1000 * (r + 1), 0);
      walks.insert(2, 1, r * MB2, 0x1000 * (r + 1), 0);
    }
    expect(walks.occupancy).toBe(12);
    const cached = (domain: number, pasid: number, r: number) =>
      walks.lookup(domain, pasid, r * MB2 + 0x5000) >= 0;
    tlb.invalidateRange(1, 1, MB2 - PAGE, 2 * PAGE); // touches regions 0 and 1
    expect([0, 1, 2, 3].map((r) => cached(1, 1, r))).toEqual([false, false, true, true]);
    expect(cached(1, 2, 0)).toBe(true);
    tlb.invalidateRange(1, ANY_PASID, 2 * MB2, PAGE);
    expect([cached(1, 1, 2), cached(1, 2, 2), cached(2, 1, 2)]).toEqual([false, false, true]);
    tlb.invalidatePasid(1, 2);
    expect(cached(1, 2, 3)).toBe(false);
    expect(cached(1, 1, 3)).toBe(true);
    tlb.invalidateDomain(1);
    expect(cached(1, 1, 3)).toBe(false);
    expect(cached(2, 1, 3)).toBe(true);
    tlb.invalidateAll();
    expect(walks.occupancy).toBe(0);
  });

  test('property: after an invalidation completes, no lookup returns a removed or changed translation', () => {
    type Op =
      | { kind: 'map'; domain: number; pasid: number; page: number; out: number }
      | {
          kind: 'unmap';
          domain: number;
          pasid: number;
          page: number;
          pages: number;
          how: 'range' | 'pasid' | 'domain' | 'all';
        }
      | { kind: 'translate'; domain: number; pasid: number; page: number };
    const small = (n: number) => fc.integer({ min: 0, max: n });
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({
        kind: fc.constant('map' as const),
        domain: small(2),
        pasid: small(2),
        page: small(40),
        out: small(1000),
      }),
      fc.record({
        kind: fc.constant('unmap' as const),
        domain: small(2),
        pasid: small(2),
        page: small(40),
        pages: fc.integer({ min: 1, max: 80 }),
        how: fc.constantFrom('range' as const, 'pasid' as const, 'domain' as const, 'all' as const),
      }),
      fc.record({
        kind: fc.constant('translate' as const),
        domain: small(2),
        pasid: small(2),
        page: small(40),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), fc.constantFrom(8, 16, 64), (ops, size) => {
        const tlb = new Iotlb(size, 4);
        // The page table the TLB caches: key -> output page.
        const table = new Map<string, number>();
        const key = (d: number, p: number, page: number) => `${d}/${p}/${page}`;
        for (const o of ops) {
          if (o.kind === 'map') {
            // Changing an entry: the table first, then the invalidation, as a driver must.
            table.set(key(o.domain, o.pasid, o.page), o.out * PAGE);
            tlb.invalidateRange(o.domain, o.pasid, o.page * PAGE, PAGE);
          } else if (o.kind === 'unmap') {
            for (const k of [...table.keys()]) {
              const [d, p, page] = k.split('/').map(Number);
              const hit =
                o.how === 'all' ||
                (o.how === 'domain' && d === o.domain) ||
                (o.how === 'pasid' && d === o.domain && p === o.pasid) ||
                (o.how === 'range' &&
                  d === o.domain &&
                  p === o.pasid &&
                  page >= o.page &&
                  page < o.page + o.pages);
              if (hit) table.delete(k);
            }
            if (o.how === 'all') tlb.invalidateAll();
            else if (o.how === 'domain') tlb.invalidateDomain(o.domain);
            else if (o.how === 'pasid') tlb.invalidatePasid(o.domain, o.pasid);
            else tlb.invalidateRange(o.domain, o.pasid, o.page * PAGE, o.pages * PAGE);
          } else {
            const va = o.page * PAGE + 8;
            const cached = tlb.lookup(o.domain, o.pasid, va);
            const truth = table.get(key(o.domain, o.pasid, o.page));
            if (cached >= 0 && cached !== truth) return false;
            if (cached < 0 && truth !== undefined) tlb.insert(o.domain, o.pasid, va, truth, 0);
          }
        }
        return true;
      }),
      { seed: 0x10715b, numRuns: 300 },
    );
  });

  test('sizes that are not powers of two are refused', () => {
    expect(() => new Iotlb(100, 4)).toThrow(/power of two/);
    expect(() => new Iotlb(64, 3)).toThrow(/power of two/);
  });
});
