/**
 * The IOTLB: a set-associative cache of leaf translations, tagged by (domain tag, PASID, VA page)
 * like an SMMU's TLB is tagged by (VMID, ASID, VA). It caches only successful walks, so a fault is
 * never remembered; an entry also keeps the leaf's permissions, and an access the entry does not
 * permit is a miss that walks again (and faults there, with the full classification).
 *
 * Invalidation by range, by PASID, by domain and all. An invalidation is complete when the call
 * returns: no later lookup can return a removed entry. Each one also drops the matching entries of
 * the walk cache beside it (`walks`, walk-cache.ts), as an SMMU's TLBI does its walk cache's.
 */
import { WalkCache } from './walk-cache.ts';

export const TLB_PERM_WRITE = 1;
export const TLB_PERM_UNPRIV = 2;
export const TLB_PERM_EXEC = 4;

/** Any PASID, for invalidations that cover every address space of a domain. */
export const ANY_PASID = -1;

const PAGE = 4096;
/** Range invalidations longer than this many pages scan the whole cache instead of probing. */
const PROBE_LIMIT = 64;

export interface IotlbStats {
  hits: number;
  misses: number;
  fills: number;
  /** Invalidation operations (commands), whatever they removed. */
  invalidations: number;
  entriesInvalidated: number;
}

/*
 * Layout: entry i is `page[2i]` (its VA page; NaN when empty) and `page[2i + 1]` (its output
 * page), and `tag[4i..4i+2]` (domain, PASID, permissions). Two typed arrays, not five: the hit path
 * reaches each array's storage once. A NaN page equals nothing, so the probe's page compare is also
 * its valid check. Way 0 of a set is its most recently used entry, so a hit on it is one probe.
 */
const PAGE_STRIDE = 2;
const TAG_STRIDE = 4;
const TAG_DOMAIN = 0;
const TAG_PASID = 1;
const TAG_PERM = 2;

export class Iotlb {
  /** Permissions of the entry the last successful `lookup` returned. */
  lastPerm = 0;
  readonly entries: number;
  /** The intermediate half of the cache: last-level tables of recent walks. */
  readonly walks = new WalkCache();

  private readonly ways: number;
  /** log2(ways): a set's first entry is set << wayShift. */
  private readonly wayShift: number;
  private readonly setMask: number;
  private readonly page: Float64Array;
  private readonly tag: Int32Array;
  // Counters as plain fields: the hit path bumps one without reaching through another object.
  private hits = 0;
  private misses = 0;
  private fills = 0;
  private invalidations = 0;
  private entriesInvalidated = 0;

  /** @param entries total entries, a power of two; @param ways associativity, a power of two. */
  constructor(entries = 4096, ways = 4) {
    if (!isPow2(entries) || !isPow2(ways) || ways > entries) {
      throw new RangeError(
        `IOTLB size must be a power of two >= ways (a power of two); got ${entries} x ${ways}`,
      );
    }
    this.entries = entries;
    this.ways = ways;
    this.wayShift = Math.log2(ways);
    this.setMask = entries / ways - 1;
    this.page = new Float64Array(entries * PAGE_STRIDE).fill(Number.NaN);
    this.tag = new Int32Array(entries * TAG_STRIDE);
  }

  get stats(): Readonly<IotlbStats> {
    return {
      hits: this.hits,
      misses: this.misses,
      fills: this.fills,
      invalidations: this.invalidations,
      entriesInvalidated: this.entriesInvalidated,
    };
  }

  /** Output page base for (domain, pasid, page of `va`), or -1 on a miss. */
  lookup(domain: number, pasid: number, va: number): number {
    const i = this.probe(domain, pasid, va);
    if (i < 0) return -1;
    this.lastPerm = this.permOf(i);
    return this.outputOf(i);
  }

