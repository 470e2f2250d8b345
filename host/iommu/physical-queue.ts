/**
 * The host's physical PRI queue (SMMUv3 PRIQ, SMMU spec 3.5 and 8; docs/queues.md): 2^n 16-byte entries
 * in the PRIQ entry layout (shared/records/priq-entry.ts), written by the IOMMU for every device
 * behind it and consumed by the host driver's IRQ thread (priq-thread.ts).
 *
 * PROD and CONS are queue-registers.ts's (all 2^n slots usable). The entry that finds the queue full
 * toggles OVFLG and is discarded; while OVFLG != OVACKFLG every entry is discarded (PRIQ writes are
 * inhibited, unlike EVTQ). A discarded entry with Last gets an automatic PRG response Success with
 * its PRGI and PASID, so the device retries; a discarded Last=0 entry or Stop Marker gets nothing.
 *
 * Beside each slot the host keeps who the entry is attributed to (a "requester": the sandbox's VM
 * index, -1 for none). It is bookkeeping for the noisy-neighbour measure, not part of the entry: at
 * the moment an overflow is raised each requester's share of the full queue is frozen, and every
 * entry discarded until the acknowledgement counts as lost to others for a requester that held less
 * than its fair share (capacity / sharers), and as its own loss otherwise.
 */
import { isStopMarker } from '../../shared/records/page-request.ts';
import {
  encodePriqEntry,
  newPriqEntry,
  PRIQ_ENTRY_WORDS,
  type PriqEntry,
} from '../../shared/records/priq-entry.ts';
import type { PageRequest } from './page-request.ts';
import { QueueRegisters } from './queue-registers.ts';

export interface PhysicalPriqStats {
  /** Entries committed to the queue. */
  written: number;
  /** Entries the host consumed. */
  consumed: number;
  /** Entries discarded: the one that found the queue full and every one while the overflow was active. */
  discarded: number;
  /** Discarded entries with Last (not Stop Markers) that the queue answered Success. */
  autoResponded: number;
  /** Discarded Stop Markers (no response). */
  stopMarkersDiscarded: number;
  /** Overflow conditions raised (OVFLG toggled). */
  overflows: number;
  /** Overflows the host acknowledged (OVACKFLG := OVFLG). */
  acknowledged: number;
  /** Most entries held at once. */
  highWater: number;
}

/** Where the queue's automatic responses go (the IOMMU's PRI response path to the endpoint). */
export type AutoResponder = (streamId: number, pasid: number, ssv: boolean, prgIndex: number) => void;

export class PhysicalPriQueue extends QueueRegisters {
  readonly stats: PhysicalPriqStats = {
    written: 0,
    consumed: 0,
    discarded: 0,
    autoResponded: 0,
    stopMarkersDiscarded: 0,
    overflows: 0,
    acknowledged: 0,
    highWater: 0,
  };
  /** The queue's memory: `size` entries of PRIQ_ENTRY_WORDS words. */
  readonly words: Int32Array;
  /** Requester of the entry in each slot (host bookkeeping). */
  private readonly slotRequester: Int16Array;
  private readonly scratch: PriqEntry = newPriqEntry();
  /** Called on the empty -> non-empty edge: the queue's interrupt. */
  irq: () => void = () => {};
  /** Requester of the entry `pop()` returned last. */
  requesterOfLast = -1;

  /** Per requester: entries held now, frozen victim flag of the current overflow, losses. */
  private held = new Int32Array(0);
  private victim = new Uint8Array(0);
  private lostOthers = new Float64Array(0);
  private lostSelf = new Float64Array(0);
  /** Requesters that can write into this queue (VMs with a PRI device behind this IOMMU). */
  private sharers = 1;

  constructor(
    log2Size: number,
    private readonly autoRespond: AutoResponder,
  ) {
    super(log2Size, 'a PRI queue');
    this.words = new Int32Array(this.size * PRIQ_ENTRY_WORDS);
    this.slotRequester = new Int16Array(this.size);
  }

