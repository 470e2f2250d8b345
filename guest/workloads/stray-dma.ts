/**
 * stray-dma: the guest maps a buffer in its stage-1 table onto guest-physical addresses beyond its
 * RAM, which its IOAS (its stage 2) does not map, and has its device read it. Every access must
 * end in a stage-2 fault: the host's business, counted by the host, never a page request or event
 * in any guest, and the device moves no bytes.
 */
import type { GuestStats, WorkloadConfig } from '../../shared/control.ts';
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import {
  DMA_OP_READ,
  DMA_STATUS_OK,
  decodeDmaCompletion,
  encodeDmaDescriptor,
  newDmaDescriptor,
} from '../../shared/records/dma-descriptor.ts';
import type { AddressSpaces } from '../mm/address-spaces.ts';
import type { DeviceQueues, Workload } from './workload.ts';

export const STRAY_DMA_BASE = 0x6000_0000_0000;
const DEVICE_STRIDE = 0x1_0000_0000;

export class StrayDma implements Workload {
  private readonly base: number;
  private readonly descriptor = newDmaDescriptor();
  private readonly completion = { tag: 0, status: 0, bytes: 0 };
  private nextPage = 0;
  private inFlightCount = 0;
  private quiesced = false;

  constructor(
    private readonly config: WorkloadConfig,
    private readonly device: DeviceQueues,
    private readonly spaces: AddressSpaces,
    /** First guest-physical address past the VM's RAM (and so past its IOAS). */
    private readonly strayGpa: number,
    private readonly stats: GuestStats,
  ) {
    this.base = STRAY_DMA_BASE + device.index * DEVICE_STRIDE;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  get done(): boolean {
    return this.inFlightCount === 0 && (this.quiesced || this.nextPage >= this.config.pages);
  }

  start(): void {
    const table = this.spaces.table(this.device.pasid);
    for (let p = 0; p < this.config.pages; p++) {
      if (!table.map(this.base + p * PAGE_SIZE, this.strayGpa + p * PAGE_SIZE)) break;
    }
  }

  quiesce(): void {
    this.quiesced = true;
  }

  poll(): number {
    let moved = 0;
    const complete = this.device.complete;
    for (let ready = complete.poll(); ready > 0; ready = complete.poll()) {
      for (let i = 0; i < ready; i++) {
        decodeDmaCompletion(complete.words, complete.at(i), this.completion);
        if (this.completion.status === DMA_STATUS_OK) this.stats.dmaCompleted++;
        else this.stats.dmaFailed++;
      }
      complete.release(ready);
      this.inFlightCount -= ready;
      moved += ready;
    }
    const submit = this.device.submit;
    const d = this.descriptor;
    while (
      !this.quiesced &&
      this.nextPage < this.config.pages &&
      this.inFlightCount < this.config.queueDepth
    ) {
      const at = submit.claim();
      if (at < 0) break;
      d.opcode = DMA_OP_READ;
      d.pasid = this.device.pasid;
      d.tag = this.nextPage;
      d.length = PAGE_SIZE;
      d.va = this.base + this.nextPage * PAGE_SIZE;
      d.flags = 0;
      encodeDmaDescriptor(submit.words, at, d);
      submit.commit();
      this.nextPage++;
      this.inFlightCount++;
      this.stats.dmaSubmitted++;
      moved++;
    }
    submit.publish();
    return moved;
  }
}
