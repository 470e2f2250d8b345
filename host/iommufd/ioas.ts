/**
 * IOAS: an I/O address space (iommufd ioas.c / io_pagetable.c; docs/registry.md), and its ioctls.
 * Areas map IOVA ranges onto pinned user pages (backing-pages.ts); reserved ranges and the
 * optional allowed list steer automatic IOVA choice (iova-allocator.ts). Every HWPT_PAGING of the
 * IOAS is a domain that mirrors every area; each page of a backing is pinned once, while some area
 * mapped into some domain covers it. One concept, the IOAS object with its ioctl bodies, as every
 * object file of the registry holds its own.
 */
import {
  type Area,
  BackingPages,
  lockPages,
  type PageSlice,
  pageSpan,
  type RangeLock,
  unlockPages,
} from './backing-pages.ts';
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import { type IovaRange, maxOf, minOf, overlaps, U64_MAX } from './iova.ts';
import { IovaAllocator, type Reserved } from './iova-allocator.ts';
import { IommufdObject } from './object.ts';
import { PAGE_SIZE, type UserMemory } from './user-memory.ts';

export { type Area, BackingPages, type PageSlice, type RangeLock } from './backing-pages.ts';

export const IOMMU_IOAS_MAP_FIXED_IOVA = 1;
export const IOMMU_IOAS_MAP_WRITEABLE = 2;
export const IOMMU_IOAS_MAP_READABLE = 4;
const MAP_FLAGS = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

/** The iommu API takes size_t lengths; the kernel refuses longer mappings (iopt_alloc_pages). */
const MAX_MAP_LENGTH = U64_MAX - PAGE_SIZE;

/** What an IOAS needs of a HWPT_PAGING's domain. */
export interface IoasDomain {
  /** Smallest page size the domain maps. */
  readonly pageSize: bigint;
  readonly aperture: IovaRange;
  /** Map the area into the domain; may fail (then nothing of it is mapped). */
  mapArea(area: Area): void;
  unmapArea(area: Area): void;
}

export class Ioas extends IommufdObject {
  readonly type = 'IOAS';
  readonly areas: Area[] = [];
  readonly domains: IoasDomain[] = [];
  /** Alignment demanded by in-kernel accesses and test users beside the domains. */
  readonly accessAlignments: bigint[] = [];
  disableLargePages = false;
  /** Where an IOVA may go: the reserved ranges and the allowed list. */
  private readonly iovas: IovaAllocator;

  constructor(
    private readonly memory: UserMemory,
    private readonly injector: FaultInjector,
  ) {
    super();
    this.iovas = new IovaAllocator(injector);
  }

  get reserved(): readonly Reserved[] {
    return this.iovas.reserved;
  }

  get allowed(): readonly IovaRange[] {
    return this.iovas.allowed;
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
      if (this.iovas.touchesReserved(iova, last))
        throw new IommufdError('EINVAL', 'range touches a reserved IOVA range');
      if (this.areas.some((a) => overlaps(a, iova, last)))
        throw new IommufdError('EEXIST', 'range touches an existing mapping');
      start = iova;
    } else {
      start = this.iovas.allocate(slices[0].pages.base + slices[0].offset, length, align, this.areas);
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
    const slices = this.slicesOf(iova, length);
    const areas = this.coveringAreas(iova, iova + length - 1n);
    return lockPages(this.memory, this.injector, slices, areas);
  }

  unlockRange(lock: RangeLock): void {
    unlockPages(this.memory, lock);
  }

  /** IOAS_IOVA_RANGES: the holes of the reserved set over [0, U64_MAX]. */
  iovaRanges(): IovaRange[] {
    return this.iovas.holes();
  }

  /** IOAS_ALLOW_IOVAS: replace the allowed list atomically. */
  allowIovas(ranges: readonly IovaRange[]): void {
    this.iovas.allow(ranges);
  }

  /** Reserve [start, last] for `owner`; EADDRINUSE if it meets an area or an allowed range. */
  addReserved(start: bigint, last: bigint, owner: unknown): void {
    this.iovas.reserve(start, last, owner, this.areas);
  }

  removeReserved(owner: unknown): void {
    this.iovas.unreserve(owner);
  }

  /** Hand reserved ranges from one owner to another (an attachment replaced in place). */
  transferReserved(from: unknown, to: unknown): void {
    this.iovas.transfer(from, to);
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
    for (const domain of this.domains) this.unmapFrom(area, domain);
  }

  private removeArea(area: Area): void {
    this.unfill(area);
    this.areas.splice(this.areas.indexOf(area), 1);
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
