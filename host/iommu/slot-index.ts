/**
 * An open-addressing index of slot numbers, for models that keep their entries in typed-array slots
 * (the stall model, stall.ts): the keys live in the owner's arrays, so a cell holds only a slot
 * number and the index asks `hashOf(slot)` for its home. Linear probing with backward-shift
 * deletion, so there are no tombstones to decay; a lookup probes `cells` from the key's home with
 * `mask` and compares keys in the owner's arrays, allocating nothing.
 */

/** Slot numbers by the hash of their key; a free cell holds -1. */
export class SlotIndex {
  readonly cells: Int32Array;
  readonly mask: number;

  constructor(
    slots: number,
    private readonly hashOf: (slot: number) => number,
  ) {
    let size = 2;
    while (size < slots * 2) size *= 2;
    this.cells = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  insert(slot: number): void {
    const { cells, mask } = this;
    let i = this.hashOf(slot) & mask;
    while (cells[i] >= 0) i = (i + 1) & mask;
    cells[i] = slot;
  }

  remove(slot: number): void {
    const { cells, mask } = this;
    let i = this.hashOf(slot) & mask;
    while (cells[i] !== slot) {
      if (cells[i] < 0) return;
      i = (i + 1) & mask;
    }
    for (let j = (i + 1) & mask; cells[j] >= 0; j = (j + 1) & mask) {
      const home = this.hashOf(cells[j]) & mask;
      // The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
      const reachable = i <= j ? home > i && home <= j : home > i || home <= j;
      if (!reachable) {
        cells[i] = cells[j];
        i = j;
      }
    }
    cells[i] = -1;
  }
}

/** One step of a key hash: fold `value` into `h`. */
export function mix(h: number, value: number): number {
  const x = Math.imul(h ^ value, 0x9e3779b1);
  return x ^ (x >>> 16);
}

/** MurmurHash3's finaliser: every input bit reaches the low bits that pick the home cell. */
export function finish(h: number): number {
  let x = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return x ^ (x >>> 16);
}
