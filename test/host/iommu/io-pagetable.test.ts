import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  IoPageTable,
  S2AP_READ,
  S2AP_WRITE,
  type S2Result,
  TablePool,
} from '../../../host/iommu/io-pagetable.ts';

const PAGE = 4096;

describe('IO page tables', () => {
  test('a mapped page translates with its offset and permissions; others do not', () => {
    const pool = new TablePool(64);
    const pt = new IoPageTable(pool);
    const out: S2Result = { pa: 0, prot: 0 };
    pt.map(0x7e00_0000_0000, 2 * PAGE, (i) => 0x1_2345_0000 + i * PAGE, S2AP_READ);
    expect(pt.lookup(0x7e00_0000_1010, out)).toBe(0x1_2345_1010);
    expect(out.prot).toBe(S2AP_READ);
    expect(pt.lookup(0x7e00_0000_2000, out)).toBe(-1);
    expect(pt.mappedPages).toBe(2);
  });

  test('four levels: the first map of a fresh region allocates three tables below the root', () => {
    const pool = new TablePool(64);
    const pt = new IoPageTable(pool);
    expect(pool.tablesInUse).toBe(1);
    pt.map(0, PAGE, () => 0x1000, S2AP_READ | S2AP_WRITE);
    expect(pool.tablesInUse).toBe(4);
  });

  test('unmap removes exactly the mapped pages and frees the tables it emptied', () => {
    const pool = new TablePool(64);
    const pt = new IoPageTable(pool);
    pt.map(0x4000_0000, 4 * PAGE, (i) => i * PAGE, S2AP_READ);
    expect(pt.unmap(0x4000_0000 - PAGE, 3 * PAGE)).toBe(2);
    expect(pt.mappedPages).toBe(2);
    expect(pt.unmap(0x4000_0000, 8 * PAGE)).toBe(2);
    expect(pool.tablesInUse).toBe(1);
  });

  test('an unaligned or out-of-range request is refused', () => {
    const pt = new IoPageTable(new TablePool(8));
    expect(() => pt.map(100, PAGE, () => 0, S2AP_READ)).toThrow(/page-aligned/);
    expect(() => pt.map(2 ** 48, PAGE, () => 0, S2AP_READ)).toThrow(/48 bits/);
  });

  test('an exhausted pool is a clear error, not a corrupted table', () => {
    const pt = new IoPageTable(new TablePool(3));
    expect(() => pt.map(0, PAGE, () => 0, S2AP_READ)).toThrow(/exhausted/);
  });

  test('property: lookups agree with a model of the mappings after any sequence of maps and unmaps', () => {
    const page = fc.integer({ min: 0, max: 2000 }).map((p) => p * 977); // spread over many tables
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('map' as const),
        page,
        pages: fc.integer({ min: 1, max: 8 }),
        pa: fc.integer({ min: 0, max: 1 << 20 }),
        write: fc.boolean(),
      }),
      fc.record({ kind: fc.constant('unmap' as const), page, pages: fc.integer({ min: 1, max: 16 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), fc.array(page, { maxLength: 40 }), (ops, probes) => {
        const pool = new TablePool(4096);
        const pt = new IoPageTable(pool);
        const model = new Map<number, { pa: number; prot: number }>();
        for (const o of ops) {
          if (o.kind === 'map') {
            const prot = S2AP_READ | (o.write ? S2AP_WRITE : 0);
            pt.map(o.page * PAGE, o.pages * PAGE, (i) => (o.pa + i) * PAGE, prot);
            for (let i = 0; i < o.pages; i++) model.set(o.page + i, { pa: (o.pa + i) * PAGE, prot });
          } else {
            let expected = 0;
            for (let i = 0; i < o.pages; i++) if (model.delete(o.page + i)) expected++;
            if (pt.unmap(o.page * PAGE, o.pages * PAGE) !== expected) return false;
          }
        }
        const out: S2Result = { pa: 0, prot: 0 };
        for (const p of [...probes, ...model.keys()]) {
          const want = model.get(p);
          const got = pt.lookup(p * PAGE + 8, out);
          if (want === undefined ? got !== -1 : got !== want.pa + 8 || out.prot !== want.prot) return false;
        }
        if (pt.mappedPages !== model.size) return false;
        pt.destroy();
        return pool.tablesInUse === 0;
      }),
      { seed: 0x5e2, numRuns: 150 },
    );
  });
});
