/**
 * A hostile guest (topology `misbehave`, MISBEHAVIOURS in shared/control.ts): what it does, as hooks
 * that its vIOMMU driver, demand pager and main loop call. A well-behaved guest has no Misbehaviour
 * at all, so each hook costs it one test of `undefined`.
 *
 * - corrupt-ring-indices: every 8th fault, it writes a CONS into its page request queue (and on
 *   SMMUv3 its event queue) that claims more records than the ring holds, and puts the real one back
 *   a few ms later (its next release or overflow acknowledgement may overwrite it first); and, once
 *   the host has drained its command queue, a PROD that claims as much (its next publish overwrites
 *   it).
 * - unknown-responses: after each real answer, one for a StreamID (VT-d: RID) it has no device for
 *   and one for a random PRG index (STAG) of one of its devices.
 * - duplicate-responses: each answer goes out twice, in the same batch.
 * - response-flood: after each real answer, up to 64 more commands (repeats of it, unknown groups,
 *   responses with a reserved code), as many as the command queue takes without waiting.
 * - never-respond: it consumes page requests and stall events and answers none.
 * - wild-page-tables: every 4th fresh page-in writes a wild entry instead of the mapping and still
 *   answers Success: an address outside guest RAM, a table entry pointing at its own table, or
 *   reserved bits. Above the leaf it writes only the cycle: the retry faults again and the page is
 *   then mapped properly (outside RAM or reserved bits there would end every DMA below in an
 *   unrecoverable fault, and no page request would ever come to repair them). Each page is made
 *   wild at most once.
 * - crash-mid-fault: its 8th fault is consumed and never answered, and an exception is thrown from
 *   a setImmediate callback, outside any try/catch: the worker dies of it.
 * - hang: at its first fault, it spins in a synchronous loop that never ends.
 * - foreign-pasid-dma: every 4th DMA descriptor names a PASID other than its device's: PASID 0
 *   (the RID, which an interface of a shared function may not hold), the next PASID up (on a
 *   shared function, the neighbour's) or a random one (most likely attached by nobody).
 */
import type { Misbehaviour as MisbehaviourKind } from '../shared/control.ts';
import type { Doorbell } from '../shared/doorbell.ts';
import { type GuestMemory, PAGE_SIZE } from '../shared/guest-memory.ts';
import { Prng } from '../shared/prng.ts';
import {
  QUEUE_OVERFLOW,
  queueEmpty,
  queueIndexWrap,
  queueIndexWrapMask,
  queueOverflowFlag,
} from '../shared/queue-index.ts';
import { addressHigh, addressLow } from '../shared/records/address.ts';
import {
  encodePriResp,
  encodeResume,
  newPriRespCommand,
  newResumeCommand,
  PRI_RESP_INVALID,
  PRI_RESP_RESERVED,
  PRI_RESP_SUCCESS,
  RESUME_ABORT,
  RESUME_RETRY,
} from '../shared/records/cmdq-entry.ts';
import { STAGS } from '../shared/records/evtq-entry.ts';
import { PRG_INDICES } from '../shared/records/page-request.ts';
import {
  encodeVtdPageGroupResponse,
  newVtdPageGroupResponse,
  QI_RESP_INVALID,
  QI_RESP_RESERVED,
  QI_RESP_SUCCESS,
} from '../shared/records/vtd-prq-entry.ts';
import { CONS, PROD, type RingConsumer, type RingMirror, type RingProducer } from '../shared/ring.ts';
import {
  LEVELS,
  PTE_ADDR_LOW_MASK,
  PTE_AF,
  PTE_AP_UNPRIV,
  PTE_TABLE,
  PTE_VALID,
  writeEntry,
} from '../shared/stage1-format.ts';
import type { Stage1Table } from './mm/stage1-table.ts';

