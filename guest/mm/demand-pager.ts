/**
 * Demand paging for page requests: a workload declares which VA ranges of a PASID are backed and
 * with what content; a page request inside such a range gets a fresh guest page, filled with the
 * range's pattern and mapped in the PASID's stage-1 table. Anything else is an invalid request.
 */
import { type GuestMemory, PAGE_SIZE, pageBase } from '../../shared/guest-memory.ts';
import { fillPage } from '../../shared/pattern.ts';
import type { Misbehaviour } from '../misbehave.ts';
import type { AddressSpaces } from './address-spaces.ts';
import type { PageAllocator } from './page-allocator.ts';

interface BackedRange {
  pasid: number;
  start: number;
  end: number;
  seed: number;
}

export const PAGE_IN_OK = 0;
export const PAGE_IN_INVALID = 1;

export class DemandPager {
  pagesMapped = 0;
  private readonly ranges: BackedRange[] = [];

  constructor(
    private readonly memory: GuestMemory,
    private readonly pages: PageAllocator,
    private readonly spaces: AddressSpaces,
    /** A hostile guest's hooks (misbehave.ts); absent for a well-behaved one. */
    private readonly misbehave?: Misbehaviour,
  ) {}

  back(pasid: number, start: number, pageCount: number, seed: number): void {
    this.ranges.push({ pasid, start, end: start + pageCount * PAGE_SIZE, seed });
  }

  /** Make the page at `address` of `pasid` resident; PAGE_IN_OK or PAGE_IN_INVALID. */
  pageIn(pasid: number, address: number): number {
    const range = this.rangeOf(pasid, address);
    const table = this.spaces.existing(pasid);
    if (range === undefined || table === undefined) return PAGE_IN_INVALID;
    const va = pageBase(address);
    // A request can race with an earlier one for the same page: it is resident already.
    if (table.lookup(va) >= 0) return PAGE_IN_OK;
    // wild-page-tables: a wild entry instead of the mapping, answered Success all the same.
    if (this.misbehave?.plantWild(table, pasid, va)) return PAGE_IN_OK;
    const gpa = this.pages.alloc();
    if (gpa < 0) return PAGE_IN_INVALID;
    fillPage(this.memory.words, gpa >>> 2, range.seed, va);
    if (!table.map(va, gpa)) {
      this.pages.release(gpa);
      return PAGE_IN_INVALID;
    }
    this.pagesMapped++;
    return PAGE_IN_OK;
  }

  private rangeOf(pasid: number, address: number): BackedRange | undefined {
    for (const range of this.ranges) {
      if (range.pasid === pasid && address >= range.start && address < range.end) return range;
    }
    return undefined;
  }
}
