/**
 * A hostile guest (topology `misbehave`, MISBEHAVIOURS in shared/control.ts): what it does, as hooks
 * that its vIOMMU driver, demand pager and main loop call. A well-behaved guest has no Misbehaviour
 * at all, so each hook costs it one test of `undefined`.
 *
 * - corrupt-ring-indices (index-corruption.ts): every 8th fault, it writes a CONS into its page
 *   request queue (and on SMMUv3 its event queue) that claims more records than the ring holds, and
 *   puts the real one back a few ms later; and, once the host has drained its command queue, a PROD
 *   that claims as much.
 * - unknown-responses: after each real answer, one for a StreamID (VT-d: RID) it has no device for
 *   and one for a random PRG index (STAG) of one of its devices.
 * - duplicate-responses: each answer goes out twice, in the same batch.
 * - response-flood: after each real answer, up to 64 more commands (repeats of it, unknown groups,
 *   responses with a reserved code), as many as the command queue takes without waiting.
 * - never-respond: it consumes page requests and stall events and answers none.
 * - wild-page-tables (wild-tables.ts): every 4th fresh page-in writes a wild entry instead of the
 *   mapping and still answers Success: an address outside guest RAM, a table entry pointing at its
 *   own table, or reserved bits. Each page is made wild at most once.
 * - crash-mid-fault: its 8th fault is consumed and never answered, and an exception is thrown from
 *   a setImmediate callback, outside any try/catch: the worker dies of it.
 * - hang: at its first fault, it spins in a synchronous loop that never ends.
 * - foreign-pasid-dma: every 4th DMA descriptor names a PASID other than its device's: PASID 0
 *   (the RID, which an interface of a shared function may not hold), the next PASID up (on a
 *   shared function, the neighbour's) or a random one (most likely attached by nobody).
 *
 * Forged commands are in the flavour's format (command-forger.ts: smmuv3-forger.ts, vtd-forger.ts).
 */
import type { Misbehaviour as MisbehaviourKind } from '../shared/control.ts';
import type { GuestMemory } from '../shared/guest-memory.ts';
import { Prng } from '../shared/prng.ts';
import { STAGS } from '../shared/records/evtq-entry.ts';
import { PRG_INDICES } from '../shared/records/page-request.ts';
import type { CommandForger } from './command-forger.ts';
import { type CorruptibleQueues, IndexCorruption } from './index-corruption.ts';
import type { Stage1Table } from './mm/stage1-table.ts';
import { WildTables } from './wild-tables.ts';

export type { CommandForger } from './command-forger.ts';
export { Smmuv3Forger } from './smmuv3-forger.ts';
export { VtdForger } from './vtd-forger.ts';

/** The main loop's longest sleep while a corruption waits to be made or undone. */
const URGENT_SLEEP_MS = 1;
const UNKNOWN_PER_ANSWER = 2;
const FLOOD_PER_ANSWER = 64;
/** The fault that crash-mid-fault dies handling. */
const CRASH_AT = 8;
/** DMA descriptors between two forged PASIDs. */
const FOREIGN_PASID_EVERY = 4;
/** Forged PASIDs stay in the topology's PASID range (1..255) and PASID 0. */
const TOPOLOGY_PASIDS = 256;

/** StreamIDs and RIDs forged for devices the guest does not have stay below this. */
const STREAM_IDS = 1 << 16;

/** The queues a misbehaviour writes into, once the driver has been built. */
export interface MisbehaviourQueues extends CorruptibleQueues {
  /** Forges commands in the flavour's encoding (guest/flavours.ts). */
  forger: CommandForger;
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
