/**
 * The host driver's PRI-queue interrupt thread (Linux arm_smmu_priq_thread and prq_event_thread,
 * docs/queues.md): consumes page requests into the IOPF layer (irq-thread.ts has the
 * draining, budget and teardown rules). Recovering from an overflow it drops the IOPF layer's
 * partial groups of the devices behind its IOMMU (their Last was discarded and answered by the
 * queue) before the acknowledgement; at the end of each pass it wakes the host loops of the VMs
 * whose requests it handed on.
 */
import { decodePriqEntry, newPriqEntry } from '../../shared/records/priq-entry.ts';
import { IrqThread, type IrqThreadOptions, type IrqThreadStats } from './irq-thread.ts';
import { newPageRequest, type PageRequest } from './page-request.ts';
import type { PhysicalPriQueue } from './physical-queue.ts';

export interface PriqThreadOptions extends IrqThreadOptions {
  /** The IOPF layer the thread hands each page request to (iommu_report_device_fault). */
  iopf: { report(r: PageRequest): void };
  /** iopf_queue_discard_partial for the devices behind this IOMMU; returns the groups dropped. */
  discardPartial(): number;
  /** The host loops of the requesters whose entries the thread handed on, woken once a pass. */
  requesters?: { wake(requester: number): void };
}

export interface PriqThreadStats extends IrqThreadStats {
  /** Partial groups dropped when recovering from an overflow. */
  partialsDiscarded: number;
}

export class PriqThread extends IrqThread {
  readonly stats: PriqThreadStats = { passes: 0, deferredPasses: 0, partialsDiscarded: 0 };
  private readonly entry = newPriqEntry();
  private readonly request = newPageRequest();
  /** Requesters whose entries this pass handed on, to wake once at its end. */
  private touched = new Uint8Array(0);
  private touchedList = new Int32Array(0);
  private touchedCount = 0;

  constructor(
    private readonly queue: PhysicalPriQueue,
    private readonly options: PriqThreadOptions,
  ) {
    super(queue, options);
  }

  /** The page request the thread holds now (meaningful inside `onHolding`). */
  get heldRequest(): Readonly<PageRequest> {
    return this.request;
  }

  setRequesters(count: number): void {
    if (count <= this.touched.length) return;
    this.touched = new Uint8Array(count);
    this.touchedList = new Int32Array(count);
    this.touchedCount = 0;
  }

  protected take(): boolean {
    const q = this.queue;
    const at = q.pop();
    if (at < 0) return false;
    const e = this.entry;
    const r = this.request;
    decodePriqEntry(q.words, at, e);
    r.streamId = e.streamId;
    r.pasid = e.substreamId;
    r.ssv = e.ssv;
    r.address = e.address;
    r.prgIndex = e.prgIndex;
    r.read = e.read;
    r.write = e.write;
    r.exec = e.exec;
    r.privileged = e.privileged;
    r.last = e.last;
    this.touch(q.requesterOfLast);
    return true;
  }

  protected handOn(): void {
    this.options.iopf.report(this.request);
  }

  protected override recoverOverflow(): void {
    this.stats.partialsDiscarded += this.options.discardPartial();
  }

  protected override endPass(): void {
    const requesters = this.options.requesters;
    for (let i = 0; i < this.touchedCount; i++) {
      const requester = this.touchedList[i];
      this.touched[requester] = 0;
      requesters?.wake(requester);
    }
    this.touchedCount = 0;
  }

  private touch(requester: number): void {
    if (requester < 0 || requester >= this.touched.length || this.touched[requester] !== 0) return;
    this.touched[requester] = 1;
    this.touchedList[this.touchedCount++] = requester;
  }
}
