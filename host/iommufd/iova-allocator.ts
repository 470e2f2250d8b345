/**
 * Where in an IOAS an IOVA may go (the kernel's io_pagetable reserved and allowed interval trees,
 * and iopt_alloc_iova): reserved ranges (domain apertures, device regions, test reservations)
 * that no area may touch, the optional allowed list that automatic IOVAs are limited to, and the
 * first-fit choice of an automatic IOVA around the areas already mapped.
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
import { PAGE_SIZE } from './user-memory.ts';

/** Automatic IOVAs are aligned at most to the transparent-huge-page size (THP built in). */
const AUTO_ALIGN_CAP = 2n * 1024n * 1024n;

/** A reserved range and who reserved it (a domain, a device attachment; undefined: a test). */
export interface Reserved extends IovaRange {
  owner: unknown;
}

const byStart = (a: IovaRange, b: IovaRange): number => (a.start < b.start ? -1 : 1);

export class IovaAllocator {
  readonly reserved: Reserved[] = [];
  allowed: IovaRange[] = [];

  constructor(private readonly injector: FaultInjector) {}

  /** IOAS_IOVA_RANGES: the holes of the reserved set over [0, U64_MAX]. */
  holes(): IovaRange[] {
    const holes: IovaRange[] = [];
    let next = 0n;
    for (const r of [...this.reserved].sort(byStart)) {
      if (r.start > next) holes.push({ start: next, last: r.start - 1n });
      if (r.last >= next) next = r.last + 1n;
      if (r.last === U64_MAX) return holes;
    }
    holes.push({ start: next, last: U64_MAX });
    return holes;
  }

  /** IOAS_ALLOW_IOVAS: replace the allowed list atomically. */
  allow(ranges: readonly IovaRange[]): void {
    const sorted = [...ranges].sort(byStart);
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

  /** Reserve [start, last] for `owner`; EADDRINUSE if it meets one of `areas` or an allowed range. */
  reserve(start: bigint, last: bigint, owner: unknown, areas: readonly IovaRange[]): void {
    if (areas.some((a) => overlaps(a, start, last)) || this.allowed.some((a) => overlaps(a, start, last))) {
      throw new IommufdError(
        'EADDRINUSE',
        `reserving 0x${start.toString(16)}-0x${last.toString(16)} meets a mapping or allowed range`,
      );
    }
    this.injector.check('interval-alloc');
    this.reserved.push({ start, last, owner });
  }

  /** Drop every range `owner` reserved. */
  unreserve(owner: unknown): void {
    for (let i = this.reserved.length - 1; i >= 0; i--)
      if (this.reserved[i].owner === owner) this.reserved.splice(i, 1);
  }

  /** Hand reserved ranges from one owner to another (an attachment replaced in place). */
  transfer(from: unknown, to: unknown): void {
    for (const r of this.reserved) if (r.owner === from) r.owner = to;
  }

  /** [start, last] touches a reserved range. */
  touchesReserved(start: bigint, last: bigint): boolean {
    return this.reserved.some((r) => overlaps(r, start, last));
  }

  /** First fit at the lowest address, around the reserved ranges and `areas` (iopt_alloc_iova, 3.2). */
  allocate(userVa: bigint, length: bigint, iovaAlignment: bigint, areas: readonly IovaRange[]): bigint {
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
    const busy = [...this.reserved, ...areas].sort(byStart);
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

  /** The allowed list as the kernel's span walk sees it: ranges that touch or overlap are one span. */
  private allowedSpans(): IovaRange[] {
    const spans: IovaRange[] = [];
    for (const r of [...this.allowed].sort(byStart)) {
      const prev = spans[spans.length - 1];
      if (prev && r.start <= prev.last + 1n) prev.last = maxOf(prev.last, r.last);
      else spans.push({ start: r.start, last: r.last });
    }
    return spans;
  }
}
