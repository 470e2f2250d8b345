/**
 * The walk cache: what an SMMU keeps of a stage-1 walk besides its leaf (the SMMUv3 TLB may hold
 * intermediate table entries as well as leaves, and CMD_TLBI_NH_VA with Leaf=0 removes both). An
 * entry maps (domain tag, PASID, 2 MiB region of VA) to the guest-physical address of the last-level
 * table that the CD and the upper three levels led to, with the CD's R and S bits. A walk that hits
 * reads only that table's entry, through stage 2 as always.
 *
 * It is filled by any walk that reached the last level, faulting there or not: the faulting walk
 * of a page request caches its table, and the retry after the guest's answer reads one entry.
 * Every invalidation of the IOTLB it belongs to drops its matching entries too, whatever the
 * command's Leaf hint (this model treats every TLBI as Leaf=0): a CD change (CFGI_CD), a new STE,
 * a range or PASID invalidation. Stage-2 changes need nothing here: the cached address is
 * guest-physical and is translated through stage 2 on every use.
 *
 * Direct-mapped, in typed arrays: a lookup is one probe and allocates nothing.
 */
/** VA bytes one last-level table maps (512 entries of 4 KiB pages). */
const REGION = 2 ** 21;
/** Range invalidations covering more regions than this scan the whole cache. */
const PROBE_LIMIT = 16;

export const WALK_RECORD = 1;
export const WALK_STALL = 2;

export class WalkCache {
  readonly entries: number;
  hits = 0;
  fills = 0;
  private readonly mask: number;
  /** Per entry: its region (NaN when empty) and its table's GPA. */
  private readonly region: Float64Array;
  private readonly table: Float64Array;
  /** Per entry: domain, PASID, and the CD's R/S bits (WALK_RECORD, WALK_STALL). */
  private readonly domain: Int32Array;
  private readonly pasid: Int32Array;
  private readonly flags: Int32Array;

  /** @param entries a power of two */
  constructor(entries = 1024) {
    if (!(entries > 0 && (entries & (entries - 1)) === 0))
      throw new RangeError(`walk cache size must be a power of two; got ${entries}`);
    this.entries = entries;
    this.mask = entries - 1;
    this.region = new Float64Array(entries).fill(Number.NaN);
    this.table = new Float64Array(entries);
    this.domain = new Int32Array(entries);
    this.pasid = new Int32Array(entries);
    this.flags = new Int32Array(entries);
  }

  /** The entry for (domain, pasid, region of `va`), or -1. */
  lookup(domain: number, pasid: number, va: number): number {
    const region = Math.floor(va / REGION);
    const i = this.slotOf(domain, pasid, region);
    if (this.region[i] !== region || this.domain[i] !== domain || this.pasid[i] !== pasid) return -1;
    this.hits++;
    return i;
  }

  /** The last-level table's GPA of entry `i` (from `lookup`). */
  tableOf(i: number): number {
    return this.table[i];
  }

  /** The CD's R/S bits of entry `i`. */
  flagsOf(i: number): number {
    return this.flags[i];
  }

  insert(domain: number, pasid: number, va: number, table: number, flags: number): void {
    const region = Math.floor(va / REGION);
    const i = this.slotOf(domain, pasid, region);
    this.region[i] = region;
    this.table[i] = table;
    this.domain[i] = domain;
    this.pasid[i] = pasid;
    this.flags[i] = flags;
    this.fills++;
  }

  /** Drop the entries of `domain` (and `pasid`; a negative one, ANY_PASID, means all) whose region touches [va, va + length). */
  invalidateRange(domain: number, pasid: number, va: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(va / REGION);
    const last = Math.floor((va + length - 1) / REGION);
    if (pasid >= 0 && last - first < PROBE_LIMIT) {
      for (let region = first; region <= last; region++) {
        const i = this.slotOf(domain, pasid, region);
        if (this.region[i] === region && this.domain[i] === domain && this.pasid[i] === pasid) this.drop(i);
      }
      return;
    }
    for (let i = 0; i < this.entries; i++) {
      // An empty entry's NaN region is neither >= first nor <= last.
      if (
        this.domain[i] === domain &&
        (pasid < 0 || this.pasid[i] === pasid) &&
        this.region[i] >= first &&
        this.region[i] <= last
      )
        this.drop(i);
    }
  }

  invalidatePasid(domain: number, pasid: number): void {
    for (let i = 0; i < this.entries; i++) {
      if (this.domain[i] === domain && this.pasid[i] === pasid) this.drop(i);
    }
  }

  invalidateDomain(domain: number): void {
    for (let i = 0; i < this.entries; i++) if (this.domain[i] === domain) this.drop(i);
  }

  invalidateAll(): void {
    this.region.fill(Number.NaN);
  }

  /** Valid entries (for tests and diagnostics). */
  get occupancy(): number {
    let n = 0;
    for (let i = 0; i < this.entries; i++) if (!Number.isNaN(this.region[i])) n++;
    return n;
  }

  private slotOf(domain: number, pasid: number, region: number): number {
    return ((region | 0) ^ Math.imul(pasid, 0x9e3779b1) ^ Math.imul(domain, 0x85ebca6b)) & this.mask;
  }

  private drop(i: number): void {
    this.region[i] = Number.NaN;
  }
}
