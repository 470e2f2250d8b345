/**
 * The host side of one VM's virtual SMMUv3 (what a VMM's vSMMU model does): it reads the page-request
 * groups of the VM's fault queue into the guest's PRI queue with the guest's StreamIDs, and turns the
 * guest's CMD_PRI_RESP commands back into fault-queue responses by cookie.
 *
 * PRI queue rules (SMMU spec 8, fault-queues.md 1.5): when the queue is full the entry is discarded
 * and OVFLG raised; while the overflow is unacknowledged every entry is discarded; a discarded
 * entry with Last gets an automatic Success response (the device retries and faults again).
 * Guest commands are untrusted: unknown groups, illegal codes and unknown opcodes are counted drops.
 */
import {
  CMD_PRI_RESP,
  CMD_SYNC,
  commandOpcode,
  decodePriResp,
  newPriRespCommand,
  PRI_RESP_FAILURE,
  PRI_RESP_INVALID,
  PRI_RESP_SUCCESS,
} from '../../shared/records/cmdq-entry.ts';
import { encodePriqEntry, newPriqEntry } from '../../shared/records/priq-entry.ts';
import type { RingConsumer, RingProducer } from '../../shared/ring.ts';
import type { IopfGroup } from '../iommu/iopf.ts';
import { type FaultQueue, PAGE_RESP_INVALID, PAGE_RESP_SUCCESS } from '../iommufd/fault-queue.ts';
import type { InvariantChecker } from './invariants.ts';

export interface VsmmuStats {
  /** Groups written whole into the guest's PRI queue. */
  delivered: number;
  /** PRI queue entries discarded under the overflow rule. */
  dropped: number;
  /** Groups answered Success by the overflow rule. */
  autoResponded: number;
  /** CMD_PRI_RESP codes as the guest sent them. */
  responses: { success: number; invalid: number; failure: number };
  /** CMD_PRI_RESP naming no group delivered to this guest. */
  unknownResponses: number;
  /** Unknown opcodes and reserved response codes. */
  illegalCommands: number;
  syncs: number;
  /** Groups for a device this VM has no vSID for (answered INVALID). */
  noVdevice: number;
}

/** Maps between physical and virtual StreamIDs of this VM's devices. */
export interface StreamMap {
  virtualOf(physicalStreamId: number): number;
  readonly devices: number;
}

const PRG_INDICES = 512;

export class Vsmmu {
  readonly stats: VsmmuStats = {
    delivered: 0,
    dropped: 0,
    autoResponded: 0,
    responses: { success: 0, invalid: 0, failure: 0 },
    unknownResponses: 0,
    illegalCommands: 0,
    syncs: 0,
    noVdevice: 0,
  };
  /** Cookie of the group delivered as (vSID, PRG index), or -1. */
  private readonly delivered: Int32Array;
  private readonly entry = newPriqEntry();
  private readonly command = newPriRespCommand();

  constructor(
    private readonly vmName: string,
    private readonly priq: RingProducer,
    private readonly cmdq: RingConsumer,
    private readonly streams: StreamMap,
    private readonly faults: FaultQueue,
    private readonly invariants: InvariantChecker,
    private readonly ownerOf: (streamId: number, pasid: number) => string | undefined,
  ) {
    this.delivered = new Int32Array(streams.devices * PRG_INDICES).fill(-1);
  }

  /** A group arrived on this VM's fault queue. */
  deliver(cookie: number, group: IopfGroup): void {
    const owner = this.ownerOf(group.streamId, group.pasid);
    if (owner !== this.vmName) {
      this.invariants.violation({
        rule: 'fault-delivered-to-non-owner',
        vm: this.vmName,
        detail: `group PRGI ${group.prgIndex} of stream ${group.streamId} PASID ${group.pasid} is owned by ${owner ?? 'nobody'}`,
      });
    }
    const vsid = this.streams.virtualOf(group.streamId);
    if (vsid < 0) {
      this.stats.noVdevice++;
      this.faults.autoRespond(cookie, PAGE_RESP_INVALID);
      return;
    }
    const e = this.entry;
    e.streamId = vsid;
    e.ssv = group.ssv;
    e.substreamId = group.pasid;
    e.prgIndex = group.prgIndex;
    let lastDiscarded = false;
    for (let i = 0; i < group.count; i++) {
      const access = group.accesses[i];
      e.address = group.addresses[i];
      e.read = (access & 1) !== 0;
      e.write = (access & 2) !== 0;
      e.exec = (access & 4) !== 0;
      e.privileged = (access & 8) !== 0;
      e.last = i === group.count - 1;
      const at = this.priq.overflowPending() ? -1 : this.priq.claim();
      if (at < 0) {
        this.priq.discard();
        this.stats.dropped++;
        if (e.last) lastDiscarded = true;
        continue;
      }
      encodePriqEntry(this.priq.words, at, e);
      this.priq.commit();
    }
    this.priq.publish();
    if (lastDiscarded) {
      this.stats.autoResponded++;
      this.faults.autoRespond(cookie, PAGE_RESP_SUCCESS);
      return;
    }
    this.stats.delivered++;
    this.delivered[vsid * PRG_INDICES + group.prgIndex] = cookie;
  }

  /** Drain the guest's command queue; returns the number of commands consumed. */
  serviceCommands(): number {
    const ring = this.cmdq;
    let consumed = 0;
    for (let ready = ring.poll(); ready > 0; ready = ring.poll()) {
      for (let i = 0; i < ready; i++) this.execute(ring.words, ring.at(i));
      ring.release(ready);
      consumed += ready;
    }
    return consumed;
  }

  /** Delivered groups the guest has not answered yet. */
  get awaitingGuest(): number {
    let n = 0;
    for (let i = 0; i < this.delivered.length; i++) if (this.delivered[i] >= 0) n++;
    return n;
  }

  private execute(words: Int32Array, at: number): void {
    switch (commandOpcode(words, at)) {
      case CMD_PRI_RESP:
        this.priResponse(words, at);
        return;
      case CMD_SYNC:
        // Commands take effect as they are consumed, so a sync has nothing left to wait for.
        this.stats.syncs++;
        return;
      default:
        this.stats.illegalCommands++;
    }
  }

  private priResponse(words: Int32Array, at: number): void {
    const c = decodePriResp(words, at, this.command);
    if (c.resp !== PRI_RESP_SUCCESS && c.resp !== PRI_RESP_INVALID && c.resp !== PRI_RESP_FAILURE) {
      this.stats.illegalCommands++;
      return;
    }
    const slot = c.streamId < this.streams.devices ? c.streamId * PRG_INDICES + c.prgIndex : -1;
    const cookie = slot >= 0 ? this.delivered[slot] : -1;
    // A group answered meanwhile (by teardown or a timeout) makes a late response a counted no-op.
    if (cookie < 0 || !this.faults.isPending(cookie)) {
      this.stats.unknownResponses++;
      return;
    }
    this.delivered[slot] = -1;
    if (c.resp === PRI_RESP_SUCCESS) this.stats.responses.success++;
    else if (c.resp === PRI_RESP_INVALID) this.stats.responses.invalid++;
    else this.stats.responses.failure++;
    // iommufd takes SUCCESS or INVALID only; a guest's Response Failure reaches the device as INVALID.
    this.faults.respond(cookie, c.resp === PRI_RESP_SUCCESS ? PAGE_RESP_SUCCESS : PAGE_RESP_INVALID);
  }

  /** Forget delivered groups (their fault queue answered them on teardown). */
  forgetDelivered(): void {
    this.delivered.fill(-1);
  }
}
