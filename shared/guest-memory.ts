/**
 * Guest RAM: one SharedArrayBuffer that the host allocates for one VM and shares with that VM only.
 * Guest physical address (GPA) = byte offset into the buffer. Every view over it is made once here;
 * callers index these views directly on the hot path.
 */
export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;
export const PAGE_WORDS = PAGE_SIZE / 4;

/** The page-aligned base of `address` (exact for any address below 2^53). */
export function pageBase(address: number): number {
  return address - (address % PAGE_SIZE);
}

export class GuestMemory {
  readonly buffer: SharedArrayBuffer;
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly words: Int32Array;
  readonly pages: number;

  constructor(buffer: SharedArrayBuffer) {
    if (buffer.byteLength % PAGE_SIZE !== 0) {
      throw new RangeError(`guest RAM of ${buffer.byteLength} bytes is not a whole number of pages`);
    }
    this.buffer = buffer;
    this.size = buffer.byteLength;
    this.bytes = new Uint8Array(buffer);
    this.words = new Int32Array(buffer);
    this.pages = this.size >>> PAGE_SHIFT;
  }

  static allocate(memoryMiB: number): GuestMemory {
    return new GuestMemory(new SharedArrayBuffer(memoryMiB * 1024 * 1024));
  }

  /** [gpa, gpa + length) lies inside guest RAM. */
  contains(gpa: number, length: number): boolean {
    return gpa >= 0 && length >= 0 && gpa + length <= this.size;
  }

  /**
   * Write every page once so the kernel's first-touch cost is paid at start-up, not inside the
   * first faults' latency (docs/bench.md).
   */
  touch(): void {
    for (let w = 0; w < this.words.length; w += PAGE_WORDS) this.words[w] = 0;
  }
}
