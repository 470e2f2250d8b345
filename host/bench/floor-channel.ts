/**
 * What the floors bench (main thread) and its peer thread share: one SharedArrayBuffer laid out
 * below, the messages that start and end each run, and the two ways a side waits for a word.
 *
 * Echo runs: the main thread writes a 32-byte record and then PING = seq; the peer checks the
 * record, writes its complement into the pong record and then PONG = seq. PING = END_OF_RUN ends
 * the run. Ring runs: the peer produces numbered records into the ring; the main thread consumes.
 */
import { type RingGeometry, ringBytes } from '../../shared/ring.ts';

/** Int32 words per record: 32 bytes, an SMMUv3 event or page-request-sized record. */
export const RECORD_WORDS = 8;

// Int32 word offsets. Each word the other thread polls starts its own 64-byte line; a sequence word
// shares its line with its record, as a doorbell and its payload would.
export const PING = 0;
export const PING_RECORD = 8;
export const PONG = 16;
export const PONG_RECORD = 24;
/** Ring run: the consumer is timing; the producer may start. */
export const GO = 32;
/** Ring run: the consumer's time budget is spent; the producer stops at its next batch. */
export const STOP = 48;
/** Ring run: records the producer published in all, stored after its last publish; -1 before. */
export const PRODUCED = 64;

export const END_OF_RUN = -1;

/** 4096 slots of 32 bytes: 128 KiB, in L2 on this machine's kind of core. */
export const RING_GEOMETRY: RingGeometry = { log2Size: 12, recordWords: RECORD_WORDS };
export const RING_OFFSET = 512;

export const CHANNEL_BYTES = RING_OFFSET + ringBytes(RING_GEOMETRY);

/** Nothing from the other side for this long means it is gone or stuck: fail the run. */
export const STALL_MS = 10_000;

export type PeerCommand =
  | { kind: 'echo'; block: boolean }
  | { kind: 'produce'; records: number; batch: number };

export type PeerReply =
  | { kind: 'up' }
  | { kind: 'ready' }
  | { kind: 'echoed'; roundTrips: number; mismatches: number }
  | { kind: 'produced'; records: number }
  | { kind: 'failed'; message: string };

/** Spins between clock reads while polling: the clock is read only when an answer is slow. */
const SPINS_PER_CLOCK_READ = 1 << 16;

/** Busy-poll `words[index]` with Atomics.load until it differs from `value`; return the new value. */
export function spinWhile(words: Int32Array, index: number, value: number, stallMs: number): number {
  let seen = Atomics.load(words, index);
  let spins = 0;
  let stallAt = 0;
  while (seen === value) {
    if (++spins === SPINS_PER_CLOCK_READ) {
      spins = 0;
      const now = performance.now();
      if (stallAt === 0) stallAt = now + stallMs;
      else if (now > stallAt) throw new Error(`no answer on word ${index} for ${stallMs} ms`);
    }
    seen = Atomics.load(words, index);
  }
  return seen;
}

/** Block in Atomics.wait until `words[index]` differs from `value`; return the new value. */
export function sleepWhile(words: Int32Array, index: number, value: number, stallMs: number): number {
  let seen = Atomics.load(words, index);
  while (seen === value) {
    if (Atomics.wait(words, index, value, stallMs) === 'timed-out') {
      throw new Error(`no answer on word ${index} for ${stallMs} ms`);
    }
    seen = Atomics.load(words, index);
  }
  return seen;
}
