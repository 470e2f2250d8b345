/**
 * The doorbell: one interrupt line between threads, over two Int32 words of a SharedArrayBuffer.
 *
 * A producer rings it on its queue's trigger edge (empty -> non-empty, SMMU spec 3.18); the
 * consumer sleeps on it with Atomics.wait. Like a wired edge interrupt it carries no pending state
 * beyond a sequence number: a consumer must drain, re-read the producer index, and only then sleep
 * on the sequence value it read before that final check.
 *
 * Notify is issued once per sleep (docs/bench.md): the sleeper raises SLEEPING before it waits, and
 * a ringer only pays for Atomics.notify when it wins the compareExchange that clears the flag.
 */

/** Word offsets inside a doorbell. */
const SEQ = 0;
const SLEEPING = 1;
/** Raised with a ring when a control-plane message was posted to the sleeper (`ringControl`). */
const CONTROL = 2;

/** Bytes a doorbell occupies; a whole cache line so that two doorbells never share one. */
export const DOORBELL_BYTES = 64;

export type WaitResult = 'ok' | 'not-equal' | 'timed-out';

export class Doorbell {
  readonly words: Int32Array;

  constructor(buffer: SharedArrayBuffer, byteOffset: number) {
    this.words = new Int32Array(buffer, byteOffset, DOORBELL_BYTES / 4);
  }

  /** Raise the interrupt: bump the sequence, and wake the sleeper if there is one. */
  ring(): void {
    Atomics.add(this.words, SEQ, 1);
    if (
      Atomics.load(this.words, SLEEPING) !== 0 &&
      Atomics.compareExchange(this.words, SLEEPING, 1, 0) === 1
    ) {
      Atomics.notify(this.words, SEQ, 1);
    }
  }

  /**
   * A control-plane message was posted to the sleeper's thread: raise CONTROL, then ring. A thread
   * that runs its data plane as a synchronous loop sees the flag when it wakes and returns to its
   * event loop, where the message waits.
   */
  ringControl(): void {
    Atomics.store(this.words, CONTROL, 1);
    this.ring();
  }

  /** Take the CONTROL flag: true when a control-plane message was posted since the last take. */
  takeControl(): boolean {
    return Atomics.load(this.words, CONTROL) !== 0 && Atomics.exchange(this.words, CONTROL, 0) !== 0;
  }

  /**
   * Wake the sleeper only if one is armed; no sequence bump otherwise. For wake-ups that a waiter
   * re-checks by other means after arming (a producer waiting for ring space).
   */
  ringIfSleeping(): void {
    if (
      Atomics.load(this.words, SLEEPING) !== 0 &&
      Atomics.compareExchange(this.words, SLEEPING, 1, 0) === 1
    ) {
      Atomics.add(this.words, SEQ, 1);
      Atomics.notify(this.words, SEQ, 1);
    }
  }

  /** The sequence value to sleep on: read it before the final "is there work?" check. */
  sequence(): number {
    return Atomics.load(this.words, SEQ);
  }

  /**
   * Announce that the caller is about to sleep. The caller must check for work once more after
   * this and call `disarm()` if it found some.
   */
  arm(): void {
    Atomics.store(this.words, SLEEPING, 1);
  }

  disarm(): void {
    Atomics.store(this.words, SLEEPING, 0);
  }

  /**
   * Spin until the sequence moves away from `seen` or `spinNs` have passed. Returns true when it
   * moved. A short spin saves two futex wake-ups when the answer is about to arrive.
   */
  spin(seen: number, spinNs: number): boolean {
    if (spinNs <= 0) return false;
    const until = performance.now() + spinNs / 1e6;
    do {
      for (let i = 0; i < 64; i++) {
        if (Atomics.load(this.words, SEQ) !== seen) return true;
      }
    } while (performance.now() < until);
    return false;
  }

  /** Block the calling thread until rung past `seen` (call `arm()` and re-check work first). */
  wait(seen: number, timeoutMs: number): WaitResult {
    const result = Atomics.wait(this.words, SEQ, seen, timeoutMs);
    Atomics.store(this.words, SLEEPING, 0);
    return result;
  }

  /** The event-loop friendly form of `wait`, for threads that also serve a control plane. */
  async waitAsync(seen: number, timeoutMs: number): Promise<WaitResult> {
    const pending = Atomics.waitAsync(this.words, SEQ, seen, timeoutMs);
    const result = pending.async ? await pending.value : pending.value;
    Atomics.store(this.words, SLEEPING, 0);
    return result;
  }
}
