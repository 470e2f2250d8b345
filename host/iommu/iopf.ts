/**
 * The generic I/O page-fault layer (Linux io-pgfault.c; docs/queues.md): requests without Last
 * wait on a per-device partial list; the Last one closes the group, which goes to the handler that
 * owns the faulting address space. Every group is answered exactly once, by its handler or here
 * (no handler: INVALID at once); an answer to a group that was already answered is a counted no-op.
 *
 * Groups are pooled objects. A holder keeps (group, generation): once the group is answered and
 * reused, the generation moves on and a stale holder is detected, never silently served. At any
 * time a group has one owner: the partial list, the handler it was handed to (the fault object),
 * or the pool once answered.
 *
 * Teardown (flushPartial) and deadlines (expire) are the two ways the layer takes groups back
 * from where they wait; see docs/teardown.md.
 */
import { isStopMarker, PRG_INDICES } from '../../shared/records/page-request.ts';
import type { IopfRoutes } from './fault-router.ts';
import { MAX_GROUP_REQUESTS, type PageRequest, PRG_INVALID } from './page-request.ts';

export class IopfGroup {
  generation = 0;
  streamId = 0;
  pasid = 0;
  ssv = false;
  prgIndex = 0;
  /** Set by the handler that takes the group: the registry's DEVICE id and attachment. */
  devId = 0;
  attachment: object = NO_ATTACHMENT;
  /** Page addresses of the group's requests, Last one last. */
  readonly addresses = new Float64Array(MAX_GROUP_REQUESTS);
  /** Access flags per request: bit 0 read, 1 write, 2 exec, 3 privileged. */
  readonly accesses = new Uint8Array(MAX_GROUP_REQUESTS);
  count = 0;
  answered = true;
  raisedAt = 0;
  /** The handler the group was handed to, until it is answered. */
  holder: IopfHandler | undefined;

  constructor(private readonly queue: IopfQueue) {}

  get pasidValid(): boolean {
    return this.ssv;
  }

  get grpid(): number {
    return this.prgIndex;
  }

  /** The group stands for a stalled transaction (it was raised by the stall bridge's queue). */
  get stall(): boolean {
    return this.queue.stalls;
  }

  /**
   * Answer this group once; see IopfQueue.respond. A holder passes the generation it was handed:
   * an answer to a group that was answered and reused meanwhile is refused and counted.
   */
  respond(code: number, generation = this.generation): boolean {
    return this.queue.respond(this, generation, code);
  }
}

const NO_ATTACHMENT = Object.freeze({});

/** Whoever owns an address space's faults: an iommufd fault object, in the end. */
export interface IopfHandler {
  handleGroup(group: IopfGroup): void;
  /**
   * The IOMMU core takes `group` back, unanswered, and answers it INVALID itself (its deadline
   * passed, or the stall it stands for went away): forget it without answering.
   */
  revoke?(group: IopfGroup): void;
}

export interface IopfStats {
  requests: number;
  /** Stop PASID markers: filtered here, never grouped, never answered (PCIe PRI; docs/queues.md). */
  stopMarkers: number;
  groups: number;
  answered: number;
  answeredWithoutHandler: number;
  /** Answers refused: the group was already answered (a stale generation is one kind). */
  duplicateAnswers: number;
  /** Refused answers that named a generation the group had moved past: a freed group touched. */
  staleAnswers: number;
  partialOverflow: number;
  /** Partial groups dropped by a teardown's flush (their Last, if it comes, starts a new group). */
  partialsFlushed: number;
  /** Groups whose response deadline passed: taken from their holder and answered INVALID. */
  timeouts: number;
}

export function accessBits(r: PageRequest): number {
  return (r.read ? 1 : 0) | (r.write ? 2 : 0) | (r.exec ? 4 : 0) | (r.privileged ? 8 : 0);
}

