/**
 * The physical IOMMU: a stream table (StreamID -> stage-1 context in the owning guest's RAM), the
 * translation walk, and the PRI path from devices to the IOPF layer and back.
 *
 * It never imports the registry: whoever owns an address space registers an IopfHandler for it
 * (design.md: the hardware reports faults through a handler interface).
 */
import type { GuestMemory } from '../../shared/guest-memory.ts';
import { F_STREAM_DISABLED } from '../../shared/records/event-types.ts';
import { type IopfHandler, IopfQueue } from './iopf.ts';
import type { PageRequest, PriEndpoint } from './page-request.ts';
import { type Stage1Context, type WalkResult, walkStage1 } from './stage1-walker.ts';

export interface TranslationStats {
  translations: number;
  faults: number;
  stage2Faults: number;
}

export class Iommu {
  readonly iopf: IopfQueue;
  readonly stats: TranslationStats = { translations: 0, faults: 0, stage2Faults: 0 };
  private readonly streams = new Map<number, Stage1Context>();
  private readonly endpoints = new Map<number, PriEndpoint>();
  private readonly handlers = new Map<number, IopfHandler>();

  constructor() {
    this.iopf = new IopfQueue(
      // A PASID without a handler of its own falls back to the RID's: with a nested stream the
      // guest owns the CD table, so every PASID's faults belong to the RID's attachment.
      (streamId, pasid) =>
        this.handlers.get(handlerKey(streamId, pasid)) ?? this.handlers.get(handlerKey(streamId, RID)),
      (streamId) => this.endpoints.get(streamId),
    );
  }

  /** Install a stream's stage-1 configuration (the STE pointing at the guest's CD table). */
  installStream(streamId: number, ctx: Stage1Context): void {
    this.streams.set(streamId, ctx);
  }

  removeStream(streamId: number): void {
    this.streams.delete(streamId);
  }

  /** Connect a device's PRI capability so that PRG responses reach it. */
  bindEndpoint(streamId: number, endpoint: PriEndpoint): void {
    this.endpoints.set(streamId, endpoint);
  }

  /**
   * Route the page requests of (stream, PASID) to `handler` (`pasid` undefined: the RID, which
   * also takes every PASID without a route of its own); `undefined` removes the route.
   */
  setFaultHandler(streamId: number, pasid: number | undefined, handler: IopfHandler | undefined): void {
    if (handler) this.handlers.set(handlerKey(streamId, pasid), handler);
    else this.handlers.delete(handlerKey(streamId, pasid));
  }

  /** Guest RAM behind a stream's stage 2 (identity for now), where its DMA lands. */
  memoryOf(streamId: number): GuestMemory | undefined {
    return this.streams.get(streamId)?.memory;
  }

  /** Translate one access; on failure `out` holds the fault (SMMUv3 event fields). */
  translate(streamId: number, pasid: number, va: number, access: number, out: WalkResult): boolean {
    this.stats.translations++;
    const ctx = this.streams.get(streamId);
    if (!ctx) {
      out.fault = F_STREAM_DISABLED;
      out.stage2 = false;
      this.stats.faults++;
      return false;
    }
    if (walkStage1(ctx, pasid, va, access, out)) return true;
    this.stats.faults++;
    if (out.stage2) this.stats.stage2Faults++;
    return false;
  }

  /** A Page Request Message from a device. */
  pageRequest(request: PageRequest): void {
    this.iopf.report(request);
  }
}

/** Handler key of the RID itself (PASIDs are 0..2^20-1; requests without a PASID use 0). */
const RID = -1;

function handlerKey(streamId: number, pasid: number | undefined): number {
  return streamId * 0x10_0001 + (pasid ?? RID) + 1;
}
