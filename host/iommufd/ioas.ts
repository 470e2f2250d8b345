/**
 * IOAS: an I/O address space (iommufd ioas.c / io_pagetable.c; docs/registry.md). Areas
 * map IOVA ranges onto pinned user pages; reserved ranges (domain apertures, device regions, test
 * reservations) and the optional allowed list steer automatic IOVA choice. Every HWPT_PAGING of
 * the IOAS is a domain that mirrors every area; each page of a backing is pinned once, while some
 * area mapped into some domain covers it.
 */
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import {
  alignUp,
  type IovaRange,
  lowestSetBit,
  maxOf,
  minOf,
  overlaps,
  roundupPow2,
  U64_MAX,
} from './iova.ts';
import { IommufdObject } from './object.ts';
import { PAGE_SIZE, type UserMemory } from './user-memory.ts';

export const IOMMU_IOAS_MAP_FIXED_IOVA = 1;
export const IOMMU_IOAS_MAP_WRITEABLE = 2;
export const IOMMU_IOAS_MAP_READABLE = 4;
const MAP_FLAGS = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

/** Automatic IOVAs are aligned at most to the transparent-huge-page size (THP built in). */
const AUTO_ALIGN_CAP = 2n * 1024n * 1024n;

/** The iommu API takes size_t lengths; the kernel refuses longer mappings (iopt_alloc_pages). */
const MAX_MAP_LENGTH = U64_MAX - PAGE_SIZE;

/**
 * The pages behind one MAP (the kernel's iopt_pages), shared by the area and every copy of it.
 * Offsets into it count from `base`, the start of the page holding `userVa` (the kernel's
 * start_byte). Each (area, domain) pair is a user of the pages the area covers; a page is pinned
 * once while it has at least one user, and pages no area of a domain covers stay unpinned.
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

/** What `lockRange` took: the areas it locked and the backing page spans it pinned. */
export interface RangeLock {
  areas: Area[];
  spans: { pages: BackingPages; first: number; last: number }[];
}

/** A run of backing pages to map: what IOAS_COPY takes from each source area. */
export interface PageSlice {
  pages: BackingPages;
  /** Byte offset from `pages.base`. */
  offset: bigint;
  length: bigint;
}

/** Indices of the backing pages an area covers (the kernel's pages_node). */
function pageSpan(area: Area): [number, number] {
  const end = area.offset + (area.last - area.start);
  return [Number(area.offset / PAGE_SIZE), Number(end / PAGE_SIZE)];
}

/** What an IOAS needs of a HWPT_PAGING's domain. */
export interface IoasDomain {
  /** Smallest page size the domain maps. */
  readonly pageSize: bigint;
  readonly aperture: IovaRange;
  /** Map the area into the domain; may fail (then nothing of it is mapped). */
  mapArea(area: Area): void;
  unmapArea(area: Area): void;
}

interface Reserved extends IovaRange {
  owner: unknown;
}

export class Ioas extends IommufdObject {
  readonly type = 'IOAS';
  readonly areas: Area[] = [];
  readonly reserved: Reserved[] = [];
  allowed: IovaRange[] = [];
  readonly domains: IoasDomain[] = [];
  /** Alignment demanded by in-kernel accesses and test users beside the domains. */
  readonly accessAlignments: bigint[] = [];
  disableLargePages = false;

  constructor(
    private readonly memory: UserMemory,
    private readonly injector: FaultInjector,
  ) {
    super();
  }

  get iovaAlignment(): bigint {
    let align = this.disableLargePages ? PAGE_SIZE : 1n;
    for (const d of this.domains) if (d.pageSize > align) align = d.pageSize;
    for (const a of this.accessAlignments) if (a > align) align = a;
    return align;
  }

  override destroy(): void {
    for (const area of [...this.areas]) this.removeArea(area);
  }

