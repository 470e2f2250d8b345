/**
 * The host side of one VM's virtual SMMUv3 (what a VMM's vSMMU model does): it reads the VM's
 * iommufd fault fd (40-byte iommu_hwpt_pgfault records, whole groups) into the guest's PRI queue,
 * or as Stall=1 events into its event queue for a stalling device, and its vEVENTQ into the event
 * queue; it turns the guest's CMD_PRI_RESP and CMD_RESUME back into 8-byte page responses by
 * cookie, passes its invalidation commands to the vIOMMU, and signals CMD_SYNC completions.
 *
 * PRI queue rules (SMMU spec 8, fault-queues.md 1.5): when the queue is full the entry is discarded
 * and OVFLG raised, never before the entries written ahead of it are published; while the overflow
 * is unacknowledged every entry is discarded; a discarded entry with Last gets an automatic
 * Success response (the device retries and faults again).
 *
 * Stalls (SMMU spec 4.7.1): IDR0.TERM_MODEL is the host's (read from GET_HW_INFO). A CMD_RESUME
 * with Ac=1 retries; Ac=0 with Ab=1, or any termination under TERM_MODEL=1, aborts (INVALID); Ab=0
 * under TERM_MODEL=0 completes the transaction RAZ/WI (TERMINATE). A stall record that finds the
 * event queue full waits for room and is never answered here; the model stops reading the fault fd
 * while its stall buffer could not take another read.
 * Guest commands are untrusted: unknown groups, illegal codes and unknown opcodes are counted drops.
 */

