/**
 * The PROD and CONS registers of a physical SMMUv3 queue (spec 3.5): index + wrap in bits [n:0],
 * all 2^n slots usable (full is equal indices with different wraps), PROD bit 31 the overflow flag
 * OVFLG and CONS bit 31 its acknowledgement OVACKFLG. The PRI and event queues keep their own
 * overflow rules on top.
 */
const OVF = 0x8000_0000 | 0;

export class QueueRegisters {
  readonly log2Size: number;
  readonly size: number;
  private readonly wrapMask: number;
  private readonly indexMask: number;
  private prod = 0;
  private cons = 0;

  constructor(log2Size: number, what: string) {
    if (!Number.isInteger(log2Size) || log2Size < 1 || log2Size > 19) {
      throw new RangeError(`${what} has 2^1..2^19 entries; got log2 ${log2Size}`);
    }
    this.log2Size = log2Size;
    this.size = 1 << log2Size;
    this.indexMask = this.size - 1;
    this.wrapMask = (2 << log2Size) - 1;
  }

  get empty(): boolean {
    return ((this.prod ^ this.cons) & this.wrapMask) === 0;
  }

  get full(): boolean {
    return ((this.prod ^ this.cons) & this.wrapMask) === this.size;
  }

  /** Entries between CONS and PROD. */
  get occupancy(): number {
    return ((this.prod & this.wrapMask) - (this.cons & this.wrapMask)) & this.wrapMask;
  }

  /** The overflow condition is active: OVFLG differs from OVACKFLG. */
  get overflowActive(): boolean {
    return ((this.prod ^ this.cons) & OVF) !== 0;
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
    return this.prod & this.indexMask;
  }

  protected get consSlot(): number {
    return this.cons & this.indexMask;
  }

  /** Publish the entry at PROD (written before this, 3.5.2). */
  protected advanceProd(): void {
    this.prod = (this.prod & OVF) | ((this.prod + 1) & this.wrapMask);
  }

  protected advanceCons(): void {
    this.cons = (this.cons & OVF) | ((this.cons + 1) & this.wrapMask);
  }

  /** Toggle OVFLG: an overflow condition is raised. */
  protected raiseOverflow(): void {
    this.prod ^= OVF;
  }

  /** CONS.OVACKFLG := PROD.OVFLG (Linux queue_sync_cons_ovf). False if nothing was pending. */
  protected acknowledge(): boolean {
    if (!this.overflowActive) return false;
    this.cons = (this.cons & ~OVF) | (this.prod & OVF);
    return true;
  }
}
