/**
 * The content of workload buffers: a seeded function of (seed, VA, word offset). The guest fills a
 * page with it when it pages the page in; the host's oracle checks every word a device read
 * against it, so a DMA that used a wrong or stale translation shows up as a data mismatch.
 */
import { PAGE_SHIFT, PAGE_WORDS } from './guest-memory.ts';

const GOLDEN = 0x9e3779b9 | 0;

function mix32(value: number): number {
  let x = value | 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x | 0;
}

/** Per-page key; `pageVa` must be page-aligned. */
export function pageKey(seed: number, pageVa: number): number {
  const pfn = Math.floor(pageVa / 2 ** PAGE_SHIFT);
  return mix32(seed ^ mix32((pfn >>> 0) ^ Math.imul(Math.floor(pfn / 2 ** 32), GOLDEN)));
}

/** Word `wordInPage` of the page whose key is `key`. */
export function patternWord(key: number, wordInPage: number): number {
  return key ^ Math.imul(wordInPage + 1, GOLDEN);
}

/** Fill one page of guest RAM (word offset `pageWord`) with the pattern for `pageVa`. */
export function fillPage(words: Int32Array, pageWord: number, seed: number, pageVa: number): void {
  const key = pageKey(seed, pageVa);
  for (let i = 0; i < PAGE_WORDS; i++) words[pageWord + i] = patternWord(key, i);
}

/**
 * Check `count` words starting at `words[at]` against the pattern of the page at `pageVa`, from word
 * `firstWord` of that page. Returns the index of the first mismatch, or -1.
 */
export function verifyWords(
  words: Int32Array,
  at: number,
  count: number,
  seed: number,
  pageVa: number,
  firstWord: number,
): number {
  const key = pageKey(seed, pageVa);
  for (let i = 0; i < count; i++) {
    if (words[at + i] !== patternWord(key, firstWord + i)) return i;
  }
  return -1;
}
