/**
 * One physical IOMMU of the host: its IOTLB, its PRI queue and its event queue, both shared by
 * every device behind it, and the host driver's IRQ threads that drain them (page requests into
 * the IOPF layer; event records to the stall bridge or the stream's vIOMMU). The Iommu model holds
 * every instance of the host; each stream sits behind one (Iommu.placeStream).
 */

import type { EvtqEntry } from '../../shared/records/evtq-entry.ts';
import { Iotlb } from './iotlb.ts';
import type { PageRequest } from './page-request.ts';
import { EvtqThread, PhysicalEventQueue } from './physical-event-queue.ts';
import { type AutoResponder, PhysicalPriQueue } from './physical-queue.ts';
import { PriqThread } from './priq-thread.ts';

/** Big enough that no topology's outstanding page requests (its PRI credits) can fill it. */
export const DEFAULT_PRIQ_LOG2 = 12;
/** The event queue's default: as big, so that only a topology that asks for less loses events. */
export const DEFAULT_EVTQ_LOG2 = 12;
export const DEFAULT_IOMMU_NAME = 'iommu0';

export interface IommuInstanceOptions {
  name: string;
  /** The physical PRI queue: 2^priqLog2 entries. */
  priqLog2: number;
  /** The physical event queue: 2^evtqLog2 entries (default DEFAULT_EVTQ_LOG2). */
  evtqLog2?: number;
  iotlbEntries?: number;
  iotlbWays?: number;
}

/** What an instance needs from the Iommu model that holds it. */
export interface IommuInstanceWiring {
  /** Entries the IRQ thread handles per turn (default: one queue's worth). */
  weight?: number;
  /** The IOPF layer (the PRI thread reports into it). */
  iopf: { report(r: PageRequest): void };
  /** Drop the IOPF layer's partial groups of the streams behind `instance`. */
  discardPartial(instance: IommuInstance): number;
  autoRespond: AutoResponder;
  /** One event record the event thread drained (a stall, or a fault for the stream's vIOMMU). */
  handleEvent(e: Readonly<EvtqEntry>): void;
  /** Stall records that can wait at once for room in the event queue (the stall model's STAGs). */
  stallCapacity: number;
  /** The host loops the PRI thread wakes. */
  requesters: { wake(requester: number): void };
  onError?(error: unknown): void;
  /** How an IRQ thread gets its next turn (default: setImmediate). */
  schedule?(turn: () => void): void;
}

export class IommuInstance {
  readonly name: string;
  readonly iotlb: Iotlb;
  readonly priq: PhysicalPriQueue;
  readonly thread: PriqThread;
  readonly evtq: PhysicalEventQueue;
  readonly evtqThread: EvtqThread;
  /** Requesters (the sandbox's VMs) with a PRI device behind this IOMMU. */
  readonly requesters = new Set<number>();

  constructor(
    readonly index: number,
    options: IommuInstanceOptions,
    wiring: IommuInstanceWiring,
  ) {
    this.name = options.name;
    this.iotlb = new Iotlb(options.iotlbEntries ?? 4096, options.iotlbWays ?? 4);
    this.priq = new PhysicalPriQueue(options.priqLog2, wiring.autoRespond);
    this.thread = new PriqThread(this.priq, {
      weight: wiring.weight ?? this.priq.size,
      iopf: wiring.iopf,
      discardPartial: () => wiring.discardPartial(this),
      requesters: wiring.requesters,
      onError: wiring.onError,
      schedule: wiring.schedule,
    });
    this.evtq = new PhysicalEventQueue(options.evtqLog2 ?? DEFAULT_EVTQ_LOG2, wiring.stallCapacity);
    this.evtqThread = new EvtqThread(this.evtq, {
      weight: wiring.weight ?? this.evtq.size,
      handle: wiring.handleEvent,
      onError: wiring.onError,
      schedule: wiring.schedule,
    });
  }

  /** Attribution arrays for requesters 0..count-1. */
  sizeRequesters(count: number): void {
    this.priq.setRequesters(count, this.requesters.size);
    this.thread.setRequesters(count);
  }
}
