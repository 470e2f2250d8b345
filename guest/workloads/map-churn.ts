/**
 * map-churn: the device reads a demand-paged buffer round and round while the guest keeps
 * unmapping pages under it: clear the stage-1 entry, CMD_TLBI_NH_VA, CMD_SYNC, and only once the
 * SMMU has signalled the sync does the page go back to the allocator, scrubbed. A DMA after that
 * must fault and page in afresh; one that still used the old translation would read the scrubbed
 * (or reused) page, which the host's oracle counts as a stale-translation use.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE, PAGE_WORDS } from '../../shared/guest-memory.ts';
import { Prng } from '../../shared/prng.ts';
import { DMA_FLAG_VERIFY, type DmaDescriptor } from '../../shared/records/dma-descriptor.ts';
import { DescriptorWorkload } from './descriptor-workload.ts';
import type { DeviceQueues, GuestMm } from './workload.ts';

export const MAP_CHURN_BASE = 0x5000_0000_0000;
/** Times the device goes round the buffer. */
const ROUNDS = 4;
/** Reads submitted between two unmaps. */
const READS_PER_UNMAP = 4;
/** Unmapped pages waiting for their sync before they are freed. */
const PENDING_FREES = 64;

export class MapChurn extends DescriptorWorkload {
  private readonly prng: Prng;
  private readonly pendingGpa = new Float64Array(PENDING_FREES);
  private readonly pendingSync = new Float64Array(PENDING_FREES);
  private pendingHead = 0;
  private pendingCount = 0;
  private readsSinceUnmap = 0;

  constructor(
    config: WorkloadConfig,
    device: DeviceQueues,
    private readonly mm: GuestMm,
    private readonly counters: GuestStats,
  ) {
    super(config, device, counters, MAP_CHURN_BASE);
    this.prng = new Prng(config.seed ^ 0x5bd1e995 ^ device.index);
  }

  protected override get totalPages(): number {
    return this.config.pages * ROUNDS;
  }

  protected override vaOf(page: number): number {
    return this.base + (page % this.config.pages) * PAGE_SIZE;
  }

  start(): void {
    this.mm.pager.back(this.device.pasid, this.base, this.config.pages, this.config.seed);
  }

  override poll(): number {
    const moved = super.poll();
    this.freeSynced();
    if (!this.done && this.readsSinceUnmap >= READS_PER_UNMAP) this.unmapOne();
    return moved;
  }

  protected fill(d: DmaDescriptor): number {
    d.length = PAGE_SIZE;
    d.flags = DMA_FLAG_VERIFY;
    this.readsSinceUnmap++;
    return 1;
  }

  /** Unmap a random resident page of the buffer and invalidate it; free it once the sync is done. */
  private unmapOne(): void {
    if (this.pendingCount === PENDING_FREES) return;
    const va = this.base + this.prng.below(this.config.pages) * PAGE_SIZE;
    const gpa = this.mm.spaces.table(this.device.pasid).unmap(va);
    this.readsSinceUnmap = 0;
    if (gpa < 0) return;
    const sync = this.mm.tlb.invalidateVa(this.device.pasid, va);
    const slot = (this.pendingHead + this.pendingCount) % PENDING_FREES;
    this.pendingGpa[slot] = gpa;
    // No room for the TLBI: the page is never freed until a later sync covers everything before it.
    this.pendingSync[slot] = sync >= 0 ? sync : Number.POSITIVE_INFINITY;
    this.pendingCount++;
    this.counters.unmaps++;
  }

  /** Pages whose invalidation the SMMU has completed go back to the allocator, scrubbed. */
  private freeSynced(): void {
    const completed = this.mm.tlb.syncCompleted();
    while (this.pendingCount > 0 && this.pendingSync[this.pendingHead] <= completed) {
      const gpa = this.pendingGpa[this.pendingHead];
      this.mm.memoryWords.fill(0, gpa / 4, gpa / 4 + PAGE_WORDS);
      this.mm.pages.release(gpa);
      this.pendingHead = (this.pendingHead + 1) % PENDING_FREES;
      this.pendingCount--;
    }
  }
}
