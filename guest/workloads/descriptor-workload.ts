/**
 * What every DMA workload shares: it walks a buffer of `config.pages` pages, submitting read
 * descriptors while fewer than `config.queueDepth` are in flight, and reaps their completions.
 * A workload says only where its buffer is (`start`) and how the next descriptor looks (`fill`).
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import {
  DMA_OP_READ,
  DMA_STATUS_OK,
  type DmaDescriptor,
  decodeDmaCompletion,
  encodeDmaDescriptor,
  newDmaDescriptor,
} from '../../shared/records/dma-descriptor.ts';
import type { DeviceQueues, Workload } from './workload.ts';

/** Each device of a VM works on its own buffer, this far apart in VA. */
export const DEVICE_STRIDE = 0x1_0000_0000;
/**
 * Submit times are kept by tag modulo this: the tags in flight (page numbers) span at most
 * queueDepth (512) descriptors of up to 4 pages each.
 */
const SUBMIT_SLOTS = 4096;

export abstract class DescriptorWorkload implements Workload {
  /** VA of this device's buffer. */
  protected readonly base: number;
  private readonly descriptor = newDmaDescriptor();
  private readonly completion = { tag: 0, status: 0, bytes: 0 };
  private readonly submittedAt = new Float64Array(SUBMIT_SLOTS);
  private nextPage = 0;
  private inFlightCount = 0;
  private quiesced = false;

  constructor(
    protected readonly config: WorkloadConfig,
    protected readonly device: DeviceQueues,
    private readonly stats: GuestStats,
    bufferBase: number,
  ) {
    this.base = bufferBase + device.index * DEVICE_STRIDE;
  }

  abstract start(): void;

  /**
   * Describe the transfer starting at page `page` of the buffer (opcode, PASID, VA and tag are
   * set already): set its length and flags; return how many pages it covers (at most `pagesLeft`).
   */
  protected abstract fill(d: DmaDescriptor, page: number, pagesLeft: number): number;

  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Pages the workload reads in all (the buffer once, unless a workload goes round it again). */
  protected get totalPages(): number {
    return this.config.pages;
  }

  /** VA of the `page`-th page read. */
  protected vaOf(page: number): number {
    return this.base + page * PAGE_SIZE;
  }

  get done(): boolean {
    return this.inFlightCount === 0 && (this.quiesced || this.nextPage >= this.totalPages);
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
      const now = performance.now();
      for (let i = 0; i < ready; i++) {
        decodeDmaCompletion(complete.words, complete.at(i), this.completion);
        this.device.cycles.record((now - this.submittedAt[this.completion.tag & (SUBMIT_SLOTS - 1)]) * 1000);
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
    while (!this.quiesced && this.nextPage < this.totalPages && this.inFlightCount < this.config.queueDepth) {
      const at = submit.claim();
      if (at < 0) break;
      d.opcode = DMA_OP_READ;
      d.pasid = this.device.misbehave ? this.device.misbehave.dmaPasid(this.device.pasid) : this.device.pasid;
      d.tag = this.nextPage;
      d.va = this.vaOf(this.nextPage);
      this.nextPage += this.fill(d, this.nextPage, this.totalPages - this.nextPage);
      encodeDmaDescriptor(submit.words, at, d);
      this.submittedAt[d.tag & (SUBMIT_SLOTS - 1)] = performance.now();
      submit.commit();
      this.inFlightCount++;
      this.stats.dmaSubmitted++;
      submitted++;
    }
    submit.publish();
    return submitted;
  }
}
