/**
 * How a hostile guest forges commands (misbehave.ts): answers in its vIOMMU's command format,
 * each committed only if the queue has room, never waiting. Each flavour has its forger
 * (smmuv3-forger.ts, vtd-forger.ts), chosen in guest/flavours.ts.
 */
import type { RingProducer } from '../shared/ring.ts';

/** Commands in the driver's format, committed only if the queue has room (never waiting). */
export interface CommandForger {
  /** A page response for PRG `prgIndex` of `streamId` (`pasid` -1: none). */
  group(streamId: number, pasid: number, prgIndex: number, success: boolean): boolean;
  /** A resume of stall `stag` of `streamId` (false for a flavour without stalls). */
  resume(streamId: number, stag: number, retry: boolean): boolean;
  /** A page response with a reserved response code. */
  illegal(streamId: number, prgIndex: number): boolean;
}

/** Encode `command` into the next free slot of `queue` and commit it; false when the queue is full. */
export function commitIfRoom<C>(
  queue: RingProducer,
  encode: (words: Int32Array, at: number, command: C) => void,
  command: C,
): boolean {
  const at = queue.claim();
  if (at < 0) return false;
  encode(queue.words, at, command);
  queue.commit();
  return true;
}
