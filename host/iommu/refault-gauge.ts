/**
 * The re-fault gauge: how often the same page faults again. A guest that answers Success without
 * mapping the page, a mapping torn down under a device, or a deadline answering INVALID shows up
 * as one address faulting again and again. Each request of each complete page-request group is
 * counted per (requester, stream, PASID, page) in a fixed open-addressed table, so counting
 * allocates nothing; when a probe finds neither its key nor a free slot within a few steps, the
 * coldest slot it saw is reused (counted in `evictions`): an evicted page that faults again starts
 * over, so the counts are a lower bound (and a page can count twice in `pagesRefaulted`).
 */

/**
 * Table slots (a power of two) and the probe length: four slots, so that a storm of distinct pages,
 * which finds the table full on every request, reads one cache line of each array (eight cost a
 * tenth of the host's time per fault).
 */
const SLOTS = 1 << 14;
const PROBE = 4;
const PAGE = 4096;

export interface RefaultFigures {
  /** Requests for a page that had faulted before (each one after the first). */
  refaults: number;
  /** Distinct pages that faulted more than once. */
  pagesRefaulted: number;
  /** The most faults counted for one page, and which page it was (undefined when nothing faulted). */
  maxFaults: number;
  hottest: { streamId: number; pasid: number; address: number } | undefined;
}

export class RefaultGauge {
  /**
   * Per slot: the page number, its stream and PASID, its requester + 2 (so that -1, nobody, is 1
   * and 0 marks a free slot), and its count.
   */
  private readonly page = new Float64Array(SLOTS);
  private readonly stream = new Int32Array(SLOTS);
  private readonly pasid = new Int32Array(SLOTS);
  private readonly owner = new Int32Array(SLOTS);
  private readonly count = new Uint32Array(SLOTS);
  /**
   * Per requester + 1, kept as each request is counted so that reading them costs nothing (a live
   * report may be read every millisecond): refaults, pages refaulted, the hottest page's count and
   * its stream, PASID and page number.
   */
  private refaults = new Float64Array(0);
  private pagesRefaulted = new Float64Array(0);
  private maxFaults = new Float64Array(0);
  private hotStream = new Int32Array(0);
  private hotPasid = new Int32Array(0);
  private hotPage = new Float64Array(0);
  evictions = 0;

  /** One page request of a complete group, attributed to `requester` (-1: nobody). */
  record(requester: number, streamId: number, pasid: number, address: number): void {
    const page = Math.floor(address / PAGE);
    const owner = requester + 2;
    let slot = hash(page, streamId, pasid) & (SLOTS - 1);
    let coldest = slot;
    for (let i = 0; i < PROBE; i++, slot = (slot + 1) & (SLOTS - 1)) {
      if (this.owner[slot] === 0) {
        this.claim(slot, owner, page, streamId, pasid);
        return;
      }
      if (
        this.owner[slot] === owner &&
        this.page[slot] === page &&
        this.stream[slot] === streamId &&
        this.pasid[slot] === pasid
      ) {
        const n = ++this.count[slot];
        const r = owner - 1;
        this.refaults[r]++;
        if (n === 2) this.pagesRefaulted[r]++;
        if (n > this.maxFaults[r]) this.hottest(r, n, streamId, pasid, page);
        return;
      }
      if (this.count[slot] < this.count[coldest]) coldest = slot;
    }
    this.evictions++;
    this.claim(coldest, owner, page, streamId, pasid);
  }

  /** The figures of one requester. */
  figures(requester: number): RefaultFigures {
    const r = requester + 1;
    if (r < 0 || r >= this.maxFaults.length || this.maxFaults[r] === 0)
      return { refaults: 0, pagesRefaulted: 0, maxFaults: 0, hottest: undefined };
    return {
      refaults: this.refaults[r],
      pagesRefaulted: this.pagesRefaulted[r],
      maxFaults: this.maxFaults[r],
      hottest: { streamId: this.hotStream[r], pasid: this.hotPasid[r], address: this.hotPage[r] * PAGE },
    };
  }

  private claim(slot: number, owner: number, page: number, streamId: number, pasid: number): void {
    this.owner[slot] = owner;
    this.page[slot] = page;
    this.stream[slot] = streamId;
    this.pasid[slot] = pasid;
    this.count[slot] = 1;
    const r = owner - 1;
    if (r >= this.maxFaults.length) this.grow(r + 1);
    if (this.maxFaults[r] === 0) this.hottest(r, 1, streamId, pasid, page);
  }

  private hottest(r: number, n: number, streamId: number, pasid: number, page: number): void {
    this.maxFaults[r] = n;
    this.hotStream[r] = streamId;
    this.hotPasid[r] = pasid;
    this.hotPage[r] = page;
  }

  /** Room for `size` requesters (once per new requester, never per request). */
  private grow(size: number): void {
    const widen = <T extends Float64Array | Int32Array>(old: T, make: (n: number) => T): T => {
      const next = make(size);
      next.set(old);
      return next;
    };
    this.refaults = widen(this.refaults, (n) => new Float64Array(n));
    this.pagesRefaulted = widen(this.pagesRefaulted, (n) => new Float64Array(n));
    this.maxFaults = widen(this.maxFaults, (n) => new Float64Array(n));
    this.hotStream = widen(this.hotStream, (n) => new Int32Array(n));
    this.hotPasid = widen(this.hotPasid, (n) => new Int32Array(n));
    this.hotPage = widen(this.hotPage, (n) => new Float64Array(n));
  }
}

function hash(page: number, streamId: number, pasid: number): number {
  const low = page >>> 0;
  const high = Math.floor(page / 0x1_0000_0000) >>> 0;
  let h = Math.imul(low ^ Math.imul(high, 0x27d4eb2d), 0x9e3779b1);
  h ^= Math.imul(streamId, 0x85ebca6b) ^ Math.imul(pasid + 1, 0xc2b2ae35);
  return (h ^ (h >>> 15)) >>> 0;
}
