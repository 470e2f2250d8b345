/**
 * One concept, the stall model: its typed-array slots and the commands that resolve them. The slot
 * index (slot-index.ts) and the driver-side bridge (stall-iopf-bridge.ts) have files of their own.
 *
 * The SMMUv3 stall fault model (SMMU spec 3.12.2, 4.7; docs/queues.md). A transaction whose
 * translation fault is configured to stall gets no response: the SMMU holds it, records an event
 * with Stall=1 and a STAG, and waits for software.
 *
 * - (StreamID, STAG) names a stall; a STAG alone names nothing (it comes back from software, which
 *   may be a guest). STAGs are 16-bit and allocated per StreamID; a value stays taken until the
 *   stall is acknowledged by CMD_RESUME, CMD_STALL_TERM or SMMUEN -> 0.
 * - CMD_RESUME retries (the transaction is translated again as if newly arrived; Ab is ignored)
 *   or terminates it: abort with Ab=1, RAZ/WI with Ab=0, abort either way when IDR0.TERM_MODEL=1
 *   (option `abortOnly`; the host driver reports it in IDR0 bit 26). RAZ/WI completes the
 *   transaction successfully: a read returns zeros, a write is ignored. A RESUME that names no
 *   stall is a counted no-op.
 * - CMD_STALL_TERM terminates the stream's stalls present when it is consumed; SMMUEN -> 0
 *   terminates all of them. Both terminate with abort.
 * - Duplicate-stall suppression (3.12.2.1, option `suppressDuplicates`, default on): a stall to
 *   the same page, PnU, InD, RnW and SubstreamID as a stall still held is queued behind it with
 *   no STAG and no record of its own, and shares its fate: resuming or terminating the recorded
 *   stall resolves the suppressed ones the same way. With the option off, every stall is recorded
 *   with its own STAG.
 * - The model cannot hold a stall when its stream has no free STAG (`stags` per stream) or every
 *   stall slot is taken (`capacity` in all): the transaction terminates with abort at once and is
 *   counted in `stats.stagsExhausted` / `stats.slotsExhausted`. It was not stalled, so it has no
 *   STAG and must not be recorded with Stall=1.
 *
 * Every transaction offered to `stall()` gets exactly one outcome, `stallResolved(token, ...)` on
 * its stream's endpoint: synchronously from `stall()` when it cannot stall, otherwise from the
 * command that resolves it. Outcomes are delivered after the model's state is updated, so an
 * endpoint may stall again from inside the callback.
 *
 * Stalls live in fixed typed-array slots with open-addressing indexes (slot-index.ts); the hot
 * path allocates nothing (one small object per StreamID, made on its first stall or binding).
 *
 * The driver side, which turns a recorded stall into an IOPF group and the group's answer into a
 * RESUME, is StallIopfBridge (stall-iopf-bridge.ts).
 *
 * A guest sees a stall through its vSMMU (host/vmm/vsmmu.ts) as a Stall=1 event. That record is
 * never dropped and never answered by the vSMMU on its own: when the guest's event queue is full it
 * waits, the vSMMU stops reading the fault fd once its stall buffer is near full, and the guest's
 * driver signals the host when it frees event-queue slots, so the record moves at once.
 */
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { isConfigurableFault } from './event-recorder.ts';
import { finish, mix, SlotIndex } from './slot-index.ts';
import { ACCESS_EXEC, ACCESS_PRIV, ACCESS_WRITE } from './stage1-walker.ts';

/** `StallResult.stag` of a transaction that could not stall and was terminated. */
export const NO_STAG = -1;
/** STAGs are 16 bits. */
export const STAG_LIMIT = 1 << 16;

export type StallOutcome = 'retry' | 'abort' | 'raz';

/** The client side of stalled transactions: a device maps `token` back to its operation. */
export interface StallEndpoint {
  /** 'retry': translate again; 'abort': the transaction failed; 'raz': reads return 0, writes vanish. */
  stallResolved(token: number, outcome: StallOutcome): void;
}

/** A fault as the walk classified it; a WalkResult is one. */
export interface StallFault {
  fault: number;
  stage2: boolean;
  faultClass: number;
  /** For a stage-2 fault: the IPA that could not be translated or fetched. */
  fetchAddress: number;
}

