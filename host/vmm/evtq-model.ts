/**
 * The host model of a guest's SMMUv3 event queue: what the vSMMU does with an event record it has
 * assembled (SMMU spec 7.2.1, 7.4; docs/queues.md).
 *
 * - Records are never overwritten. When the queue is full a non-stall record is discarded, and
 *   OVFLG toggles only if no overflow is pending (the ring's `discard`).
 * - Unlike the PRI queue, the event queue keeps accepting records while the overflow is
 *   unacknowledged; a second overflow is invisible until software acknowledges the first.
 * - A record of a stalled transaction is never discarded and never causes overflow: it waits in a
 *   bounded FIFO (the SMMU's stall buffer) until the queue is writable, and is written ahead of any
 *   record that arrives after it.
 * - EVENTQEN == 0 (`enabled` false): the queue is not writable; non-stall records are dropped
 *   without overflow, stall records wait like they do for a full queue (spec 7.2.1).
 * - Records are committed one by one and published together by `flush()`; the ring rings the
 *   doorbell (the EVTQ IRQ) on the empty -> non-empty edge of that publish.
 *
 * The hot path encodes straight into the ring (or the stall FIFO) and allocates nothing.
 */
import { EVTQ_ENTRY_WORDS, type EvtqEntry, encodeEvtqEntry } from '../../shared/records/evtq-entry.ts';
import { type RingProducer, ringBytes } from '../../shared/ring.ts';

export type EventWriteResult = 'written' | 'discarded' | 'waiting';

export interface EventQueueStats {
  /** Records committed to the ring, held stall records included once they got there. */
  written: number;
  /** Non-stall records lost: to a full queue (overflow), or to EVENTQEN == 0 (no overflow). */
  discarded: { full: number; disabled: number };
  /** Discards that toggled OVFLG (the others happened while an overflow was pending). */
  overflowsRaised: number;
  /** Stall records that had to wait in the FIFO instead of going straight to the ring. */
  stallHeld: number;
}

export interface EventQueueOptions {
  /** Stall records that can wait at once (the SMMU's stall buffer); 1..65536, default 64. */
  stallCapacity?: number;
}

const DEFAULT_STALL_CAPACITY = 64;
/** A sanity bound (one stream's STAG space); real stall buffers are far smaller. */
const MAX_STALL_CAPACITY = 1 << 16;

export class EventQueueModel {
  /** SMMU_CR0.EVENTQEN. */
  enabled = true;
  readonly stats: EventQueueStats = {
    written: 0,
    discarded: { full: 0, disabled: 0 },
    overflowsRaised: 0,
    stallHeld: 0,
  };
  readonly stallCapacity: number;

  /** Encoded stall records waiting for room, a circular FIFO of `stallCapacity` slots. */
  private readonly heldWords: Int32Array;
  private heldFirst = 0;
  private heldCount = 0;

  /**
   * @param ring the guest's event queue: a producer of 8-word records. Its doorbell, if any, is
   *   the EVTQ interrupt.
   */
  constructor(
    private readonly ring: RingProducer,
    options: EventQueueOptions = {},
  ) {
    if (ringBytes({ log2Size: ring.log2Size, recordWords: EVTQ_ENTRY_WORDS }) !== ring.words.byteLength) {
      throw new RangeError(`event queue ring must hold ${EVTQ_ENTRY_WORDS}-word records (32-byte events)`);
    }
    const capacity = options.stallCapacity ?? DEFAULT_STALL_CAPACITY;
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_STALL_CAPACITY) {
      throw new RangeError(
        `event queue stallCapacity must be an integer in 1..${MAX_STALL_CAPACITY}, got ${capacity}`,
      );
    }
    this.stallCapacity = capacity;
    this.heldWords = new Int32Array(capacity * EVTQ_ENTRY_WORDS);
  }

  /** Stall records waiting for the queue to become writable. */
  get held(): number {
    return this.heldCount;
  }

  /**
   * Stall records that can still be held. A device model must not issue another stalling
   * transaction when this is 0 (the SMMU back-pressures the bus instead of dropping a stall).
   */
  get stallRoom(): number {
    return this.stallCapacity - this.heldCount;
  }

  /**
   * A held stall record can be written now: the queue is enabled and the guest's CONS shows a free
   * slot. What the host checks when software may have freed slots, before it sleeps.
   */
  get canPump(): boolean {
    return this.heldCount > 0 && this.enabled && this.ring.hasRoom();
  }

  /**
   * Deliver one event record (encoded at once; `record` may be reused by the caller).
   * 'written': committed, visible after `flush()`. 'discarded': lost (counted by reason).
   * 'waiting': a stall record held until `pump()` or a later `write()` finds room.
   * Throws when a stall record arrives with no stall room left: that is a caller bug, since a stall
   * record may neither be discarded nor silently kept beyond the stall buffer.
   */
  write(record: EvtqEntry): EventWriteResult {
    // Held stall records go first, so nothing that arrived after them can overtake them.
    if (this.heldCount > 0) this.writeHeld();
    const direct = this.heldCount === 0 && this.enabled ? this.ring.claim() : -1;
    if (direct >= 0) {
      encodeEvtqEntry(this.ring.words, direct, record);
      this.ring.commit();
      this.stats.written++;
      return 'written';
    }
    if (record.stall) {
      this.hold(record);
      return 'waiting';
    }
    if (!this.enabled) {
      this.stats.discarded.disabled++;
      return 'discarded';
    }
    // Spec 7.4: software must see the queue full before it can see the overflow, so the records
    // of this batch are published before OVFLG moves.
    this.ring.publish();
    if (this.ring.discard()) this.stats.overflowsRaised++;
    this.stats.discarded.full++;
    return 'discarded';
  }

  /**
   * Retry the held stall records in order (call it when the guest has freed space, or after
   * EVENTQEN is set again). Publishes what it wrote; returns how many records that was.
   */
  pump(): number {
    const wrote = this.heldCount > 0 ? this.writeHeld() : 0;
    if (wrote > 0) this.ring.publish();
    return wrote;
  }

  /** End of a batch: store PROD once. Returns true when the doorbell rang (queue was empty). */
  flush(): boolean {
    return this.ring.publish();
  }

  private hold(record: EvtqEntry): void {
    if (this.heldCount === this.stallCapacity) {
      throw new RangeError(
        `event queue stall buffer is full (${this.stallCapacity} records): stop issuing stalling ` +
          'transactions until pump() has written some',
      );
    }
    const slot = (this.heldFirst + this.heldCount) % this.stallCapacity;
    encodeEvtqEntry(this.heldWords, slot * EVTQ_ENTRY_WORDS, record);
    this.heldCount++;
    this.stats.stallHeld++;
  }

  /** Commit held records while the queue is writable; returns how many. */
  private writeHeld(): number {
    if (!this.enabled) return 0;
    const words = this.ring.words;
    const held = this.heldWords;
    let wrote = 0;
    while (this.heldCount > 0) {
      const at = this.ring.claim();
      if (at < 0) break;
      const from = this.heldFirst * EVTQ_ENTRY_WORDS;
      for (let i = 0; i < EVTQ_ENTRY_WORDS; i++) words[at + i] = held[from + i];
      this.ring.commit();
      this.heldFirst = (this.heldFirst + 1) % this.stallCapacity;
      this.heldCount--;
      wrote++;
    }
    this.stats.written += wrote;
    return wrote;
  }
}
