/**
 * Who a page request is attributed to: the requester (the sandbox's VM, by its index; -1: nobody)
 * of a (stream, PASID). The attribution feeds the PRI queues' noisy-neighbour accounting, the
 * refault gauge and the count of groups answered at their response deadline, and it names whose
 * host loop to wake once an IRQ thread has handed that requester's requests on.
 */
import { RefaultGauge } from './refault-gauge.ts';

export type RequesterOf = (streamId: number, pasid: number) => number;

export class Requesters {
  /** How often the same page faults again, per requester (refault-gauge.ts). */
  readonly refaults = new RefaultGauge();
  private readonly timeouts = new Map<number, number>();
  private requesterOf: RequesterOf = () => -1;
  private wakeRequester: (requester: number) => void = () => {};

  /** Attribute page requests with `of` and wake a requester's host loop with `wake`. */
  set(of: RequesterOf, wake: (requester: number) => void): void {
    this.requesterOf = of;
    this.wakeRequester = wake;
  }

  /** The requester of (stream, PASID), or -1. */
  of(streamId: number, pasid: number): number {
    return this.requesterOf(streamId, pasid);
  }

  wake(requester: number): void {
    this.wakeRequester(requester);
  }

  /** A page request reached the IOPF layer (the refault gauge's input). */
  faulted(streamId: number, pasid: number, address: number): void {
    this.refaults.record(this.requesterOf(streamId, pasid), streamId, pasid, address);
  }

  /** A group of (stream, PASID) was answered INVALID at its response deadline. */
  timedOut(streamId: number, pasid: number): void {
    const requester = this.requesterOf(streamId, pasid);
    if (requester >= 0) this.timeouts.set(requester, (this.timeouts.get(requester) ?? 0) + 1);
  }

  /** Groups of `requester` answered INVALID at their response deadline. */
  timeoutsOf(requester: number): number {
    return this.timeouts.get(requester) ?? 0;
  }
}
