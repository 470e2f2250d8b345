/**
 * The stage-1 translation format that guests build in guest RAM and the host walker reads, the way
 * an SMMUv3 reads a CD and its VMSAv8-64 tables (4 KiB granule, 9 bits a level, 48-bit input, four
 * levels 0..3). Entries are 64-bit, little-endian, stored as two Int32 words (low, high).
 *
 * Table/page entry:
 *   low  [0] V valid, [1] T (levels 0-2: points to a table; level 3: must be 1, a page),
 *        [6] AP_UNPRIV (unprivileged access allowed), [7] AP_RDONLY, [10] AF,
 *        [31:12] output address [31:12]
 *   high [15:0] output address [47:32], [21:16] RES0 (set: F_ADDR_SIZE), [22] XN, [31:23] ignored
 *
 * Context descriptor (CD), 16 bytes, one per PASID (SubstreamID) in a per-device CD table:
 *   w0 [0] V, [1] R (record faults of terminated transactions), [2] S (stall the four
 *      translation faults instead of terminating, if the stream may stall), [31:12] TTB0 [31:12];
 *   w1 [15:0] TTB0 [47:32], [31:16] RES0;  w2, w3 RES0
 *
 * A writer stores the high word first and the low word (holding V) last with Atomics.store, so a
 * walker that loads the low word with Atomics.load never sees a valid entry with a stale address.
 */
export const LEVELS = 4;
export const ENTRY_BYTES = 8;
export const TABLE_ENTRIES = 512;
export const VA_BITS = 48;

export const PTE_VALID = 1 << 0;
export const PTE_TABLE = 1 << 1;
export const PTE_AP_UNPRIV = 1 << 6;
export const PTE_AP_RDONLY = 1 << 7;
export const PTE_AF = 1 << 10;
export const PTE_ADDR_LOW_MASK = ~0xfff;
export const PTE_HIGH_ADDR_MASK = 0xffff;
export const PTE_HIGH_RES0 = 0x3f << 16;
export const PTE_HIGH_XN = 1 << 22;

export const CD_BYTES = 16;
export const CD_VALID = 1 << 0;
export const CD_RECORD = 1 << 1;
export const CD_STALL = 1 << 2;
export const CD_HIGH_RES0 = ~0xffff;

/** Index into the level-`level` table for a VA given as (low 32 bits, high 16 bits). */
export function tableIndex(vaLow: number, vaHigh: number, level: number): number {
  switch (level) {
    case 0:
      return (vaHigh >>> 7) & 0x1ff;
    case 1:
      return ((vaHigh & 0x7f) << 2) | (vaLow >>> 30);
    case 2:
      return (vaLow >>> 21) & 0x1ff;
    default:
      return (vaLow >>> 12) & 0x1ff;
  }
}

/** Store an entry at `gpa` (8-byte aligned) so that V is published last. */
export function writeEntry(words: Int32Array, gpa: number, low: number, high: number): void {
  const w = gpa >>> 2;
  words[w + 1] = high;
  Atomics.store(words, w, low);
}

/** Invalidate an entry (clear V first, then the rest). */
export function clearEntry(words: Int32Array, gpa: number): void {
  const w = gpa >>> 2;
  Atomics.store(words, w, 0);
  words[w + 1] = 0;
}
