/**
 * A workload drives one device of a guest through its DMA queues. The guest's main loop calls
 * `poll()` whenever it wakes; `poll()` must never block.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import type { RingConsumer, RingProducer } from '../../shared/ring.ts';
import type { DemandPager } from '../mm/demand-pager.ts';
import { Idle } from './idle.ts';
import { SvaStream } from './sva-stream.ts';

/** The guest's handle on one device's work queue. */
export interface DeviceQueues {
  index: number;
  streamId: number;
  pasid: number;
  submit: RingProducer;
  complete: RingConsumer;
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

export function createWorkload(
  config: WorkloadConfig,
  device: DeviceQueues,
  pager: DemandPager,
  stats: GuestStats,
): Workload {
  switch (config.kind) {
    case 'sva-stream':
      return new SvaStream(config, device, pager, stats);
    case 'idle':
      return new Idle();
  }
}
