/**
 * 64-bit addresses travel as two Int32 words (low, high) in records and page tables; in JS they are
 * plain numbers, exact below 2^53, which covers every 48-bit VA, IPA and PA the sandbox models.
 * BigInt stays off the hot path (docs/bench.md: boxed 64-bit values are ~14x slower).
 */
const TWO_32 = 0x1_0000_0000;

export function addressLow(address: number): number {
  return address >>> 0;
}

export function addressHigh(address: number): number {
  return Math.floor(address / TWO_32) >>> 0;
}

export function joinAddress(low: number, high: number): number {
  return (high >>> 0) * TWO_32 + (low >>> 0);
}
