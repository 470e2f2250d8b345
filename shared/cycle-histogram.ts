/**
 * A latency histogram cheap enough for a data-plane thread: fixed log-linear buckets in one typed
 * array (like HDR: 32 sub-buckets per power of two, so a value is kept within 1/32 of itself), a
 * record is a few arithmetic operations and one increment, and nothing is allocated after
 * construction. The guest keeps one for its DMA cycle (from a descriptor's submit to the guest
 * seeing its completion: the round trip a user feels); percentiles are read on the control plane.
 */

/** Values below SUB get a bucket each; above it, SUB / 2 buckets per power of two. */
const SUB = 64;
/** Values are recorded in units of 1/UNIT microsecond (10 ns). */
const UNIT = 100;
/** Powers of two covered: values up to 2^32 units; larger ones land in the last power's buckets. */
const POWERS = 32;

export interface CyclePercentiles {
  p50: number;
  p99: number;
  max: number;
  count: number;
}

export class CycleHistogram {
  private readonly counts = new Float64Array(SUB * POWERS);
  private total = 0;
  private maxUs = 0;

  /** Record one value, microseconds (negative values count as 0). */
  record(us: number): void {
    const units = us > 0 ? Math.floor(us * UNIT) : 0;
    this.counts[bucketOf(units)]++;
    this.total++;
    if (us > this.maxUs) this.maxUs = us;
  }

  get count(): number {
    return this.total;
  }

  /** The value below which `fraction` of the records fall (the bucket's upper edge), microseconds. */
  percentile(fraction: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil(fraction * this.total));
    let seen = 0;
    for (let b = 0; b < this.counts.length; b++) {
      seen += this.counts[b];
      if (seen >= rank) return Math.min(upperEdge(b) / UNIT, this.maxUs);
    }
    return this.maxUs;
  }

  summary(): CyclePercentiles {
    const round = (v: number) => Math.round(v * 100) / 100;
    return {
      p50: round(this.percentile(0.5)),
      p99: round(this.percentile(0.99)),
      max: round(this.maxUs),
      count: this.total,
    };
  }
}

/** Values below SUB have a bucket each; above, the top six bits of the value pick one of SUB / 2. */
function bucketOf(units: number): number {
  if (units < SUB) return units;
  // 2^32 units (12 hours) and above share the last power's buckets.
  const u = units < 0x1_0000_0000 ? units >>> 0 : 0xffff_ffff;
  const shift = 31 - Math.clz32(u) - 5; // SUB = 2^6: keep the top 6 bits
  return shift * (SUB / 2) + (u >>> shift);
}

/** The largest value (in units) bucket `b` holds. */
function upperEdge(b: number): number {
  if (b < SUB) return b + 1;
  const block = Math.floor((b - SUB) / (SUB / 2));
  const shift = block + 1;
  const mantissa = b - block * (SUB / 2) - SUB / 2;
  return (mantissa + 1) * 2 ** shift;
}