export class IopfQueue {
  readonly stats: IopfStats = {
    requests: 0,
    stopMarkers: 0,
    groups: 0,
    answered: 0,
    answeredWithoutHandler: 0,
    duplicateAnswers: 0,
    staleAnswers: 0,
    partialOverflow: 0,
    partialsFlushed: 0,
    timeouts: 0,
  };
  /** Milliseconds a handed-over group may wait for its answer (0: forever). */
  deadlineMs = 0;
  /** Told the (stream, PASID) of each group its deadline expired. */
  onTimeout: ((streamId: number, pasid: number) => void) | undefined;
  /** Sees every request of every complete group (the re-fault gauge). */
  observer: ((streamId: number, pasid: number, address: number) => void) | undefined;
  private readonly pool: IopfGroup[] = [];
  /**
   * Groups under a deadline, oldest first: deadlines are raise time + one constant, so a FIFO is
   * in deadline order. A ring of (group, generation, deadline) that grows by doubling.
   */
  private dlGroups: (IopfGroup | undefined)[] = new Array(64);
  private dlGeneration = new Float64Array(64);
  private dlAt = new Float64Array(64);
  private dlHead = 0;
  private dlCount = 0;
  /** Open (partial) groups by streamId * 512 + PRG index. */
  private readonly partial = new Map<number, IopfGroup>();
  private outstanding = 0;

  constructor(
    /** Where groups and answers go (fault-router.ts); a planted bug may stand in for it. */
    public routes: IopfRoutes,
    /** Its groups are stalled transactions, one each (the stall bridge's queue), not PRI groups. */
    readonly stalls = false,
  ) {}

  /** Groups raised and not answered yet. */
  get pending(): number {
    return this.outstanding;
  }

  report(r: PageRequest): void {
    // A Stop Marker (Last, no R/W, with a PASID) needs no response; Linux has the IOMMU driver drop
    // it before the IOPF core, and flushes its queues before a PASID is freed instead.
    if (isStopMarker(r)) {
      this.stats.stopMarkers++;
      return;
    }
    this.stats.requests++;
    const key = r.streamId * PRG_INDICES + r.prgIndex;
    // Most groups are one request with Last: no lookup while nothing is open.
    let group = this.partial.size === 0 ? undefined : this.partial.get(key);
    if (!group) {
      group = this.take();
      group.streamId = r.streamId;
      group.pasid = r.pasid;
      group.ssv = r.ssv;
      group.prgIndex = r.prgIndex;
      // Only a response deadline reads it: no clock read per group without one.
      group.raisedAt = this.deadlineMs > 0 ? performance.now() : 0;
    }
    if (group.count < MAX_GROUP_REQUESTS) {
      group.addresses[group.count] = r.address;
      group.accesses[group.count] = accessBits(r);
      group.count++;
    } else {
      this.stats.partialOverflow++;
    }
    if (!r.last) {
      this.partial.set(key, group);
      return;
    }
    if (this.partial.size > 0) this.partial.delete(key);
    this.stats.groups++;
    this.outstanding++;
    group.answered = false;
    const observer = this.observer;
    if (observer) {
      for (let i = 0; i < group.count; i++) observer(group.streamId, group.pasid, group.addresses[i]);
    }
    const handler = this.routes.handlerOf(group.streamId, group.pasid);
    if (!handler) {
      this.stats.answeredWithoutHandler++;
      this.respond(group, group.generation, PRG_INVALID);
      return;
    }
    const generation = group.generation;
    group.holder = handler;
    if (this.deadlineMs > 0) this.pushDeadline(group, generation, group.raisedAt + this.deadlineMs);
    handler.handleGroup(group);
  }

  /**
   * Answer a group: sends the PRG response to the device exactly once. Returns false for a stale
   * or already-answered group (counted, nothing sent).
   */
  respond(group: IopfGroup, generation: number, code: number): boolean {
    if (group.answered || group.generation !== generation) {
      this.stats.duplicateAnswers++;
      if (group.generation !== generation) this.stats.staleAnswers++;
      return false;
    }
    group.answered = true;
    this.outstanding--;
    this.stats.answered++;
    const { streamId, pasid, ssv, prgIndex } = group;
    this.release(group);
    this.routes.endpointOf(streamId)?.prgResponse(pasid, ssv, prgIndex, code);
    return true;
  }

