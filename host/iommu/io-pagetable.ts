/**
 * IO page tables in host-physical memory: the tables a paging domain (a stage 2) is made of. Four
 * levels of 512 eight-byte entries (4 KiB granule, 48-bit input), in the VMSAv8-64 stage-2 layout:
 *   low  [0] V, [1] T (table at levels 0-2, page at level 3), [6] S2AP read, [7] S2AP write,
 *        [10] AF, [31:12] output address [31:12]
 *   high [15:0] output address [47:32]
 * Table pages come from a TablePool, a SharedArrayBuffer only the host holds: no guest can see or
 * change its stage 2. Tables that become empty after an unmap are freed.
 */
import {
  ENTRY_BYTES,
  LEVELS,
  PTE_ADDR_LOW_MASK,
  PTE_AF,
  PTE_HIGH_ADDR_MASK,
  PTE_TABLE,
  PTE_VALID,
  TABLE_ENTRIES,
  tableIndex,
} from '../../shared/stage1-format.ts';

export const S2AP_READ = 1 << 6;
export const S2AP_WRITE = 1 << 7;

const TABLE_BYTES = TABLE_ENTRIES * ENTRY_BYTES;
const TWO_32 = 0x1_0000_0000;
const IOVA_LIMIT = 2 ** 48;
/** Entries of a table's walk cache (a power of two). */
const WALK_CACHE_SIZE = 256;

/** Table pages in a host-only SharedArrayBuffer; a table's address is its byte offset. */
export class TablePool {
  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  private readonly free: number[] = [];
  private next = TABLE_BYTES; // offset 0 is never a table: 0 means "none"

  constructor(readonly capacityTables: number) {
    this.buffer = new SharedArrayBuffer((capacityTables + 1) * TABLE_BYTES);
    this.words = new Int32Array(this.buffer);
  }

  /** A zeroed table's address; throws when the pool is exhausted. */
  alloc(): number {
    const table = this.free.pop() ?? this.bump();
    this.words.fill(0, table >>> 2, (table + TABLE_BYTES) >>> 2);
    return table;
  }

  release(table: number): void {
    this.free.push(table);
  }

  get tablesInUse(): number {
    return this.next / TABLE_BYTES - 1 - this.free.length;
  }

  private bump(): number {
    if (this.next + TABLE_BYTES > this.buffer.byteLength) {
      throw new RangeError(`IO page-table pool of ${this.capacityTables} tables is exhausted`);
    }
    const table = this.next;
    this.next += TABLE_BYTES;
    return table;
  }
}

/** Outcome of a stage-2 lookup; reused by the caller. */
export interface S2Result {
  pa: number;
  /** S2AP_READ | S2AP_WRITE of the leaf. */
  prot: number;
}

export class IoPageTable {
  readonly root: number;
  /** Pages mapped, for invariants (every area mirrored) and tests. */
  mappedPages = 0;
  /**
   * The walk cache of `resolveCached`: direct-mapped by IPA page, the leaf's output page and S2AP,
   * the way an SMMU keeps stage-2 translations for the table fetches of its nested walks. Only
   * successful lookups are kept. Every change to the table (map, unmap, destroy) empties it
   * before it returns, so it never answers what a walk of the table would not. A NaN page is an
   * empty entry (NaN equals nothing).
   */
  private readonly cachePage = new Float64Array(WALK_CACHE_SIZE).fill(Number.NaN);
  private readonly cachePa = new Float64Array(WALK_CACHE_SIZE);
  private readonly cacheProt = new Uint8Array(WALK_CACHE_SIZE);

  constructor(private readonly pool: TablePool) {
    this.root = pool.alloc();
  }

  /**
   * Map [iova, iova + length) onto physical pages `pageAt(i)` (the i-th 4 KiB page of the range),
   * with S2AP `prot`. Page-granular; a page already mapped is overwritten, as the registry never
   * maps over an existing area.
   */
  map(iova: number, length: number, pageAt: (i: number) => number, prot: number): void {
    checkRange(iova, length);
    this.cachePage.fill(Number.NaN);
    const pages = length / 4096;
    for (let i = 0; i < pages; i++) {
      const va = iova + i * 4096;
      const slot = this.leafSlot(va, true);
      const pa = pageAt(i);
      const words = this.pool.words;
      const w = slot >>> 2;
      if ((words[w] & PTE_VALID) === 0) this.mappedPages++;
      words[w + 1] = Math.floor(pa / TWO_32) & PTE_HIGH_ADDR_MASK;
      Atomics.store(words, w, ((pa >>> 0) & PTE_ADDR_LOW_MASK) | prot | PTE_AF | PTE_TABLE | PTE_VALID);
    }
  }

  /** Remove the pages of [iova, iova + length) that are mapped; returns how many were. */
  unmap(iova: number, length: number): number {
    checkRange(iova, length);
    this.cachePage.fill(Number.NaN);
    let removed = 0;
    for (let i = 0; i < length / 4096; i++) {
      const slot = this.leafSlot(iova + i * 4096, false);
      if (slot < 0) continue;
      const w = slot >>> 2;
      if ((this.pool.words[w] & PTE_VALID) === 0) continue;
      Atomics.store(this.pool.words, w, 0);
      this.pool.words[w + 1] = 0;
      removed++;
    }
    this.mappedPages -= removed;
    this.prune(this.root, 0);
    return removed;
  }

