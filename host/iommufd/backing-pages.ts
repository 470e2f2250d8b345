/**
 * The pages behind one IOAS_MAP (the kernel's iopt_pages, pages.c), the areas that window onto
 * them (iopt_area), and the locks HW queues take on them. Each (area, domain) pair and each lock
 * is a user of the pages it covers; a page is pinned once while it has at least one user, and
 * pages no user covers stay unpinned.
 */
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import type { IovaRange } from './iova.ts';
import { PAGE_SIZE, type UserMemory } from './user-memory.ts';

/**
 * The pages behind one MAP, shared by the area and every copy of it. Offsets into it count from
 * `base`, the start of the page holding `userVa` (the kernel's start_byte).
 */
export class BackingPages {
  /** Page-aligned start of the pages. */
  readonly base: bigint;
  /** Frame of each page index while it is pinned (0 when it is not), as domains map them. */
  readonly frames: number[] = [];
  private readonly users: number[] = [];

  constructor(
    readonly userVa: bigint,
    readonly length: bigint,
    readonly writable: boolean,
  ) {
    this.base = userVa - (userVa % PAGE_SIZE);
  }

  get pinned(): boolean {
    return this.users.some((n) => n > 0);
  }

  /** One more user of page indices [first, last]; pins those that had none. EFAULT pins nothing. */
  pin(memory: UserMemory, injector: FaultInjector, first: number, last: number): void {
    const missing: number[] = [];
    for (let i = first; i <= last; i++) if (!this.users[i]) missing.push(i);
    if (missing.length > 0) {
      injector.check('pin');
      const frames: number[] = [];
      try {
        for (const i of missing) frames.push(...memory.pin(this.base + BigInt(i) * PAGE_SIZE, 1n));
      } catch (error) {
        memory.unpin(frames);
        throw error;
      }
      missing.forEach((i, k) => {
        this.frames[i] = frames[k];
      });
    }
    for (let i = first; i <= last; i++) this.users[i] = (this.users[i] ?? 0) + 1;
  }

  unpin(memory: UserMemory, first: number, last: number): void {
    for (let i = first; i <= last; i++) {
      this.users[i]--;
      if (this.users[i] === 0) {
        memory.unpin([this.frames[i]]);
        this.frames[i] = 0;
      }
    }
  }
}

export interface Area extends IovaRange {
  pages: BackingPages;
  /** Byte offset of `start` from `pages.base` (the kernel's start_byte). */
  offset: bigint;
  readable: boolean;
  writable: boolean;
  /** HW queues that locked this area's pages: IOAS_UNMAP over it is EBUSY while any remains. */
  locks: number;
}

/** A run of backing pages to map: what IOAS_COPY takes from each source area. */
export interface PageSlice {
  pages: BackingPages;
  /** Byte offset from `pages.base`. */
  offset: bigint;
  length: bigint;
}

/** Indices of the backing pages an area covers (the kernel's pages_node). */
export function pageSpan(area: Area): [number, number] {
  const end = area.offset + (area.last - area.start);
  return [Number(area.offset / PAGE_SIZE), Number(end / PAGE_SIZE)];
}

/** What a HW queue's lock took: the areas it locked and the backing page spans it pinned. */
export interface RangeLock {
  areas: Area[];
  spans: { pages: BackingPages; first: number; last: number }[];
}

/**
 * Pin the pages behind `slices` and lock `areas`, the gap-free run that holds them, for a HW queue
 * (iopt_pin_pages + lock): EFAULT unless the pages are physically contiguous, and then nothing
 * stays pinned. The pin shares the backing's per-page pin with the domains (a page is pinned once).
 * Undo with `unlockPages`.
 */
export function lockPages(
  memory: UserMemory,
  injector: FaultInjector,
  slices: readonly PageSlice[],
  areas: Area[],
): RangeLock {
  const spans = slices.map((slice) => ({
    pages: slice.pages,
    first: Number(slice.offset / PAGE_SIZE),
    last: Number((slice.offset + slice.length - 1n) / PAGE_SIZE),
  }));
  const pinned: typeof spans = [];
  try {
    for (const span of spans) {
      span.pages.pin(memory, injector, span.first, span.last);
      pinned.push(span);
    }
    let previous = -1;
    for (const span of spans) {
      for (let i = span.first; i <= span.last; i++) {
        const frame = span.pages.frames[i];
        if (previous >= 0 && frame !== previous + 1)
          throw new IommufdError('EFAULT', 'the range is not physically contiguous');
        previous = frame;
      }
    }
  } catch (error) {
    for (const span of pinned) span.pages.unpin(memory, span.first, span.last);
    throw error;
  }
  for (const area of areas) area.locks++;
  return { areas, spans };
}

export function unlockPages(memory: UserMemory, lock: RangeLock): void {
  for (const area of lock.areas) area.locks--;
  for (const span of lock.spans) span.pages.unpin(memory, span.first, span.last);
}
