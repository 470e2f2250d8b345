/**
 * The host's physical IOMMUs: the translate path (IOTLB, then the walk, then terminate or stall)
 * over the stream table (stream-table.ts), and the PRI path from devices to the IOPF layer and
 * back. Each instance (iommu-instance.ts) has its own IOTLB and its own PRI queue, shared by the
 * devices behind it and drained by the host's IRQ thread: device -> physical PRI queue -> IRQ
 * thread -> IOPF layer. Event records of faulted transactions take event-delivery.ts's road.
 *
 * It never imports the registry: whoever owns an address space registers an IopfHandler for it
 * (docs/architecture.md: the hardware reports faults through a handler interface).
 */
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { F_STREAM_DISABLED } from '../../shared/records/event-types.ts';
import { EventDelivery, type EventHandler } from './event-delivery.ts';
import { type EventRecordFields, type FaultRecorder, isConfigurableFault } from './event-recorder.ts';
import { FaultRouter } from './fault-router.ts';
import { HostMemory, REGION_STRIDE } from './host-memory.ts';
import {
  DEFAULT_IOMMU_NAME,
  DEFAULT_PRIQ_LOG2,
  IommuInstance,
  type IommuInstanceOptions,
} from './iommu-instance.ts';
import { type IopfHandler, IopfQueue } from './iopf.ts';
import { ANY_PASID, type Iotlb } from './iotlb.ts';
import { type PageRequest, PRG_SUCCESS, type PriEndpoint } from './page-request.ts';
import type { RefaultGauge } from './refault-gauge.ts';
import { type RequesterOf, Requesters } from './requesters.ts';
import { permitsAccess, type Stage1Context, type WalkResult } from './stage1-walker.ts';
import { StallModel } from './stall.ts';
import { StallIopfBridge } from './stall-iopf-bridge.ts';
import { type StreamEntry, StreamTable } from './stream-table.ts';

export interface TranslationStats {
  translations: number;
  iotlbHits: number;
  iotlbMisses: number;
  /** Table walks (IOTLB misses, and hits whose permissions did not allow the access). */
  walks: number;
  /** Faults the guest owns (its stage-1 tables, its CD table), plus accesses of a disabled stream. */
  stage1Faults: number;
  /** Faults the host owns (stage 2): counted here, never injected into a guest. */
  stage2Faults: number;
  /** IOTLB invalidation operations. */
  invalidations: number;
  /** Event records of terminated transactions: recorded, forwarded to a vIOMMU, kept by the host. */
  eventsRecorded: number;
  eventsForwarded: number;
  /** Stage-2 events (the host's) and events of streams without a vIOMMU to report to. */
  eventsHostOnly: number;
}

export interface IommuOptions {
  /** IOTLB entries (a power of two) and ways: the default instance's, and any instance's that gives none. */
  iotlbEntries?: number;
  iotlbWays?: number;
  /** The host's physical IOMMUs (default: one, `iommu0`, with a 2^12-entry PRI queue). */
  instances?: readonly IommuInstanceOptions[];
  /**
   * Entries each PRI IRQ thread handles per turn before yielding (default: its queue's
   * size; Infinity: every entry is handled inside its interrupt).
   */
  priqWeight?: number;
  /** An exception thrown in an IRQ thread's turn of its own. */
  onThreadError?: (error: unknown) => void;
  /** How an IRQ thread gets its next turn (default: setImmediate; the sandbox: its reactor's next pass). */
  scheduleTurn?: (turn: () => void) => void;
  /**
   * Device-owner routing (the VFIO-era model a topology can ask for to measure it): a PASID without
   * a route of its own reports through its RID's. Off, a PASID falls back only on a stream whose
   * guest owns the PASID table (SMMUv3 nesting), as Linux's find_fault_handler() does.
   */
  routePasidsToRid?: boolean;
  /**
   * SMMU_IDR0.TERM_MODEL of the physical SMMUs (default 0): with 1 a terminated stalled
   * transaction always aborts (CMD_RESUME's Ab is ignored); with 0 Ab=0 completes it RAZ/WI.
   */
  termModel?: 0 | 1;
}

export class Iommu {
  readonly iopf: IopfQueue;
  /** The physical IOMMUs; a stream not placed sits behind the first. */
  readonly instances: readonly IommuInstance[];
  /** The first instance's IOTLB. */
  readonly iotlb: Iotlb;
  /** Host-physical memory: where stage 2 points and DMA lands. */
  readonly host = new HostMemory();
  private readonly counts = {
    translations: 0,
    walks: 0,
    stage1Faults: 0,
    stage2Faults: 0,
  };
  /** Stalled transactions (the stall model), and the bridge that reports them as IOPF groups. */
  readonly stalls: StallModel;
  readonly stallIopf: StallIopfBridge;
  /** Who each page request is attributed to, and what is counted per requester. */
  private readonly requesters = new Requesters();
  /** Event records of faulted transactions: recorded, then to a vIOMMU or kept by the host. */
  private readonly events = new EventDelivery(this);
  private readonly streams = new StreamTable();
  private readonly placement = new Map<number, IommuInstance>();
  /** Where page-request groups and their answers go. */
  readonly router: FaultRouter;