  /** The physical address `iova` maps to, or -1; `out.prot` gets the leaf's permissions. */
  lookup(iova: number, out: S2Result): number {
    return this.resolve(iova, out) ? out.pa : -1;
  }

  /**
   * `lookup` for the walker: true when `iova` is mapped, with the address in `out.pa` and the
   * leaf's permissions in `out.prot`. A boolean costs nothing to return where the call is not
   * inlined; a number past 31 bits would be boxed.
   */
  resolve(iova: number, out: S2Result): boolean {
    if (iova < 0 || iova >= IOVA_LIMIT) return false;
    // The walk the hardware does on every stage-2 access, unrolled: table addresses are offsets in
    // the pool (below 2^32), so each level is a few integer operations on the pool's words. Only
    // the host writes these tables, on this thread, so plain loads are enough.
    const words = this.pool.words;
    const low = iova >>> 0;
    const high = Math.floor(iova / TWO_32);
    let w = (this.root >>> 2) + (((high >>> 7) & 0x1ff) << 1);
    let e = words[w];
    if ((e & PTE_VALID) === 0) return false;
    w = ((e & PTE_ADDR_LOW_MASK) >>> 2) + ((((high & 0x7f) << 2) | (low >>> 30)) << 1);
    e = words[w];
    if ((e & PTE_VALID) === 0) return false;
    w = ((e & PTE_ADDR_LOW_MASK) >>> 2) + (((low >>> 21) & 0x1ff) << 1);
    e = words[w];
    if ((e & PTE_VALID) === 0) return false;
    w = ((e & PTE_ADDR_LOW_MASK) >>> 2) + (((low >>> 12) & 0x1ff) << 1);
    e = words[w];
    if ((e & PTE_VALID) === 0) return false;
    out.prot = e & (S2AP_READ | S2AP_WRITE);
    out.pa = addressOf(e, words[w + 1]) + (low & 0xfff);
    return true;
  }

  /**
   * `resolve` through the walk cache: for the few pages a nested walk fetches again and again (a
   * guest's CD table and its page-table pages). The data pages a walk outputs go through `resolve`,
   * so they do not evict these.
   */
  resolveCached(iova: number, out: S2Result): boolean {
    if (iova < 0 || iova >= IOVA_LIMIT) return false;
    const low = iova >>> 0;
    const page = Math.floor(iova / TWO_32) * 0x10_0000 + (low >>> 12);
    const slot = (low >>> 12) & (WALK_CACHE_SIZE - 1);
    if (this.cachePage[slot] === page) {
      out.prot = this.cacheProt[slot];
      out.pa = this.cachePa[slot] + (low & 0xfff);
      return true;
    }
    if (!this.resolve(iova, out)) return false;
    this.cachePa[slot] = out.pa - (low & 0xfff);
    this.cacheProt[slot] = out.prot;
    this.cachePage[slot] = page;
    return true;
  }

  /** Free every table (the domain is gone). */
  destroy(): void {
    this.cachePage.fill(Number.NaN);
    this.freeTree(this.root, 0);
  }

  /** Byte address of the leaf entry for `va`, creating tables on the way when `create`, else -1 if absent. */
  private leafSlot(va: number, create: boolean): number {
    const low = va >>> 0;
    const high = Math.floor(va / TWO_32);
    const words = this.pool.words;
    let table = this.root;
    for (let level = 0; level < LEVELS - 1; level++) {
      const slot = table + tableIndex(low, high, level) * ENTRY_BYTES;
      const entry = words[slot >>> 2];
      if ((entry & PTE_VALID) !== 0) {
        table = addressOf(entry, words[(slot >>> 2) + 1]);
        continue;
      }
      if (!create) return -1;
      const next = this.pool.alloc();
      words[(slot >>> 2) + 1] = 0;
      Atomics.store(words, slot >>> 2, next | PTE_TABLE | PTE_VALID);
      table = next;
    }
    return table + tableIndex(low, high, LEVELS - 1) * ENTRY_BYTES;
  }

  /** Free the empty tables below `table`; returns true when `table` itself is empty. */
  private prune(table: number, level: number): boolean {
    const words = this.pool.words;
    let live = 0;
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const w = (table >>> 2) + i * 2;
      if ((words[w] & PTE_VALID) === 0) continue;
      if (level < LEVELS - 1) {
        const child = addressOf(words[w], words[w + 1]);
        if (this.prune(child, level + 1)) {
          Atomics.store(words, w, 0);
          words[w + 1] = 0;
          this.pool.release(child);
          continue;
        }
      }
      live++;
    }
    return live === 0;
  }

  private freeTree(table: number, level: number): void {
    const words = this.pool.words;
    if (level < LEVELS - 1) {
      for (let i = 0; i < TABLE_ENTRIES; i++) {
        const w = (table >>> 2) + i * 2;
        if ((words[w] & PTE_VALID) !== 0) this.freeTree(addressOf(words[w], words[w + 1]), level + 1);
      }
    }
    this.pool.release(table);
  }
}

function addressOf(low: number, high: number): number {
  return ((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * TWO_32;
}

function checkRange(iova: number, length: number): void {
  if (iova % 4096 !== 0 || length % 4096 !== 0 || iova < 0 || iova + length > IOVA_LIMIT) {
    throw new RangeError(
      `IO page-table range 0x${iova.toString(16)}+0x${length.toString(16)} is not page-aligned within 48 bits`,
    );
  }
}
