// The seeded pattern the guest fills pages with and the oracle checks DMA reads against.
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { fillPage, pageKey, patternWord, verifyWords } from '../../shared/pattern.ts';

const GOLDEN = 0x9e3779b9 | 0;
/** The pattern as first written: a reference for the optimised functions. */
function mix32(value: number): number {
  let x = value | 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x | 0;
}
function referenceKey(seed: number, pageVa: number): number {
  const pfn = Math.floor(pageVa / 2 ** 12);
  return mix32(seed ^ mix32((pfn >>> 0) ^ Math.imul(Math.floor(pfn / 2 ** 32), GOLDEN)));
}

describe('pattern', () => {
  test('pageKey is the reference key for any page below 2^52 and any seed', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 40 - 1 }),
        fc.integer({ min: 0, max: 0xffff_ffff }),
        (pfn, seed) => {
          expect(pageKey(seed, pfn * 4096)).toBe(referenceKey(seed, pfn * 4096));
        },
      ),
    );
  });

  test('verifyWords accepts every run of a filled page and finds the first wrong word', () => {
    const words = new Int32Array(1024 + 16);
    const va = 0x7e00_1234_5000;
    fillPage(words, 16, 77, va);
    const key = pageKey(77, va);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1023 }), fc.integer({ min: 0, max: 1024 }), (first, length) => {
        const count = Math.min(length, 1024 - first);
        expect(verifyWords(words, 16 + first, count, 77, va, first)).toBe(-1);
        for (let i = 0; i < count; i++) expect(words[16 + first + i]).toBe(patternWord(key, first + i));
        if (count === 0) return;
        const bad = Math.floor(count / 2);
        words[16 + first + bad] ^= 1 << (first & 31);
        expect(verifyWords(words, 16 + first, count, 77, va, first)).toBe(bad);
        // Another page's pattern (a stale translation) fails at its first word; so does another seed.
        expect(verifyWords(words, 16 + first, count, 77, va + 4096, first)).toBe(0);
        expect(verifyWords(words, 16 + first, count, 78, va, first)).toBe(0);
        words[16 + first + bad] ^= 1 << (first & 31);
      }),
    );
  });
});
