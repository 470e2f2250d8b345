/**
 * The postMessage transport's link between a VM's two sides. With this transport the host and the
 * guest each keep their own copy of the VM's channel (the same layout, never shared), and every
 * store the queue protocols make on one copy is carried to the other by postMessage, in order, on a
 * MessagePort of its own (the control plane keeps the worker's port). Guest RAM stays shared: this
 * transport replaces the rings and doorbells only, so the drivers, models and checks are the same
 * code over either transport.
 *
 * Operations are encoded into one Int32Array per message: [op, word offset in the channel, n,
 * n values]... Operations made during one synchronous stretch of work go out as one message, at
 * the next microtask checkpoint (or earlier when the batch grows large). On arrival they are
 * applied to the local copy in order and the side's interrupt line is rung: a message is the
 * interrupt.
 */
import type { MessagePort } from 'node:worker_threads';
import { Doorbell } from './doorbell.ts';
import type { RingMirror } from './ring.ts';

const STORE = 1;
const OR = 2;
const AND = 3;
const ADD = 4;
const RING = 5;
const RING_IF_SLEEPING = 6;

/** Words a batch holds before it is sent at once. */
const FLUSH_WORDS = 16_384;

export interface LinkStats {
  messagesSent: number;
  messagesReceived: number;
  wordsSent: number;
  /** Messages refused whole or in part: not an Int32Array, an unknown operation, out of bounds. */
  badMessages: number;
}

/** What registers other than rings need carried across (Atomics read-modify-writes). */
export interface RegisterMirror {
  store(words: Int32Array, at: number, count: number): void;
  or(words: Int32Array, at: number, bits: number): void;
  and(words: Int32Array, at: number, mask: number): void;
  add(words: Int32Array, at: number, value: number): void;
}

export class PostedLink implements RingMirror, RegisterMirror {
  readonly stats: LinkStats = { messagesSent: 0, messagesReceived: 0, wordsSent: 0, badMessages: 0 };
  private readonly words: Int32Array;
  private batch = new Int32Array(1024);
  private length = 0;
  private scheduled = false;
  private closed = false;
  private readonly bells = new Map<number, Doorbell>();
  private readonly flushNow = (): void => this.flush();

  /**
   * @param channel this side's copy of the channel
   * @param interrupt the bell this side sleeps on, rung when a message arrives
   */
  constructor(
    private readonly port: MessagePort,
    private readonly channel: SharedArrayBuffer,
    private readonly interrupt: Doorbell,
  ) {
    this.words = new Int32Array(channel);
    port.on('message', (ops: unknown) => this.apply(ops));
  }

  store(words: Int32Array, at: number, count: number): void {
    const offset = this.offsetOf(words, at);
    const out = this.reserve(3 + count);
    this.batch[out] = STORE;
    this.batch[out + 1] = offset;
    this.batch[out + 2] = count;
    this.batch.set(words.subarray(at, at + count), out + 3);
  }

  ringIfSleeping(words: Int32Array, at: number): void {
    this.op(RING_IF_SLEEPING, this.offsetOf(words, at), 0);
  }

  /** Ring the doorbell at word `at` of `words` on the other side. */
  ring(words: Int32Array, at: number): void {
    this.op(RING, this.offsetOf(words, at), 0);
  }

  or(words: Int32Array, at: number, bits: number): void {
    this.op(OR, this.offsetOf(words, at), bits);
  }

  and(words: Int32Array, at: number, mask: number): void {
    this.op(AND, this.offsetOf(words, at), mask);
  }

  add(words: Int32Array, at: number, value: number): void {
    this.op(ADD, this.offsetOf(words, at), value);
  }

  /** Send what is batched now (also done at the next microtask checkpoint). */
  flush(): void {
    this.scheduled = false;
    if (this.length === 0 || this.closed) return;
    const message = this.batch.slice(0, this.length);
    this.length = 0;
    this.stats.messagesSent++;
    this.stats.wordsSent += message.length;
    this.port.postMessage(message, [message.buffer]);
  }

  close(): void {
    this.flush();
    this.closed = true;
    this.port.close();
  }

  private op(code: number, offset: number, value: number): void {
    const out = this.reserve(3);
    this.batch[out] = code;
    this.batch[out + 1] = offset;
    this.batch[out + 2] = value;
  }

  private offsetOf(words: Int32Array, at: number): number {
    if (words.buffer !== this.channel) throw new Error('posted link: a store outside this channel');
    return (words.byteOffset >>> 2) + at;
  }

  /** Room for `n` words at the batch's end; returns where they go. */
  private reserve(n: number): number {
    if (this.length + n > this.batch.length) {
      const grown = new Int32Array(Math.max(this.batch.length * 2, this.length + n));
      grown.set(this.batch.subarray(0, this.length));
      this.batch = grown;
    }
    const at = this.length;
    this.length += n;
    if (this.length >= FLUSH_WORDS) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushNow);
    }
    return at;
  }

  /**
   * Apply a message from the other side. It is untrusted when that side is a guest: anything
   * malformed ends the message there and is counted; what was applied before stands, as stores a
   * guest made to shared memory would.
   */
  private apply(ops: unknown): void {
    this.stats.messagesReceived++;
    if (!(ops instanceof Int32Array)) {
      this.stats.badMessages++;
      return;
    }
    const words = this.words;
    for (let i = 0; i + 3 <= ops.length; ) {
      const code = ops[i];
      const offset = ops[i + 1];
      const value = ops[i + 2];
      i += 3;
      const span = code === STORE ? value : 1;
      if (
        offset < 0 ||
        span < 0 ||
        offset + span > words.length ||
        (code === STORE && i + value > ops.length)
      ) {
        this.stats.badMessages++;
        break;
      }
      switch (code) {
        case STORE:
          for (let k = 0; k < value; k++) Atomics.store(words, offset + k, ops[i + k]);
          i += value;
          break;
        case OR:
          Atomics.or(words, offset, value);
          break;
        case AND:
          Atomics.and(words, offset, value);
          break;
        case ADD:
          Atomics.add(words, offset, value);
          break;
        case RING:
          this.bell(offset).ring();
          break;
        case RING_IF_SLEEPING:
          this.bell(offset).ringIfSleeping();
          break;
        default:
          this.stats.badMessages++;
          i = ops.length;
      }
    }
    this.interrupt.ring();
  }

  private bell(offset: number): Doorbell {
    let bell = this.bells.get(offset);
    if (!bell) {
      bell = new Doorbell(this.channel, offset * 4);
      this.bells.set(offset, bell);
    }
    return bell;
  }
}

/** A doorbell this side rings and the other side sleeps on, over the link. */
export class PostedDoorbell extends Doorbell {
  constructor(
    channel: SharedArrayBuffer,
    byteOffset: number,
    private readonly link: PostedLink,
  ) {
    super(channel, byteOffset);
  }

  override ring(): void {
    this.link.ring(this.words, 0);
  }

  override ringIfSleeping(): void {
    this.link.ringIfSleeping(this.words, 0);
  }
}
