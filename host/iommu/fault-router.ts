/**
 * Where the IOMMU core sends a page-request group and where its answer goes: the handler of its
 * (stream, PASID), which the registry sets when it attaches a domain with a fault queue, and the
 * PRI endpoint of its stream. The routing rule is Linux's find_fault_handler(): a PASID without a
 * route of its own reports through its RID only when the guest owns the PASID table (an SMMUv3
 * nested domain on the RID: iommu_ops.user_pasid_table), or under the device-owner routing a
 * topology can ask for to measure it. Anything else has no handler, and the IOPF layer answers
 * the group INVALID at once: a PASID's faults never reach whoever holds the RID (on a shared
 * function, another VM).
 */
import type { IopfHandler } from './iopf.ts';
import type { PriEndpoint } from './page-request.ts';

/** What the IOPF layer asks of its routing (FaultRouter; a test's or a planted bug's stand-in). */
export interface IopfRoutes {
  /** The handler of (stream, PASID)'s groups; undefined: the group is answered INVALID at once. */
  handlerOf(streamId: number, pasid: number): IopfHandler | undefined;
  /** The PRI endpoint a group's answer goes to. */
  endpointOf(streamId: number): PriEndpoint | undefined;
}

/** Handler key of the RID itself (PASIDs are 0..2^20-1; requests without a PASID use 0). */
const RID = -1;
const KEY_SPAN = 0x10_0001;

function handlerKey(streamId: number, pasid: number | undefined): number {
  return streamId * KEY_SPAN + (pasid ?? RID) + 1;
}

export class FaultRouter implements IopfRoutes {
  private readonly handlers = new Map<number, IopfHandler>();
  private readonly endpoints = new Map<number, PriEndpoint>();
  /** Streams whose RID is attached to a nested domain with the guest's own PASID (CD) table. */
  private readonly userPasidTables = new Set<number>();

  constructor(
    /** Device-owner routing: every PASID without a route of its own reports through its RID's. */
    private readonly routePasidsToRid = false,
  ) {}

  /**
   * Route the page requests of (stream, PASID) to `handler` (`pasid` undefined: the RID, whose
   * requests carry no PASID or PASID 0); `undefined` removes the route.
   */
  setHandler(streamId: number, pasid: number | undefined, handler: IopfHandler | undefined): void {
    if (handler) this.handlers.set(handlerKey(streamId, pasid), handler);
    else this.handlers.delete(handlerKey(streamId, pasid));
  }

  /** The stream's guest owns its PASID table (or no longer does). */
  setUserPasidTable(streamId: number, guestOwned: boolean): void {
    if (guestOwned) this.userPasidTables.add(streamId);
    else this.userPasidTables.delete(streamId);
  }

  /** Connect a device's PRI capability so that PRG responses reach it. */
  bindEndpoint(streamId: number, endpoint: PriEndpoint): void {
    this.endpoints.set(streamId, endpoint);
  }

  handlerOf(streamId: number, pasid: number): IopfHandler | undefined {
    const own = this.handlers.get(handlerKey(streamId, pasid));
    if (own) return own;
    if (pasid === 0 || this.routePasidsToRid || this.userPasidTables.has(streamId))
      return this.ridHandlerOf(streamId);
    return undefined;
  }

  /** The handler of the stream's RID. */
  ridHandlerOf(streamId: number): IopfHandler | undefined {
    return this.handlers.get(handlerKey(streamId, undefined));
  }

  endpointOf(streamId: number): PriEndpoint | undefined {
    return this.endpoints.get(streamId);
  }

  /** Some attachment still routes the stream's faults (a function whose PASIDs another VM holds). */
  routesStream(streamId: number): boolean {
    for (const key of this.handlers.keys()) if (Math.floor(key / KEY_SPAN) === streamId) return true;
    return false;
  }

  /** A handler of some other stream, if any (what a misrouting bug would pick). */
  otherStreamsHandler(streamId: number): IopfHandler | undefined {
    for (const [key, handler] of this.handlers) if (Math.floor(key / KEY_SPAN) !== streamId) return handler;
    return undefined;
  }
}
