/**
 * sva-stream: the device reads a buffer of `pages` pages in the guest's address space from start to
 * end, in descriptors of 1 to 4 pages drawn from the seed. Nothing is mapped beforehand: every page
 * arrives through a page request and the guest's demand pager, and the sandbox's oracle checks
 * every byte the device read against the seeded pattern.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { Prng } from '../../shared/prng.ts';
import {
  DMA_FLAG_VERIFY,
  DMA_OP_READ,
  DMA_STATUS_OK,
  decodeDmaCompletion,
  encodeDmaDescriptor,
  newDmaDescriptor,
} from '../../shared/records/dma-descriptor.ts';
import type { DemandPager } from '../mm/demand-pager.ts';
import type { DeviceQueues, Workload } from './workload.ts';

/** Buffers start high in the 48-bit space so both page-table halves of the VA are exercised. */
export const SVA_STREAM_BASE = 0x7e00_0000_0000;
/** Each device of a VM streams over its own buffer. */
const DEVICE_STRIDE = 0x1_0000_0000;
const MAX_PAGES_PER_DESCRIPTOR = 4;

export class SvaStream implements Workload {
  private readonly base: number;
  private readonly prng: Prng;
  private readonly descriptor = newDmaDescriptor();
  private readonly completion = { tag: 0, status: 0, bytes: 0 };
  private nextPage = 0;
  private inFlightCount = 0;
  private quiesced = false;

  constructor(
    private readonly config: WorkloadConfig,
    private readonly device: DeviceQueues,
    private readonly pager: DemandPager,
    private readonly stats: GuestStats,
  ) {
    this.base = SVA_STREAM_BASE + device.index * DEVICE_STRIDE;
    this.prng = new Prng(config.seed ^ Math.imul(device.index + 1, 0x9e3779b9));
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  get done(): boolean {
    return this.inFlightCount === 0 && (this.quiesced || this.nextPage >= this.config.pages);
  }

  start(): void {
    this.pager.back(this.device.pasid, this.base, this.config.pages, this.config.seed);
  }

  quiesce(): void {
    this.quiesced = true;
  }

  poll(): number {
    return this.reap() + this.submit();
  }

  private reap(): number {
    const complete = this.device.complete;
    let reaped = 0;
    for (let ready = complete.poll(); ready > 0; ready = complete.poll()) {
      for (let i = 0; i < ready; i++) {
        decodeDmaCompletion(complete.words, complete.at(i), this.completion);
        if (this.completion.status === DMA_STATUS_OK) this.stats.dmaCompleted++;
        else this.stats.dmaFailed++;
      }
      complete.release(ready);
      this.inFlightCount -= ready;
      reaped += ready;
    }
    return reaped;
  }

  private submit(): number {
    const submit = this.device.submit;
    const d = this.descriptor;
    let submitted = 0;
    while (
      !this.quiesced &&
      this.nextPage < this.config.pages &&
      this.inFlightCount < this.config.queueDepth
    ) {
      const at = submit.claim();
      if (at < 0) break;
      const pages = Math.min(
        1 + this.prng.below(MAX_PAGES_PER_DESCRIPTOR),
        this.config.pages - this.nextPage,
      );
      d.opcode = DMA_OP_READ;
      d.pasid = this.device.pasid;
      d.tag = this.nextPage;
      d.length = pages * PAGE_SIZE;
      d.va = this.base + this.nextPage * PAGE_SIZE;
      d.flags = DMA_FLAG_VERIFY;
      encodeDmaDescriptor(submit.words, at, d);
      submit.commit();
      this.nextPage += pages;
      this.inFlightCount++;
      this.stats.dmaSubmitted++;
      submitted++;
    }
    submit.publish();
    return submitted;
  }
}
