/** u64 IOVA arithmetic and ranges, as the iommufd uAPI has them (inclusive `last`). */
export const U64_MAX = (1n << 64n) - 1n;

export interface IovaRange {
  start: bigint;
  last: bigint;
}

export function overlaps(a: IovaRange, start: bigint, last: bigint): boolean {
  return a.start <= last && start <= a.last;
}

/** Smallest power of two >= v (v >= 1). */
export function roundupPow2(v: bigint): bigint {
  let p = 1n;
  while (p < v) p <<= 1n;
  return p;
}

export function lowestSetBit(v: bigint): bigint {
  return v & -v;
}

export function alignUp(v: bigint, align: bigint): bigint {
  return ((v + align - 1n) / align) * align;
}

export function maxOf(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

export function minOf(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}