/** Faults (page requests and stall events) between two corruptions of the ring indices. */
const CORRUPT_EVERY = 8;
/** How long a corrupt CONS stays before the real one goes back. */
const HOLD_MS = 3;
/** The main loop's longest sleep while a corruption waits to be made or undone. */
const URGENT_SLEEP_MS = 1;
const UNKNOWN_PER_ANSWER = 2;
const FLOOD_PER_ANSWER = 64;
/** Fresh page-ins between two wild entries. */
const WILD_EVERY = 4;
/** The fault that crash-mid-fault dies handling. */
const CRASH_AT = 8;
/** DMA descriptors between two forged PASIDs. */
const FOREIGN_PASID_EVERY = 4;
/** Forged PASIDs stay in the topology's PASID range (1..255) and PASID 0. */
const TOPOLOGY_PASIDS = 256;

/** StreamIDs and RIDs forged for devices the guest does not have stay below this. */
const STREAM_IDS = 1 << 16;

/** The queues a misbehaviour writes into, once the driver has been built. */
export interface MisbehaviourQueues {
  /** Forges commands in the flavour's encoding (guest/flavours.ts). */
  forger: CommandForger;
  /** The command queue (VT-d: invalidation queue). */
  commands: RingProducer;
  /** The PRI queue (VT-d: the page request queue's ring). */
  pageRequests: RingConsumer;
  /** The event queue (SMMUv3 only). */
  events?: RingConsumer;
  /** The host's interrupt line. */
  hostBell: Doorbell;
  /** The postMessage transport's link, which must carry every store this side makes. */
  mirror?: RingMirror;
}

export class Misbehaviour {
  private readonly prng: Prng;
  private readonly neverRespond: boolean;
  private readonly duplicate: boolean;
  private readonly unknown: boolean;
  private readonly flood: boolean;
  private readonly crash: boolean;
  private readonly hang: boolean;
  private readonly corrupt: boolean;
  private readonly foreignPasids: boolean;
  private descriptors = 0;
  private readonly wild: WildTables | undefined;
  private forger: CommandForger | undefined;
  private corruption: IndexCorruption | undefined;
  private faults = 0;
  private dying = false;

  constructor(
    kinds: readonly MisbehaviourKind[],
    /** The guest's devices are StreamIDs (RIDs) 0 .. devices - 1. */
    private readonly devices: number,
    seed: number,
    memory: GuestMemory,
  ) {
    const has = (kind: MisbehaviourKind) => kinds.includes(kind);
    this.prng = new Prng(seed);
    this.neverRespond = has('never-respond');
    this.duplicate = has('duplicate-responses');
    this.unknown = has('unknown-responses');
    this.flood = has('response-flood');
    this.crash = has('crash-mid-fault');
    this.hang = has('hang');
    this.corrupt = has('corrupt-ring-indices');
    this.foreignPasids = has('foreign-pasid-dma');
    this.wild = has('wild-page-tables') ? new WildTables(memory, this.prng) : undefined;
  }

  /** Connect the queues the behaviours write into. */
  attach(queues: MisbehaviourQueues): void {
    this.forger = queues.forger;
    if (this.corrupt) this.corruption = new IndexCorruption(queues, this.prng);
  }

  /**
   * The driver is about to handle a page request or a stall event. False: drop it, consumed and
   * never answered. Does not return for `hang`.
   */
  onFault(): boolean {
    this.faults++;
    if (this.hang) spinForever();
    if (this.crash && (this.dying || this.faults >= CRASH_AT)) {
      if (!this.dying) {
        this.dying = true;
        const fault = this.faults;
        setImmediate(() => {
          throw new Error(`hostile guest (crash-mid-fault) died handling fault ${fault}`);
        });
      }
      return false;
    }
    return !this.neverRespond;
  }

  /**
   * The driver committed its answer to a group (`stall` false: PRG `index`) or a stalled
   * transaction (`stall` true: STAG `index`); `pasid` is -1 without one.
   */
  answered(stall: boolean, streamId: number, pasid: number, index: number, success: boolean): void {
    const f = this.forger;
    if (!f) return;
    if (this.duplicate) forgeAnswer(f, stall, streamId, pasid, index, success);
    if (this.unknown) {
      for (let i = 0; i < UNKNOWN_PER_ANSWER; i++) this.forgeUnknown(f, stall, pasid, i === 0);
    }
    if (this.flood) {
      for (let i = 0; i < FLOOD_PER_ANSWER; i++) {
        const kind = i % 3;
        const done =
          kind === 0
            ? forgeAnswer(f, stall, streamId, pasid, index, success)
            : kind === 1
              ? this.forgeUnknown(f, stall, pasid, (i & 1) === 0)
              : f.illegal(streamId, index);
        if (!done) break;
      }
    }
  }

