/**
 * sva-stream: the device reads a buffer of `pages` pages in the guest's address space from start to
 * end, in descriptors of 1 to 4 pages drawn from the seed (with `dmaBytes`: one page each, its first
 * `dmaBytes` bytes). Nothing is mapped beforehand: every page arrives through a page request (or a
 * stall) and the guest's demand pager, and the sandbox's oracle checks every byte the device read
 * against the seeded pattern.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { Prng } from '../../shared/prng.ts';
import { DMA_FLAG_VERIFY, type DmaDescriptor } from '../../shared/records/dma-descriptor.ts';
import type { DemandPager } from '../mm/demand-pager.ts';
import { DescriptorWorkload } from './descriptor-workload.ts';
import type { DeviceQueues } from './workload.ts';

/** Buffers start high in the 48-bit space so both page-table halves of the VA are exercised. */
export const SVA_STREAM_BASE = 0x7e00_0000_0000;
const MAX_PAGES_PER_DESCRIPTOR = 4;

export class SvaStream extends DescriptorWorkload {
  private readonly prng: Prng;
  /** Pages one descriptor may cover (drawn from 1 to this). */
  protected maxPagesPerDescriptor = MAX_PAGES_PER_DESCRIPTOR;

  constructor(
    config: WorkloadConfig,
    device: DeviceQueues,
    private readonly pager: DemandPager,
    stats: GuestStats,
  ) {
    super(config, device, stats, SVA_STREAM_BASE);
    this.prng = new Prng(config.seed ^ Math.imul(device.index + 1, 0x9e3779b9));
  }

  start(): void {
    this.pager.back(this.device.pasid, this.base, this.config.pages, this.config.seed);
  }

  protected fill(d: DmaDescriptor, _page: number, pagesLeft: number): number {
    const dmaBytes = this.config.dmaBytes;
    if (dmaBytes !== undefined) {
      // The first `dmaBytes` of one page: still a page request and a page-in per descriptor.
      d.length = dmaBytes;
      d.flags = DMA_FLAG_VERIFY;
      return 1;
    }
    const pages = Math.min(1 + this.prng.below(this.maxPagesPerDescriptor), pagesLeft);
    d.length = pages * PAGE_SIZE;
    d.flags = DMA_FLAG_VERIFY;
    return pages;
  }
}

/**
 * fault-storm: sva-stream at the highest fault rate the guest can take: one page per descriptor,
 * so every descriptor in flight is a page request in flight, to drive the queues into overflow.
 */
export class FaultStorm extends SvaStream {
  protected override maxPagesPerDescriptor = 1;
}