/** What `stall()` did; one object owned by the model, valid until its next `stall()`. */
export interface StallResult {
  /** The STAG of the recorded stall (for a suppressed duplicate, the one it waits behind), or NO_STAG. */
  stag: number;
  /** Held behind an earlier stall: record nothing for it. */
  suppressed: boolean;
}

/** A held stall, as `find()` reports it. */
export interface StalledTransaction {
  /** The model's slot number for the stall, 0..capacity-1, valid until the stall is released. */
  handle: number;
  streamId: number;
  ssv: boolean;
  ssid: number;
  address: number;
  access: number;
  fault: number;
  stage2: boolean;
  faultClass: number;
  fetchAddress: number;
  token: number;
  /** Suppressed duplicates waiting behind it. */
  duplicates: number;
}

export function newStalledTransaction(): StalledTransaction {
  return {
    handle: -1,
    streamId: 0,
    ssv: false,
    ssid: 0,
    address: 0,
    access: 0,
    fault: 0,
    stage2: false,
    faultClass: 0,
    fetchAddress: 0,
    token: 0,
    duplicates: 0,
  };
}

/**
 * Told when a recorded stall stops being held, before any outcome is delivered. It must not call
 * back into the model.
 */
export interface StallReleaseListener {
  stallReleased(handle: number): void;
}

export interface StallModelOptions {
  /** Stalled transactions the SMMU can hold at once, suppressed ones included. Default 1024. */
  capacity?: number;
  /** STAG values per StreamID, 1..65536. Default 65536. */
  stags?: number;
  /** Duplicate-stall suppression (3.12.2.1). Default true. */
  suppressDuplicates?: boolean;
  /** IDR0.TERM_MODEL=1: termination always aborts; RESUME's Ab is ignored. Default false. */
  abortOnly?: boolean;
}

export interface StallStats {
  /** Transactions offered to stall(). */
  transactions: number;
  /** Stalls that took a STAG (each wants a Stall=1 record). */
  stalled: number;
  /** Duplicates held behind a recorded stall, without a record of their own. */
  suppressed: number;
  /** Terminated (abort) at once: the stream had no free STAG. */
  stagsExhausted: number;
  /** Terminated (abort) at once: every stall slot was taken. */
  slotsExhausted: number;
  /** Terminated (abort) at once: not one of the four configurable faults. */
  notStallable: number;
  resumes: number;
  /** RESUMEs whose (StreamID, STAG) named no stall: no-ops. */
  unmatchedResumes: number;
  stallTerms: number;
  disables: number;
  /** Outcomes delivered, per kind. */
  retried: number;
  aborted: number;
  razed: number;
  /** Outcomes for a stream with no endpoint bound (dropped). */
  unclaimed: number;
}

const DEFAULT_CAPACITY = 1024;
const MAX_CAPACITY = 1 << 20;

/** Duplicate-key bits: what 3.12.2.1 compares besides the page and SubstreamID. */
const DUP_PNU = 4;
const DUP_IND = 2;
const DUP_RNW = 1;

class StreamStalls {
  endpoint: StallEndpoint | undefined = undefined;
  /** Where the next STAG search starts: values rotate, so a freed STAG is not handed out at once. */
  nextStag = 0;
  /** STAGs taken. */
  inUse = 0;
  /** First recorded stall of the stream (list through prev/next), -1 when none. */
  head = -1;
}

function tagHash(streamId: number, stag: number): number {
  return finish(mix(mix(0x2545f491, streamId), stag));
}

export class StallModel {
  readonly capacity: number;
  readonly stags: number;
  readonly suppressDuplicates: boolean;
  readonly abortOnly: boolean;
  readonly stats: StallStats = {
    transactions: 0,
    stalled: 0,
    suppressed: 0,
    stagsExhausted: 0,
    slotsExhausted: 0,
    notStallable: 0,
    resumes: 0,
    unmatchedResumes: 0,
    stallTerms: 0,
    disables: 0,
    retried: 0,
    aborted: 0,
    razed: 0,
    unclaimed: 0,
  };