  constructor(options: IommuOptions = {}) {
    this.stalls = new StallModel({ abortOnly: options.termModel === 1 });
    this.router = new FaultRouter(options.routePasidsToRid);
    this.iopf = new IopfQueue(this.router);
    const wiring = {
      weight: options.priqWeight,
      iopf: this.iopf,
      discardPartial: (instance: IommuInstance) =>
        this.iopf.discardPartialWhere((streamId) => this.instanceOf(streamId) === instance),
      autoRespond: (streamId: number, pasid: number, ssv: boolean, prgIndex: number) =>
        this.router.endpointOf(streamId)?.prgResponse(pasid, ssv, prgIndex, PRG_SUCCESS),
      handleEvent: (event: Readonly<EventRecordFields>) => this.handleEvent(event),
      stallCapacity: this.stalls.capacity,
      requesters: this.requesters,
      onError: options.onThreadError,
      schedule: options.scheduleTurn,
    };
    const configured = options.instances?.length
      ? options.instances
      : [{ name: DEFAULT_IOMMU_NAME, priqLog2: DEFAULT_PRIQ_LOG2 }];
    this.instances = configured.map(
      (instance, index) =>
        new IommuInstance(
          index,
          {
            ...instance,
            iotlbEntries: instance.iotlbEntries ?? options.iotlbEntries,
            iotlbWays: instance.iotlbWays ?? options.iotlbWays,
          },
          wiring,
        ),
    );
    this.iotlb = this.instances[0].iotlb;
    this.stallIopf = new StallIopfBridge(this.stalls, this.router);
    const requesters = this.requesters;
    this.iopf.observer = (streamId, pasid, address) => requesters.faulted(streamId, pasid, address);
    const timedOut = (streamId: number, pasid: number) => requesters.timedOut(streamId, pasid);
    this.iopf.onTimeout = timedOut;
    this.stallIopf.iopf.onTimeout = timedOut;
  }

  /** Groups of `requester` answered INVALID at their response deadline (page requests and stalls). */
  timeoutsOf(requester: number): number {
    return this.requesters.timeoutsOf(requester);
  }

  /** How often the same page faults again, per requester (refault-gauge.ts). */
  get refaults(): RefaultGauge {
    return this.requesters.refaults;
  }

  /** The terminate model's recording: at most one event record per transaction. */
  get recorder(): FaultRecorder {
    return this.events.recorder;
  }

  get stats(): TranslationStats {
    let iotlbHits = 0;
    let iotlbMisses = 0;
    let invalidations = 0;
    for (const { iotlb } of this.instances) {
      iotlbHits += iotlb.stats.hits;
      iotlbMisses += iotlb.stats.misses;
      invalidations += iotlb.stats.invalidations;
    }
    const events = this.events;
    return {
      ...this.counts,
      eventsRecorded: events.recorded,
      eventsForwarded: events.forwarded,
      eventsHostOnly: events.hostOnly,
      iotlbHits,
      iotlbMisses,
      invalidations,
    };
  }

  /**
   * Put a stream behind physical IOMMU `instance` (before its STE is installed); `requester`: the
   * VM its page requests are attributed to, one of the instance's sharers (call once per VM for a
   * function shared between VMs).
   */
  placeStream(streamId: number, instance: number, requester?: number): void {
    const target = this.instances[instance];
    if (!target)
      throw new RangeError(`no physical IOMMU ${instance} (the host has ${this.instances.length})`);
    this.placement.set(streamId, target);
    if (requester === undefined) return;
    target.requesters.add(requester);
    let count = 0;
    for (const i of this.instances) for (const r of i.requesters) count = Math.max(count, r + 1);
    for (const i of this.instances) i.sizeRequesters(count);
  }

  /** The physical IOMMU a stream sits behind. */
  instanceOf(streamId: number): IommuInstance {
    return this.placement.get(streamId) ?? this.instances[0];
  }

  /**
   * Attribute page requests to requesters (`of` a stream and PASID; -1: nobody) for the PRI
   * queues' noisy-neighbour accounting, and wake a requester's host loop once an IRQ thread has
   * handed its requests on.
   */
  setRequesters(of: RequesterOf, wake: (requester: number) => void): void {
    this.requesters.set(of, wake);
  }

