/**
 * The host side of one VM's virtual SMMUv3 (what a VMM's vSMMU model does): it reads the VM's
 * iommufd fault fd (40-byte iommu_hwpt_pgfault records, whole groups) into the guest's PRI queue,
 * or as Stall=1 events into its event queue for a stalling device, and its vEVENTQ into the event
 * queue; it turns the guest's CMD_PRI_RESP and CMD_RESUME back into 8-byte page responses by
 * cookie, passes its invalidation commands to the vIOMMU, and signals CMD_SYNC completions.
 *
 * PRI queue rules (SMMU spec 8; docs/queues.md): when the queue is full the entry is discarded
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

import type { CommandErrorRegister } from '../../shared/command-error.ts';
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
  commandStreamId,
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
import { decodeEvtqEntry, EVTQ_ENTRY_WORDS, newEvtqEntry, STAGS } from '../../shared/records/evtq-entry.ts';
import { encodePriqEntry, newPriqEntry } from '../../shared/records/priq-entry.ts';
import type { RingConsumer, RingProducer } from '../../shared/ring.ts';
import { IDR0_ATS, IDR0_PRI, IDR0_S1P, IDR0_TERM_MODEL, IDR0_TTF_AARCH64 } from '../../shared/smmuv3-idr.ts';
import {
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  IOMMUFD_PAGE_RESP_TERMINATE,
  PERM_EXEC,
  PERM_PRIV,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_FLAGS_PASID_VALID,
  type PgfaultFields,
  pgfaultAddress,
  VEVENT_HEADER_BYTES,
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import type { VeventqFd } from '../iommufd/veventq.ts';
import type { CorruptIndices } from './damage.ts';
import { EventQueueModel } from './evtq-model.ts';
import {
  answerCodes,
  type CommandExecutor,
  CookieTable,
  FaultPump,
  type FaultSink,
  READ_RECORDS,
  serviceCommands,
} from './fault-pump.ts';
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

/** CMD_PRI_RESP's Resp field; 3 is reserved. */
const PRI_RESP_CODES = answerCodes(PRI_RESP_SUCCESS, PRI_RESP_INVALID, PRI_RESP_FAILURE);
/** One vEVENTQ entry: the header and an SMMUv3 event record. */
const EVENT_BYTES = VEVENT_HEADER_BYTES + EVTQ_ENTRY_WORDS * 4;
const READ_EVENTS = 32;
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

export class Vsmmu implements ViommuModel, FaultSink, CommandExecutor {
  readonly stats: VsmmuStats = newModelStats();
  readonly termModel: 0 | 1;
  private readonly pump: FaultPump;
  private readonly entry = newPriqEntry();
  private readonly command = newPriRespCommand();
  private readonly events: EventQueueModel;
  private readonly eventBuffer = new Uint8Array(READ_EVENTS * EVENT_BYTES);
  private readonly eventWords = new Int32Array(this.eventBuffer.buffer);
  private readonly event = newEvtqEntry();
  private readonly resume = newResumeCommand();
  private readonly passThrough = new Uint8Array(CMDQ_ENTRY_WORDS * 4);
  private readonly passThroughWords = new Int32Array(this.passThrough.buffer);
  /** Stalled transactions delivered to the guest, by (vSID, STAG). */
  private readonly stalled: CookieTable;

  constructor(
    vmName: string,
    private readonly priq: RingProducer,
    private readonly evtq: RingProducer,
    private readonly cmdq: RingConsumer,
    private readonly vdevices: VdeviceMap,
    faultFd: FaultFd,
    private readonly veventqFd: VeventqFd,
    invariants: InvariantChecker,
    ownerOf: (streamId: number, pasid: number) => string | undefined,
    /** Guest RAM, where CMD_SYNC completions are written. */
    memory: GuestMemory,
    /** Where refused commands are signalled (GERROR.CMDQ_ERR). */
    commandError?: CommandErrorRegister,
    options: VsmmuOptions = {},
  ) {
    this.pump = new FaultPump(
      vmName,
      faultFd,
      vdevices.devices,
      this.stats,
      invariants,
      ownerOf,
      memory,
      commandError,
    );
    this.stalled = new CookieTable(vdevices.devices, STAGS);
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
    return this.pump.readable && this.canRead;
  }

  /** Room in the stall buffer for another read's worth of records (each could be a stall). */
  get canRead(): boolean {
    return this.events.stallRoom >= READ_RECORDS;
  }

  /** Read whole groups from the fault fd into the guest's PRI queue; returns records moved. */
  drainFaults(): number {
    // Held stall records go first: the room they leave is what the next read may fill.
    return this.events.pump() + this.pump.drain(this);
  }

  vsidOf(devId: number): number {
    return this.vdevices.vsidOf(devId);
  }

