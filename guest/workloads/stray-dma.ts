/**
 * stray-dma: the guest maps a buffer in its stage-1 table onto guest-physical addresses beyond its
 * RAM, which its IOAS (its stage 2) does not map, and has its device read it. Every access must
 * end in a stage-2 fault: the host's business, counted by the host, never a page request or event
 * in any guest, and the device moves no bytes.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import type { DmaDescriptor } from '../../shared/records/dma-descriptor.ts';
import type { AddressSpaces } from '../mm/address-spaces.ts';
import { DescriptorWorkload } from './descriptor-workload.ts';
import type { DeviceQueues } from './workload.ts';

export const STRAY_DMA_BASE = 0x6000_0000_0000;

export class StrayDma extends DescriptorWorkload {
  constructor(
    config: WorkloadConfig,
    device: DeviceQueues,
    private readonly spaces: AddressSpaces,
    /** First guest-physical address past the VM's RAM (and so past its IOAS). */
    private readonly strayGpa: number,
    stats: GuestStats,
  ) {
    super(config, device, stats, STRAY_DMA_BASE);
  }

  start(): void {
    const table = this.spaces.table(this.device.pasid);
    for (let p = 0; p < this.config.pages; p++) {
      if (!table.map(this.base + p * PAGE_SIZE, this.strayGpa + p * PAGE_SIZE)) break;
    }
  }

  protected fill(d: DmaDescriptor): number {
    d.length = PAGE_SIZE;
    d.flags = 0;
    return 1;
  }
}
