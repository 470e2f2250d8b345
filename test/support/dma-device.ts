/**
 * One device's DMA queues with the test as the device: a workload submits read descriptors on real
 * rings, and the test takes them (`take`) and completes them (`complete`) in whatever order and
 * with whatever status it likes. Plus a guest memory manager for the workloads that page in or map.
 */
import type { Misbehaviour } from '../../guest/misbehave.ts';
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { DemandPager } from '../../guest/mm/demand-pager.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import type { DeviceQueues, GuestMm } from '../../guest/workloads/workload.ts';
import { CycleHistogram } from '../../shared/cycle-histogram.ts';
import { GuestMemory } from '../../shared/guest-memory.ts';
import {
  DMA_COMPLETION_WORDS,
  DMA_DESCRIPTOR_WORDS,
  DMA_STATUS_OK,
  type DmaDescriptor,
  decodeDmaDescriptor,
  encodeDmaCompletion,
  newDmaDescriptor,
} from '../../shared/records/dma-descriptor.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../shared/ring.ts';

export interface DmaDeviceOptions {
  /** log2 of the submission and completion rings (default 4). */
  log2Size?: number;
  index?: number;
  pasid?: number;
  misbehave?: Misbehaviour;
}

export function dmaDevice(options: DmaDeviceOptions = {}) {
  const geometry = {
    submit: { log2Size: options.log2Size ?? 4, recordWords: DMA_DESCRIPTOR_WORDS },
    complete: { log2Size: options.log2Size ?? 4, recordWords: DMA_COMPLETION_WORDS },
  };
  const completeAt = ringBytes(geometry.submit);
  const buffer = new SharedArrayBuffer(completeAt + ringBytes(geometry.complete));
  const queues: DeviceQueues = {
    index: options.index ?? 0,
    streamId: 0,
    pasid: options.pasid ?? 1,
    submit: new RingProducer(buffer, 0, geometry.submit),
    complete: new RingConsumer(buffer, completeAt, geometry.complete),
    cycles: new CycleHistogram(),
    misbehave: options.misbehave,
  };
  const submitted = new RingConsumer(buffer, 0, geometry.submit);
  const completions = new RingProducer(buffer, completeAt, geometry.complete);
  /** Descriptors taken and not completed yet. */
  const held: DmaDescriptor[] = [];
  /** Every descriptor ever taken, in order. */
  const seen: DmaDescriptor[] = [];

  /** Take every descriptor the workload has published. */
  function take(): DmaDescriptor[] {
    const out: DmaDescriptor[] = [];
    const n = submitted.poll();
    for (let i = 0; i < n; i++)
      out.push(decodeDmaDescriptor(submitted.words, submitted.at(i), newDmaDescriptor()));
    submitted.release(n);
    held.push(...out);
    seen.push(...out);
    return out;
  }

  /** Complete the `count` oldest held descriptors (default all) with `status`. */
  function complete(count = held.length, status = DMA_STATUS_OK): void {
    for (const d of held.splice(0, count)) {
      encodeDmaCompletion(completions.words, completions.claim(), d.tag, status, d.length);
      completions.commit();
    }
    completions.publish();
  }

  return { queues, take, complete, held, seen };
}

/** A guest memory manager with a TLB the test completes by hand: `completed` is what the IOMMU wrote. */
export function guestMm(memoryMiB = 2) {
  const memory = GuestMemory.allocate(memoryMiB);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  const pager = new DemandPager(memory, pages, spaces);
  const tlb = {
    /** Invalidations asked for, as [pasid, va]; each returns the next sync number. */
    invalidations: [] as [number, number][],
    /** The command queue is full: invalidateVa returns -1. */
    refuse: false,
    /** The number of the last sync the IOMMU completed. */
    completed: 0,
    invalidateVa(pasid: number, va: number): number {
      if (tlb.refuse) return -1;
      tlb.invalidations.push([pasid, va]);
      return tlb.invalidations.length;
    },
    syncCompleted(): number {
      return tlb.completed;
    },
  };
  const mm: GuestMm = { pager, spaces, pages, memoryWords: memory.words, tlb, ramSize: memory.size };
  return { mm, memory, pages, spaces, pager, tlb };
}
