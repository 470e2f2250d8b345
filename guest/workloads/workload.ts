/**
 * A workload drives one device of a guest through its DMA queues. The guest's main loop calls
 * `poll()` whenever it wakes; `poll()` must never block.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import type { CycleHistogram } from '../../shared/cycle-histogram.ts';
import type { RingConsumer, RingProducer } from '../../shared/ring.ts';
import type { Misbehaviour } from '../misbehave.ts';
import type { AddressSpaces } from '../mm/address-spaces.ts';
import type { DemandPager } from '../mm/demand-pager.ts';
import type { PageAllocator } from '../mm/page-allocator.ts';
import { Idle } from './idle.ts';
import { MapChurn } from './map-churn.ts';
import { StrayDma } from './stray-dma.ts';
import { FaultStorm, SvaStream } from './sva-stream.ts';

/** The guest's handle on one device's work queue. */
export interface DeviceQueues {
  index: number;
  streamId: number;
  pasid: number;
  submit: RingProducer;
  complete: RingConsumer;
  /** The guest's DMA cycles: from a descriptor's submit to its completion seen here. */
  cycles: CycleHistogram;
  /** A hostile guest's hook: which PASID each descriptor names (topology `misbehave`). */
  misbehave?: Misbehaviour;
}

export interface Workload {
  start(): void;
  /** Consume completions and submit more work; returns how many records it moved. */
  poll(): number;
  /** Stop submitting; in-flight work still completes. */
  quiesce(): void;
  readonly inFlight: number;
  readonly done: boolean;
}

/** The guest memory manager, as workloads use it. */
export interface GuestMm {
  pager: DemandPager;
  spaces: AddressSpaces;
  pages: PageAllocator;
  /** Guest RAM as words, to scrub freed pages. */
  memoryWords: Int32Array;
  /** IOTLB invalidation through the vIOMMU driver (TLBI + SYNC or its VT-d pair, and its completion). */
  tlb: { invalidateVa(pasid: number, va: number): number; syncCompleted(): number };
  /** Bytes of guest RAM: the first guest-physical address past it. */
  ramSize: number;
}

export function createWorkload(
  config: WorkloadConfig,
  device: DeviceQueues,
  mm: GuestMm,
  stats: GuestStats,
): Workload {
  switch (config.kind) {
    case 'sva-stream':
      return new SvaStream(config, device, mm.pager, stats);
    case 'fault-storm':
      return new FaultStorm(config, device, mm.pager, stats);
    case 'map-churn':
      return new MapChurn(config, device, mm, stats);
    case 'stray-dma':
      return new StrayDma(config, device, mm.spaces, mm.ramSize, stats);
    case 'idle':
      return new Idle();
  }
}
