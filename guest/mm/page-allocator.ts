/**
 * The guest's physical page allocator over guest RAM: a stack of free frame numbers. Frame 0 is
 * never handed out, so GPA 0 can mean "none" in the guest's own tables.
 */
import { type GuestMemory, PAGE_SHIFT, PAGE_WORDS } from '../../shared/guest-memory.ts';

export class PageAllocator {
  private readonly free: Int32Array;
  private top = 0;

  constructor(private readonly memory: GuestMemory) {
    this.free = new Int32Array(memory.pages);
    for (let frame = memory.pages - 1; frame >= 1; frame--) this.free[this.top++] = frame;
  }

  get available(): number {
    return this.top;
  }

  /** A zeroed page's GPA, or -1 when guest RAM is exhausted. */
  allocZeroed(): number {
    const gpa = this.alloc();
    if (gpa >= 0) this.memory.words.fill(0, gpa >>> 2, (gpa >>> 2) + PAGE_WORDS);
    return gpa;
  }

  /** A page's GPA with whatever it held, or -1 when guest RAM is exhausted. */
  alloc(): number {
    if (this.top === 0) return -1;
    return this.free[--this.top] << PAGE_SHIFT;
  }

  release(gpa: number): void {
    this.free[this.top++] = gpa >>> PAGE_SHIFT;
  }
}
