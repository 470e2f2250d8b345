/**
 * The calling process's memory, as far as the registry can see it: page-granular mappings that
 * IOAS_MAP pins from. `mmap()` hands out fresh page-aligned ranges; `munmap()` removes them, so a
 * later pin of that range fails with EFAULT like a pin of unmapped user memory does. Every page
 * has a pin count, the observable of the kernel selftests' check_refs.
 */
import { IommufdError } from './errors.ts';

export const PAGE_SIZE = 4096n;
const FIRST_VA = 0x1000_0000n;
/**
 * Frames of anonymous memory are numbered from here (host-physical 2^46 and up), above every frame
 * a backed mapping can name, so the two never collide; DMA to them finds no memory.
 */
const ANONYMOUS_FRAMES = 2 ** 34;
/** Unmapped gap left after each mapping, so neighbouring mmaps never touch. */
const GUARD = PAGE_SIZE;

export class UserMemory {
  /** Virtual page number -> page frame number. */
  private readonly pages = new Map<bigint, number>();
  private readonly pins = new Map<number, number>();
  private next = FIRST_VA;
  private nextFrame = ANONYMOUS_FRAMES;

  /**
   * Map `length` bytes. Without `backing` the pages are anonymous memory; with it they are the
   * host-physical pages from `backing.hpa` on (a VMM mapping its guest RAM), so that their frame
   * numbers are host-physical page numbers a stage 2 can point at.
   */
  mmap(length: bigint, backing?: { hpa: number }): bigint {
    if (typeof length !== 'bigint' || length <= 0n) {
      throw new IommufdError('EINVAL', 'mmap length must be a positive bigint');
    }
    const pages = (length + PAGE_SIZE - 1n) / PAGE_SIZE;
    const va = this.next;
    const firstFrame = backing ? backing.hpa / 4096 : this.nextFrame;
    if (!backing) this.nextFrame += Number(pages);
    for (let i = 0n; i < pages; i++) this.pages.set(va / PAGE_SIZE + i, firstFrame + Number(i));
    this.next = va + pages * PAGE_SIZE + GUARD;
    return va;
  }

  /** Remove whole pages of [va, va + length); pages still pinned stay pinned (like the kernel). */
  munmap(va: bigint, length: bigint): void {
    if (va % PAGE_SIZE !== 0n || length <= 0n) {
      throw new IommufdError('EINVAL', 'munmap needs a page-aligned address and a positive length');
    }
    const first = va / PAGE_SIZE;
    const last = (va + length - 1n) / PAGE_SIZE;
    for (let p = first; p <= last; p++) this.pages.delete(p);
  }

  /**
   * Pin every page of [va, va + length): returns their frames. EFAULT (and nothing pinned) if any
   * page is unmapped.
   */
  pin(va: bigint, length: bigint): number[] {
    const first = va / PAGE_SIZE;
    const last = (va + length - 1n) / PAGE_SIZE;
    const frames: number[] = [];
    for (let p = first; p <= last; p++) {
      const frame = this.pages.get(p);
      if (frame === undefined) {
        throw new IommufdError('EFAULT', `user address 0x${(p * PAGE_SIZE).toString(16)} is not mapped`);
      }
      frames.push(frame);
    }
    for (const frame of frames) this.pins.set(frame, (this.pins.get(frame) ?? 0) + 1);
    return frames;
  }

  unpin(frames: readonly number[]): void {
    for (const frame of frames) {
      const n = this.pins.get(frame) ?? 0;
      if (n <= 1) this.pins.delete(frame);
      else this.pins.set(frame, n - 1);
    }
  }

  /** Pin count of the page backing user address `va` (0 if unmapped or not pinned). */
  pinCount(va: bigint): number {
    const frame = this.pages.get(va / PAGE_SIZE);
    return frame === undefined ? 0 : (this.pins.get(frame) ?? 0);
  }

  /** Pages pinned at least once, over the whole process. */
  get pinnedPages(): number {
    return this.pins.size;
  }
}
