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

/** Faults no page request could recover, per VM, split by whose they are. */
export interface UnrecoverableFaults {
  /** In the guest's own tables (stage 1) on a device without usable PRI. */
  stage1: number;
  /** At stage 2: the host's, counted here and never delivered to any guest. */
  stage2: number;
}

export class DmaOracle implements DmaObserver {
  bytesVerified = 0;
  unrecoverableFaults = 0;
  readonly byVm = new Map<string, UnrecoverableFaults>();
  /** Bytes checked against the pattern, per VM. */
  readonly verifiedByVm = new Map<string, number>();
  /**
   * Reads whose bytes were not their VA's pattern, per VM: what a DMA through a stale translation
   * (a page the guest unmapped, invalidated and freed) returns. Must stay 0.
   */
  readonly staleByVm = new Map<string, number>();
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
      this.verifiedByVm.set(owner.vm, (this.verifiedByVm.get(owner.vm) ?? 0) + count * 4);
      return;
    }
    this.staleByVm.set(owner.vm, (this.staleByVm.get(owner.vm) ?? 0) + 1);
    this.invariants.violation({
      rule: 'dma-data-mismatch',
      vm: owner.vm,
      device: device.name,
      detail: `PASID ${pasid} VA 0x${(va + bad * 4).toString(16)}: read 0x${(words[at + bad] >>> 0).toString(16)}, not the pattern`,
    });
  }

  hostViolation(device: PciFunction, rule: string, detail: string): void {
    this.invariants.violation({ rule, vm: this.owners.get(device)?.vm, device: device.name, detail });
  }

  faultResolved(_device: PciFunction, ms: number): void {
    this.latency.recordMs(ms);
  }

  unrecoverableFault(
    device: PciFunction,
    _pasid: number,
    _va: number,
    _eventType: number,
    stage2: boolean,
  ): void {
    this.unrecoverableFaults++;
    const vm = this.owners.get(device)?.vm ?? '';
    const counts = this.byVm.get(vm) ?? { stage1: 0, stage2: 0 };
    if (stage2) counts.stage2++;
    else counts.stage1++;
    this.byVm.set(vm, counts);
  }
}
