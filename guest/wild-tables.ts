/**
 * wild-page-tables, a hostile guest's behaviour (misbehave.ts): every WILD_EVERY-th fresh page-in
 * writes a wild entry instead of the mapping (and the guest still answers Success): an address
 * outside guest RAM, a table entry pointing at its own table, or reserved bits. Above the leaf it
 * writes only the cycle: the retry faults again and the page is then mapped properly (outside RAM
 * or reserved bits there would end every DMA below in an unrecoverable fault, and no page request
 * would ever come to repair them). Each page is made wild at most once.
 */
import { type GuestMemory, PAGE_SIZE } from '../shared/guest-memory.ts';
import type { Prng } from '../shared/prng.ts';
import { addressHigh, addressLow } from '../shared/records/address.ts';
import {
  LEVELS,
  PTE_ADDR_LOW_MASK,
  PTE_AF,
  PTE_AP_UNPRIV,
  PTE_TABLE,
  PTE_VALID,
  writeEntry,
} from '../shared/stage1-format.ts';
import type { Stage1Table } from './mm/stage1-table.ts';

/** Fresh page-ins between two wild entries. */
const WILD_EVERY = 4;

const OUTSIDE_RAM = 0;
const CYCLE = 1;
const RESERVED_BITS = 2;
/** Pages past the end of guest RAM that an outside entry may point at. */
const OUTSIDE_PAGES = 1 << 20;

/** wild-page-tables: entries the IOMMU's walker must refuse, written where a mapping was due. */
export class WildTables {
  private pageIns = 0;
  private plants = 0;
  /** Pages made wild once already, as PASID * 2^36 + page number (PASIDs < 2^8, VAs < 2^48). */
  private readonly planted = new Set<number>();

  constructor(
    private readonly memory: GuestMemory,
    private readonly prng: Prng,
  ) {}

  plant(table: Stage1Table, pasid: number, va: number): boolean {
    const key = pasid * 2 ** 36 + Math.floor(va / PAGE_SIZE);
    if (this.planted.has(key) || this.pageIns++ % WILD_EVERY !== 0) return false;
    this.planted.add(key);
    const open = table.openSlot(va);
    const kind = open.level < LEVELS - 1 ? CYCLE : this.plants % 3;
    this.plants++;
    const words = this.memory.words;
    const own = addressLow(open.table) & PTE_ADDR_LOW_MASK;
    switch (kind) {
      case OUTSIDE_RAM: {
        const gpa = this.memory.size + this.prng.below(OUTSIDE_PAGES) * PAGE_SIZE;
        const low = (addressLow(gpa) & PTE_ADDR_LOW_MASK) | PTE_VALID | PTE_TABLE | PTE_AF | PTE_AP_UNPRIV;
        writeEntry(words, open.slot, low, addressHigh(gpa));
        break;
      }
      case CYCLE:
        // No AF: read as a page (at the leaf, or one level early below a cycle) it is an access fault.
        writeEntry(words, open.slot, own | PTE_VALID | PTE_TABLE, addressHigh(open.table));
        break;
      case RESERVED_BITS:
        // One of the RES0 bits [21:16] of the high word.
        writeEntry(
          words,
          open.slot,
          own | PTE_VALID | PTE_TABLE | PTE_AF | PTE_AP_UNPRIV,
          addressHigh(open.table) | (1 << (16 + this.prng.below(6))),
        );
    }
    return true;
  }
}