  /**
   * A teardown's flush for (stream, PASID; undefined: every PASID of it): the IRQ thread of the
   * stream's IOMMU hands on the entry it holds and everything its queue holds (each reaches the
   * IOPF layer and its route of the moment), then the stream's partial groups are dropped.
   */
  flushFaults(streamId: number, pasid: number | undefined): void {
    const instance = this.instanceOf(streamId);
    instance.thread.flush();
    // Stall records waiting in the event queue become IOPF groups now, under the routes of now.
    instance.evtqThread.flush();
    this.iopf.flushPartial(streamId, pasid);
  }

  /**
   * The device left iommufd (unbind): disable its PRI, unless some attachment still routes the
   * stream's faults (a function whose PASIDs another VM holds).
   */
  disablePri(streamId: number): void {
    if (this.router.routesStream(streamId)) return;
    this.router.endpointOf(streamId)?.disablePri?.();
  }

  /** Run every IRQ thread now until its queue (PRI and event) is empty (teardown, tests). */
  drainPageRequests(): number {
    let handled = 0;
    for (const instance of this.instances) handled += instance.thread.drain() + instance.evtqThread.drain();
    return handled;
  }

  /**
   * Install a stream's configuration (the STE). A new installation gets a new IOTLB tag, and the
   * old tag's entries are invalidated before this returns, as a driver's STE update and CFGI + TLBI
   * sequence does.
   */
  installStream(streamId: number, ctx: Stage1Context): void {
    this.removeStream(streamId);
    this.streams.install(streamId, ctx, this.instanceOf(streamId).iotlb);
  }

  removeStream(streamId: number): void {
    // The STE is gone: its stalled transactions terminate (CMD_STALL_TERM after the switch).
    if (this.streams.remove(streamId)) this.stalls.stallTerm(streamId);
  }

  /**
   * Where a stream's stage-1 events go (the driver's vIOMMU reporting); undefined: the host keeps
   * them. Stage-2 events always stay with the host.
   */
  setEventHandler(streamId: number, handler: EventHandler | undefined): void {
    this.events.setHandler(streamId, handler);
  }

  /**
   * A faulted transaction that no page request will retry ends here (the terminate model): it is
   * recorded as an event if it must be (always for configuration errors and stage 2's S2R, the CD's
   * R bit for the four translation faults at stage 1).
   */
  terminate(streamId: number, pasid: number, va: number, access: number, walk: Readonly<WalkResult>): void {
    this.events.terminate(this.counts.translations, streamId, pasid, va, access, walk);
  }

  /**
   * Fault injection: a stage-1 translation fault of a new transaction (counted in `translations`)
   * on (stream, PASID, va), recorded as an event record and reported like any terminated
   * transaction's (to the stream's vIOMMU if it has one, else kept by the host).
   */
  injectEvent(streamId: number, pasid: number, va: number, access: number): void {
    this.events.inject(++this.counts.translations, streamId, pasid, va, access);
  }

  /** A stream's installed configuration (for diagnostics and benchmarks). */
  contextOf(streamId: number): Stage1Context | undefined {
    return this.streams.contextOf(streamId);
  }

  /**
   * Test only (host/vmm/plant.ts): from the n-th ranged IOTLB invalidation on, none takes effect,
   * so DMA keeps using translations the guest invalidated.
   */
  plantStaleTranslations(n: number): void {
    this.streams.plantStaleTranslations(n);
  }

  /** Invalidate a stream's cached translations: all, one PASID, or one range of one PASID (or ANY_PASID). */
  invalidateStream(streamId: number, pasid = ANY_PASID, va?: number, length?: number): void {
    this.streams.invalidate(streamId, pasid, va, length);
  }

  /** Connect a device's PRI capability so that PRG responses reach it. */
  bindEndpoint(streamId: number, endpoint: PriEndpoint): void {
    this.router.bindEndpoint(streamId, endpoint);
  }

  /**
   * Route the page requests of (stream, PASID) to `handler` (`pasid` undefined: the RID, whose
   * requests carry no PASID or PASID 0); `undefined` removes the route.
   */
  setFaultHandler(streamId: number, pasid: number | undefined, handler: IopfHandler | undefined): void {
    this.router.setHandler(streamId, pasid, handler);
  }

  /**
   * The stream's RID is attached to a nested domain whose PASID table the guest manages (an SMMUv3
   * CD table): its PASIDs are never attached one by one, so their page requests report through
   * the RID's attachment (Linux: iommu_ops.user_pasid_table with an IOMMU_DOMAIN_NESTED RID).
   */
  setUserPasidTable(streamId: number, guestOwned: boolean): void {
    this.router.setUserPasidTable(streamId, guestOwned);
  }