  /** The PASID the next DMA descriptor of a device whose own PASID is `own` names. */
  dmaPasid(own: number): number {
    if (!this.foreignPasids || ++this.descriptors % FOREIGN_PASID_EVERY !== 0) return own;
    switch (this.prng.below(3)) {
      case 0:
        return own === 0 ? 1 : 0;
      case 1:
        return (own + 1) % TOPOLOGY_PASIDS;
      default:
        return this.prng.below(TOPOLOGY_PASIDS);
    }
  }

  /** A fresh page-in of `va`: true when a wild entry was written instead of the mapping. */
  plantWild(table: Stage1Table, pasid: number, va: number): boolean {
    return this.wild?.plant(table, pasid, va) ?? false;
  }

  /** Before each pass of the main loop. */
  beforePoll(): void {
    this.corruption?.beforePoll();
  }

  /** After each pass of the main loop. */
  afterPoll(): void {
    this.corruption?.afterPoll(this.faults);
  }

  /** The main loop's longest sleep on its doorbell. */
  sleepMs(ms: number): number {
    return this.corruption?.urgent ? Math.min(ms, URGENT_SLEEP_MS) : ms;
  }

  /** An answer for a group or stall the guest was never given; false when the queue is full. */
  private forgeUnknown(f: CommandForger, stall: boolean, pasid: number, strangerDevice: boolean): boolean {
    const streamId = strangerDevice
      ? this.devices + this.prng.below(STREAM_IDS - this.devices)
      : this.prng.below(this.devices);
    return stall
      ? f.resume(streamId, this.prng.below(STAGS), true)
      : f.group(streamId, pasid, this.prng.below(PRG_INDICES), true);
  }
}

/** hang: the worker never gets back to its event loop; only terminating it ends this. */
function spinForever(): never {
  const spins = new Int32Array(1);
  for (;;) Atomics.add(spins, 0, 1);
}

function forgeAnswer(
  f: CommandForger,
  stall: boolean,
  streamId: number,
  pasid: number,
  index: number,
  success: boolean,
): boolean {
  return stall ? f.resume(streamId, index, success) : f.group(streamId, pasid, index, success);
}

/** Commands in the driver's format, committed only if the queue has room (never waiting). */
export interface CommandForger {
  /** A page response for PRG `prgIndex` of `streamId` (`pasid` -1: none). */
  group(streamId: number, pasid: number, prgIndex: number, success: boolean): boolean;
  /** A resume of stall `stag` of `streamId` (false for a flavour without stalls). */
  resume(streamId: number, stag: number, retry: boolean): boolean;
  /** A page response with a reserved response code. */
  illegal(streamId: number, prgIndex: number): boolean;
}

export class Smmuv3Forger implements CommandForger {
  private readonly response = newPriRespCommand();
  private readonly resumeCommand = newResumeCommand();

  constructor(private readonly cmdq: RingProducer) {}

  group(streamId: number, pasid: number, prgIndex: number, success: boolean): boolean {
    return this.priResp(streamId, pasid, prgIndex, success ? PRI_RESP_SUCCESS : PRI_RESP_INVALID);
  }

  resume(streamId: number, stag: number, retry: boolean): boolean {
    const at = this.cmdq.claim();
    if (at < 0) return false;
    const c = this.resumeCommand;
    c.streamId = streamId;
    c.stag = stag;
    c.action = retry ? RESUME_RETRY : RESUME_ABORT;
    encodeResume(this.cmdq.words, at, c);
    this.cmdq.commit();
    return true;
  }

  illegal(streamId: number, prgIndex: number): boolean {
    return this.priResp(streamId, -1, prgIndex, PRI_RESP_RESERVED);
  }

