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
  /**
   * Stalled reads terminated RAZ/WI: they completed with zeros, which are not the pattern and are
   * not checked against it (not a mismatch: the guest asked for RAZ/WI).
   */
  razReads = 0;
  readonly byVm = new Map<string, UnrecoverableFaults>();

  // Per watched device, by its slot (`device.observerSlot`): the device itself (to tell a slot
  // another oracle gave it), its owner's pattern seed and VM index.
  private readonly slotDevice: PciFunction[] = [];
  private readonly slotSeed: number[] = [];
  private readonly slotVm: number[] = [];
  /** Slots by device, for a device whose `observerSlot` another oracle set (watch time, rare). */
  private readonly slotOf = new WeakMap<PciFunction, number>();
  // Per VM, by index: its name, bytes verified, stale reads.
  private readonly vmNames: string[] = [];
  private readonly vmIndexOf = new Map<string, number>();
  private readonly vmVerified: number[] = [];
  private readonly vmStale: number[] = [];
  private readonly vmRaz: number[] = [];

  constructor(
    private readonly invariants: InvariantChecker,
    private readonly latency: LatencyHistogram,
  ) {}

  /** Bytes checked against the pattern, per VM (VMs with none left out). */
  get verifiedByVm(): Map<string, number> {
    return this.perVm(this.vmVerified);
  }

  /**
   * Reads whose bytes were not their VA's pattern, per VM: what a DMA through a stale translation
   * (a page the guest unmapped, invalidated and freed) returns. Must stay 0 (VMs with none left out).
   */
  get staleByVm(): Map<string, number> {
    return this.perVm(this.vmStale);
  }

  /** Stalled reads terminated RAZ/WI, per VM (VMs with none left out). */
  get razReadsByVm(): Map<string, number> {
    return this.perVm(this.vmRaz);
  }

  watch(device: PciFunction, owner: DeviceOwner): void {
    let vm = this.vmIndexOf.get(owner.vm);
    if (vm === undefined) {
      vm = this.vmNames.length;
      this.vmIndexOf.set(owner.vm, vm);
      this.vmNames.push(owner.vm);
      this.vmVerified.push(0);
      this.vmStale.push(0);
      this.vmRaz.push(0);
    }
    let slot = this.slotOf.get(device);
    if (slot === undefined) {
      slot = this.slotDevice.length;
      this.slotDevice.push(device);
      this.slotSeed.push(0);
      this.slotVm.push(0);
      this.slotOf.set(device, slot);
    }
    this.slotSeed[slot] = owner.seed;
    this.slotVm[slot] = vm;
    device.observerSlot = slot;
  }

  dmaRead(
    device: PciFunction,
    pasid: number,
    va: number,
    words: Int32Array,
    at: number,
    count: number,
  ): void {
    let slot = device.observerSlot;
    if (slot < 0 || slot >= this.slotDevice.length || this.slotDevice[slot] !== device) {
      slot = this.slotOf.get(device) ?? -1;
      if (slot < 0) return;
    }
    // The low 12 bits of the VA, exact for any integer VA below 2^53 (ToInt32 is modulo 2^32).
    const offset = va & (PAGE_SIZE - 1);
    const bad = verifyWords(words, at, count, this.slotSeed[slot], va - offset, offset >>> 2);
    const vm = this.slotVm[slot];
    if (bad < 0) {
      this.bytesVerified += count * 4;
      this.vmVerified[vm] += count * 4;
      return;
    }
    this.vmStale[vm]++;
    this.invariants.violation({
      rule: 'dma-data-mismatch',
      vm: this.vmNames[vm],
      device: device.name,
      detail: `PASID ${pasid} VA 0x${(va + bad * 4).toString(16)}: read 0x${(words[at + bad] >>> 0).toString(16)}, not the pattern`,
    });
  }

  razRead(device: PciFunction, _pasid: number, _va: number, _bytes: number): void {
    this.razReads++;
    const slot = this.slotOf.get(device);
    if (slot !== undefined) this.vmRaz[this.slotVm[slot]]++;
  }

  hostViolation(device: PciFunction, rule: string, detail: string): void {
    this.invariants.violation({ rule, vm: this.vmOf(device), device: device.name, detail });
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
    const vm = this.vmOf(device) ?? '';
    const counts = this.byVm.get(vm) ?? { stage1: 0, stage2: 0 };
    if (stage2) counts.stage2++;
    else counts.stage1++;
    this.byVm.set(vm, counts);
  }

  /** The VM that owns a watched device (undefined: not watched). */
  private vmOf(device: PciFunction): string | undefined {
    const slot = this.slotOf.get(device);
    return slot === undefined ? undefined : this.vmNames[this.slotVm[slot]];
  }

  private perVm(counts: number[]): Map<string, number> {
    const map = new Map<string, number>();
    for (let vm = 0; vm < counts.length; vm++) if (counts[vm] !== 0) map.set(this.vmNames[vm], counts[vm]);
    return map;
  }
}
