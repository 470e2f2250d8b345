/**
 * IOAS: an I/O address space (iommufd ioas.c / io_pagetable.c, iommufd-model.md section 3). Areas
 * map IOVA ranges onto pinned user pages; reserved ranges (domain apertures, device regions, test
 * reservations) and the optional allowed list steer automatic IOVA choice. Every HWPT_PAGING of
 * the IOAS is a domain that mirrors every area; user pages are pinned once per backing, while at
 * least one domain holds them.
 */
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

/**
 * The pages behind one MAP, shared by the area and every copy of it. Each (area, domain) pair is a
 * pin user; the user pages themselves are pinned once, while there is at least one user.
 */
export class BackingPages {
  frames: number[] | undefined;
  private pinUsers = 0;

  constructor(
    readonly userVa: bigint,
    readonly length: bigint,
    readonly writable: boolean,
  ) {}

  get pinned(): boolean {
    return this.frames !== undefined;
  }

  pin(memory: UserMemory, injector: FaultInjector): void {
    if (this.pinUsers === 0) {
      injector.check('pin');
      const first = (this.userVa / PAGE_SIZE) * PAGE_SIZE;
      this.frames = memory.pin(first, this.userVa + this.length - first);
    }
    this.pinUsers++;
  }

  unpin(memory: UserMemory): void {
    if (--this.pinUsers === 0 && this.frames) {
      memory.unpin(this.frames);
      this.frames = undefined;
    }
  }
}

export interface Area extends IovaRange {
  pages: BackingPages;
  /** Byte offset of `start` inside `pages`. */
  offset: bigint;
  readable: boolean;
  writable: boolean;
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

  /** IOAS_MAP after its flag and argument checks (iommufd-model.md 3.1 steps 5-10). */
  map(flags: number, userVa: bigint, length: bigint, iova: bigint): bigint {
    if (userVa + length > U64_MAX) throw new IommufdError('EOVERFLOW', 'user_va + length overflows');
    if (length === 0n) throw new IommufdError('EINVAL', 'length is 0');
    const pages = new BackingPages(userVa, length, (flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0);
    return this.insert(flags, pages, 0n, length, iova);
  }

  /** Map `length` bytes of existing backing `pages` from byte `offset` (IOAS_COPY's destination). */
  insert(flags: number, pages: BackingPages, offset: bigint, length: bigint, iova: bigint): bigint {
    const align = this.iovaAlignment;
    if (length % align !== 0n)
      throw new IommufdError('EINVAL', `length is not a multiple of the IOVA alignment ${align}`);
    const userVa = pages.userVa + offset;
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
      start = this.allocateIova(userVa, length, align);
    }
    if ((userVa % PAGE_SIZE) % align !== 0n) {
      throw new IommufdError(
        'EINVAL',
        `user_va's offset in its page is not a multiple of the IOVA alignment ${align}`,
      );
    }
    this.injector.check('interval-alloc');
    const area: Area = {
      start,
      last: start + length - 1n,
      pages,
      offset,
      readable: (flags & IOMMU_IOAS_MAP_READABLE) !== 0,
      writable: (flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0,
    };
    this.fill(area);
    this.areas.push(area);
    this.areas.sort((a, b) => (a.start < b.start ? -1 : 1));
    return start;
  }

  /** IOAS_UNMAP (3.3): whole areas only; returns the bytes unmapped. Not atomic on error. */
  unmap(iova: bigint, length: bigint): bigint {
    if (iova === 0n && length === U64_MAX) {
      let total = 0n;
      for (const area of [...this.areas]) {
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
          area.pages.pin(this.memory, this.injector);
          try {
            domain.mapArea(area);
          } catch (error) {
            area.pages.unpin(this.memory);
            throw error;
          }
          done.push(area);
        }
      } catch (error) {
        for (const area of done) {
          domain.unmapArea(area);
          area.pages.unpin(this.memory);
        }
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
    for (const area of this.areas) {
      domain.unmapArea(area);
      area.pages.unpin(this.memory);
    }
    this.domains.splice(i, 1);
    this.removeReserved(domain);
  }

  /** Refuse an alignment that an existing area would violate (EADDRINUSE). */
  checkAlignment(align: bigint): void {
    for (const area of this.areas) {
      const userVa = area.pages.userVa + area.offset;
      if (
        area.start % align !== 0n ||
        (area.last + 1n - area.start) % align !== 0n ||
        (userVa % PAGE_SIZE) % align !== 0n
      ) {
        throw new IommufdError(
          'EADDRINUSE',
          `mapping at 0x${area.start.toString(16)} is not aligned to ${align}`,
        );
      }
    }
  }

  /** Map a new area into every domain; each (area, domain) pair holds one pin user of the pages. */
  private fill(area: Area): void {
    const done: IoasDomain[] = [];
    try {
      for (const domain of this.domains) {
        area.pages.pin(this.memory, this.injector);
        try {
          domain.mapArea(area);
        } catch (error) {
          area.pages.unpin(this.memory);
          throw error;
        }
        done.push(domain);
      }
    } catch (error) {
      for (const domain of done) {
        domain.unmapArea(area);
        area.pages.unpin(this.memory);
      }
      throw error;
    }
  }

  private removeArea(area: Area): void {
    for (const domain of this.domains) {
      domain.unmapArea(area);
      area.pages.unpin(this.memory);
    }
    this.areas.splice(this.areas.indexOf(area), 1);
  }

  /** Hand reserved ranges from one owner to another (an attachment replaced in place). */
  transferReserved(from: unknown, to: unknown): void {
    for (const r of this.reserved) if (r.owner === from) r.owner = to;
  }

  /** First fit at the lowest address (3.2). */
  private allocateIova(userVa: bigint, length: bigint, iovaAlignment: bigint): bigint {
    let align = userVa === 0n ? roundupPow2(length) : minOf(roundupPow2(length), lowestSetBit(userVa));
    if (align > AUTO_ALIGN_CAP) align = AUTO_ALIGN_CAP;
    if (align < iovaAlignment)
      throw new IommufdError(
        'EINVAL',
        `natural alignment ${align} is below the IOVA alignment ${iovaAlignment}`,
      );
    const spans = this.allowed.length > 0 ? this.allowed : [{ start: 0n, last: U64_MAX }];
    const busy = [...this.reserved, ...this.areas].sort((a, b) => (a.start < b.start ? -1 : 1));
    const inPage = userVa % PAGE_SIZE;
    for (const span of spans) {
      const lo = maxOf(span.start, PAGE_SIZE);
      const hi = minOf(span.last, U64_MAX - PAGE_SIZE);
      let holeStart = lo;
      for (const b of [...busy, { start: hi + 1n, last: hi + 1n }]) {
        if (b.last < holeStart) continue;
        const holeLast = minOf(b.start - 1n, hi);
        if (holeLast >= holeStart) {
          const start = alignUp(holeStart, align) | inPage;
          if (start >= holeStart && start + length - 1n <= holeLast) return start;
        }
        if (b.last + 1n > holeStart) holeStart = b.last + 1n;
        if (holeStart > hi) break;
      }
    }
    throw new IommufdError('ENOSPC', 'no free IOVA range fits the mapping');
  }
}

export { MAP_FLAGS as IOAS_MAP_FLAGS };
