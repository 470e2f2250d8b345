/**
 * The FAULT object's response table (the kernel's `fault->response` xarray): the groups read and
 * not answered yet, by cookie, each with the generation it was read with. Cookies are u32, handed
 * out lowest free value from 1 (XA_FLAGS_ALLOC1), and start over from 1 once nothing is
 * outstanding.
 */
import { IommufdError } from './errors.ts';
import type { FaultGroup } from './fault-group.ts';
import type { FaultInjector } from './fault-injector.ts';

/** Cookies are u32 (xa_limit_32b). */
const MAX_COOKIE = 0xffff_ffff;

/**
 * Cookies are dense, so the table is an array indexed by cookie; freed cookies wait in a min-heap
 * so the next insert takes the lowest free one.
 */
export class ResponseTable {
  private readonly groups: (FaultGroup | undefined)[] = [undefined];
  /** The generation each group had when it was read. */
  private readonly generations: number[] = [0];
  /** Free cookies below `groups.length`, as a binary min-heap. */
  private readonly free: number[] = [];
  size = 0;

  insert(group: FaultGroup, generation: number, injector: FaultInjector): number {
    // xa_alloc can fail (no memory for the node); the read puts the group back.
    injector.check('cookie-insert');
    let cookie: number;
    if (this.free.length > 0) {
      cookie = this.popFree();
    } else {
      cookie = this.groups.length;
      if (cookie > MAX_COOKIE) throw new IommufdError('EBUSY', 'all u32 cookies are awaiting a response');
      this.groups.push(undefined);
      this.generations.push(0);
    }
    this.groups[cookie] = group;
    this.generations[cookie] = generation;
    this.size++;
    return cookie;
  }

  /** The group awaiting a response under `cookie`, left in place. */
  peek(cookie: number): FaultGroup | undefined {
    return cookie > 0 && cookie < this.groups.length ? this.groups[cookie] : undefined;
  }

  /** The generation the group under `cookie` was read with (0 if none). */
  generationOf(cookie: number): number {
    return cookie > 0 && cookie < this.groups.length ? this.generations[cookie] : 0;
  }

  /** Erase `group` (at its current generation) wherever it waits; false if it is not here. */
  eraseGroup(group: FaultGroup): boolean {
    for (let cookie = 1; cookie < this.groups.length; cookie++) {
      if (this.groups[cookie] === group && this.generations[cookie] === group.generation) {
        this.erase(cookie);
        return true;
      }
    }
    return false;
  }

  /** Remove and return the group of `cookie`, or undefined if none awaits a response under it. */
  erase(cookie: number): FaultGroup | undefined {
    if (cookie === 0 || cookie >= this.groups.length) return undefined;
    const group = this.groups[cookie];
    if (group === undefined) return undefined;
    this.groups[cookie] = undefined;
    this.size--;
    if (this.size === 0) {
      // Nothing outstanding: every cookie is free again, starting over from 1.
      this.groups.length = 1;
      this.generations.length = 1;
      this.free.length = 0;
    } else {
      this.pushFree(cookie);
    }
    return group;
  }

  /**
   * Erase every group matching `match` (and every one whose generation moved on: it cannot stay),
   * in cookie order, appending them and their generations to `into` and `generations`.
   */
  eraseWhere(match: (group: FaultGroup) => boolean, into: FaultGroup[], generations: number[]): void {
    for (let cookie = 1; cookie < this.groups.length; cookie++) {
      const group = this.groups[cookie];
      if (group === undefined) continue;
      const generation = this.generations[cookie];
      if (match(group) || group.generation !== generation) {
        this.erase(cookie);
        into.push(group);
        generations.push(generation);
      }
    }
  }

  private pushFree(cookie: number): void {
    const heap = this.free;
    let i = heap.length;
    heap.push(cookie);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent] <= cookie) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = cookie;
  }

  private popFree(): number {
    const heap = this.free;
    const top = heap[0];
    const last = heap.pop() as number;
    const n = heap.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && heap[child + 1] < heap[child]) child++;
        if (heap[child] >= last) break;
        heap[i] = heap[child];
        i = child;
      }
      heap[i] = last;
    }
    return top;
  }
}
