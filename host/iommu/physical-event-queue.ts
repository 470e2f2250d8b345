/**
 * The host's physical event queue (SMMUv3 EVTQ, SMMU spec 3.5, 7.2.1, 7.4; docs/queues.md): 2^n
 * 32-byte entries in the event record layout (shared/records/evtq-entry.ts), written by the IOMMU
 * for every stream behind it and consumed by the host driver's event thread (EvtqThread below).
 *
 * Its overflow rules are not the PRI queue's:
 * - a non-stall record that finds the queue full is discarded, and OVFLG toggles only if no
 *   overflow is pending (a second one is invisible until software acknowledges the first);
 * - the queue keeps accepting records while the overflow is unacknowledged, as soon as it has room;
 * - a record of a stalled transaction is never discarded and never causes an overflow: it waits in
 *   the SMMU's stall buffer and is written ahead of any record that comes after it.
 *
 * PROD and CONS: queue-registers.ts.
 */
import {
  decodeEvtqEntry,
  EVTQ_ENTRY_WORDS,
  type EvtqEntry,
  encodeEvtqEntry,
  newEvtqEntry,
} from '../../shared/records/evtq-entry.ts';
import { IrqThread, type IrqThreadOptions, type IrqThreadStats } from './irq-thread.ts';
import { QueueRegisters } from './queue-registers.ts';

export interface PhysicalEvtqStats {
  /** Records committed to the queue (held stall records once they got there). */
  written: number;
  consumed: number;
  /** Non-stall records discarded because the queue was full. */
  discarded: number;
  /** Discards that toggled OVFLG, and overflows the host acknowledged. */
  overflows: number;
  acknowledged: number;
  /** Stall records that had to wait in the stall buffer. */
  stallsHeld: number;
  highWater: number;
}

export class PhysicalEventQueue extends QueueRegisters {
  readonly stats: PhysicalEvtqStats = {
    written: 0,
    consumed: 0,
    discarded: 0,
    overflows: 0,
    acknowledged: 0,
    stallsHeld: 0,
    highWater: 0,
  };
  readonly words: Int32Array;
  /** Called on the empty -> non-empty edge: the queue's interrupt. */
  irq: () => void = () => {};
  /** The stall buffer: a FIFO of encoded stall records waiting for room. */
  private readonly held: Int32Array;
  private heldHead = 0;
  private heldCount = 0;

  /** @param stallCapacity stall records that can wait at once (the stall model's STAGs suffice). */
  constructor(log2Size: number, stallCapacity: number) {
    super(log2Size, 'an event queue');
    this.words = new Int32Array(this.size * EVTQ_ENTRY_WORDS);
    this.held = new Int32Array(Math.max(1, stallCapacity) * EVTQ_ENTRY_WORDS);
  }

  /** Stall records waiting in the stall buffer. */
  get heldStalls(): number {
    return this.heldCount;
  }

  /**
   * The IOMMU records an event. Returns 'written', 'held' (a stall record waiting for room) or
   * 'discarded' (a non-stall record that found the queue full).
   */
  write(e: Readonly<EvtqEntry>): 'written' | 'held' | 'discarded' {
    const wasEmpty = this.empty;
    this.releaseHeld();
    // Held stall records go first: a later record is written only once they are all in.
    if (this.heldCount === 0 && !this.full) {
      this.commit(e);
      if (wasEmpty) this.irq();
      return 'written';
    }
    if (wasEmpty && !this.empty) this.irq();
    if (e.stall) {
      if (this.heldCount * EVTQ_ENTRY_WORDS === this.held.length) {
        throw new Error('event queue: the stall buffer is full (more stalls than the stall model has STAGs)');
      }
      const slot = (this.heldHead + this.heldCount) % (this.held.length / EVTQ_ENTRY_WORDS);
      encodeEvtqEntry(this.held, slot * EVTQ_ENTRY_WORDS, e);
      this.heldCount++;
      this.stats.stallsHeld++;
      return 'held';
    }
    this.stats.discarded++;
    if (!this.overflowActive) {
      this.raiseOverflow();
      this.stats.overflows++;
    }
    return 'discarded';
  }

  /**
   * Consume the entry at CONS: its word offset in `words` (valid until the next write or
   * `releaseHeld`), or -1 when the queue is empty.
   */
  pop(): number {
    if (this.empty) return -1;
    const slot = this.consSlot;
    this.advanceCons();
    this.stats.consumed++;
    return slot * EVTQ_ENTRY_WORDS;
  }

  /** CONS.OVACKFLG := PROD.OVFLG. */
  acknowledgeOverflow(): void {
    if (this.acknowledge()) this.stats.acknowledged++;
  }

  /** Move held stall records into whatever room the queue has, oldest first. */
  releaseHeld(): void {
    const slots = this.held.length / EVTQ_ENTRY_WORDS;
    while (this.heldCount > 0 && !this.full) {
      const from = this.heldHead * EVTQ_ENTRY_WORDS;
      const to = this.prodSlot * EVTQ_ENTRY_WORDS;
      for (let w = 0; w < EVTQ_ENTRY_WORDS; w++) this.words[to + w] = this.held[from + w];
      this.publish();
      this.heldHead = (this.heldHead + 1) % slots;
      this.heldCount--;
    }
  }

  private commit(e: Readonly<EvtqEntry>): void {
    encodeEvtqEntry(this.words, this.prodSlot * EVTQ_ENTRY_WORDS, e);
    this.publish();
  }

  /** Entry first, then PROD (3.5.2). */
  private publish(): void {
    this.advanceProd();
    this.stats.written++;
    const held = this.occupancy;
    if (held > this.stats.highWater) this.stats.highWater = held;
  }
}

export interface EvtqThreadOptions extends IrqThreadOptions {
  /** One event record, decoded (the driver's arm_smmu_handle_evt). */
  handle(e: Readonly<EvtqEntry>): void;
}

/**
 * The host driver's event-queue thread (Linux arm_smmu_evtq_thread): records go to `handle` (a
 * stall becomes an IOPF group, a stage-1 record goes to its vIOMMU); after an overflow the lost
 * records are only counted, then acknowledged. Each entry it frees lets a held stall record in.
 */
export class EvtqThread extends IrqThread {
  readonly stats: IrqThreadStats = { passes: 0, deferredPasses: 0 };
  private readonly entry = newEvtqEntry();

  constructor(
    private readonly queue: PhysicalEventQueue,
    private readonly options: EvtqThreadOptions,
  ) {
    super(queue, options);
  }

  protected take(): boolean {
    const at = this.queue.pop();
    if (at < 0) return false;
    decodeEvtqEntry(this.queue.words, at, this.entry);
    this.queue.releaseHeld();
    return true;
  }

  protected handOn(): void {
    this.options.handle(this.entry);
  }
}
