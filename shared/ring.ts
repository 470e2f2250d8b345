/**
 * The mirrored single-producer/single-consumer ring (SMMU spec 3.5; docs/queues.md) in shared memory.
 * One implementation serves every queue in the project: page-request and event queues (host to
 * guest), command queues and DMA descriptor queues (guest to host), completion queues.
 *
 * Rules it keeps (SMMUv3 spec 3.5, 7.4):
 * - 2^n fixed-size slots, all usable. PROD and CONS hold index + wrap bit in bits [n:0]; empty is
 *   "equal including wrap", full is "equal index, different wrap" (the arithmetic: queue-index.ts).
 * - Each side writes only its own index and keeps the authoritative copy in thread-local state; the
 *   other side's index is read from shared memory and validated, never trusted (a guest may write
 *   anything there). An index that claims more than 2^n records in flight is counted in
 *   `corruptIndex` and treated as full (producer) or empty (consumer), never followed.
 * - Records are written before the index store that publishes them (Atomics are sequentially
 *   consistent in JS), and a consumer reads no slot beyond the PROD value it loaded.
 * - Overflow: bit 31 of PROD is OVFLG, bit 31 of CONS is OVACKFLG. The producer toggles OVFLG on a
 *   discard only when no overflow is already pending (OVFLG == OVACKFLG); the consumer acknowledges
 *   by copying OVFLG into OVACKFLG. What a queue does while overflow is pending (keep writing like
 *   an event queue, or inhibit like a PRI queue) is the queue model's choice, not the ring's.
 * - The doorbell rings only on the empty -> non-empty edge of a publish. A producer that found the
 *   ring full and sleeps is woken only once the consumer has brought it to at most half full.
 */
import { DOORBELL_BYTES, Doorbell } from './doorbell.ts';
import {
  MAX_QUEUE_LOG2_SIZE,
  QUEUE_OVERFLOW,
  queueAdvance,
  queueEmpty,
  queueFree,
  queueHasSpace,
  queueIndex,
  queueIndexWrap,
  queueOverflowFlag,
  queueOverflowPending,
  queueToggleOverflow,
  queueUsed,
} from './queue-index.ts';

export interface RingGeometry {
  /** log2 of the number of slots, 1..19 (SMMUv3 caps queue sizes at 2^19 entries). */
  readonly log2Size: number;
  /** Int32 words per record (4 for a 16-byte SMMUv3 PRI/command entry, 8 for a 32-byte event). */
  readonly recordWords: number;
}

/**
 * How a ring's stores reach the other side when the two sides do not share memory (the postMessage
 * transport, shared/posted-link.ts): each side then works on its own copy of the ring, and every
 * store the ring protocol makes is carried across. Absent with shared memory.
 */
export interface RingMirror {
  /** Words [at, at + count) of `words` were stored here. */
  store(words: Int32Array, at: number, count: number): void;
  /** Wake the other side if it sleeps on the doorbell at word `at` of `words`. */
  ringIfSleeping(words: Int32Array, at: number): void;
}

/** Header words: PROD, CONS and the producer's space doorbell sit on separate cache lines. */
export const PROD = 0;
export const CONS = 16;
const SPACE_BELL_BYTE = 128;
const HEADER_BYTES = 256;

/** OVFLG in PROD, OVACKFLG in CONS (queue-index.ts). */
export const FLAG = QUEUE_OVERFLOW;
export const MAX_LOG2_SIZE = MAX_QUEUE_LOG2_SIZE;

export function ringBytes(geometry: RingGeometry): number {
  checkGeometry(geometry);
  return HEADER_BYTES + (1 << geometry.log2Size) * geometry.recordWords * 4;
}

function checkGeometry({ log2Size, recordWords }: RingGeometry): void {
  if (!Number.isInteger(log2Size) || log2Size < 1 || log2Size > MAX_LOG2_SIZE) {
    throw new RangeError(`ring log2Size must be an integer in 1..${MAX_LOG2_SIZE}, got ${log2Size}`);
  }
  if (!Number.isInteger(recordWords) || recordWords < 1 || recordWords > 64) {
    throw new RangeError(`ring recordWords must be an integer in 1..64, got ${recordWords}`);
  }
}

/** What both endpoints know about one ring: where it lives and its shape. */
class RingView {
  readonly log2Size: number;
  readonly size: number;
  readonly recordWords: number;
  /** Word offset of slot 0 in `words`. */
  readonly slotBase: number;
  /** The whole ring region, header included; records are read and written through it. */
  readonly words: Int32Array;
  readonly spaceBell: Doorbell;

