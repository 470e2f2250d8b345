/**
 * corrupt-ring-indices, a hostile guest's behaviour (misbehave.ts): every CORRUPT_EVERY faults it
 * writes a CONS into each queue the host fills that claims more records than the ring holds, and
 * puts the real one back HOLD_MS later (its next release or overflow acknowledgement may overwrite
 * it first); and, once the host has drained its command queue, a PROD that claims as much (its next
 * publish overwrites it).
 */
import type { Doorbell } from '../shared/doorbell.ts';
import type { Prng } from '../shared/prng.ts';
import {
  QUEUE_OVERFLOW,
  queueEmpty,
  queueIndexWrap,
  queueIndexWrapMask,
  queueOverflowFlag,
} from '../shared/queue-index.ts';
import { CONS, PROD, type RingConsumer, type RingMirror, type RingProducer } from '../shared/ring.ts';

/** Faults (page requests and stall events) between two corruptions of the ring indices. */
const CORRUPT_EVERY = 8;
/** How long a corrupt CONS stays before the real one goes back. */
const HOLD_MS = 3;

/** The queues whose indices the guest owns. */
export interface CorruptibleQueues {
  /** The command queue (VT-d: invalidation queue): its PROD. */
  commands: RingProducer;
  /** The PRI queue (VT-d: the page request queue's ring): its CONS. */
  pageRequests: RingConsumer;
  /** The event queue (SMMUv3 only): its CONS. */
  events?: RingConsumer;
  /** The host's interrupt line. */
  hostBell: Doorbell;
  /** The postMessage transport's link, which must carry every store this side makes. */
  mirror?: RingMirror;
}

/**
 * corrupt-ring-indices. A guest owns the indices the host must read: CONS of each queue the host
 * fills (page requests; SMMUv3 events too) and PROD of its command queue. Each garbage value claims
 * between size + 1 and 2 * size - 1 records in flight, which the host's ring counts as corrupt and
 * treats as full (or empty).
 */
export class IndexCorruption {
  private readonly consumed: HeldCons[];
  private readonly commands: RingProducer;
  private readonly hostBell: Doorbell;
  private readonly mirror: RingMirror | undefined;
  private nextEpisode = CORRUPT_EVERY;
  private prodOwed = false;
  private garbageProd = 0;

  constructor(
    queues: CorruptibleQueues,
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