  private priResp(streamId: number, pasid: number, prgIndex: number, resp: number): boolean {
    const at = this.cmdq.claim();
    if (at < 0) return false;
    const c = this.response;
    c.streamId = streamId;
    c.ssv = pasid >= 0;
    c.substreamId = Math.max(pasid, 0);
    c.prgIndex = prgIndex;
    c.resp = resp;
    encodePriResp(this.cmdq.words, at, c);
    this.cmdq.commit();
    return true;
  }
}

export class VtdForger implements CommandForger {
  private readonly response = newVtdPageGroupResponse();

  constructor(private readonly iq: RingProducer) {}

  group(rid: number, pasid: number, prgIndex: number, success: boolean): boolean {
    return this.groupResponse(rid, pasid, prgIndex, success ? QI_RESP_SUCCESS : QI_RESP_INVALID);
  }

  resume(): boolean {
    return false;
  }

  illegal(rid: number, prgIndex: number): boolean {
    return this.groupResponse(rid, -1, prgIndex, QI_RESP_RESERVED);
  }

  private groupResponse(rid: number, pasid: number, prgIndex: number, code: number): boolean {
    const at = this.iq.claim();
    if (at < 0) return false;
    const p = this.response;
    p.rid = rid;
    p.pasidPresent = pasid >= 0;
    p.pasid = Math.max(pasid, 0);
    p.prgIndex = prgIndex;
    p.lpig = true;
    p.code = code;
    encodeVtdPageGroupResponse(this.iq.words, at, p);
    this.iq.commit();
    return true;
  }
}

/**
 * corrupt-ring-indices. A guest owns the indices the host must read: CONS of each queue the host
 * fills (page requests; SMMUv3 events too) and PROD of its command queue. Each garbage value claims
 * between size + 1 and 2 * size - 1 records in flight, which the host's ring counts as corrupt and
 * treats as full (or empty).
 */
class IndexCorruption {
  private readonly consumed: HeldCons[];
  private readonly commands: RingProducer;
  private readonly hostBell: Doorbell;
  private readonly mirror: RingMirror | undefined;
  private nextEpisode = CORRUPT_EVERY;
  private prodOwed = false;
  private garbageProd = 0;

  constructor(
    queues: MisbehaviourQueues,
    private readonly prng: Prng,
  ) {
    const rings = queues.events ? [queues.pageRequests, queues.events] : [queues.pageRequests];
    this.consumed = rings.map((ring) => new HeldCons(ring, queues.mirror));
    this.commands = queues.commands;
    this.hostBell = queues.hostBell;
    this.mirror = queues.mirror;
  }

  /**
   * A corruption waits to be made or undone, or the host raised an overflow while it saw the
   * garbage (a discard rings no doorbell): the main loop must not sleep long.
   */
  get urgent(): boolean {
    return this.prodOwed || this.consumed.some((c) => c.held || c.ring.overflowPending());
  }

  beforePoll(): void {
    const now = performance.now();
    for (const c of this.consumed) c.restore(now);
  }

  /** After a pass; `faults` is the count of page requests and stalls handled so far. */
  afterPoll(faults: number): void {
    if (faults >= this.nextEpisode) {
      this.nextEpisode = faults + CORRUPT_EVERY;
      for (const c of this.consumed) c.corrupt(this.noise(c.ring.log2Size));
      this.prodOwed = true;
    }
    if (this.prodOwed) this.corruptProd();
  }

  /**
   * PROD once the host has consumed every command, so that its CONS equals PROD exactly; then the
   * host's doorbell, so that it reads it.
   */
  private corruptProd(): void {
    const ring = this.commands;
    const words = ring.words;
    const prod = Atomics.load(words, PROD);
    if (prod === this.garbageProd) {
      this.prodOwed = false;
      return;
    }
    if (!queueEmpty(prod, Atomics.load(words, CONS), ring.log2Size)) return;
    const claimed = ring.size + 1 + this.prng.below(ring.size - 1);
    this.garbageProd =
      queueOverflowFlag(prod) | this.noise(ring.log2Size) | queueIndexWrap(prod + claimed, ring.log2Size);
    Atomics.store(words, PROD, this.garbageProd);
    this.mirror?.store(words, PROD, 1);
    this.hostBell.ring();
    this.prodOwed = false;
  }

