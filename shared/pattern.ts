/**
 * The content of workload buffers: a seeded function of (seed, VA, word offset). The guest fills a
 * page with it when it pages the page in; the host's oracle checks every word a device read
 * against it, so a DMA that used a wrong or stale translation shows up as a data mismatch.
 */
import { PAGE_SIZE, PAGE_WORDS } from './guest-memory.ts';

const GOLDEN = 0x9e3779b9 | 0;
const GOLDEN_2 = Math.imul(2, GOLDEN);
const GOLDEN_3 = Math.imul(3, GOLDEN);
const GOLDEN_4 = Math.imul(4, GOLDEN);

function mix32(value: number): number {
  let x = value | 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x | 0;
}

/**
 * Per-page key; `pageVa` must be page-aligned. (`/ PAGE_SIZE`, not `/ 2 ** PAGE_SHIFT`: V8 does not
 * fold a power of an imported binding, and the Math.pow it leaves costs ~60 ns a call.)
 */
export function pageKey(seed: number, pageVa: number): number {
  const pfn = Math.floor(pageVa / PAGE_SIZE);
  return mix32(seed ^ mix32((pfn >>> 0) ^ Math.imul(Math.floor(pfn / 4294967296), GOLDEN)));
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
 *
 * The hot half of every verified DMA: one key per call, then Int32 compares only, four words a
 * round. Word i's pattern is `key ^ imul(i + 1, GOLDEN)`, and imul(i + 2, G) = imul(i + 1, G) + G
 * (mod 2^32), so the multiplier is stepped by adds instead of recomputed.
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
  let m = Math.imul(firstWord + 1, GOLDEN);
  let i = 0;
  // A round with a mismatch stops here; the word-by-word tail below finds which word.
  for (const rounds = count & ~3; i < rounds; i += 4) {
    const w = at + i;
    if (
      (words[w] ^ key) !== m ||
      (words[w + 1] ^ key) !== ((m + GOLDEN) | 0) ||
      (words[w + 2] ^ key) !== ((m + GOLDEN_2) | 0) ||
      (words[w + 3] ^ key) !== ((m + GOLDEN_3) | 0)
    )
      break;
    m = (m + GOLDEN_4) | 0;
  }
  for (; i < count; i++) {
    if ((words[at + i] ^ key) !== m) return i;
    m = (m + GOLDEN) | 0;
  }
  return -1;
}