  /** IOAS_MAP after its flag and argument checks: the rest, in the kernel's order (docs/registry.md). */
  map(flags: number, userVa: bigint, length: bigint, iova: bigint): bigint {
    if (userVa + length > U64_MAX) throw new IommufdError('EOVERFLOW', 'user_va + length overflows');
    if (length === 0n || length > MAX_MAP_LENGTH)
      throw new IommufdError('EINVAL', `length must be 1..${MAX_MAP_LENGTH}`);
    const pages = new BackingPages(userVa, length, (flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0);
    return this.insert(flags, pages, userVa % PAGE_SIZE, length, iova);
  }

  /** Map `length` bytes of existing backing `pages` from byte `offset` (from `pages.base`). */
  insert(flags: number, pages: BackingPages, offset: bigint, length: bigint, iova: bigint): bigint {
    return this.mapSlices(flags, [{ pages, offset, length }], length, iova);
  }

  /**
   * The destination side of MAP and COPY (iopt_map_pages): choose or check the IOVA range, then
   * map each slice as its own area at consecutive IOVAs, into every domain. All or nothing.
   */
  mapSlices(flags: number, slices: readonly PageSlice[], length: bigint, iova: bigint): bigint {
    const align = this.iovaAlignment;
    if (length === 0n || length % align !== 0n)
      throw new IommufdError('EINVAL', `length is 0 or not a multiple of the IOVA alignment ${align}`);
    let start: bigint;
    if ((flags & IOMMU_IOAS_MAP_FIXED_IOVA) !== 0) {
      if (iova % align !== 0n) throw new IommufdError('EINVAL', `iova is not aligned to ${align}`);
      if (iova + length - 1n > U64_MAX) throw new IommufdError('EOVERFLOW', 'iova + length - 1 overflows');
      const last = iova + length - 1n;
      if (this.reserved.some((r) => overlaps(r, iova, last))) {
        throw new IommufdError('EINVAL', 'range touches a reserved IOVA range');
      }
      if (this.areas.some((a) => overlaps(a, iova, last)))
        throw new IommufdError('EEXIST', 'range touches an existing mapping');
      start = iova;
    } else {
      start = this.allocateIova(slices[0].pages.base + slices[0].offset, length, align);
    }
    const writable = (flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0;
    const areas: Area[] = [];
    let at = start;
    for (const slice of slices) {
      // iopt_insert_area: write access needs writable pages, then the in-page offset must align.
      if (writable && !slice.pages.writable)
        throw new IommufdError('EPERM', 'WRITEABLE mapping of pages that were mapped read-only');
      if ((slice.offset % PAGE_SIZE) % align !== 0n) {
        throw new IommufdError(
          'EINVAL',
          `user_va's offset in its page is not a multiple of the IOVA alignment ${align}`,
        );
      }
      areas.push({
        start: at,
        last: at + slice.length - 1n,
        pages: slice.pages,
        offset: slice.offset,
        readable: (flags & IOMMU_IOAS_MAP_READABLE) !== 0,
        writable,
        locks: 0,
      });
      at += slice.length;
    }
    this.injector.check('interval-alloc');
    const filled: Area[] = [];
    try {
      for (const area of areas) {
        this.fill(area);
        filled.push(area);
      }
    } catch (error) {
      for (const area of filled) this.unfill(area);
      throw error;
    }
    this.areas.push(...areas);
    this.areas.sort((a, b) => (a.start < b.start ? -1 : 1));
    return start;
  }

  /**
   * The source side of COPY (iopt_get_pages): the slices of backing pages behind [iova, iova +
   * length), which gap-free existing areas must cover (else ENOENT).
   */
  slicesOf(iova: bigint, length: bigint): PageSlice[] {
    if (length === 0n) throw new IommufdError('EINVAL', 'length is 0');
    if (iova + length - 1n > U64_MAX) throw new IommufdError('EOVERFLOW', 'iova + length - 1 overflows');
    const last = iova + length - 1n;
    return this.coveringAreas(iova, last).map((area) => {
      const from = maxOf(area.start, iova);
      const to = minOf(area.last, last);
      return { pages: area.pages, offset: area.offset + (from - area.start), length: to - from + 1n };
    });
  }

  /** IOAS_UNMAP (3.3): whole areas only; returns the bytes unmapped. Not atomic on error. */
  unmap(iova: bigint, length: bigint): bigint {
    if (iova === 0n && length === U64_MAX) {
      let total = 0n;
      for (const area of [...this.areas]) {
        if (area.locks > 0) throw new IommufdError('EBUSY', 'a HW queue has locked a mapping in the range');
        total += area.last - area.start + 1n;
        this.removeArea(area);
      }
      return total;
    }
    if (iova >= U64_MAX || length >= U64_MAX)
      throw new IommufdError('EOVERFLOW', 'iova or length is U64_MAX');
    if (length === 0n) throw new IommufdError('EINVAL', 'length is 0');
    if (iova + length - 1n > U64_MAX) throw new IommufdError('EOVERFLOW', 'iova + length - 1 overflows');
    const last = iova + length - 1n;
    const hit = this.areas.filter((a) => overlaps(a, iova, last));
    if (hit.length === 0) throw new IommufdError('ENOENT', 'no mapping in the range');
    let total = 0n;
    for (const area of hit) {
      if (area.start < iova || area.last > last) {
        throw new IommufdError('ENOENT', 'a mapping sticks out of the range (unmap never splits an area)');
      }
      if (area.locks > 0) throw new IommufdError('EBUSY', 'a HW queue has locked a mapping in the range');
      total += area.last - area.start + 1n;
      this.removeArea(area);
    }
    return total;
  }

  /**
   * The contiguous run of areas that covers [start, last] without gaps, or ENOENT. IOAS_COPY may
   * take any byte sub-range of such a run.
   */
  coveringAreas(start: bigint, last: bigint): Area[] {
    const run: Area[] = [];
    let next = start;
    for (const area of this.areas) {
      if (area.last < next) continue;
      if (area.start > next) break;
      run.push(area);
      if (area.last >= last) return run;
      next = area.last + 1n;
    }
    throw new IommufdError('ENOENT', 'the source range is not completely mapped');
  }

  /**
   * Pin and lock [iova, iova + length) for a HW queue (iopt_pin_pages + lock): ENOENT unless mapped
   * without gaps, EFAULT unless the pages are physically contiguous. The pin shares the backing's
   * per-page pin with the domains (a page is pinned once). Undo with `unlockRange`.
   */
  lockRange(iova: bigint, length: bigint): RangeLock {
    const spans = this.slicesOf(iova, length).map((slice) => ({
      pages: slice.pages,
      first: Number(slice.offset / PAGE_SIZE),
      last: Number((slice.offset + slice.length - 1n) / PAGE_SIZE),
    }));
    const areas = this.coveringAreas(iova, iova + length - 1n);
    const pinned: typeof spans = [];
    try {
      for (const span of spans) {
        span.pages.pin(this.memory, this.injector, span.first, span.last);
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
      for (const span of pinned) span.pages.unpin(this.memory, span.first, span.last);
      throw error;
    }
    for (const area of areas) area.locks++;
    return { areas, spans };
  }

  unlockRange(lock: RangeLock): void {
    for (const area of lock.areas) area.locks--;
    for (const span of lock.spans) span.pages.unpin(this.memory, span.first, span.last);
  }

  /** IOAS_IOVA_RANGES: the holes of the reserved set over [0, U64_MAX]. */
  iovaRanges(): IovaRange[] {
    const holes: IovaRange[] = [];
    let next = 0n;
    for (const r of [...this.reserved].sort((a, b) => (a.start < b.start ? -1 : 1))) {
      if (r.start > next) holes.push({ start: next, last: r.start - 1n });
      if (r.last >= next) next = r.last + 1n;
      if (r.last === U64_MAX) return holes;
    }
    holes.push({ start: next, last: U64_MAX });
    return holes;
  }

  /** IOAS_ALLOW_IOVAS: replace the allowed list atomically. */
  allowIovas(ranges: readonly IovaRange[]): void {
    const sorted = [...ranges].sort((a, b) => (a.start < b.start ? -1 : 1));
    for (let i = 0; i < sorted.length; i++) {
      if (sorted[i].start >= sorted[i].last)
        throw new IommufdError('EINVAL', `allowed range ${i} has start >= last`);
      if (i > 0 && sorted[i].start <= sorted[i - 1].last)
        throw new IommufdError('EINVAL', 'allowed ranges overlap');
    }
    for (const range of sorted) {
      if (this.reserved.some((r) => overlaps(r, range.start, range.last))) {
        throw new IommufdError('EADDRINUSE', 'an allowed range intersects a reserved range');
      }
    }
    this.allowed = sorted.map((r) => ({ start: r.start, last: r.last }));
  }

  /** Reserve [start, last] for `owner`; EADDRINUSE if it meets an area or an allowed range. */
  addReserved(start: bigint, last: bigint, owner: unknown): void {
    if (
      this.areas.some((a) => overlaps(a, start, last)) ||
      this.allowed.some((a) => overlaps(a, start, last))
    ) {
      throw new IommufdError(
        'EADDRINUSE',
        `reserving 0x${start.toString(16)}-0x${last.toString(16)} meets a mapping or allowed range`,
      );
    }
    this.injector.check('interval-alloc');
    this.reserved.push({ start, last, owner });
  }

  removeReserved(owner: unknown): void {
    for (let i = this.reserved.length - 1; i >= 0; i--)
      if (this.reserved[i].owner === owner) this.reserved.splice(i, 1);
  }

  /**
   * Add a domain: reserve its aperture's complement, raise the alignment, and map every area into
   * it. All or nothing.
   */
  addDomain(domain: IoasDomain): void {
    if (domain.pageSize > PAGE_SIZE) throw new IommufdError('EINVAL', 'domain page size exceeds PAGE_SIZE');
    this.checkAlignment(maxOf(domain.pageSize, this.iovaAlignment));
    try {
      if (domain.aperture.start > 0n) this.addReserved(0n, domain.aperture.start - 1n, domain);
      if (domain.aperture.last < U64_MAX) this.addReserved(domain.aperture.last + 1n, U64_MAX, domain);
      const done: Area[] = [];
      try {
        for (const area of this.areas) {
          this.mapInto(area, domain);
          done.push(area);
        }
      } catch (error) {
        for (const area of done) this.unmapFrom(area, domain);
        throw error;
      }
    } catch (error) {
      this.removeReserved(domain);
      throw error;
    }
    this.domains.push(domain);
  }

  removeDomain(domain: IoasDomain): void {
    const i = this.domains.indexOf(domain);
    if (i < 0) return;
    for (const area of this.areas) this.unmapFrom(area, domain);
    this.domains.splice(i, 1);
    this.removeReserved(domain);
  }

  /**
   * IOMMU_OPTION HUGE_PAGES SET: 0 maps with PAGE_SIZE pages only, 1 lets domains use large pages.
   * Disabling twice is a no-op (iopt_disable_large_pages returns early).
   */
  setHugePages(val64: bigint): void {
    if (val64 === 1n) {
      this.disableLargePages = false;
      return;
    }
    if (val64 !== 0n) throw new IommufdError('EINVAL', 'HUGE_PAGES is 0 or 1');
    if (this.disableLargePages) return;
    if (this.domains.length > 0 && this.areas.length > 0) {
      throw new IommufdError('EINVAL', 'cannot disable huge pages while domains map areas');
    }
    this.checkAlignment(maxOf(PAGE_SIZE, this.iovaAlignment));
    this.disableLargePages = true;
  }

  /** Refuse an alignment that an existing area would violate (EADDRINUSE). */
  checkAlignment(align: bigint): void {
    for (const area of this.areas) {
      if (
        area.start % align !== 0n ||
        (area.last + 1n - area.start) % align !== 0n ||
        (area.offset % PAGE_SIZE) % align !== 0n
      ) {
        throw new IommufdError(
          'EADDRINUSE',
          `mapping at 0x${area.start.toString(16)} is not aligned to ${align}`,
        );
      }
    }
  }

  /** Map a new area into every domain; each (area, domain) pair is one user of the pages it covers. */
  private fill(area: Area): void {
    const done: IoasDomain[] = [];
    try {
      for (const domain of this.domains) {
        this.mapInto(area, domain);
        done.push(domain);
      }
    } catch (error) {
      for (const domain of done) this.unmapFrom(area, domain);
      throw error;
    }
  }

  /** Pin the area's pages for one more domain and map them there; nothing stays on failure. */
  private mapInto(area: Area, domain: IoasDomain): void {
    area.pages.pin(this.memory, this.injector, ...pageSpan(area));
    try {
      domain.mapArea(area);
    } catch (error) {
      area.pages.unpin(this.memory, ...pageSpan(area));
      throw error;
    }
  }

  private unmapFrom(area: Area, domain: IoasDomain): void {
    domain.unmapArea(area);
    area.pages.unpin(this.memory, ...pageSpan(area));
  }

  /** Undo fill(): unmap the area from every domain and drop its pin users. */
  private unfill(area: Area): void {
    for (const domain of this.domains) {
      domain.unmapArea(area);
      area.pages.unpin(this.memory, ...pageSpan(area));
    }
  }

  private removeArea(area: Area): void {
    this.unfill(area);
    this.areas.splice(this.areas.indexOf(area), 1);
  }

  /** Hand reserved ranges from one owner to another (an attachment replaced in place). */
  transferReserved(from: unknown, to: unknown): void {
    for (const r of this.reserved) if (r.owner === from) r.owner = to;
  }

  /** The allowed list as the kernel's span walk sees it: ranges that touch or overlap are one span. */
  private allowedSpans(): IovaRange[] {
    const spans: IovaRange[] = [];
    for (const r of [...this.allowed].sort((a, b) => (a.start < b.start ? -1 : 1))) {
      const prev = spans[spans.length - 1];
      if (prev && r.start <= prev.last + 1n) prev.last = maxOf(prev.last, r.last);
      else spans.push({ start: r.start, last: r.last });
    }
    return spans;
  }

  /** First fit at the lowest address (iopt_alloc_iova, 3.2). */
  private allocateIova(userVa: bigint, length: bigint, iovaAlignment: bigint): bigint {
    // The kernel protects roundup_pow_of_two() from overflow this way.
    if (length >= U64_MAX / 2n) throw new IommufdError('EOVERFLOW', 'length is U64_MAX / 2 or more');
    let align = userVa === 0n ? roundupPow2(length) : minOf(roundupPow2(length), lowestSetBit(userVa));
    if (align > AUTO_ALIGN_CAP) align = AUTO_ALIGN_CAP;
    if (align < iovaAlignment)
      throw new IommufdError(
        'EINVAL',
        `natural alignment ${align} is below the IOVA alignment ${iovaAlignment}`,
      );
    const inPage = userVa % PAGE_SIZE;
    // __alloc_iova_check_range: the candidate must start strictly below the last byte of the range.
    const placeIn = (first: bigint, last: bigint): bigint | undefined => {
      const start = alignUp(first, align) | inPage;
      return start < last && last - start >= length - 1n ? start : undefined;
    };
    const spans = this.allowed.length > 0 ? this.allowedSpans() : [{ start: 0n, last: U64_MAX }];
    const busy = [...this.reserved, ...this.areas].sort((a, b) => (a.start < b.start ? -1 : 1));
    for (const span of spans) {
      const lo = maxOf(span.start, PAGE_SIZE);
      const hi = minOf(span.last, U64_MAX - PAGE_SIZE);
      if (lo > hi || placeIn(lo, hi) === undefined) continue;
      let holeStart = lo;
      for (const b of [...busy, { start: hi + 1n, last: hi + 1n }]) {
        if (b.last < holeStart) continue;
        const holeLast = minOf(b.start - 1n, hi);
        if (holeLast >= holeStart) {
          const start = placeIn(holeStart, holeLast);
          if (start !== undefined) return start;
        }
        if (b.last + 1n > holeStart) holeStart = b.last + 1n;
        if (holeStart > hi) break;
      }
    }
    throw new IommufdError('ENOSPC', 'no free IOVA range fits the mapping');
  }
}

export { MAP_FLAGS as IOAS_MAP_FLAGS };

// --- the IOAS ioctls (ioas.c); iommufd.ts's table has already checked their arguments ---------------

const ACCESS = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

/** IOMMU_IOAS_ALLOC: a new IOAS with nothing mapped. */
export function ioasAllocIoctl(ctx: IommufdCtx, _cmd: { flags: number }): { ioasId: number } {
  const ioas = ctx.table.create(() => new Ioas(ctx.memory, ctx.injector));
  return { ioasId: ioas.id };
}

export interface IoasMapCmd {
  flags: number;
  ioasId: number;
  userVa: bigint;
  length: bigint;
  iova: bigint;
}

/** IOMMU_IOAS_MAP: map user memory at `iova` (FIXED_IOVA) or at an IOVA the IOAS picks. */
export function ioasMapIoctl(ctx: IommufdCtx, cmd: IoasMapCmd): { iova: bigint } {
  if (cmd.iova >= U64_MAX || cmd.length >= U64_MAX)
    throw new IommufdError('EOVERFLOW', 'iova or length is U64_MAX');
  if ((cmd.flags & ACCESS) === 0) throw new IommufdError('EINVAL', 'a mapping must be READABLE or WRITEABLE');
  const ioas = ctx.table.get<Ioas>(cmd.ioasId, 'IOAS');
  return { iova: ioas.map(cmd.flags, cmd.userVa, cmd.length, cmd.iova) };
}

/** IOMMU_IOAS_UNMAP: whole areas inside [iova, iova + length), or everything for (0, U64_MAX). */
export function ioasUnmapIoctl(
  ctx: IommufdCtx,
  cmd: { ioasId: number; iova: bigint; length: bigint },
): { length: bigint } {
  // The kernel looks the IOAS up before it judges the range (iommufd_ioas_unmap).
  const ioas = ctx.table.get<Ioas>(cmd.ioasId, 'IOAS');
  return { length: ioas.unmap(cmd.iova, cmd.length) };
}

export interface IoasCopyCmd {
  flags: number;
  dstIoasId: number;
  srcIoasId: number;
  length: bigint;
  dstIova: bigint;
  srcIova: bigint;
}

/** IOMMU_IOAS_COPY: map the pages behind a source range again, in another (or the same) IOAS. */
export function ioasCopyIoctl(ctx: IommufdCtx, cmd: IoasCopyCmd): { dstIova: bigint } {
  const { flags, length, srcIova, dstIova } = cmd;
  if (length >= U64_MAX || srcIova >= U64_MAX || dstIova >= U64_MAX) {
    throw new IommufdError('EOVERFLOW', 'length, src_iova or dst_iova is U64_MAX');
  }
  if ((flags & ACCESS) === 0) throw new IommufdError('EINVAL', 'a copy must be READABLE or WRITEABLE');
  const src = ctx.table.get<Ioas>(cmd.srcIoasId, 'IOAS');
  const slices = src.slicesOf(srcIova, length);
  const dst = ctx.table.get<Ioas>(cmd.dstIoasId, 'IOAS');
  return { dstIova: dst.mapSlices(flags, slices, length, dstIova) };
}

/**
 * IOMMU_IOAS_IOVA_RANGES: the ranges automatic IOVAs may come from. EMSGSIZE when they do not fit
 * in `numIovas`, with the count and the first ranges written back all the same.
 */
export function ioasIovaRangesIoctl(
  ctx: IommufdCtx,
  cmd: { ioasId: number; numIovas: number },
): { numIovas: number; allowedIovas: IovaRange[]; iovaAlignment: bigint } {
  const ioas = ctx.table.get<Ioas>(cmd.ioasId, 'IOAS');
  const ranges = ioas.iovaRanges();
  const out = {
    numIovas: ranges.length,
    allowedIovas: ranges.slice(0, cmd.numIovas),
    iovaAlignment: ioas.iovaAlignment,
  };
  if (ranges.length > cmd.numIovas) {
    throw new IommufdError('EMSGSIZE', `${ranges.length} ranges do not fit in ${cmd.numIovas}`, out);
  }
  return out;
}

/** IOMMU_IOAS_ALLOW_IOVAS: replace the list automatic IOVAs are limited to (empty: no limit). */
export function ioasAllowIovasIoctl(
  ctx: IommufdCtx,
  cmd: { ioasId: number; allowedIovas: IovaRange[] },
): void {
  ctx.table.get<Ioas>(cmd.ioasId, 'IOAS').allowIovas(cmd.allowedIovas);
}