  /** Who takes the page requests of (stream, PASID) (FaultRouter's rule). */
  faultHandlerOf(streamId: number, pasid: number): IopfHandler | undefined {
    return this.router.handlerOf(streamId, pasid);
  }

  /**
   * Translate one access; on failure `out` holds the fault (SMMUv3 event fields). A caller that can
   * wait passes a `token`: a stage-1 translation fault on a stream and CD that stall then stalls
   * the transaction (`out.stalled`), and the outcome of its RESUME comes back with that token.
   */
  translate(
    streamId: number,
    pasid: number,
    va: number,
    access: number,
    out: WalkResult,
    token = -1,
  ): boolean {
    out.stalled = false;
    this.counts.translations++;
    const entry = this.streams.entry(streamId);
    if (entry !== undefined) {
      const iotlb = entry.iotlb;
      const i = iotlb.probe(entry.tag, pasid, va);
      if (i >= 0 && permitsAccess(iotlb.permOf(i), access)) {
        // The IOTLB holds the final host-physical page of both stages. Offsets are taken by
        // subtraction: `%` of a number past 32 bits is a floating-point remainder (a library
        // call). A hit's va is >= 0 (only successful walks fill), where both forms agree.
        const hpa = iotlb.outputOf(i) + (va - Math.floor(va / PAGE_SIZE) * PAGE_SIZE);
        const ctx = entry.ctx;
        out.hpa = hpa;
        if (ctx.host) {
          out.memory = this.host.regionOf(hpa);
          // hpa % REGION_STRIDE, without the floating-point remainder (a library call past 32 bits).
          out.offset = hpa - Math.floor(hpa / REGION_STRIDE) * REGION_STRIDE;
        } else {
          out.memory = ctx.memory;
          out.offset = hpa;
        }
        out.fault = 0;
        return true;
      }
    }
    // Everything else is out of line, so that the hit path above stays small enough to inline.
    return this.translateSlow(entry, streamId, pasid, va, access, out, token);
  }

  /** A disabled stream, or an IOTLB miss (or a hit the entry's permissions refuse): walk. */
  private translateSlow(
    entry: StreamEntry | undefined,
    streamId: number,
    pasid: number,
    va: number,
    access: number,
    out: WalkResult,
    token: number,
  ): boolean {
    if (!entry) {
      out.fault = F_STREAM_DISABLED;
      out.stage2 = false;
      this.counts.stage1Faults++;
      return false;
    }
    this.counts.walks++;
    if (this.streams.walk(entry, pasid, va, access, out)) return true;
    if (out.stage2) this.counts.stage2Faults++;
    else this.counts.stage1Faults++;
    if (token >= 0 && !out.stage2 && out.stallFaults && entry.ctx.stall && isConfigurableFault(out.fault)) {
      this.stall(streamId, pasid, va, access, out, token);
    }
    return false;
  }

  /**
   * The stall model: hold the transaction under a STAG, record a Stall=1 event (never merged, never
   * dropped) and report it as a one-request IOPF group to the address space's fault handler.
   * Without a STAG or a slot the transaction terminates at once (the endpoint hears 'abort').
   */
  private stall(
    streamId: number,
    pasid: number,
    va: number,
    access: number,
    out: WalkResult,
    token: number,
  ): void {
    const r = this.stalls.stall(streamId, pasid !== 0 ? pasid : undefined, va, access, out, token);
    if (r.stag < 0) return;
    out.stalled = true;
    if (r.suppressed) return;
    // The Stall=1 record goes through the event queue; its thread raises the IOPF group.
    this.events.stalled(this.counts.translations, streamId, pasid, va, access, out, r.stag);
  }

  /**
   * The event thread's record: a stall becomes an IOPF group; any other goes to its vIOMMU. The
   * stream's VM is woken: a record handled in a turn of the thread's own has nobody else to.
   */
  private handleEvent(event: Readonly<EventRecordFields>): void {
    this.events.deliver(event);
    if (event.stall) this.stallIopf.toIopf(event.streamId, event.stag);
    const requester = this.requesters.of(event.streamId, event.ssv ? event.substreamId : 0);
    if (requester >= 0) this.requesters.wake(requester);
  }

  /**
   * A Page Request Message from a device: into the PRI queue of the IOMMU it sits behind, which
   * raises its IRQ thread on the empty -> non-empty edge (or discards it under the overflow rule).
   */
  pageRequest(request: PageRequest): void {
    this.instanceOf(request.streamId).priq.write(
      request,
      this.requesters.of(request.streamId, request.pasid),
    );
  }
}