  /** Random bits above a ring's index and wrap bit, below the overflow flag: the host masks them off. */
  private noise(log2Size: number): number {
    return this.prng.nextU32() & ~queueIndexWrapMask(log2Size) & ~QUEUE_OVERFLOW;
  }
}

/** A consumer's CONS replaced by garbage for HOLD_MS, then put back. */
class HeldCons {
  private real = 0;
  private garbage = 0;
  private since = -1;

  constructor(
    readonly ring: RingConsumer,
    private readonly mirror: RingMirror | undefined,
  ) {}

  get held(): boolean {
    return this.since >= 0;
  }

  /**
   * CONS more than a ring behind the PROD last seen: impossible whatever the host publishes
   * meanwhile (it has room for at most size - 2 more records before the value looks plausible).
   */
  corrupt(noise: number): void {
    if (this.since >= 0) return;
    const ring = this.ring;
    const words = ring.words;
    const cons = Atomics.load(words, CONS);
    const prod = Atomics.load(words, PROD);
    this.garbage = queueOverflowFlag(cons) | noise | queueIndexWrap(prod - ring.size - 1, ring.log2Size);
    this.real = cons;
    this.since = performance.now();
    Atomics.store(words, CONS, this.garbage);
    this.mirror?.store(words, CONS, 1);
  }

  restore(now: number): void {
    if (this.since < 0) return;
    const words = this.ring.words;
    // The driver may have stored its own CONS since (a release or an overflow acknowledgement).
    if (Atomics.load(words, CONS) === this.garbage) {
      if (now - this.since < HOLD_MS) return;
      if (Atomics.compareExchange(words, CONS, this.garbage, this.real) === this.garbage)
        this.mirror?.store(words, CONS, 1);
    }
    this.since = -1;
  }
}

const OUTSIDE_RAM = 0;
const CYCLE = 1;
const RESERVED_BITS = 2;
/** Pages past the end of guest RAM that an outside entry may point at. */
const OUTSIDE_PAGES = 1 << 20;

/** wild-page-tables: entries the IOMMU's walker must refuse, written where a mapping was due. */
class WildTables {
  private pageIns = 0;
  private plants = 0;
  /** Pages made wild once already, as PASID * 2^36 + page number (PASIDs < 2^8, VAs < 2^48). */
  private readonly planted = new Set<number>();

  constructor(
    private readonly memory: GuestMemory,
    private readonly prng: Prng,
  ) {}

  plant(table: Stage1Table, pasid: number, va: number): boolean {
    const key = pasid * 2 ** 36 + Math.floor(va / PAGE_SIZE);
    if (this.planted.has(key) || this.pageIns++ % WILD_EVERY !== 0) return false;
    this.planted.add(key);
    const open = table.openSlot(va);
    const kind = open.level < LEVELS - 1 ? CYCLE : this.plants % 3;
    this.plants++;
    const words = this.memory.words;
    const own = addressLow(open.table) & PTE_ADDR_LOW_MASK;
    switch (kind) {
      case OUTSIDE_RAM: {
        const gpa = this.memory.size + this.prng.below(OUTSIDE_PAGES) * PAGE_SIZE;
        const low = (addressLow(gpa) & PTE_ADDR_LOW_MASK) | PTE_VALID | PTE_TABLE | PTE_AF | PTE_AP_UNPRIV;
        writeEntry(words, open.slot, low, addressHigh(gpa));
        break;
      }
      case CYCLE:
        // No AF: read as a page (at the leaf, or one level early below a cycle) it is an access fault.
        writeEntry(words, open.slot, own | PTE_VALID | PTE_TABLE, addressHigh(open.table));
        break;
      case RESERVED_BITS:
        // One of the RES0 bits [21:16] of the high word.
        writeEntry(
          words,
          open.slot,
          own | PTE_VALID | PTE_TABLE | PTE_AF | PTE_AP_UNPRIV,
          addressHigh(open.table) | (1 << (16 + this.prng.below(6))),
        );
    }
    return true;
  }
}