  constructor(buffer: SharedArrayBuffer, byteOffset: number, geometry: RingGeometry) {
    const bytes = ringBytes(geometry);
    if (byteOffset % 64 !== 0) throw new RangeError(`ring offset ${byteOffset} is not 64-byte aligned`);
    if (byteOffset + bytes > buffer.byteLength) {
      throw new RangeError(`ring of ${bytes} bytes at ${byteOffset} exceeds buffer of ${buffer.byteLength}`);
    }
    this.log2Size = geometry.log2Size;
    this.size = 1 << geometry.log2Size;
    this.recordWords = geometry.recordWords;
    this.slotBase = HEADER_BYTES / 4;
    this.words = new Int32Array(buffer, byteOffset, bytes / 4);
    this.spaceBell = new Doorbell(buffer, byteOffset + SPACE_BELL_BYTE);
  }

  slot(indexWithWrap: number): number {
    return this.slotBase + queueIndex(indexWithWrap, this.log2Size) * this.recordWords;
  }
}

// SPACE_BELL must fit between CONS's line and the first slot.
if (SPACE_BELL_BYTE + DOORBELL_BYTES > HEADER_BYTES) throw new Error('ring header layout overlaps');

export class RingProducer {
  readonly words: Int32Array;
  readonly log2Size: number;
  readonly size: number;
  /** Times the consumer's index claimed an impossible fill level (counted, treated as full). */
  corruptIndex = 0;
  /** Records discarded because the ring was full (counted by `discard`). */
  discarded = 0;

  private readonly view: RingView;
  private prod = 0;
  private published = 0;
  private overflowFlag = 0;
  private free = 0;

  /**
   * @param doorbell rung on the empty -> non-empty edge of a publish (the consumer's IRQ line).
   */
  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    geometry: RingGeometry,
    private readonly doorbell?: Doorbell,
    private readonly mirror?: RingMirror,
  ) {
    this.view = new RingView(buffer, byteOffset, geometry);
    this.words = this.view.words;
    this.log2Size = this.view.log2Size;
    this.size = this.view.size;
  }

  /**
   * Word offset in `words` of the next free slot, or -1 when the ring is full. The slot becomes
   * the consumer's only after `commit()` and `publish()`.
   */
  claim(): number {
    if (this.free === 0 && this.refreshFree() === 0) return -1;
    return this.view.slot(this.prod);
  }

  /** Take the claimed slot into the batch; it is not visible until `publish()`. */
  commit(): void {
    this.prod = queueAdvance(this.prod, 1, this.view.log2Size);
    this.free--;
  }

  /**
   * Store PROD once for every record committed since the last publish, then ring the doorbell if
   * this publish took the ring from empty to non-empty. Returns true when it rang.
   */
  publish(): boolean {
    if (this.prod === this.published) return false;
    const before = this.published;
    this.published = this.prod;
    if (this.mirror) this.mirrorRecords(before, this.prod);
    Atomics.store(this.view.words, PROD, this.prod | this.overflowFlag);
    this.mirror?.store(this.view.words, PROD, 1);
    // SC atomics: a consumer that stored CONS == before has drained everything and may sleep.
    const wasEmpty = queueEmpty(before, Atomics.load(this.view.words, CONS), this.view.log2Size);
    if (wasEmpty) this.doorbell?.ring();
    return wasEmpty;
  }

  /** Commit and publish one record in one call. */
  push(): boolean {
    this.commit();
    return this.publish();
  }

  /**
   * The consumer's index shows a free slot: a look that changes nothing and counts nothing (a
   * corrupt index reads as no room), for a host deciding whether it has work before it sleeps.
   */
  hasRoom(): boolean {
    return queueHasSpace(this.prod, Atomics.load(this.view.words, CONS), this.view.log2Size, 1);
  }

  /** Records published or committed and not yet consumed, as far as the consumer's index says. */
  used(): number {
    return this.size - this.refreshFree();
  }

  /**
   * Note that a record was discarded because the ring was full. Toggles OVFLG only when no overflow
   * is pending; returns true when this call raised the overflow condition. Records committed ahead
   * of the discard are published first: the overflow flag is never observable before the entries
   * written ahead of it (SMMU spec 7.4, 8.1), or a consumer would read "empty, overflowed",
   * acknowledge, and drop partial groups whose entries were still coming.
   */
  discard(): boolean {
    this.discarded++;
    if (this.overflowPending()) return false;
    this.publish();
    this.overflowFlag = queueToggleOverflow(this.overflowFlag);
    Atomics.store(this.view.words, PROD, this.published | this.overflowFlag);
    this.mirror?.store(this.view.words, PROD, 1);
    return true;
  }

  /** Carry the records of indices [from, to) across: one or two runs of slots. */
  private mirrorRecords(from: number, to: number): void {
    const mirror = this.mirror as RingMirror;
    const view = this.view;
    const count = queueUsed(to, from, view.log2Size);
    const first = queueIndex(from, view.log2Size);
    const head = Math.min(count, view.size - first);
    mirror.store(view.words, view.slot(from), head * view.recordWords);
    if (count > head) mirror.store(view.words, view.slotBase, (count - head) * view.recordWords);
  }

  /** OVFLG differs from the consumer's OVACKFLG: an overflow has not been acknowledged yet. */
  overflowPending(): boolean {
    return queueOverflowPending(this.overflowFlag, Atomics.load(this.view.words, CONS));
  }

  /**
   * Prepare to sleep until the consumer frees space: returns the sequence to pass to
   * `waitForSpace`, or -1 if space appeared meanwhile.
   */
  armSpaceWait(): number {
    const seen = this.view.spaceBell.sequence();
    this.view.spaceBell.arm();
    if (this.refreshFree() > 0) {
      this.view.spaceBell.disarm();
      return -1;
    }
    return seen;
  }

  get spaceBell(): Doorbell {
    return this.view.spaceBell;
  }

  private refreshFree(): number {
    const free = queueFree(this.prod, Atomics.load(this.view.words, CONS), this.view.log2Size);
    if (free < 0) {
      this.corruptIndex++;
      this.free = 0;
    } else {
      this.free = free;
    }
    return this.free;
  }
}

