/**
 * The FAULT object (iommufd eventq.c, fault-queues.md 5): the queue that owns the page-request
 * groups of the address spaces attached to it. Each group gets a 32-bit cookie; a response names
 * the cookie and a code (SUCCESS or INVALID only); a cookie that names no pending group is EINVAL.
 * On detach or destroy every group not answered yet is answered INVALID.
 *
 * Cookies are (generation << 16 | slot): a slot is reused after its group is answered, and a stale
 * cookie from before is recognised by its generation instead of answering somebody else's group.
 */
import type { IopfGroup, IopfHandler, IopfQueue } from '../iommu/iopf.ts';
import { PRG_INVALID, PRG_SUCCESS } from '../iommu/page-request.ts';
import { IommufdError } from './errors.ts';

/** IOMMUFD_PAGE_RESP_* codes accepted on a fault queue. */
export const PAGE_RESP_SUCCESS = PRG_SUCCESS;
export const PAGE_RESP_INVALID = PRG_INVALID;

const SLOT_BITS = 16;
const MAX_SLOTS = 1 << SLOT_BITS;
const GENERATION_MASK = 0x7fff;

/** Receives each group once, with its cookie; the VMM's reader of the fault queue. */
export type FaultSink = (cookie: number, group: IopfGroup) => void;

export interface FaultQueueStats {
  groups: number;
  responded: number;
  autoResponded: number;
}

export class FaultQueue implements IopfHandler {
  readonly stats: FaultQueueStats = { groups: 0, responded: 0, autoResponded: 0 };
  private readonly groups: (IopfGroup | undefined)[] = [];
  private readonly groupGeneration: number[] = [];
  private readonly slotGeneration: number[] = [];
  private readonly freeSlots: number[] = [];
  private pendingCount = 0;

  constructor(
    private readonly iopf: IopfQueue,
    private readonly sink: FaultSink,
  ) {}

  get pending(): number {
    return this.pendingCount;
  }

  handleGroup(group: IopfGroup): void {
    const slot = this.freeSlots.pop() ?? this.groups.length;
    if (slot >= MAX_SLOTS) {
      // Out of cookies: answer the group the way the kernel does when it cannot queue a fault.
      this.stats.autoResponded++;
      this.iopf.respond(group, group.generation, PRG_INVALID);
      return;
    }
    if (slot === this.groups.length) {
      this.groups.push(undefined);
      this.groupGeneration.push(0);
      this.slotGeneration.push(0);
    }
    this.groups[slot] = group;
    this.groupGeneration[slot] = group.generation;
    this.pendingCount++;
    this.stats.groups++;
    this.sink((this.slotGeneration[slot] << SLOT_BITS) | slot, group);
  }

  /** write() of one iommu_hwpt_page_response: answer the group named by `cookie`. */
  respond(cookie: number, code: number): void {
    if (code !== PAGE_RESP_SUCCESS && code !== PAGE_RESP_INVALID) {
      throw new IommufdError('EINVAL', `page response code ${code} is neither SUCCESS nor INVALID`);
    }
    const slot = this.slotOf(cookie);
    if (slot < 0) throw new IommufdError('EINVAL', `cookie ${cookie} names no pending fault group`);
    this.stats.responded++;
    this.answer(slot, code);
  }

  /** Answer every pending group INVALID (detach, destroy, owner gone). Returns how many. */
  abortAll(): number {
    let answered = 0;
    for (let slot = 0; slot < this.groups.length; slot++) {
      if (this.groups[slot] === undefined) continue;
      this.answer(slot, PAGE_RESP_INVALID);
      answered++;
    }
    this.stats.autoResponded += answered;
    return answered;
  }

  /** `cookie` names a group that is still waiting for its response. */
  isPending(cookie: number): boolean {
    return this.slotOf(cookie) >= 0;
  }

  /** Answer one pending group on the VMM's behalf (e.g. a queue overflow rule). */
  autoRespond(cookie: number, code: number): boolean {
    const slot = this.slotOf(cookie);
    if (slot < 0) return false;
    this.stats.autoResponded++;
    this.answer(slot, code);
    return true;
  }

  private slotOf(cookie: number): number {
    const slot = cookie & (MAX_SLOTS - 1);
    if (cookie < 0 || slot >= this.groups.length || this.groups[slot] === undefined) return -1;
    if (cookie >>> SLOT_BITS !== this.slotGeneration[slot]) return -1;
    return slot;
  }

  private answer(slot: number, code: number): void {
    const group = this.groups[slot] as IopfGroup;
    const generation = this.groupGeneration[slot];
    this.groups[slot] = undefined;
    this.slotGeneration[slot] = (this.slotGeneration[slot] + 1) & GENERATION_MASK;
    this.freeSlots.push(slot);
    this.pendingCount--;
    this.iopf.respond(group, generation, code);
  }
}