  /**
   * The entry for (domain, pasid, page of `va`), or -1 on a miss: `lookup` for the translation's
   * hit path, which reads the entry with `outputOf` and `permOf`. It returns a small integer, which
   * costs nothing to return even where the compiler does not inline it.
   */
  probe(domain: number, pasid: number, va: number): number {
    const page = Math.floor(va / PAGE);
    const base = this.setOf(domain, pasid, page) << this.wayShift;
    // Way 0 is the set's most recently used entry: a hit there is this one probe.
    const tag = this.tag;
    const t = base * TAG_STRIDE;
    if (
      this.page[base * PAGE_STRIDE] === page &&
      tag[t + TAG_DOMAIN] === domain &&
      tag[t + TAG_PASID] === pasid
    ) {
      this.hits++;
      return base;
    }
    return this.probeOtherWays(base, domain, pasid, page);
  }

  /** The output page base of entry `i` (from `probe`). */
  outputOf(i: number): number {
    return this.page[i * PAGE_STRIDE + 1];
  }

  /** The TLB_PERM_* permissions of entry `i` (from `probe`). */
  permOf(i: number): number {
    return this.tag[i * TAG_STRIDE + TAG_PERM];
  }

  insert(domain: number, pasid: number, va: number, outputPage: number, perm: number): void {
    const page = Math.floor(va / PAGE);
    const base = this.setOf(domain, pasid, page) << this.wayShift;
    // Refill the entry already there, else the first empty way, else evict the least recently used (the last way).
    let slot = this.find(base, domain, pasid, page);
    for (let i = base; slot < 0 && i < base + this.ways; i++) if (this.isEmpty(i)) slot = i;
    if (slot < 0) slot = base + this.ways - 1;
    this.page[slot * PAGE_STRIDE] = page;
    this.page[slot * PAGE_STRIDE + 1] = outputPage;
    this.tag[slot * TAG_STRIDE + TAG_DOMAIN] = domain;
    this.tag[slot * TAG_STRIDE + TAG_PASID] = pasid;
    this.tag[slot * TAG_STRIDE + TAG_PERM] = perm;
    this.toFront(base, slot);
    this.fills++;
  }

  /** Remove the entries of `domain` (and `pasid`, unless ANY_PASID) for pages touching [va, va + length). */
  invalidateRange(domain: number, pasid: number, va: number, length: number): void {
    this.invalidations++;
    if (length <= 0) return;
    this.walks.invalidateRange(domain, pasid, va, length);
    const first = Math.floor(va / PAGE);
    const last = Math.floor((va + length - 1) / PAGE);
    if (pasid !== ANY_PASID && last - first < PROBE_LIMIT) {
      for (let page = first; page <= last; page++) {
        const i = this.find(this.setOf(domain, pasid, page) << this.wayShift, domain, pasid, page);
        if (i >= 0) this.drop(i);
      }
      return;
    }
    for (let i = 0; i < this.entries; i++) {
      // An empty entry's NaN page is neither >= first nor <= last.
      const page = this.page[i * PAGE_STRIDE];
      if (
        this.tag[i * TAG_STRIDE + TAG_DOMAIN] === domain &&
        (pasid === ANY_PASID || this.tag[i * TAG_STRIDE + TAG_PASID] === pasid) &&
        page >= first &&
        page <= last
      ) {
        this.drop(i);
      }
    }
  }

  invalidatePasid(domain: number, pasid: number): void {
    this.invalidations++;
    this.walks.invalidatePasid(domain, pasid);
    for (let i = 0; i < this.entries; i++) {
      if (
        !this.isEmpty(i) &&
        this.tag[i * TAG_STRIDE + TAG_DOMAIN] === domain &&
        this.tag[i * TAG_STRIDE + TAG_PASID] === pasid
      ) {
        this.drop(i);
      }
    }
  }

  invalidateDomain(domain: number): void {
    this.invalidations++;
    this.walks.invalidateDomain(domain);
    for (let i = 0; i < this.entries; i++) {
      if (!this.isEmpty(i) && this.tag[i * TAG_STRIDE + TAG_DOMAIN] === domain) this.drop(i);
    }
  }