  /** One record of a group; the group is delivered when its LAST_PAGE record is written. */
  deliver(f: Readonly<PgfaultFields>, vsid: number, last: boolean): void {
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
      this.pump.discarded(f, last);
      return;
    }
    encodePriqEntry(this.priq.words, at, e);
    this.priq.commit();
    if (last) this.pump.track(vsid, f);
  }

  /** One read's records are written: the PRI queue's entries, and any stall events. */
  publish(): void {
    this.priq.publish();
    this.events.flush();
  }

  /**
   * A stalled transaction (a one-request group, grpid = STAG) goes to the guest as a Stall=1
   * event. Stall records are never discarded and never answered here: one that finds the event
   * queue full waits in the stall buffer (drainFaults keeps room for it) until the guest frees a
   * slot.
   */
  private deliverStall(f: Readonly<PgfaultFields>, vsid: number): void {
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
    this.stalled.set(vsid, f.grpid, f.cookie);
  }

  /** Drain the guest's command queue; returns the number of commands consumed. */
  serviceCommands(): number {
    return serviceCommands(this.cmdq, this);
  }

  /** Stall records held for room in the guest's event queue. */
  get stallsWaiting(): number {
    return this.events.held;
  }

  /** Delivered groups the guest has not answered yet. */
  get awaitingGuest(): number {
    return this.pump.groups.outstanding;
  }

  execute(words: Int32Array, at: number): void {
    switch (commandOpcode(words, at)) {
      case CMD_PRI_RESP:
        this.priResponse(words, at);
        return;
      case CMD_RESUME:
        this.resumeStall(words, at);
        return;
      case CMD_STALL_TERM:
        this.terminateStalls(commandStreamId(words, at));
        return;
      case CMD_SYNC:
        // Invalidations complete inside HWPT_INVALIDATE, so a CMD_SYNC completes once consumed;
        // with an MSI address it signals by writing MSIData there, as the SMMU does.
        this.pump.complete(syncMsiAddress(words, at), syncMsiData(words, at));
        return;
      case CMD_TLBI_NH_VA:
      case CMD_TLBI_NH_ASID:
      case CMD_CFGI_CD:
      case CMD_CFGI_CD_ALL:
      case CMD_ATC_INV:
        for (let i = 0; i < CMDQ_ENTRY_WORDS; i++) this.passThroughWords[i] = words[at + i];
        if (this.vdevices.invalidate(this.passThrough)) this.stats.invalidations++;
        else this.pump.refuse();
        return;
      default:
        this.pump.refuse();
    }
  }

  private priResponse(words: Int32Array, at: number): void {
    const c = decodePriResp(words, at, this.command);
    this.pump.answerCode(c.streamId, c.prgIndex, c.resp, PRI_RESP_CODES);
  }

  /**
   * CMD_RESUME (vSID, STAG), SMMU spec 4.7.1: Ac=1 retries (Ab is ignored) and answers the stall's
   * group SUCCESS. Ac=0 terminates: with Ab=1, or under TERM_MODEL=1 whatever Ab says, it aborts
   * (INVALID); with Ab=0 under TERM_MODEL=0 the transaction completes RAZ/WI (TERMINATE).
   */
  private resumeStall(words: Int32Array, at: number): void {
    const c = decodeResume(words, at, this.resume);
    const cookie = this.stalled.take(c.streamId, c.stag);
    if (cookie < 0) {
      // A RESUME that matches no stall is a no-op, not an error (SMMU spec 4.7).
      this.stats.unknownResponses++;
      if (cookie === -2) this.stats.duplicateResponses++;
      return;
    }
    this.stats.resumes++;
    const retry = (c.action & RESUME_RETRY) !== 0;
    const raz = !retry && (c.action & RESUME_ABORT) === 0 && this.termModel === 0;
    const code = retry
      ? IOMMUFD_PAGE_RESP_SUCCESS
      : raz
        ? IOMMUFD_PAGE_RESP_TERMINATE
        : IOMMUFD_PAGE_RESP_INVALID;
    if (this.pump.respond(cookie, code)) {
      this.stats.guestAnswered++;
      if (retry) this.stats.responses.success++;
      else if (raz) this.stats.razTerminations++;
      else this.stats.responses.invalid++;
    }
  }

  /** CMD_STALL_TERM (vSID): every stall delivered for that stream is answered INVALID (terminated). */
  private terminateStalls(vsid: number): void {
    if (vsid >= this.vdevices.devices) {
      this.pump.refuse();
      return;
    }
    for (let stag = 0; stag < STAGS; stag++) {
      const cookie = this.stalled.take(vsid, stag);
      if (cookie >= 0 && this.pump.respond(cookie, IOMMUFD_PAGE_RESP_INVALID)) this.stats.stallsTerminated++;
    }
  }

  /** Forget delivered groups and stalls (the fault fd answered them on teardown). */
  forgetDelivered(): void {
    this.pump.groups.clear();
    this.stalled.clear();
  }
}