  /** Size the attribution for requesters 0..count-1, `sharers` of which write into this queue. */
  setRequesters(count: number, sharers: number): void {
    if (count > this.held.length) {
      const held = new Int32Array(count);
      const victim = new Uint8Array(count);
      const lostOthers = new Float64Array(count);
      const lostSelf = new Float64Array(count);
      held.set(this.held);
      victim.set(this.victim);
      lostOthers.set(this.lostOthers);
      lostSelf.set(this.lostSelf);
      this.held = held;
      this.victim = victim;
      this.lostOthers = lostOthers;
      this.lostSelf = lostSelf;
    }
    this.sharers = Math.max(1, sharers);
  }

  /** Requester `r`'s entries discarded by overflows other requesters caused, and by its own. */
  lostToOthers(r: number): number {
    return r >= 0 && r < this.lostOthers.length ? this.lostOthers[r] : 0;
  }

  lostOwn(r: number): number {
    return r >= 0 && r < this.lostSelf.length ? this.lostSelf[r] : 0;
  }

  /**
   * A page request arrives (spec 8.1: check writable, commit, then PROD). Returns false when it was
   * discarded (and, for a Last, answered Success).
   */
  write(r: PageRequest, requester: number): boolean {
    if (this.overflowActive) return this.discard(r, requester);
    if (this.full) {
      this.raiseOverflow();
      this.stats.overflows++;
      this.freezeShares();
      return this.discard(r, requester);
    }
    const wasEmpty = this.empty;
    const slot = this.prodSlot;
    const e = this.scratch;
    e.streamId = r.streamId;
    e.substreamId = r.pasid;
    e.ssv = r.ssv;
    e.privileged = r.privileged;
    e.exec = r.exec;
    e.read = r.read;
    e.write = r.write;
    e.last = r.last;
    e.prgIndex = r.prgIndex;
    e.address = r.address;
    encodePriqEntry(this.words, slot * PRIQ_ENTRY_WORDS, e);
    const tracked = requester >= 0 && requester < this.held.length;
    this.slotRequester[slot] = tracked ? requester : -1;
    if (tracked) this.held[requester]++;
    // Entry first, then PROD (3.5.2); the interrupt is never observable before the PROD update.
    this.advanceProd();
    this.stats.written++;
    const held = this.occupancy;
    if (held > this.stats.highWater) this.stats.highWater = held;
    if (wasEmpty) this.irq();
    return true;
  }

  /**
   * Consume the entry at CONS: returns its word offset in `words` (valid until the next write) and
   * advances CONS, or -1 when the queue is empty. `requesterOfLast` is then the entry's requester.
   */
  pop(): number {
    if (this.empty) return -1;
    const slot = this.consSlot;
    const requester = this.slotRequester[slot];
    if (requester >= 0) this.held[requester]--;
    this.requesterOfLast = requester;
    this.advanceCons();
    this.stats.consumed++;
    return slot * PRIQ_ENTRY_WORDS;
  }

  /** CONS.OVACKFLG := PROD.OVFLG (Linux queue_sync_cons_ovf): writes are accepted again. */
  acknowledgeOverflow(): void {
    if (this.acknowledge()) this.stats.acknowledged++;
  }

  /** Each requester's share of the full queue at the moment the overflow is raised. */
  private freezeShares(): void {
    const contested = this.sharers > 1;
    for (let r = 0; r < this.held.length; r++) {
      this.victim[r] = contested && this.held[r] * this.sharers < this.size ? 1 : 0;
    }
  }

  private discard(r: PageRequest, requester: number): boolean {
    this.stats.discarded++;
    if (requester >= 0 && requester < this.held.length) {
      if (this.victim[requester] !== 0) this.lostOthers[requester]++;
      else this.lostSelf[requester]++;
    }
    if (isStopMarker(r)) {
      this.stats.stopMarkersDiscarded++;
      return false;
    }
    if (r.last) {
      this.stats.autoResponded++;
      this.autoRespond(r.streamId, r.pasid, r.ssv, r.prgIndex);
    }
    return false;
  }
}
