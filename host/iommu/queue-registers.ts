/**
 * The PROD and CONS registers of a physical SMMUv3 queue (spec 3.5): index + wrap in bits [n:0],
 * all 2^n slots usable (full is equal indices with different wraps), PROD bit 31 the overflow flag
 * OVFLG and CONS bit 31 its acknowledgement OVACKFLG. The PRI and event queues keep their own
 * overflow rules on top. The index arithmetic is shared/queue-index.ts's.
 */
import {
  MAX_QUEUE_LOG2_SIZE,
  queueAcknowledgeOverflow,
  queueAdvance,
  queueEmpty,
  queueFull,
  queueIndex,
  queueOverflowPending,
  queueToggleOverflow,
  queueUsed,
} from '../../shared/queue-index.ts';

export class QueueRegisters {
  readonly log2Size: number;
  readonly size: number;
  private prod = 0;
  private cons = 0;

  constructor(log2Size: number, what: string) {
    if (!Number.isInteger(log2Size) || log2Size < 1 || log2Size > MAX_QUEUE_LOG2_SIZE) {
      throw new RangeError(`${what} has 2^1..2^${MAX_QUEUE_LOG2_SIZE} entries; got log2 ${log2Size}`);
    }
    this.log2Size = log2Size;
    this.size = 1 << log2Size;
  }

  get empty(): boolean {
    return queueEmpty(this.prod, this.cons, this.log2Size);
  }

  get full(): boolean {
    return queueFull(this.prod, this.cons, this.log2Size);
  }

  /** Entries between CONS and PROD. */
  get occupancy(): number {
    return queueUsed(this.prod, this.cons, this.log2Size);
  }

  /** The overflow condition is active: OVFLG differs from OVACKFLG. */
  get overflowActive(): boolean {
    return queueOverflowPending(this.prod, this.cons);
  }

  /** PROD and CONS as the registers read (index + wrap, bit 31 the overflow flag). */
  get prodRegister(): number {
    return this.prod >>> 0;
  }

  get consRegister(): number {
    return this.cons >>> 0;
  }

  /** The slot PROD and CONS point at. */
  protected get prodSlot(): number {
    return queueIndex(this.prod, this.log2Size);
  }

  protected get consSlot(): number {
    return queueIndex(this.cons, this.log2Size);
  }

  /** Publish the entry at PROD (written before this, 3.5.2). */
  protected advanceProd(): void {
    this.prod = queueAdvance(this.prod, 1, this.log2Size);
  }

  protected advanceCons(): void {
    this.cons = queueAdvance(this.cons, 1, this.log2Size);
  }

  /** Toggle OVFLG: an overflow condition is raised. */
  protected raiseOverflow(): void {
    this.prod = queueToggleOverflow(this.prod);
  }

  /** CONS.OVACKFLG := PROD.OVFLG (Linux queue_sync_cons_ovf). False if nothing was pending. */
  protected acknowledge(): boolean {
    if (!this.overflowActive) return false;
    this.cons = queueAcknowledgeOverflow(this.prod, this.cons);
    return true;
  }
}
