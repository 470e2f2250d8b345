/**
 * Watches every device's DMA: checks each word read against the seeded pattern of the address
 * space's owner, records fault round trips, and counts faults no page request could recover.
 */

import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { verifyWords } from '../../shared/pattern.ts';
import type { DmaObserver, PciFunction } from '../devices/pci-function.ts';
import type { InvariantChecker } from './invariants.ts';
import type { LatencyHistogram } from './latency.ts';

export interface DeviceOwner {
  vm: string;
  /** Pattern seed of the owner's workload. */
  seed: number;
}

export class DmaOracle implements DmaObserver {
  bytesVerified = 0;
  unrecoverableFaults = 0;
  private readonly owners = new Map<PciFunction, DeviceOwner>();

  constructor(
    private readonly invariants: InvariantChecker,
    private readonly latency: LatencyHistogram,
  ) {}

  watch(device: PciFunction, owner: DeviceOwner): void {
    this.owners.set(device, owner);
  }

  dmaRead(
    device: PciFunction,
    pasid: number,
    va: number,
    words: Int32Array,
    at: number,
    count: number,
  ): void {
    const owner = this.owners.get(device);
    if (!owner) return;
    const offset = va % PAGE_SIZE;
    const bad = verifyWords(words, at, count, owner.seed, va - offset, offset >>> 2);
    if (bad < 0) {
      this.bytesVerified += count * 4;
      return;
    }
    this.invariants.violation({
      rule: 'dma-data-mismatch',
      vm: owner.vm,
      device: device.name,
      detail: `PASID ${pasid} VA 0x${(va + bad * 4).toString(16)}: read 0x${(words[at + bad] >>> 0).toString(16)}, not the pattern`,
    });
  }

  faultResolved(_device: PciFunction, ms: number): void {
    this.latency.recordMs(ms);
  }

  unrecoverableFault(): void {
    this.unrecoverableFaults++;
  }
}
