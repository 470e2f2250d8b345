/**
 * One stage-1 address space (one PASID): a 4-level table in guest RAM in the format of
 * shared/stage1-format.ts, built and changed only by this guest.
 */
import type { GuestMemory } from '../../shared/guest-memory.ts';
import { addressHigh, addressLow } from '../../shared/records/address.ts';
import {
  clearEntry,
  ENTRY_BYTES,
  LEVELS,
  PTE_ADDR_LOW_MASK,
  PTE_AF,
  PTE_AP_RDONLY,
  PTE_AP_UNPRIV,
  PTE_HIGH_ADDR_MASK,
  PTE_TABLE,
  PTE_VALID,
  tableIndex,
  writeEntry,
} from '../../shared/stage1-format.ts';
import type { PageAllocator } from './page-allocator.ts';

export const MAP_READ_ONLY = 1;

export class Stage1Table {
  readonly rootGpa: number;

  constructor(
    private readonly memory: GuestMemory,
    private readonly pages: PageAllocator,
  ) {
    const root = pages.allocZeroed();
    if (root < 0) throw new Error('guest RAM exhausted while allocating a stage-1 root table');
    this.rootGpa = root;
  }

  /**
   * The GPA of the leaf entry for `va`, allocating intermediate tables on the way, or -1 if guest
   * RAM ran out.
   */
  private leafSlot(vaLow: number, vaHigh: number): number {
    const words = this.memory.words;
    let table = this.rootGpa;
    for (let level = 0; level < LEVELS - 1; level++) {
      const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
      const low = words[slot >>> 2];
      if ((low & PTE_VALID) !== 0) {
        table = (low & PTE_ADDR_LOW_MASK) >>> 0;
        table += (words[(slot >>> 2) + 1] & PTE_HIGH_ADDR_MASK) * 0x1_0000_0000;
        continue;
      }
      const next = this.pages.allocZeroed();
      if (next < 0) return -1;
      writeEntry(words, slot, (next & PTE_ADDR_LOW_MASK) | PTE_TABLE | PTE_VALID, addressHigh(next));
      table = next;
    }
    return table + tableIndex(vaLow, vaHigh, LEVELS - 1) * ENTRY_BYTES;
  }

  /** Map the page at `va` to `gpa`. Returns false if guest RAM ran out for tables. */
  map(va: number, gpa: number, flags = 0): boolean {
    const slot = this.leafSlot(addressLow(va), addressHigh(va));
    if (slot < 0) return false;
    const low =
      (addressLow(gpa) & PTE_ADDR_LOW_MASK) |
      PTE_VALID |
      PTE_TABLE |
      PTE_AF |
      PTE_AP_UNPRIV |
      ((flags & MAP_READ_ONLY) !== 0 ? PTE_AP_RDONLY : 0);
    writeEntry(this.memory.words, slot, low, addressHigh(gpa));
    return true;
  }

  /** The GPA `va`'s page maps to, or -1. */
  lookup(va: number): number {
    const vaLow = addressLow(va);
    const vaHigh = addressHigh(va);
    const words = this.memory.words;
    let table = this.rootGpa;
    for (let level = 0; level < LEVELS; level++) {
      const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
      const low = words[slot >>> 2];
      if ((low & PTE_VALID) === 0) return -1;
      table =
        ((low & PTE_ADDR_LOW_MASK) >>> 0) + (words[(slot >>> 2) + 1] & PTE_HIGH_ADDR_MASK) * 0x1_0000_0000;
    }
    return table;
  }

  /**
   * Clear the leaf entry of `va`: returns the GPA it mapped, or -1 if none. The caller must
   * invalidate the IOTLB (TLBI + SYNC) before it reuses that page.
   */
  unmap(va: number): number {
    const gpa = this.lookup(va);
    if (gpa < 0) return -1;
    const vaLow = addressLow(va);
    const vaHigh = addressHigh(va);
    const words = this.memory.words;
    let table = this.rootGpa;
    for (let level = 0; level < LEVELS - 1; level++) {
      const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
      const low = words[slot >>> 2];
      table =
        ((low & PTE_ADDR_LOW_MASK) >>> 0) + (words[(slot >>> 2) + 1] & PTE_HIGH_ADDR_MASK) * 0x1_0000_0000;
    }
    clearEntry(words, table + tableIndex(vaLow, vaHigh, LEVELS - 1) * ENTRY_BYTES);
    return gpa;
  }
}
