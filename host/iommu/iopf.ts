/**
 * The generic I/O page-fault layer (Linux io-pgfault.c, fault-queues.md 5): requests without Last
 * wait on a per-device partial list; the Last one closes the group, which goes to the handler that
 * owns the faulting address space. Every group is answered exactly once, by its handler or here
 * (no handler: INVALID at once); an answer to a group that was already answered is a counted no-op.
 *
 * Groups are pooled objects. A holder keeps (group, generation): once the group is answered and
 * reused, the generation moves on and a stale holder is detected, never silently served.
 */
import { MAX_GROUP_REQUESTS, type PageRequest, PRG_INVALID, type PriEndpoint } from './page-request.ts';

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

  constructor(private readonly queue: IopfQueue) {}

  get pasidValid(): boolean {
    return this.ssv;
  }

  get grpid(): number {
    return this.prgIndex;
  }

  /** Answer this group (its current generation) once; see IopfQueue.respond. */
  respond(code: number): void {
    this.queue.respond(this, this.generation, code);
  }
}

const NO_ATTACHMENT = Object.freeze({});

/** Whoever owns an address space's faults: an iommufd fault object, in the end. */
export interface IopfHandler {
  handleGroup(group: IopfGroup): void;
}

export interface IopfStats {
  requests: number;
  /** Stop PASID markers: filtered here, never grouped, never answered (fault-queues.md 3, 5). */
  stopMarkers: number;
  groups: number;
  answered: number;
  answeredWithoutHandler: number;
  duplicateAnswers: number;
  partialOverflow: number;
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
    partialOverflow: 0,
  };
  private readonly pool: IopfGroup[] = [];
  /** Open (partial) groups by streamId * 512 + PRG index. */
  private readonly partial = new Map<number, IopfGroup>();
  private outstanding = 0;

  constructor(
    private readonly handlerFor: (streamId: number, pasid: number) => IopfHandler | undefined,
    private readonly endpointFor: (streamId: number) => PriEndpoint | undefined,
  ) {}

  /** Groups raised and not answered yet. */
  get pending(): number {
    return this.outstanding;
  }

  report(r: PageRequest): void {
    // A Stop Marker (Last, no R/W, with a PASID) needs no response; Linux has the IOMMU driver drop
    // it before the IOPF core, and flushes its queues before a PASID is freed instead.
    if (r.last && !r.read && !r.write && r.ssv) {
      this.stats.stopMarkers++;
      return;
    }
    this.stats.requests++;
    const key = r.streamId * 512 + r.prgIndex;
    let group = this.partial.get(key);
    if (!group) {
      group = this.take();
      group.streamId = r.streamId;
      group.pasid = r.pasid;
      group.ssv = r.ssv;
      group.prgIndex = r.prgIndex;
      group.raisedAt = performance.now();
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
    this.partial.delete(key);
    this.stats.groups++;
    this.outstanding++;
    group.answered = false;
    const handler = this.handlerFor(group.streamId, group.pasid);
    if (!handler) {
      this.stats.answeredWithoutHandler++;
      this.respond(group, group.generation, PRG_INVALID);
      return;
    }
    handler.handleGroup(group);
  }

  /**
   * Answer a group: sends the PRG response to the device exactly once. Returns false for a stale
   * or already-answered group (counted, nothing sent).
   */
  respond(group: IopfGroup, generation: number, code: number): boolean {
    if (group.answered || group.generation !== generation) {
      this.stats.duplicateAnswers++;
      return false;
    }
    group.answered = true;
    this.outstanding--;
    this.stats.answered++;
    const { streamId, pasid, ssv, prgIndex } = group;
    this.release(group);
    this.endpointFor(streamId)?.prgResponse(pasid, ssv, prgIndex, code);
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

  private take(): IopfGroup {
    const group = this.pool.pop() ?? new IopfGroup(this);
    group.count = 0;
    group.devId = 0;
    group.attachment = NO_ATTACHMENT;
    return group;
  }

  private release(group: IopfGroup): void {
    group.generation++;
    this.pool.push(group);
  }
}
