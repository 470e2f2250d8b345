// The floors bench in quick mode, run once. Timing relations (spin < sleep and the like) are not
// asserted: on a shared 2-core machine any of them can fail by chance.
import { beforeAll, describe, expect, test } from 'vitest';
import { type Figure, type Floors, measureFloors } from '../../../host/bench/floors.ts';

let floors: Floors;

beforeAll(async () => {
  floors = await measureFloors({ quick: true });
});

function figures(f: Floors): Record<string, Figure> {
  return {
    spinUs: f.spinUs,
    spinP50Us: f.spinP50Us,
    spinP99Us: f.spinP99Us,
    sleepUs: f.sleepUs,
    sleepP50Us: f.sleepP50Us,
    sleepP99Us: f.sleepP99Us,
    ringRecordsPerS: f.ringRecordsPerS,
    clockNs: f.clockNs,
  };
}

describe('bench floors (quick)', () => {
  test('every figure has one finite positive value per repetition, and its median is the middle one', () => {
    expect(floors.quick).toBe(true);
    expect(floors.repetitions % 2).toBe(1);
    for (const [name, figure] of Object.entries(figures(floors))) {
      expect(figure.runs, name).toHaveLength(floors.repetitions);
      for (const value of [figure.median, ...figure.runs]) {
        expect(Number.isFinite(value), name).toBe(true);
        expect(value, name).toBeGreaterThan(0);
      }
      const sorted = [...figure.runs].sort((a, b) => a - b);
      expect(figure.median, name).toBe(sorted[sorted.length >> 1]);
    }
  });

  test('p99 is never below p50, per repetition and in the median', () => {
    for (const [p50, p99] of [
      [floors.spinP50Us, floors.spinP99Us],
      [floors.sleepP50Us, floors.sleepP99Us],
    ]) {
      expect(p99.median).toBeGreaterThanOrEqual(p50.median);
      p99.runs.forEach((value, r) => {
        expect(value).toBeGreaterThanOrEqual(p50.runs[r]);
      });
    }
  });

  test('percentiles come from real samples in every repetition', () => {
    for (const counts of [floors.samples.spin, floors.samples.sleep]) {
      expect(counts).toHaveLength(floors.repetitions);
      for (const n of counts) expect(n).toBeGreaterThan(0);
    }
  });

  test('echoed records come back intact in both modes', () => {
    expect(floors.mismatches.spin).toBe(0);
    expect(floors.mismatches.sleep).toBe(0);
  });

  test('the ring moves exactly the records the producer published, in order and whole', () => {
    const { consumed, produced } = floors.ringRecords;
    expect(consumed).toHaveLength(floors.repetitions);
    expect(consumed).toEqual(produced);
    for (const n of consumed) expect(n).toBeGreaterThan(0);
    expect(floors.mismatches.ring).toBe(0);
  });
});