export class RingConsumer {
  readonly words: Int32Array;
  readonly log2Size: number;
  readonly size: number;
  /** Times the producer's index claimed an impossible fill level (counted, nothing consumed). */
  corruptIndex = 0;

  private readonly view: RingView;
  private cons = 0;
  private ackFlag = 0;
  private prodSeen = 0;

  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    geometry: RingGeometry,
    private readonly mirror?: RingMirror,
  ) {
    this.view = new RingView(buffer, byteOffset, geometry);
    this.words = this.view.words;
    this.log2Size = this.view.log2Size;
    this.size = this.view.size;
  }

  /**
   * Load PROD and return how many records are ready. Slots below that count may be read through
   * `at(i)` until `release()`.
   */
  poll(): number {
    const p = queueIndexWrap(Atomics.load(this.view.words, PROD), this.view.log2Size);
    const ready = queueUsed(p, this.cons, this.view.log2Size);
    if (ready > this.size) {
      this.corruptIndex++;
      return 0;
    }
    this.prodSeen = p;
    return ready;
  }

  /** Word offset in `words` of the i-th ready record. */
  at(i: number): number {
    return this.view.slot(this.cons + i);
  }

  /** Hand `n` consumed slots back to the producer with one CONS store. */
  release(n: number): void {
    if (n <= 0) return;
    this.cons = queueAdvance(this.cons, n, this.view.log2Size);
    Atomics.store(this.view.words, CONS, this.cons | this.ackFlag);
    this.mirror?.store(this.view.words, CONS, 1);
    // A producer sleeping on a full ring is woken once, when at most half the ring is in use.
    const left = queueUsed(this.prodSeen, this.cons, this.view.log2Size);
    if (left <= this.size >>> 1) {
      if (this.mirror) this.mirror.ringIfSleeping(this.view.words, SPACE_BELL_BYTE / 4);
      else this.view.spaceBell.ringIfSleeping();
    }
  }

  /** True when the producer has raised OVFLG and this side has not acknowledged it yet. */
  overflowPending(): boolean {
    return queueOverflowPending(Atomics.load(this.view.words, PROD), this.ackFlag);
  }

  /** Copy OVFLG into OVACKFLG: the overflow condition ends and the producer may signal again. */
  acknowledgeOverflow(): void {
    this.ackFlag = queueOverflowFlag(Atomics.load(this.view.words, PROD));
    Atomics.store(this.view.words, CONS, this.cons | this.ackFlag);
    this.mirror?.store(this.view.words, CONS, 1);
  }

  /** True when nothing is ready (a fresh load of PROD). */
  empty(): boolean {
    return this.poll() === 0;
  }

  /** Records consumed so far modulo 2^(n+1): the consumer's own index, for diagnostics. */
  get index(): number {
    return this.cons;
  }
}
