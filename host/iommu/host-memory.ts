/**
 * Host-physical memory as the IOMMU and DMA see it: every VM's guest RAM (a SharedArrayBuffer
 * shared with that VM only) is one region at its own host-physical base. Stage 2 maps guest
 * physical addresses onto these host-physical addresses; a device's DMA lands wherever the final
 * host-physical address resolves. Regions sit 64 GiB apart, so resolving an address is one division.
 */
import type { GuestMemory } from '../../shared/guest-memory.ts';

/** Host-physical distance between region bases; a region is at most this large. */
export const REGION_STRIDE = 2 ** 36;
/** Region 0 is never handed out: host-physical 0..64 GiB maps nothing. */
const FIRST_REGION = 1;
/** Regions end below 2^46, where anonymous user memory (which has no contents here) begins. */
const MAX_REGIONS = 1023;

export class HostMemory {
  private readonly regions: (GuestMemory | undefined)[] = [];

  /** Place `memory` in host-physical space; returns its base address. */
  register(memory: GuestMemory): number {
    if (memory.size > REGION_STRIDE)
      throw new RangeError(`a memory region is at most ${REGION_STRIDE} bytes`);
    let index = FIRST_REGION;
    while (this.regions[index] !== undefined) index++;
    if (index > MAX_REGIONS) throw new RangeError(`host memory holds at most ${MAX_REGIONS} regions`);
    this.regions[index] = memory;
    return index * REGION_STRIDE;
  }

  unregister(base: number): void {
    this.regions[base / REGION_STRIDE] = undefined;
  }

  /** The region holding host-physical `hpa`, or undefined (nothing there). */
  regionOf(hpa: number): GuestMemory | undefined {
    const index = Math.floor(hpa / REGION_STRIDE);
    const region = this.regions[index];
    // The offset by subtraction, not hpa % REGION_STRIDE: a floating-point remainder is a library call.
    return region !== undefined && hpa - index * REGION_STRIDE < region.size ? region : undefined;
  }
}
