/**
 * The half of a vIOMMU model that every flavour shares: the VM's fault fd on one side, the guest's
 * page-request queue and command queue on the other. What differs by flavour is only the records
 * (an SMMUv3 PRIQ entry or a VT-d page request descriptor, CMD_PRI_RESP or a page group response),
 * so a flavour's model (vsmmu.ts, vvtd.ts) encodes and decodes them and hands everything else here:
 *
 * - reading whole groups from the fault fd, one read's worth at a time;
 * - the isolation oracle: a group delivered to a VM whose interface does not own its (RID, PASID)
 *   is the violation `fault-delivered-to-non-owner`;
 * - the (guest device, PRG index) -> cookie table of delivered groups, so that a guest's answer
 *   reaches the group it names and no other, and an answer to nothing is a counted drop;
 * - responses to the fault fd that never throw: a cookie the registry refuses (the group was
 *   answered meanwhile, by a teardown or its deadline) is a counted no-op;
 * - the guest's completion writes (CMD_SYNC's MSI, VT-d's invalidation-wait status): refused
 *   unless aligned and inside guest RAM.
 */
import { CERROR_ILL, type CommandErrorRegister } from '../../shared/command-error.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import { PRG_INDICES } from '../../shared/records/page-request.ts';
import type { RingConsumer } from '../../shared/ring.ts';
import { STAGE_REGISTRY, stageClock } from '../../shared/stage-clock.ts';
import { IommufdError } from '../iommufd/errors.ts';
import {
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  type PgfaultFields,
  readPgfaultInto,
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import type { InvariantChecker } from './invariants.ts';
import type { ViommuModelStats } from './viommu-model.ts';

/** Records read from the fault fd per read(): whole groups only, up to this many records. */
export const READ_RECORDS = 64;

/** How a guest answered a group, whatever its flavour's encoding. */
export const ANSWER_SUCCESS = 0;
export const ANSWER_INVALID = 1;
export const ANSWER_FAILURE = 2;
export type GuestAnswer = typeof ANSWER_SUCCESS | typeof ANSWER_INVALID | typeof ANSWER_FAILURE;

/**
 * A flavour's response codes as GuestAnswers: entry `code` is the answer it encodes, or -1 for a
 * reserved code (the command is refused).
 */
export function answerCodes(success: number, invalid: number, failure: number): Int8Array {
  const table = new Int8Array(Math.max(success, invalid, failure) + 1).fill(-1);
  table[success] = ANSWER_SUCCESS;
  table[invalid] = ANSWER_INVALID;
  table[failure] = ANSWER_FAILURE;
  return table;
}

/** What a flavour does with the records the pump reads. */
export interface FaultSink {
  /** The guest's device index of iommufd DEVICE `devId`, or -1 (no vDEVICE: answered INVALID). */
  vsidOf(devId: number): number;
  /**
   * Write one record of a group into the guest's queue (the pump checked the device and the
   * owner). A Last record the flavour delivered goes to `track`, one it discarded to `autoRespond`.
   */
  deliver(f: Readonly<PgfaultFields>, vsid: number, last: boolean): void;
  /** Room for another read's worth of records (a flavour that holds records may say no). */
  readonly canRead: boolean;
  /** One read's records are written: publish them to the guest. */
  publish(): void;
}

/** A table of what the guest was handed, by (device, index): the cookie to answer it with. */
export class CookieTable {
  /** Cookie of what was delivered as (device, index), or -1. */
  private readonly cookies: Int32Array;
  /** 1 once the guest answered what was last delivered as (device, index): a repeat is a duplicate. */
  private readonly answered: Uint8Array;

  constructor(
    readonly devices: number,
    readonly indices: number,
  ) {
    this.cookies = new Int32Array(devices * indices).fill(-1);
    this.answered = new Uint8Array(devices * indices);
  }

  set(device: number, index: number, cookie: number): void {
    const slot = device * this.indices + index;
    this.cookies[slot] = cookie;
    this.answered[slot] = 0;
  }

  /**
   * The guest answers (device, index): its cookie, taken out of the table; -1 when nothing is
   * delivered there, -2 when what was there was answered already (a duplicate).
   */
  take(device: number, index: number): number {
    if (device < 0 || device >= this.devices || index < 0 || index >= this.indices) return -1;
    const slot = device * this.indices + index;
    const cookie = this.cookies[slot];
    if (cookie < 0) return this.answered[slot] !== 0 ? -2 : -1;
    this.cookies[slot] = -1;
    this.answered[slot] = 1;
    return cookie;
  }

  /** Delivered entries the guest has not answered yet. */
  get outstanding(): number {
    let n = 0;
    for (let i = 0; i < this.cookies.length; i++) if (this.cookies[i] >= 0) n++;
    return n;
  }

  clear(): void {
    this.cookies.fill(-1);
    this.answered.fill(0);
  }
}

/** Something that carries out one guest command record. */
export interface CommandExecutor {
  execute(words: Int32Array, at: number): void;
}

/** Drain a guest command ring (every record, in order); returns how many were consumed. */
export function serviceCommands(ring: RingConsumer, executor: CommandExecutor): number {
  let consumed = 0;
  for (let ready = ring.poll(); ready > 0; ready = ring.poll()) {
    for (let i = 0; i < ready; i++) executor.execute(ring.words, ring.at(i));
    ring.release(ready);
    consumed += ready;
  }
  return consumed;
}

export class FaultPump {
  /** Groups delivered to the guest, by (guest device, PRG index). */
  readonly groups: CookieTable;
  private readonly record = newPgfaultFields();
  private readonly buffer = new Uint8Array(READ_RECORDS * PGFAULT_BYTES);
  private readonly view = new DataView(this.buffer.buffer);
  private readonly reply = new Uint8Array(PAGE_RESPONSE_BYTES);
  private readonly replyView = new DataView(this.reply.buffer);

  constructor(
    private readonly vmName: string,
    private readonly faultFd: FaultFd,
    devices: number,
    private readonly stats: ViommuModelStats,
    private readonly invariants: InvariantChecker,
    /** The VM that owns (physical stream, PASID): the oracle's table. */
    private readonly ownerOf: (streamId: number, pasid: number) => string | undefined,
    /** Guest RAM, where completion writes land. */
    private readonly memory: GuestMemory,
    /** Where refused commands are signalled (SMMUv3 GERROR.CMDQ_ERR, VT-d FSTS.IQE). */
    private readonly commandError: CommandErrorRegister | undefined,
  ) {
    this.groups = new CookieTable(devices, PRG_INDICES);
  }

  /** Something waits on the fault fd (poll EPOLLIN). */
  get readable(): boolean {
    return this.faultFd.readable;
  }

  /** Read whole groups from the fault fd into `sink` while it has room; returns records moved. */
  drain(sink: FaultSink): number {
    // A fault fd the VMM has closed (teardown: fault-fd-close) is never read again.
    if (!this.faultFd.writable) return 0;
    let moved = 0;
    while (sink.canRead) {
      stageClock.enter(STAGE_REGISTRY);
      const bytes = this.faultFd.read(this.buffer);
      stageClock.leave();
      if (bytes <= 0) break;
      for (let at = 0; at < bytes; at += PGFAULT_BYTES)
        this.pass(sink, readPgfaultInto(this.view, at, this.record));
      moved += bytes / PGFAULT_BYTES;
      sink.publish();
    }
    return moved;
  }

  private pass(sink: FaultSink, f: PgfaultFields): void {
    const last = (f.flags & PGFAULT_FLAGS_LAST_PAGE) !== 0;
    const vsid = sink.vsidOf(f.devId);
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
    sink.deliver(f, vsid, last);
  }

  /** The flavour wrote a group's Last record into the guest's queue. */
  track(vsid: number, f: Readonly<PgfaultFields>): void {
    this.stats.delivered++;
    this.groups.set(vsid, f.grpid, f.cookie);
  }

  /**
   * The flavour discarded a record under its queue's overflow rule; a discarded Last is answered
   * Success for the device (it retries and faults again), so no group waits on the guest forever.
   */
  discarded(f: Readonly<PgfaultFields>, last: boolean): void {
    this.stats.dropped++;
    if (!last) return;
    this.stats.autoResponded++;
    this.respond(f.cookie, IOMMUFD_PAGE_RESP_SUCCESS);
  }

  /**
   * The guest answered the group it was handed as (device, PRG index). An answer to nothing is a
   * counted drop; iommufd takes SUCCESS or INVALID only, so a guest's Response Failure reaches the
   * device as INVALID; a group answered meanwhile (teardown) makes the answer a counted no-op.
   */
  answer(vsid: number, prgIndex: number, answer: GuestAnswer): void {
    const cookie = this.groups.take(vsid, prgIndex);
    if (cookie < 0) {
      this.stats.unknownResponses++;
      if (cookie === -2) this.stats.duplicateResponses++;
      return;
    }
    if (answer === ANSWER_SUCCESS) this.stats.responses.success++;
    else if (answer === ANSWER_INVALID) this.stats.responses.invalid++;
    else this.stats.responses.failure++;
    if (
      this.respond(cookie, answer === ANSWER_SUCCESS ? IOMMUFD_PAGE_RESP_SUCCESS : IOMMUFD_PAGE_RESP_INVALID)
    )
      this.stats.guestAnswered++;
    else this.stats.unknownResponses++;
  }

  /** The guest's response command, `code` in its flavour's encoding (`codes`: answerCodes()). */
  answerCode(vsid: number, prgIndex: number, code: number, codes: Int8Array): void {
    const answer = code >= 0 && code < codes.length ? codes[code] : -1;
    if (answer < 0) this.refuse();
    else this.answer(vsid, prgIndex, answer as GuestAnswer);
  }

  /** One iommu_hwpt_page_response; false when the fault fd refused the cookie (answered already). */
  respond(cookie: number, code: number): boolean {
    this.replyView.setUint32(0, cookie, true);
    this.replyView.setUint32(4, code, true);
    stageClock.enter(STAGE_REGISTRY);
    try {
      this.faultFd.write(this.reply);
      return true;
    } catch (error) {
      if (error instanceof IommufdError) return false;
      throw error;
    } finally {
      stageClock.leave();
    }
  }

  /**
   * A guest's completion write (CMD_SYNC with an MSI address, an invalidation wait with a status
   * address): every earlier command is done once consumed, so it lands at once. Address 0 asks
   * for none; an unaligned address or one outside guest RAM is refused.
   */
  complete(address: number, data: number): void {
    this.stats.syncs++;
    if (address === 0) return;
    if (address % 4 !== 0 || !this.memory.contains(address, 4)) {
      this.refuse();
      return;
    }
    Atomics.store(this.memory.words, address >>> 2, data);
    this.stats.syncsSignalled++;
  }

  /** A refused command: counted, and signalled to the guest (CMDQ_ERR, IQE). */
  refuse(): void {
    this.stats.illegalCommands++;
    this.commandError?.raise(CERROR_ILL);
  }
}