  /**
   * Drop the partial groups of a stream without answering them (after a queue overflow the Last
   * was lost; the endpoint or the hardware answers those).
   */
  discardPartial(streamId: number): number {
    let dropped = 0;
    for (const [key, group] of this.partial) {
      if (group.streamId !== streamId) continue;
      this.partial.delete(key);
      this.release(group);
      dropped++;
    }
    return dropped;
  }

  /**
   * iopf_queue_discard_partial: drop the partial groups of every stream `behind` accepts (the
   * devices of one physical IOMMU, after its PRI queue overflowed), without answering them.
   */
  discardPartialWhere(behind: (streamId: number) => boolean): number {
    let dropped = 0;
    for (const [key, group] of this.partial) {
      if (!behind(group.streamId)) continue;
      this.partial.delete(key);
      this.release(group);
      dropped++;
    }
    return dropped;
  }

  /**
   * A teardown's flush (iopf_queue_flush_dev): drop the partial groups of (stream, PASID), or of
   * every PASID of the stream when `pasid` is undefined, without answering them. Returns the count.
   */
  flushPartial(streamId: number, pasid: number | undefined): number {
    let dropped = 0;
    for (const [key, group] of this.partial) {
      if (group.streamId !== streamId || (pasid !== undefined && group.pasid !== pasid)) continue;
      this.partial.delete(key);
      this.release(group);
      dropped++;
    }
    this.stats.partialsFlushed += dropped;
    return dropped;
  }

  /** Partial groups parked now. */
  get partialCount(): number {
    return this.partial.size;
  }

  /**
   * Answer INVALID every handed-over group whose deadline is at or before `now` and is still
   * unanswered (an `iopf-timeout`), after taking it back from its holder. Returns how many.
   */
  expire(now: number): number {
    let expired = 0;
    while (this.dlCount > 0 && this.dlAt[this.dlHead] <= now) {
      const group = this.dlGroups[this.dlHead] as IopfGroup;
      const generation = this.dlGeneration[this.dlHead];
      this.dlGroups[this.dlHead] = undefined;
      this.dlHead = (this.dlHead + 1) % this.dlGroups.length;
      this.dlCount--;
      if (group.answered || group.generation !== generation) continue;
      group.holder?.revoke?.(group);
      const { streamId, pasid } = group;
      if (this.respond(group, generation, PRG_INVALID)) {
        this.stats.timeouts++;
        expired++;
        this.onTimeout?.(streamId, pasid);
      }
    }
    return expired;
  }

  private pushDeadline(group: IopfGroup, generation: number, at: number): void {
    if (this.dlCount === this.dlGroups.length) this.growDeadlines();
    const slot = (this.dlHead + this.dlCount) % this.dlGroups.length;
    this.dlGroups[slot] = group;
    this.dlGeneration[slot] = generation;
    this.dlAt[slot] = at;
    this.dlCount++;
  }

  private growDeadlines(): void {
    const size = this.dlGroups.length;
    const groups: (IopfGroup | undefined)[] = new Array(size * 2);
    const generation = new Float64Array(size * 2);
    const at = new Float64Array(size * 2);
    for (let i = 0; i < this.dlCount; i++) {
      const from = (this.dlHead + i) % size;
      groups[i] = this.dlGroups[from];
      generation[i] = this.dlGeneration[from];
      at[i] = this.dlAt[from];
    }
    this.dlGroups = groups;
    this.dlGeneration = generation;
    this.dlAt = at;
    this.dlHead = 0;
  }

  private take(): IopfGroup {
    const group = this.pool.pop() ?? new IopfGroup(this);
    group.count = 0;
    group.devId = 0;
    group.attachment = NO_ATTACHMENT;
    return group;
  }

  private release(group: IopfGroup): void {
    group.generation++;
    group.holder = undefined;
    this.pool.push(group);
  }
}
