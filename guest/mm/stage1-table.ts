/**
 * One stage-1 address space (one PASID): a 4-level table in guest RAM in the format of
 * shared/stage1-format.ts, built and changed only by this guest.
 *
 * An entry the IOMMU would not follow (reserved bits set, an address outside guest RAM, a table
 * pointing at itself, a page without AF) counts as absent here too: a lookup misses it and a map
 * replaces it. Only a hostile guest writes such entries (misbehave.ts, wild-page-tables).
 */
import { type GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
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
  PTE_HIGH_RES0,
  PTE_TABLE,
  PTE_VALID,
  tableIndex,
  writeEntry,
} from '../../shared/stage1-format.ts';
import type { PageAllocator } from './page-allocator.ts';

export const MAP_READ_ONLY = 1;

const TABLE_ENTRY = PTE_VALID | PTE_TABLE;
const PAGE_ENTRY = PTE_VALID | PTE_TABLE | PTE_AF;
const TWO_32 = 0x1_0000_0000;

/** Where a walk of the tables stops (see `Stage1Table.openSlot`). */
export interface OpenSlot {
  /** GPA of the entry. */
  slot: number;
  /** GPA of the table holding it. */
  table: number;
  /** 0 (the root) .. LEVELS - 1 (the leaf). */
  level: number;
}

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
      let next = this.nextTable(table, slot);
      if (next >= 0) {
        table = next;
        continue;
      }
      next = this.pages.allocZeroed();
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
    const slot = this.existingLeafSlot(va);
    return slot < 0 ? -1 : this.pageOf(slot);
  }

  /**
   * Clear the leaf entry of `va`: returns the GPA it mapped, or -1 if none. The caller must
   * invalidate the IOTLB (TLBI + SYNC) before it reuses that page.
   */
  unmap(va: number): number {
    const slot = this.existingLeafSlot(va);
    const gpa = slot < 0 ? -1 : this.pageOf(slot);
    if (gpa >= 0) clearEntry(this.memory.words, slot);
    return gpa;
  }

  /**
   * The first entry on `va`'s path that the IOMMU would not follow as a table, or the leaf entry
   * if every table on the way is there.
   */
  openSlot(va: number): OpenSlot {
    const vaLow = addressLow(va);
    const vaHigh = addressHigh(va);
    let table = this.rootGpa;
    for (let level = 0; level < LEVELS - 1; level++) {
      const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
      const next = this.nextTable(table, slot);
      if (next < 0) return { slot, table, level };
      table = next;
    }
    return { slot: table + tableIndex(vaLow, vaHigh, LEVELS - 1) * ENTRY_BYTES, table, level: LEVELS - 1 };
  }

  /** The GPA of `va`'s leaf entry when every table on the way is there, or -1. */
  private existingLeafSlot(va: number): number {
    const vaLow = addressLow(va);
    const vaHigh = addressHigh(va);
    let table = this.rootGpa;
    for (let level = 0; level < LEVELS - 1; level++) {
      table = this.nextTable(table, table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES);
      if (table < 0) return -1;
    }
    return table + tableIndex(vaLow, vaHigh, LEVELS - 1) * ENTRY_BYTES;
  }

  /** The table that the entry at `slot` of `table` points to, or -1 if the IOMMU would not follow it. */
  private nextTable(table: number, slot: number): number {
    const words = this.memory.words;
    const low = words[slot >>> 2];
    const high = words[(slot >>> 2) + 1];
    if ((low & TABLE_ENTRY) !== TABLE_ENTRY || (high & PTE_HIGH_RES0) !== 0) return -1;
    const next = ((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * TWO_32;
    return next === table || next + PAGE_SIZE > this.memory.size ? -1 : next;
  }

  /** The page a leaf entry maps, or -1 if it maps none the IOMMU would use. */
  private pageOf(slot: number): number {
    const words = this.memory.words;
    const low = words[slot >>> 2];
    const high = words[(slot >>> 2) + 1];
    if ((low & PAGE_ENTRY) !== PAGE_ENTRY || (high & PTE_HIGH_RES0) !== 0) return -1;
    const gpa = ((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * TWO_32;
    return gpa + PAGE_SIZE > this.memory.size ? -1 : gpa;
  }
}
