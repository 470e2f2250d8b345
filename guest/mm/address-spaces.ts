/**
 * The guest's I/O address spaces: one stage-1 table per PASID (shared by every device that uses
 * that PASID, as with SVA), and one CD table per device whose entry for a PASID points at it.
 */
import type { DeviceContext } from '../../shared/control.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import { addressHigh } from '../../shared/records/address.ts';
import {
  CD_BYTES,
  CD_RECORD,
  CD_STALL,
  CD_VALID,
  PTE_ADDR_LOW_MASK,
  writeEntry,
} from '../../shared/stage1-format.ts';
import type { PageAllocator } from './page-allocator.ts';
import { Stage1Table } from './stage1-table.ts';

/** CD tables are one page: 256 PASIDs per device. */
export const CD_LOG2 = 8;

export class AddressSpaces {
  private readonly tables = new Map<number, Stage1Table>();

  constructor(
    private readonly memory: GuestMemory,
    private readonly pages: PageAllocator,
  ) {}

  /** The stage-1 table of `pasid`, created empty on first use. */
  table(pasid: number): Stage1Table {
    let table = this.tables.get(pasid);
    if (!table) {
      table = new Stage1Table(this.memory, this.pages);
      this.tables.set(pasid, table);
    }
    return table;
  }

  /** Only for PASIDs some device uses; a page request for any other PASID is invalid. */
  existing(pasid: number): Stage1Table | undefined {
    return this.tables.get(pasid);
  }

  /** Build a device's CD table with a valid CD for each of its PASIDs. */
  installDevice(streamId: number, pasids: readonly number[], stall = false): DeviceContext {
    const cdTableGpa = this.pages.allocZeroed();
    if (cdTableGpa < 0) throw new Error('guest RAM exhausted while allocating a CD table');
    for (const pasid of pasids) {
      if (pasid < 0 || pasid >= 1 << CD_LOG2) throw new RangeError(`PASID ${pasid} exceeds the CD table`);
      const ttb = this.table(pasid).rootGpa;
      writeEntry(
        this.memory.words,
        cdTableGpa + pasid * CD_BYTES,
        (ttb & PTE_ADDR_LOW_MASK) | (stall ? CD_STALL : 0) | CD_RECORD | CD_VALID,
        addressHigh(ttb),
      );
    }
    return { streamId, cdTableGpa, cdLog2: CD_LOG2 };
  }
}