import { CERROR_ILL, type CommandErrorRegister } from '../../shared/command-error.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import {
  CMD_ATC_INV,
  CMD_CFGI_CD,
  CMD_CFGI_CD_ALL,
  CMD_PRI_RESP,
  CMD_RESUME,
  CMD_STALL_TERM,
  CMD_SYNC,
  CMD_TLBI_NH_ASID,
  CMD_TLBI_NH_VA,
  CMDQ_ENTRY_WORDS,
  commandOpcode,
  decodePriResp,
  decodeResume,
  newPriRespCommand,
  newResumeCommand,
  PRI_RESP_FAILURE,
  PRI_RESP_INVALID,
  PRI_RESP_SUCCESS,
  RESUME_ABORT,
  RESUME_RETRY,
  syncMsiAddress,
  syncMsiData,
} from '../../shared/records/cmdq-entry.ts';
import { CLASS_IN, F_TRANSLATION } from '../../shared/records/event-types.ts';
import { decodeEvtqEntry, EVTQ_ENTRY_WORDS, newEvtqEntry } from '../../shared/records/evtq-entry.ts';
import { encodePriqEntry, newPriqEntry } from '../../shared/records/priq-entry.ts';
import type { RingConsumer, RingProducer } from '../../shared/ring.ts';
import { IDR0_ATS, IDR0_PRI, IDR0_S1P, IDR0_TERM_MODEL, IDR0_TTF_AARCH64 } from '../../shared/smmuv3-idr.ts';
import { STAGE_REGISTRY, stageClock } from '../../shared/stage-clock.ts';
import { IommufdError } from '../iommufd/errors.ts';
import {
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  IOMMUFD_PAGE_RESP_TERMINATE,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  PERM_EXEC,
  PERM_PRIV,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  pgfaultAddress,
  readPgfaultInto,
  VEVENT_HEADER_BYTES,
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import type { VeventqFd } from '../iommufd/veventq.ts';
import type { CorruptIndices } from './damage.ts';
import { EventQueueModel } from './evtq-model.ts';
import type { InvariantChecker } from './invariants.ts';
import { newModelStats, type ViommuModel, type ViommuModelStats } from './viommu-model.ts';

export type VsmmuStats = ViommuModelStats;

/** This VM's devices as the fault fd names them. */
export interface VdeviceMap {
  /** The guest's StreamID (vSID) of iommufd DEVICE `devId`, or -1. */
  vsidOf(devId: number): number;
  /** Physical StreamID of iommufd DEVICE `devId`, or -1. */
  streamIdOf(devId: number): number;
  /** DEVICE `devId` stalls (its groups are stalled transactions, reported as Stall=1 events). */
  stalls(devId: number): boolean;
  /** Pass one 16-byte guest invalidation command to the vIOMMU; false if the driver refused it. */
  invalidate(command: Uint8Array): boolean;
  readonly devices: number;
}

const PRG_INDICES = 512;
const STAGS = 1 << 16;
/** One vEVENTQ entry: the header and an SMMUv3 event record. */
const EVENT_BYTES = VEVENT_HEADER_BYTES + EVTQ_ENTRY_WORDS * 4;
const READ_EVENTS = 32;
/** Records read from the fault fd per read(): whole groups only, up to this many records. */
const READ_RECORDS = 64;
/**
 * Stall records the model holds for room in the guest's event queue. It reads the fault fd only
 * while one read's worth of stalls (a stall is a one-record group) would still fit, so a stall is
 * never answered for want of room: past that the fault fd keeps the groups (back-pressure).
 */
const STALL_BUFFER = 4 * READ_RECORDS;

export interface VsmmuOptions {
  /**
   * IDR0.TERM_MODEL advertised to the guest (default 1). 0 only where the host can complete a
   * terminated stall RAZ/WI (its own TERM_MODEL is 0): a guest's CMD_RESUME with Ab=0 then reaches
   * the device as RAZ/WI; with 1 Ab is ignored and every termination aborts (SMMU spec 4.7.1).
   */
  termModel?: 0 | 1;
}

export class Vsmmu implements ViommuModel {
  readonly stats: VsmmuStats = newModelStats();
  readonly termModel: 0 | 1;
  /** Cookie of the group delivered as (vSID, PRG index), or -1. */
  private readonly delivered: Int32Array;
  /** 1 once the guest answered the group last delivered as (vSID, PRG index): a repeat is a duplicate. */
  private readonly answered: Uint8Array;
  private readonly entry = newPriqEntry();
  private readonly command = newPriRespCommand();
  private readonly record = newPgfaultFields();
  private readonly faultBuffer = new Uint8Array(READ_RECORDS * PGFAULT_BYTES);
  private readonly faultView = new DataView(this.faultBuffer.buffer);
  private readonly response = new Uint8Array(PAGE_RESPONSE_BYTES);
  private readonly responseView = new DataView(this.response.buffer);
  private readonly events: EventQueueModel;
  private readonly eventBuffer = new Uint8Array(READ_EVENTS * EVENT_BYTES);
  private readonly eventWords = new Int32Array(this.eventBuffer.buffer);
  private readonly event = newEvtqEntry();
  private readonly resume = newResumeCommand();
  private readonly passThrough = new Uint8Array(CMDQ_ENTRY_WORDS * 4);
  private readonly passThroughWords = new Int32Array(this.passThrough.buffer);
  /** Cookie of the stalled transaction delivered as (vSID, STAG), or -1. */
  private readonly stalled: Int32Array;
  /** 1 once the guest resumed (or terminated) the stall last delivered as (vSID, STAG). */
  private readonly resumed: Uint8Array;

  constructor(
    private readonly vmName: string,
    private readonly priq: RingProducer,
    private readonly evtq: RingProducer,
    private readonly cmdq: RingConsumer,
    private readonly vdevices: VdeviceMap,
    private readonly faultFd: FaultFd,
    private readonly veventqFd: VeventqFd,
    private readonly invariants: InvariantChecker,
    private readonly ownerOf: (streamId: number, pasid: number) => string | undefined,
    /** Guest RAM, where CMD_SYNC completions are written. */
    private readonly memory: GuestMemory,
    /** Where refused commands are signalled (GERROR.CMDQ_ERR). */
    private readonly commandError?: CommandErrorRegister,
    options: VsmmuOptions = {},
  ) {
    this.delivered = new Int32Array(vdevices.devices * PRG_INDICES).fill(-1);
    this.answered = new Uint8Array(vdevices.devices * PRG_INDICES);
    this.stalled = new Int32Array(vdevices.devices * STAGS).fill(-1);
    this.resumed = new Uint8Array(vdevices.devices * STAGS);
    this.events = new EventQueueModel(evtq, { stallCapacity: STALL_BUFFER });
    this.termModel = options.termModel ?? 1;
  }

  /**
   * SMMU_IDR0 as the guest reads it: stage 1, AArch64 tables, ATS and PRI, both fault models
   * (STALL_MODEL 0b00), and TERM_MODEL as this model terminates a stall.
   */
  get idr0(): number {
    return IDR0_S1P | IDR0_TTF_AARCH64 | IDR0_ATS | IDR0_PRI | (this.termModel === 1 ? IDR0_TERM_MODEL : 0);
  }

  get corruptIndices(): CorruptIndices {
    return {
      pageRequestQueue: this.priq.corruptIndex,
      eventQueue: this.evtq.corruptIndex,
      commandQueue: this.cmdq.corruptIndex,
    };
  }

  /**
   * Something waits on the vEVENTQ fd, or a held stall record can move: the guest freed event-queue
   * slots (its CONS moved past where the last write found the queue full).
   */
  get eventsPending(): boolean {
    return this.veventqFd.readable || this.events.canPump;
  }

  /**
   * Read the vIOMMU's events (header + 32-byte SMMUv3 record each, the StreamID already the
   * guest's) into the guest's event queue, under the event queue's rules. Returns records moved.
   */
  drainEvents(): number {
    // Stall records held for room go first: they are never dropped.
    let moved = this.events.pump();
    const words = this.eventWords;
    for (
      let bytes = this.veventqFd.read(this.eventBuffer);
      bytes > 0;
      bytes = this.veventqFd.read(this.eventBuffer)
    ) {
      for (let at = 0; at < bytes; ) {
        if ((words[at >>> 2] & IOMMU_VEVENTQ_FLAG_LOST_EVENTS) !== 0) {
          this.stats.eventsLost++;
          at += VEVENT_HEADER_BYTES;
          continue;
        }
        decodeEvtqEntry(words, (at + VEVENT_HEADER_BYTES) >>> 2, this.event);
        if (this.events.write(this.event) === 'discarded') this.stats.eventsDropped++;
        else this.stats.eventsDelivered++;
        at += EVENT_BYTES;
        moved++;
      }
    }
    this.events.flush();
    return moved;
  }

  /**
   * Something waits on the fault fd (poll EPOLLIN) and the model can take it: not while its stall
   * buffer is too full to take another read (then it waits for the guest's event queue to drain).
   */
  get faultsPending(): boolean {
    return this.faultFd.readable && this.events.stallRoom >= READ_RECORDS;
  }

  /** Read whole groups from the fault fd into the guest's PRI queue; returns records moved. */
  drainFaults(): number {
    // A fault fd the VMM has closed (teardown: fault-fd-close) is never read again.
    if (!this.faultFd.writable) return 0;
    // Held stall records go first: the room they leave is what the next read may fill.
    let moved = this.events.pump();
    while (this.events.stallRoom >= READ_RECORDS) {
      const bytes = this.readFaults();
      if (bytes <= 0) break;
      for (let at = 0; at < bytes; at += PGFAULT_BYTES)
        this.deliver(readPgfaultInto(this.faultView, at, this.record));
      moved += bytes / PGFAULT_BYTES;
      this.priq.publish();
      this.events.flush();
    }
    return moved;
  }

  /** One record of a group; the group is delivered when its LAST_PAGE record is written. */
  private deliver(f: ReturnType<typeof newPgfaultFields>): void {
    const last = (f.flags & PGFAULT_FLAGS_LAST_PAGE) !== 0;
    const vsid = this.vdevices.vsidOf(f.devId);
    if (vsid < 0) {
      if (last) {
        this.stats.noVdevice++;
        this.respond(f.cookie, IOMMUFD_PAGE_RESP_INVALID);
      }
      return;
    }
    if (last) {
      // Where the group really came from (a misrouted group names another VM's stream).
      const streamId = this.faultFd.originOf(f.cookie);
      const owner = this.ownerOf(streamId, f.pasid);
      if (owner !== this.vmName) {
        this.invariants.violation({
          rule: 'fault-delivered-to-non-owner',
          vm: this.vmName,
          detail: `group ${f.grpid} of stream ${streamId} PASID ${f.pasid} is owned by ${owner ?? 'nobody'}`,
        });
      }
    }
    if (this.vdevices.stalls(f.devId)) {
      this.deliverStall(f, vsid);
      return;
    }
    const e = this.entry;
    e.streamId = vsid;
    e.ssv = (f.flags & PGFAULT_FLAGS_PASID_VALID) !== 0;
    e.substreamId = f.pasid;
    e.prgIndex = f.grpid;
    e.address = pgfaultAddress(f);
    e.read = (f.perm & PERM_READ) !== 0;
    e.write = (f.perm & PERM_WRITE) !== 0;
    e.exec = (f.perm & PERM_EXEC) !== 0;
    e.privileged = (f.perm & PERM_PRIV) !== 0;
    e.last = last;
    const at = this.priq.overflowPending() ? -1 : this.priq.claim();
    if (at < 0) {
      // The ring publishes the entries of this drain before OVFLG (SMMU spec 8.1: the guest must
      // see them ahead of the overflow, or it acknowledges early and drops groups still coming).
      if (this.priq.discard()) this.stats.overflows++;
      this.stats.dropped++;
      if (last) {
        // The SMMU answers a discarded Last request Success itself: the device retries.
        this.stats.autoResponded++;
        this.respond(f.cookie, IOMMUFD_PAGE_RESP_SUCCESS);
      }
      return;
    }
    encodePriqEntry(this.priq.words, at, e);
    this.priq.commit();
    if (last) {
      this.stats.delivered++;
      this.delivered[vsid * PRG_INDICES + f.grpid] = f.cookie;
      this.answered[vsid * PRG_INDICES + f.grpid] = 0;
    }
  }

  /**
   * A stalled transaction (a one-request group, grpid = STAG) goes to the guest as a Stall=1
   * event. Stall records are never discarded and never answered here: one that finds the event
   * queue full waits in the stall buffer (drainFaults keeps room for it) until the guest frees a
   * slot.
   */
  private deliverStall(f: ReturnType<typeof newPgfaultFields>, vsid: number): void {
    const e = this.event;
    e.eventType = F_TRANSLATION;
    e.streamId = vsid;
    e.ssv = (f.flags & PGFAULT_FLAGS_PASID_VALID) !== 0;
    e.substreamId = e.ssv ? f.pasid : 0;
    e.stag = f.grpid;
    e.stall = true;
    e.privileged = (f.perm & PERM_PRIV) !== 0;
    e.instruction = (f.perm & PERM_EXEC) !== 0;
    e.read = (f.perm & PERM_WRITE) === 0;
    e.stage2 = false;
    e.faultClass = CLASS_IN;
    e.inputAddress = pgfaultAddress(f);
    e.fetchAddress = 0;
    this.events.write(e);
    this.stats.stallsDelivered++;
    this.stalled[vsid * STAGS + f.grpid] = f.cookie;
    this.resumed[vsid * STAGS + f.grpid] = 0;
  }

  /** Write one iommu_hwpt_page_response; false when the fault fd refused the cookie (already answered). */
  /** read() on the fault fd: whole records, or 0 when nothing waits (the registry's stage). */
  private readFaults(): number {
    stageClock.enter(STAGE_REGISTRY);
    const bytes = this.faultFd.read(this.faultBuffer);
    stageClock.leave();
    return bytes;
  }

  private respond(cookie: number, code: number): boolean {
    this.responseView.setUint32(0, cookie, true);
    this.responseView.setUint32(4, code, true);
    stageClock.enter(STAGE_REGISTRY);
    try {
      this.faultFd.write(this.response);
      return true;
    } catch (error) {
      if (error instanceof IommufdError) return false;
      throw error;
    } finally {
      stageClock.leave();
    }
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

  /** Stall records held for room in the guest's event queue. */
  get stallsWaiting(): number {
    return this.events.held;
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
      case CMD_RESUME:
        this.resumeStall(words, at);
        return;
      case CMD_STALL_TERM:
        this.terminateStalls(words[at + 1] >>> 0);
        return;
      case CMD_SYNC:
        this.sync(words, at);
        return;
      case CMD_TLBI_NH_VA:
      case CMD_TLBI_NH_ASID:
      case CMD_CFGI_CD:
      case CMD_CFGI_CD_ALL:
      case CMD_ATC_INV:
        for (let i = 0; i < CMDQ_ENTRY_WORDS; i++) this.passThroughWords[i] = words[at + i];
        if (this.vdevices.invalidate(this.passThrough)) this.stats.invalidations++;
        else this.refuse();
        return;
      default:
        this.refuse();
    }
  }

  private priResponse(words: Int32Array, at: number): void {
    const c = decodePriResp(words, at, this.command);
    if (c.resp !== PRI_RESP_SUCCESS && c.resp !== PRI_RESP_INVALID && c.resp !== PRI_RESP_FAILURE) {
      this.refuse();
      return;
    }
    const slot = c.streamId < this.vdevices.devices ? c.streamId * PRG_INDICES + c.prgIndex : -1;
    const cookie = slot >= 0 ? this.delivered[slot] : -1;
    if (cookie < 0) {
      this.stats.unknownResponses++;
      if (slot >= 0 && this.answered[slot] !== 0) this.stats.duplicateResponses++;
      return;
    }
    this.delivered[slot] = -1;
    this.answered[slot] = 1;
    if (c.resp === PRI_RESP_SUCCESS) this.stats.responses.success++;
    else if (c.resp === PRI_RESP_INVALID) this.stats.responses.invalid++;
    else this.stats.responses.failure++;
    // iommufd takes SUCCESS or INVALID only; a guest's Response Failure reaches the device as INVALID.
    // A group answered meanwhile (teardown) makes the late response a counted no-op.
    if (
      this.respond(
        cookie,
        c.resp === PRI_RESP_SUCCESS ? IOMMUFD_PAGE_RESP_SUCCESS : IOMMUFD_PAGE_RESP_INVALID,
      )
    ) {
      this.stats.guestAnswered++;
    } else {
      this.stats.unknownResponses++;
    }
  }

  /**
   * CMD_RESUME (vSID, STAG), SMMU spec 4.7.1: Ac=1 retries (Ab is ignored) and answers the stall's
   * group SUCCESS. Ac=0 terminates: with Ab=1, or under TERM_MODEL=1 whatever Ab says, it aborts
   * (INVALID); with Ab=0 under TERM_MODEL=0 the transaction completes RAZ/WI (TERMINATE).
   */
  private resumeStall(words: Int32Array, at: number): void {
    const c = decodeResume(words, at, this.resume);
    const slot = c.streamId < this.vdevices.devices ? c.streamId * STAGS + c.stag : -1;
    const cookie = slot >= 0 ? this.stalled[slot] : -1;
    if (cookie < 0) {
      // A RESUME that matches no stall is a no-op, not an error (SMMU spec 4.7).
      this.stats.unknownResponses++;
      if (slot >= 0 && this.resumed[slot] !== 0) this.stats.duplicateResponses++;
      return;
    }
    this.stalled[slot] = -1;
    this.resumed[slot] = 1;
    this.stats.resumes++;
    const retry = (c.action & RESUME_RETRY) !== 0;
    const raz = !retry && (c.action & RESUME_ABORT) === 0 && this.termModel === 0;
    const code = retry
      ? IOMMUFD_PAGE_RESP_SUCCESS
      : raz
        ? IOMMUFD_PAGE_RESP_TERMINATE
        : IOMMUFD_PAGE_RESP_INVALID;
    if (this.respond(cookie, code)) {
      this.stats.guestAnswered++;
      if (retry) this.stats.responses.success++;
      else if (raz) this.stats.razTerminations++;
      else this.stats.responses.invalid++;
    }
  }

  /**
   * CMD_SYNC: every command before it has taken effect once it is consumed (invalidations complete
   * inside HWPT_INVALIDATE), so completion is immediate; with an MSI address the completion is
   * signalled by writing MSIData there, as the SMMU does. An address outside guest RAM is refused.
   */
  private sync(words: Int32Array, at: number): void {
    this.stats.syncs++;
    const address = syncMsiAddress(words, at);
    if (address === 0) return;
    if (address % 4 !== 0 || !this.memory.contains(address, 4)) {
      this.refuse();
      return;
    }
    Atomics.store(this.memory.words, address >>> 2, syncMsiData(words, at));
    this.stats.syncsSignalled++;
  }

  /** CMD_STALL_TERM (vSID): every stall delivered for that stream is answered INVALID (terminated). */
  private terminateStalls(vsid: number): void {
    if (vsid >= this.vdevices.devices) {
      this.refuse();
      return;
    }
    for (let slot = vsid * STAGS; slot < (vsid + 1) * STAGS; slot++) {
      const cookie = this.stalled[slot];
      if (cookie < 0) continue;
      this.stalled[slot] = -1;
      this.resumed[slot] = 1;
      if (this.respond(cookie, IOMMUFD_PAGE_RESP_INVALID)) this.stats.stallsTerminated++;
    }
  }

  /** A refused command: counted, and signalled to the guest as CMDQ_ERR (CERROR_ILL). */
  private refuse(): void {
    this.stats.illegalCommands++;
    this.commandError?.raise(CERROR_ILL);
  }

  /** Forget delivered groups and stalls (the fault fd answered them on teardown). */
  forgetDelivered(): void {
    this.delivered.fill(-1);
    this.answered.fill(0);
    this.stalled.fill(-1);
    this.resumed.fill(0);
  }
}
