/**
 * The IOTLB: a set-associative cache of leaf translations, tagged by (domain tag, PASID, VA page)
 * like an SMMU's TLB is tagged by (VMID, ASID, VA). It caches only successful walks, so a fault is
 * never remembered; an entry also keeps the leaf's permissions, and an access the entry does not
 * permit is a miss that walks again (and faults there, with the full classification).
 *
 * Invalidation by range, by PASID, by domain and all. An invalidation is complete when the call
 * returns: no later lookup can return a removed entry.
 */
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

export class Iotlb {
  readonly stats: IotlbStats = { hits: 0, misses: 0, fills: 0, invalidations: 0, entriesInvalidated: 0 };
  /** Permissions of the entry the last successful `lookup` returned. */
  lastPerm = 0;
  readonly entries: number;

  private readonly ways: number;
  private readonly setMask: number;
  private readonly valid: Uint8Array;
  private readonly tagDomain: Int32Array;
  private readonly tagPasid: Int32Array;
  private readonly tagPage: Float64Array;
  private readonly output: Float64Array;
  private readonly perm: Uint8Array;
  private readonly victim: Uint8Array;

  /** @param entries total entries, a power of two; @param ways associativity, a power of two. */
  constructor(entries = 4096, ways = 4) {
    if (!isPow2(entries) || !isPow2(ways) || ways > entries) {
      throw new RangeError(
        `IOTLB size must be a power of two >= ways (a power of two); got ${entries} x ${ways}`,
      );
    }
    this.entries = entries;
    this.ways = ways;
    this.setMask = entries / ways - 1;
    this.valid = new Uint8Array(entries);
    this.tagDomain = new Int32Array(entries);
    this.tagPasid = new Int32Array(entries);
    this.tagPage = new Float64Array(entries);
    this.output = new Float64Array(entries);
    this.perm = new Uint8Array(entries);
    this.victim = new Uint8Array(entries / ways);
  }

  /** Output page base for (domain, pasid, page of `va`), or -1 on a miss. */
  lookup(domain: number, pasid: number, va: number): number {
    const page = Math.floor(va / PAGE);
    const i = this.find(this.setOf(domain, pasid, page) * this.ways, domain, pasid, page);
    if (i < 0) {
      this.stats.misses++;
      return -1;
    }
    this.stats.hits++;
    this.lastPerm = this.perm[i];
    return this.output[i];
  }

  insert(domain: number, pasid: number, va: number, outputPage: number, perm: number): void {
    const page = Math.floor(va / PAGE);
    const set = this.setOf(domain, pasid, page);
    const base = set * this.ways;
    let slot = this.find(base, domain, pasid, page);
    for (let i = base; slot < 0 && i < base + this.ways; i++) if (this.valid[i] === 0) slot = i;
    if (slot < 0) {
      slot = base + this.victim[set];
      this.victim[set] = (this.victim[set] + 1) & (this.ways - 1);
    }
    this.valid[slot] = 1;
    this.tagDomain[slot] = domain;
    this.tagPasid[slot] = pasid;
    this.tagPage[slot] = page;
    this.output[slot] = outputPage;
    this.perm[slot] = perm;
    this.stats.fills++;
  }

  /** Remove the entries of `domain` (and `pasid`, unless ANY_PASID) for pages touching [va, va + length). */
  invalidateRange(domain: number, pasid: number, va: number, length: number): void {
    this.stats.invalidations++;
    if (length <= 0) return;
    const first = Math.floor(va / PAGE);
    const last = Math.floor((va + length - 1) / PAGE);
    if (pasid !== ANY_PASID && last - first < PROBE_LIMIT) {
      for (let page = first; page <= last; page++) {
        const i = this.find(this.setOf(domain, pasid, page) * this.ways, domain, pasid, page);
        if (i >= 0) this.drop(i);
      }
      return;
    }
    for (let i = 0; i < this.entries; i++) {
      if (
        this.valid[i] !== 0 &&
        this.tagDomain[i] === domain &&
        (pasid === ANY_PASID || this.tagPasid[i] === pasid) &&
        this.tagPage[i] >= first &&
        this.tagPage[i] <= last
      ) {
        this.drop(i);
      }
    }
  }

  invalidatePasid(domain: number, pasid: number): void {
    this.stats.invalidations++;
    for (let i = 0; i < this.entries; i++) {
      if (this.valid[i] !== 0 && this.tagDomain[i] === domain && this.tagPasid[i] === pasid) this.drop(i);
    }
  }

  invalidateDomain(domain: number): void {
    this.stats.invalidations++;
    for (let i = 0; i < this.entries; i++) {
      if (this.valid[i] !== 0 && this.tagDomain[i] === domain) this.drop(i);
    }
  }

  invalidateAll(): void {
    this.stats.invalidations++;
    for (let i = 0; i < this.entries; i++) if (this.valid[i] !== 0) this.drop(i);
  }

  /** Valid entries (for tests and diagnostics). */
  get occupancy(): number {
    let n = 0;
    for (let i = 0; i < this.entries; i++) n += this.valid[i];
    return n;
  }

  /** The valid entry for (domain, pasid, page) in the set starting at `base`, or -1 (at most one exists). */
  private find(base: number, domain: number, pasid: number, page: number): number {
    for (let i = base; i < base + this.ways; i++) {
      if (
        this.valid[i] !== 0 &&
        this.tagPage[i] === page &&
        this.tagDomain[i] === domain &&
        this.tagPasid[i] === pasid
      ) {
        return i;
      }
    }
    return -1;
  }

  private drop(i: number): void {
    this.valid[i] = 0;
    this.stats.entriesInvalidated++;
  }

  private setOf(domain: number, pasid: number, page: number): number {
    let h = (page >>> 0) ^ Math.imul(Math.floor(page / 0x1_0000_0000), 0x9e3779b1);
    h ^= Math.imul(domain, 0x85ebca6b) ^ Math.imul(pasid + 1, 0xc2b2ae35);
    h ^= h >>> 15;
    return h & this.setMask;
  }
}

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