  invalidateAll(): void {
    this.invalidations++;
    this.walks.invalidateAll();
    for (let i = 0; i < this.entries; i++) if (!this.isEmpty(i)) this.drop(i);
  }

  /** Valid entries (for tests and diagnostics). */
  get occupancy(): number {
    let n = 0;
    for (let i = 0; i < this.entries; i++) if (!this.isEmpty(i)) n++;
    return n;
  }

  /** `probe` past way 0 of the set at `base`: a hit there is moved to way 0. */
  private probeOtherWays(base: number, domain: number, pasid: number, page: number): number {
    const i = this.find(base, domain, pasid, page);
    if (i < 0) {
      this.misses++;
      return -1;
    }
    this.hits++;
    return this.toFront(base, i);
  }

  /** The valid entry for (domain, pasid, page) in the set starting at `base`, or -1 (at most one exists). */
  private find(base: number, domain: number, pasid: number, page: number): number {
    for (let i = base; i < base + this.ways; i++) {
      if (
        this.page[i * PAGE_STRIDE] === page &&
        this.tag[i * TAG_STRIDE + TAG_DOMAIN] === domain &&
        this.tag[i * TAG_STRIDE + TAG_PASID] === pasid
      ) {
        return i;
      }
    }
    return -1;
  }

  /**
   * Move entry `i` to way 0 of its set (`base`), the ways before it down one: the ways stay in
   * order of use, so the last way is the least recently used. Returns `base`, where it now is.
   */
  private toFront(base: number, i: number): number {
    if (i === base) return base;
    const page = this.page[i * PAGE_STRIDE];
    const output = this.page[i * PAGE_STRIDE + 1];
    const domain = this.tag[i * TAG_STRIDE + TAG_DOMAIN];
    const pasid = this.tag[i * TAG_STRIDE + TAG_PASID];
    const perm = this.tag[i * TAG_STRIDE + TAG_PERM];
    // A loop, not copyWithin: a set is a few ways, less than the cost of calling into the runtime.
    for (let j = i; j > base; j--) {
      this.page[j * PAGE_STRIDE] = this.page[(j - 1) * PAGE_STRIDE];
      this.page[j * PAGE_STRIDE + 1] = this.page[(j - 1) * PAGE_STRIDE + 1];
      this.tag[j * TAG_STRIDE + TAG_DOMAIN] = this.tag[(j - 1) * TAG_STRIDE + TAG_DOMAIN];
      this.tag[j * TAG_STRIDE + TAG_PASID] = this.tag[(j - 1) * TAG_STRIDE + TAG_PASID];
      this.tag[j * TAG_STRIDE + TAG_PERM] = this.tag[(j - 1) * TAG_STRIDE + TAG_PERM];
    }
    this.page[base * PAGE_STRIDE] = page;
    this.page[base * PAGE_STRIDE + 1] = output;
    this.tag[base * TAG_STRIDE + TAG_DOMAIN] = domain;
    this.tag[base * TAG_STRIDE + TAG_PASID] = pasid;
    this.tag[base * TAG_STRIDE + TAG_PERM] = perm;
    return base;
  }

  private isEmpty(i: number): boolean {
    return Number.isNaN(this.page[i * PAGE_STRIDE]);
  }

  private drop(i: number): void {
    this.page[i * PAGE_STRIDE] = Number.NaN;
    this.entriesInvalidated++;
  }

  /**
   * The set of (domain, pasid, page): the page's low 32 bits mixed with the domain and PASID by
   * multiplications by odd constants (a bijection on the low bits, so neighbouring pages, domains
   * and PASIDs land in different sets). Pages 2^32 apart share a set; the tags tell them apart.
   */
  private setOf(domain: number, pasid: number, page: number): number {
    return ((page >>> 0) ^ Math.imul(domain, 0x9e3779b1) ^ Math.imul(pasid, 0x85ebca6b)) & this.setMask;
  }
}

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
