/** Fault round-trip latency, kept in an HDR histogram (nanosecond resolution, 3 digits). */
import * as hdr from 'hdr-histogram-js';

export interface LatencySummary {
  p50: number;
  p99: number;
  max: number;
  count: number;
}

export class LatencyHistogram {
  private readonly histogram: hdr.Histogram;

  /** `digits`: significant digits kept (default 3; about 136 KB of counts). */
  constructor(options: { digits?: 2 | 3 } = {}) {
    this.histogram = hdr.build({
      lowestDiscernibleValue: 1,
      highestTrackableValue: 3_600_000_000_000,
      numberOfSignificantValueDigits: options.digits ?? 3,
    });
  }

  /** One histogram holding every value of `parts` (a run's, from its VMs'). */
  static merged(parts: readonly LatencyHistogram[]): LatencyHistogram {
    const whole = new LatencyHistogram();
    for (const part of parts) whole.histogram.add(part.histogram);
    return whole;
  }

  recordMs(ms: number): void {
    this.histogram.recordValue(Math.max(1, Math.round(ms * 1e6)));
  }

  /** Microseconds, to 0.1 us. */
  summary(): LatencySummary {
    const h = this.histogram;
    const us = (ns: number) => Math.round(ns / 100) / 10;
    if (h.totalCount === 0) return { p50: 0, p99: 0, max: 0, count: 0 };
    return {
      p50: us(h.getValueAtPercentile(50)),
      p99: us(h.getValueAtPercentile(99)),
      max: us(h.maxValue),
      count: h.totalCount,
    };
  }
}
