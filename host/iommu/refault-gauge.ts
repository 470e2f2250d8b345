/**
 * The re-fault gauge: how often the same page faults again. A guest that answers Success without
 * mapping the page, a mapping torn down under a device, or a deadline answering INVALID shows up
 * as one address faulting again and again. Each request of each complete page-request group is
 * counted per (requester, stream, PASID, page) in a fixed open-addressed table, so counting
 * allocates nothing; when a probe finds neither its key nor a free slot within a few steps, the
 * coldest slot it saw is reused (counted in `evictions`), so the counts are a lower bound.
 */

/** Table slots (a power of two) and the probe length. */
const SLOTS = 1 << 14;
const PROBE = 8;
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
        this.count[slot]++;
        return;
      }
      if (this.count[slot] < this.count[coldest]) coldest = slot;
    }
    this.evictions++;
    this.claim(coldest, owner, page, streamId, pasid);
  }

  /** The figures of one requester (not on the hot path: it scans the table). */
  figures(requester: number): RefaultFigures {
    const owner = requester + 2;
    const out: RefaultFigures = { refaults: 0, pagesRefaulted: 0, maxFaults: 0, hottest: undefined };
    for (let slot = 0; slot < SLOTS; slot++) {
      if (this.owner[slot] !== owner) continue;
      const n = this.count[slot];
      if (n > 1) {
        out.refaults += n - 1;
        out.pagesRefaulted++;
      }
      if (n > out.maxFaults) {
        out.maxFaults = n;
        out.hottest = {
          streamId: this.stream[slot],
          pasid: this.pasid[slot],
          address: this.page[slot] * PAGE,
        };
      }
    }
    return out;
  }

  private claim(slot: number, owner: number, page: number, streamId: number, pasid: number): void {
    this.owner[slot] = owner;
    this.page[slot] = page;
    this.stream[slot] = streamId;
    this.pasid[slot] = pasid;
    this.count[slot] = 1;
  }
}

function hash(page: number, streamId: number, pasid: number): number {
  const low = page >>> 0;
  const high = Math.floor(page / 0x1_0000_0000) >>> 0;
  let h = Math.imul(low ^ Math.imul(high, 0x27d4eb2d), 0x9e3779b1);
  h ^= Math.imul(streamId, 0x85ebca6b) ^ Math.imul(pasid + 1, 0xc2b2ae35);
  return (h ^ (h >>> 15)) >>> 0;
}