  private readonly result: StallResult = { stag: NO_STAG, suppressed: false };
  private readonly sid: Uint32Array;
  /** SubstreamID, -1 without one. */
  private readonly ssid: Int32Array;
  private readonly address: Float64Array;
  private readonly page: Float64Array;
  private readonly access: Uint8Array;
  private readonly dupBits: Uint8Array;
  private readonly fault: Uint8Array;
  private readonly stage2: Uint8Array;
  private readonly faultClass: Uint8Array;
  private readonly fetchAddress: Float64Array;
  private readonly token: Float64Array;
  private readonly stag: Int32Array;
  /** A recorded stall's chain of suppressed duplicates, in arrival order (next, tail, length). */
  private readonly nextDup: Int32Array;
  private readonly lastDup: Int32Array;
  private readonly dupCount: Int32Array;
  /** The stream's list of recorded stalls. */
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly freeSlots: Int32Array;
  private freeCount: number;
  private readonly byTag: SlotIndex;
  private readonly byAccess: SlotIndex;
  private readonly streams = new Map<number, StreamStalls>();
  private listener: StallReleaseListener | undefined;

  constructor(options: StallModelOptions = {}) {
    const capacity = options.capacity ?? DEFAULT_CAPACITY;
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_CAPACITY)
      throw new RangeError(`stall capacity must be an integer in 1..${MAX_CAPACITY}, got ${capacity}`);
    const stags = options.stags ?? STAG_LIMIT;
    if (!Number.isInteger(stags) || stags < 1 || stags > STAG_LIMIT)
      throw new RangeError(`stags per stream must be an integer in 1..${STAG_LIMIT}, got ${stags}`);
    this.capacity = capacity;
    this.stags = stags;
    this.suppressDuplicates = options.suppressDuplicates ?? true;
    this.abortOnly = options.abortOnly ?? false;
    this.sid = new Uint32Array(capacity);
    this.ssid = new Int32Array(capacity);
    this.address = new Float64Array(capacity);
    this.page = new Float64Array(capacity);
    this.access = new Uint8Array(capacity);
    this.dupBits = new Uint8Array(capacity);
    this.fault = new Uint8Array(capacity);
    this.stage2 = new Uint8Array(capacity);
    this.faultClass = new Uint8Array(capacity);
    this.fetchAddress = new Float64Array(capacity);
    this.token = new Float64Array(capacity);
    this.stag = new Int32Array(capacity);
    this.nextDup = new Int32Array(capacity);
    this.lastDup = new Int32Array(capacity);
    this.dupCount = new Int32Array(capacity);
    this.prev = new Int32Array(capacity);
    this.next = new Int32Array(capacity);
    this.freeSlots = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.freeSlots[i] = capacity - 1 - i;
    this.freeCount = capacity;
    this.byTag = new SlotIndex(capacity, (slot) => tagHash(this.sid[slot], this.stag[slot]));
    this.byAccess = new SlotIndex(capacity, (slot) => this.accessHash(slot));
  }

  /** Transactions held now, suppressed duplicates included. */
  get held(): number {
    return this.capacity - this.freeCount;
  }

  /** STAGs of `streamId` taken now. */
  stagsInUse(streamId: number): number {
    return this.streams.get(streamId)?.inUse ?? 0;
  }

  /** Where `streamId`'s outcomes go (`undefined`: dropped, counted as unclaimed). */
  bindEndpoint(streamId: number, endpoint: StallEndpoint | undefined): void {
    this.streamOf(streamId).endpoint = endpoint;
  }

  setReleaseListener(listener: StallReleaseListener | undefined): void {
    this.listener = listener;
  }

  /**
   * A translation fault configured to stall. `access` holds ACCESS_* bits; `token` comes back
   * with the outcome. Returns the model's result object (see StallResult).
   */
  stall(
    streamId: number,
    ssid: number | undefined,
    address: number,
    access: number,
    fault: StallFault,
    token: number,
  ): StallResult {
    const r = this.result;
    r.stag = NO_STAG;
    r.suppressed = false;
    this.stats.transactions++;
    if (streamId >>> 0 !== streamId) throw new RangeError(`StreamID ${streamId} is not a 32-bit value`);
    // Only the four translation faults have a fault model; everything else terminates (1.4).
    if (!isConfigurableFault(fault.fault)) {
      this.stats.notStallable++;
      this.deliver(streamId, token, 'abort');
      return r;
    }
    if (this.freeCount === 0) {
      this.stats.slotsExhausted++;
      this.deliver(streamId, token, 'abort');
      return r;
    }
    const slot = this.freeSlots[--this.freeCount];
    this.sid[slot] = streamId;
    this.ssid[slot] = ssid ?? -1;
    this.address[slot] = address;
    this.page[slot] = Math.floor(address / PAGE_SIZE);
    this.access[slot] = access;
    this.dupBits[slot] =
      ((access & ACCESS_PRIV) !== 0 ? DUP_PNU : 0) |
      ((access & ACCESS_EXEC) !== 0 ? DUP_IND : 0) |
      ((access & ACCESS_WRITE) === 0 ? DUP_RNW : 0);
    this.fault[slot] = fault.fault;
    this.stage2[slot] = fault.stage2 ? 1 : 0;
    this.faultClass[slot] = fault.faultClass;
    this.fetchAddress[slot] = fault.fetchAddress;
    this.token[slot] = token;
    this.nextDup[slot] = -1;
    this.lastDup[slot] = slot;
    this.dupCount[slot] = 0;

    if (this.suppressDuplicates) {
      const first = this.findDuplicate(slot);
      if (first >= 0) {
        this.stag[slot] = this.stag[first];
        this.nextDup[this.lastDup[first]] = slot;
        this.lastDup[first] = slot;
        this.dupCount[first]++;
        this.stats.suppressed++;
        r.stag = this.stag[first];
        r.suppressed = true;
        return r;
      }
    }

    const stream = this.streamOf(streamId);
    const stag = this.allocateStag(stream, streamId);
    if (stag < 0) {
      this.freeSlots[this.freeCount++] = slot;
      this.stats.stagsExhausted++;
      this.deliver(streamId, token, 'abort');
      return r;
    }
    this.stag[slot] = stag;
    stream.inUse++;
    this.prev[slot] = -1;
    this.next[slot] = stream.head;
    if (stream.head >= 0) this.prev[stream.head] = slot;
    stream.head = slot;
    this.byTag.insert(slot);
    if (this.suppressDuplicates) this.byAccess.insert(slot);
    this.stats.stalled++;
    r.stag = stag;
    return r;
  }

  /**
   * CMD_RESUME: `retry` (Ac=1) translates the transaction again, otherwise it terminates, with
   * abort when `abort` (Ab=1) or TERM_MODEL=1, else RAZ/WI. Suppressed duplicates follow. Returns
   * false, having done nothing, when (streamId, stag) names no stall.
   */
  resume(streamId: number, stag: number, retry: boolean, abort: boolean): boolean {
    const slot = this.findStalled(streamId, stag);
    if (slot < 0) {
      this.stats.unmatchedResumes++;
      return false;
    }
    this.stats.resumes++;
    const stream = this.streamOf(streamId);
    const before = this.prev[slot];
    const after = this.next[slot];
    if (before >= 0) this.next[before] = after;
    else stream.head = after;
    if (after >= 0) this.prev[after] = before;
    this.release(slot);
    this.settle(slot, retry ? 'retry' : abort || this.abortOnly ? 'abort' : 'raz');
    return true;
  }

  /**
   * CMD_STALL_TERM: terminate (abort) every stall `streamId` has now. Stalls that arise later,
   * even from inside an outcome callback, are not affected. Returns the transactions terminated.
   */
  stallTerm(streamId: number): number {
    this.stats.stallTerms++;
    const stream = this.streams.get(streamId);
    if (!stream || stream.head < 0) return 0;
    const head = stream.head;
    stream.head = -1;
    for (let slot = head; slot >= 0; slot = this.next[slot]) this.release(slot);
    return this.settleList(head, 'abort');
  }

  /** SMMUEN -> 0: terminate (abort) every stall and free every STAG. Returns the transactions terminated. */
  disable(): number {
    this.stats.disables++;
    let all = -1;
    for (const stream of this.streams.values()) {
      const head = stream.head;
      if (head < 0) continue;
      stream.head = -1;
      let tail = head;
      for (let slot = head; slot >= 0; slot = this.next[slot]) {
        this.release(slot);
        tail = slot;
      }
      this.next[tail] = all;
      if (all >= 0) this.prev[all] = tail;
      all = head;
    }
    return this.settleList(all, 'abort');
  }

  /** The model's slot for the stall (streamId, stag), or -1. */
  handleOf(streamId: number, stag: number): number {
    return this.findStalled(streamId, stag);
  }

  /** Describe the stall (streamId, stag) into `out`; false when there is none. */
  find(streamId: number, stag: number, out: StalledTransaction): boolean {
    const slot = this.findStalled(streamId, stag);
    if (slot < 0) return false;
    out.handle = slot;
    out.streamId = this.sid[slot];
    out.ssv = this.ssid[slot] >= 0;
    out.ssid = out.ssv ? this.ssid[slot] : 0;
    out.address = this.address[slot];
    out.access = this.access[slot];
    out.fault = this.fault[slot];
    out.stage2 = this.stage2[slot] !== 0;
    out.faultClass = this.faultClass[slot];
    out.fetchAddress = this.fetchAddress[slot];
    out.token = this.token[slot];
    out.duplicates = this.dupCount[slot];
    return true;
  }

  private streamOf(streamId: number): StreamStalls {
    let stream = this.streams.get(streamId);
    if (!stream) {
      stream = new StreamStalls();
      this.streams.set(streamId, stream);
    }
    return stream;
  }

  private allocateStag(stream: StreamStalls, streamId: number): number {
    if (stream.inUse >= this.stags) return NO_STAG;
    let stag = stream.nextStag;
    while (this.findStalled(streamId, stag) >= 0) stag = stag + 1 === this.stags ? 0 : stag + 1;
    stream.nextStag = stag + 1 === this.stags ? 0 : stag + 1;
    return stag;
  }

  private findStalled(streamId: number, stag: number): number {
    const { cells, mask } = this.byTag;
    for (let i = tagHash(streamId, stag) & mask; cells[i] >= 0; i = (i + 1) & mask) {
      const slot = cells[i];
      if (this.sid[slot] === streamId && this.stag[slot] === stag) return slot;
    }
    return -1;
  }

  private accessHash(slot: number): number {
    const page = this.page[slot];
    let h = mix(0x1b873593, this.sid[slot]);
    h = mix(h, this.ssid[slot]);
    h = mix(h, page >>> 0);
    h = mix(h, Math.floor(page / 0x1_0000_0000));
    return finish(mix(h, this.dupBits[slot]));
  }

  /** A held stall that `slot` duplicates (3.12.2.1), or -1. */
  private findDuplicate(slot: number): number {
    const { cells, mask } = this.byAccess;
    for (let i = this.accessHash(slot) & mask; cells[i] >= 0; i = (i + 1) & mask) {
      const other = cells[i];
      if (
        this.sid[other] === this.sid[slot] &&
        this.ssid[other] === this.ssid[slot] &&
        this.page[other] === this.page[slot] &&
        this.dupBits[other] === this.dupBits[slot]
      )
        return other;
    }
    return -1;
  }

  /** Unindex a recorded stall and free its STAG; its outcome is delivered by settle(). */
  private release(slot: number): void {
    this.byTag.remove(slot);
    if (this.suppressDuplicates) this.byAccess.remove(slot);
    const stream = this.streams.get(this.sid[slot]);
    if (stream) stream.inUse--;
    this.listener?.stallReleased(slot);
  }

  /** Deliver `outcome` to a released stall and its duplicates, freeing their slots first. */
  private settle(first: number, outcome: StallOutcome): number {
    let settled = 0;
    for (let slot = first; slot >= 0; ) {
      const following = this.nextDup[slot];
      const streamId = this.sid[slot];
      const token = this.token[slot];
      this.freeSlots[this.freeCount++] = slot;
      settled++;
      this.deliver(streamId, token, outcome);
      slot = following;
    }
    return settled;
  }

  /** settle() each stall of a released list (linked through `next`). */
  private settleList(head: number, outcome: StallOutcome): number {
    let settled = 0;
    for (let slot = head; slot >= 0; ) {
      // Read the link first: settle() frees the slot and a callback may take it again.
      const after = this.next[slot];
      settled += this.settle(slot, outcome);
      slot = after;
    }
    return settled;
  }

  private deliver(streamId: number, token: number, outcome: StallOutcome): void {
    if (outcome === 'retry') this.stats.retried++;
    else if (outcome === 'abort') this.stats.aborted++;
    else this.stats.razed++;
    const endpoint = this.streams.get(streamId)?.endpoint;
    if (endpoint) endpoint.stallResolved(token, outcome);
    else this.stats.unclaimed++;
  }
}
