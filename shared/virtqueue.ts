/**
 * The virtio 1.x split virtqueue (virtio spec 2.7) in guest RAM: the descriptor table, the available
 * ring the driver (guest) writes and the used ring the device (host) writes, each at a guest-physical
 * address. The buffers a chain names are guest RAM too; the device reads and writes them by GPA
 * through GuestMemory, bounds-checked.
 * One concept, both of its sides (driver and device), kept together because each side's checks
 * mirror the other's; hence the length.
 *
 * Layout (2.7, little-endian; the project's typed-array views assume a little-endian host, as every
 * record in shared/records does):
 *   descriptor (16 bytes, table 16-byte aligned): addr u64, len u32, flags u16, next u16
 *   avail ring (2-byte aligned): flags u16, idx u16, ring[size] u16, used_event u16
 *   used ring (4-byte aligned):  flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16
 *
 * Rules it keeps:
 * - Queue size is a power of two up to 32768 (2.7); idx fields are free-running 16-bit counters
 *   and a ring slot is idx mod size, so the wrap of idx needs no flag.
 * - The driver writes descriptors and ring entries before the idx store that publishes them; the
 *   device reads no entry beyond the idx it loaded (Atomics are sequentially consistent, which
 *   stands in for the spec's memory barriers).
 * - Suppression (2.7.7, 2.7.10): without VIRTIO_F_EVENT_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT asks the
 *   device not to interrupt and VIRTQ_USED_F_NO_NOTIFY asks the driver not to notify. With it, both
 *   flags are ignored and used_event / avail_event say at which idx the other side wants to hear:
 *   notify when the idx just moved past the event index (vring_need_event).
 * - The device trusts nothing the driver wrote (2.7.5, 2.7.13.1): an avail idx more than `size`
 *   ahead, a head or next index out of range, a chain longer than the queue (a loop), a buffer
 *   outside guest RAM, a chain over 4 GiB, a device-readable buffer after a device-writable one, or
 *   an indirect descriptor (VIRTIO_F_INDIRECT_DESC is not offered) is a counted, named drop: the
 *   chain is consumed and never completed, and nothing throws or loops.
 * - The driver trusts nothing the device wrote either: a used idx more than `size` ahead, or a used
 *   id that is not an outstanding head, is counted and ignored; descriptors are freed from the
 *   driver's own shadow of the chain, never from the table the device can write.
 */
import type { GuestMemory } from './guest-memory.ts';
import { addressHigh, addressLow, joinAddress } from './records/address.ts';

/** Split virtqueue size limit (2.7: Queue Size is a power of two, at most 32768). */
export const VIRTQ_MAX_SIZE = 32768;

export const VIRTQ_DESC_BYTES = 16;
/** 2.7: the alignment each part of a split virtqueue needs. */
export const VIRTQ_DESC_ALIGN = 16;
export const VIRTQ_AVAIL_ALIGN = 2;
export const VIRTQ_USED_ALIGN = 4;

/** 2.7.5 descriptor flags. */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** 2.7.6: the driver asks for no used-buffer notification (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** 2.7.8: the device asks for no available-buffer notification (ignored with EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** A chain may name at most 4 GiB in total (2.7.13.1: the total length fits the 32-bit used len). */
const MAX_CHAIN_BYTES = 0x1_0000_0000;
const U16 = 0xffff;

export interface VirtqueueLayout {
  /** Entries: a power of two, 1..VIRTQ_MAX_SIZE. */
  readonly size: number;
  /** GPA of the descriptor table. */
  readonly desc: number;
  /** GPA of the available ring. */
  readonly avail: number;
  /** GPA of the used ring. */
  readonly used: number;
}

export function virtqDescBytes(size: number): number {
  return VIRTQ_DESC_BYTES * size;
}

/** flags, idx, ring[size], used_event. */
export function virtqAvailBytes(size: number): number {
  return 6 + 2 * size;
}

/** flags, idx, ring[size] of 8 bytes, avail_event. */
export function virtqUsedBytes(size: number): number {
  return 6 + 8 * size;
}

/** The three parts packed from `base` (16-byte aligned) at the spec's alignments. */
export function virtqueueLayout(base: number, size: number): VirtqueueLayout {
  const avail = base + virtqDescBytes(size);
  const used = alignUp(avail + virtqAvailBytes(size), VIRTQ_USED_ALIGN);
  return { size, desc: base, avail, used };
}

/** Bytes from `base` to the end of the used ring of virtqueueLayout(base, size). */
export function virtqueueBytes(size: number): number {
  const l = virtqueueLayout(0, size);
  return l.used + virtqUsedBytes(size);
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/**
 * vring_need_event (2.7.10): the other side asked to hear once idx passes `event`; the idx moved
 * from `old` to `now` (16-bit counters). True when `event` lies in [old, now).
 */
export function virtqNeedEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & U16) < ((now - old) & U16);
}

function checkLayout(memory: GuestMemory, l: VirtqueueLayout): void {
  const { size } = l;
  if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) !== 0) {
    throw new RangeError(`virtqueue size must be a power of two in 1..${VIRTQ_MAX_SIZE}, got ${size}`);
  }
  checkPart(memory, 'descriptor table', l.desc, virtqDescBytes(size), VIRTQ_DESC_ALIGN);
  checkPart(memory, 'available ring', l.avail, virtqAvailBytes(size), VIRTQ_AVAIL_ALIGN);
  checkPart(memory, 'used ring', l.used, virtqUsedBytes(size), VIRTQ_USED_ALIGN);
}

function checkPart(memory: GuestMemory, name: string, gpa: number, bytes: number, align: number): void {
  if (!Number.isInteger(gpa) || gpa % align !== 0) {
    throw new RangeError(`virtqueue ${name} at ${gpa} is not ${align}-byte aligned`);
  }
  if (!memory.contains(gpa, bytes)) {
    throw new RangeError(`virtqueue ${name} of ${bytes} bytes at ${gpa} is outside guest RAM`);
  }
}

/** Views and offsets both sides share: made once, indexed directly on the hot path. */
class VirtqueueView {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly words: Int32Array;
  readonly halves: Uint16Array;
  /** Word index of descriptor 0. */
  readonly descWord: number;
  /** Half-word indices of avail flags, idx, ring[0], used_event. */
  readonly availFlags: number;
  readonly availIdx: number;
  readonly availRing: number;
  readonly usedEvent: number;
  /** Half-word indices of used flags, idx, avail_event; word index of used ring[0]. */
  readonly usedFlags: number;
  readonly usedIdx: number;
  readonly usedRingWord: number;
  readonly availEvent: number;

  constructor(memory: GuestMemory, layout: VirtqueueLayout, eventIdx: boolean) {
    checkLayout(memory, layout);
    const { size } = layout;
    this.memory = memory;
    this.size = size;
    this.eventIdx = eventIdx;
    this.words = memory.words;
    this.halves = new Uint16Array(memory.buffer);
    this.descWord = layout.desc >>> 2;
    this.availFlags = layout.avail >>> 1;
    this.availIdx = this.availFlags + 1;
    this.availRing = this.availFlags + 2;
    this.usedEvent = this.availRing + size;
    this.usedFlags = layout.used >>> 1;
    this.usedIdx = this.usedFlags + 1;
    this.usedRingWord = (layout.used + 4) >>> 2;
    this.availEvent = this.usedFlags + 2 + 4 * size;
  }
}

/** One used-ring element as the driver reaped it. */
export interface VirtqUsed {
  /** Head descriptor index of the completed chain (the id the driver published). */
  id: number;
  /** Bytes the device wrote into the chain's device-writable buffers. */
  len: number;
}

export function newVirtqUsed(): VirtqUsed {
  return { id: 0, len: 0 };
}

/**
 * The driver's (guest's) side: owns the descriptor table and the avail ring, reads the used ring.
 * Add a chain with beginChain, then addReadable/addWritable in that order, then endChain; publish
 * makes every ended chain visible and says whether the device wants a notification.
 */
export class VirtqueueDriver {
  readonly view: VirtqueueView;
  readonly size: number;
  /** Used idx values that claimed more than `size` completions in flight (counted, ignored). */
  corruptUsedIndex = 0;
  /** Used elements whose id is not an outstanding head (counted, skipped). */
  badUsedId = 0;
  /** Descriptors on the free list. */
  free: number;

  // Driver-private shadow (never read back from guest-visible memory the device could write).
  private readonly nextFree: Uint16Array;
  private readonly chainLength: Uint16Array;
  private freeHead = 0;
  private availShadow = 0;
  private lastPublished = 0;
  private lastUsed = 0;
  private chainHead = -1;
  private chainTail = -1;
  private chainLeft = 0;
  private chainWritable = false;

  constructor(memory: GuestMemory, layout: VirtqueueLayout, eventIdx: boolean) {
    this.view = new VirtqueueView(memory, layout, eventIdx);
    this.size = layout.size;
    this.nextFree = new Uint16Array(this.size);
    this.chainLength = new Uint16Array(this.size);
    for (let i = 0; i < this.size; i++) this.nextFree[i] = (i + 1) & U16;
    this.free = this.size;
    // 2.7.6/2.7.8: the driver initialises its own flags and idx; the device's part starts zeroed.
    const v = this.view;
    v.halves[v.availFlags] = 0;
    v.halves[v.usedEvent] = 0;
    Atomics.store(v.halves, v.availIdx, 0);
  }

  /** Opens a chain of `buffers` descriptors; false (nothing changed) when too few are free. */
  beginChain(buffers: number): boolean {
    if (this.chainLeft !== 0) throw new Error('virtqueue chain already open');
    if (buffers < 1 || buffers > this.free) return false;
    this.chainLeft = buffers;
    this.chainHead = -1;
    this.chainTail = -1;
    this.chainWritable = false;
    return true;
  }

  /** A buffer the device reads: [gpa, gpa + length). Readable buffers come first (2.7.4.2). */
  addReadable(gpa: number, length: number): void {
    if (this.chainWritable) throw new Error('virtqueue: a device-readable buffer after a writable one');
    this.addBuffer(gpa, length, 0);
  }

  /** A buffer the device writes: [gpa, gpa + length). */
  addWritable(gpa: number, length: number): void {
    this.chainWritable = true;
    this.addBuffer(gpa, length, VIRTQ_DESC_F_WRITE);
  }

  private addBuffer(gpa: number, length: number, flags: number): void {
    if (this.chainLeft === 0) throw new Error('virtqueue: no chain open, or more buffers than reserved');
    const d = this.freeHead;
    this.freeHead = this.nextFree[d];
    this.free--;
    this.chainLeft--;
    const v = this.view;
    const w = v.descWord + d * 4;
    v.words[w] = addressLow(gpa);
    v.words[w + 1] = addressHigh(gpa);
    v.words[w + 2] = length;
    // flags u16 at byte 12, next u16 at byte 14: NEXT is set on the previous tail when linking.
    v.words[w + 3] = flags;
    if (this.chainTail < 0) {
      this.chainHead = d;
      this.chainLength[d] = 1;
    } else {
      const t = v.descWord + this.chainTail * 4 + 3;
      v.words[t] = (v.words[t] & VIRTQ_DESC_F_WRITE) | VIRTQ_DESC_F_NEXT | (d << 16);
      this.chainLength[this.chainHead]++;
    }
    this.nextFree[this.chainTail < 0 ? d : this.chainTail] = d;
    this.chainTail = d;
  }

  /**
   * Puts the chain's head into the next avail slot (not yet visible: publish does that) and
   * returns it: the id the used ring will name.
   */
  endChain(): number {
    if (this.chainLeft !== 0 || this.chainHead < 0) throw new Error('virtqueue: chain not complete');
    const v = this.view;
    v.halves[v.availRing + (this.availShadow & (this.size - 1))] = this.chainHead;
    this.availShadow = (this.availShadow + 1) & U16;
    const head = this.chainHead;
    this.chainHead = -1;
    this.chainTail = -1;
    return head;
  }

  /**
   * Stores avail idx (2.7.13.2: after the ring entries) and says whether the device wants an
   * available-buffer notification for the chains published since the last publish (2.7.13.3).
   */
  publish(): boolean {
    const v = this.view;
    const old = this.lastPublished;
    const now = this.availShadow;
    if (old === now) return false;
    Atomics.store(v.halves, v.availIdx, now);
    this.lastPublished = now;
    if (v.eventIdx) return virtqNeedEvent(Atomics.load(v.halves, v.availEvent), now, old);
    return (Atomics.load(v.halves, v.usedFlags) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Takes the next used element into `out` and frees its chain's descriptors; false when none.
   * A used idx too far ahead is counted and read as empty; an id that is not an outstanding head
   * is counted and skipped.
   */
  reap(out: VirtqUsed): boolean {
    const v = this.view;
    for (;;) {
      const usedIdx = Atomics.load(v.halves, v.usedIdx);
      const pending = (usedIdx - this.lastUsed) & U16;
      if (pending === 0) return false;
      if (pending > this.size) {
        this.corruptUsedIndex++;
        return false;
      }
      const w = v.usedRingWord + (this.lastUsed & (this.size - 1)) * 2;
      const id = v.words[w] >>> 0;
      const len = v.words[w + 1] >>> 0;
      this.lastUsed = (this.lastUsed + 1) & U16;
      if (id >= this.size || this.chainLength[id] === 0) {
        this.badUsedId++;
        continue;
      }
      this.releaseChain(id);
      out.id = id;
      out.len = len;
      return true;
    }
  }

  private releaseChain(head: number): void {
    let tail = head;
    for (let n = this.chainLength[head]; n > 1; n--) tail = this.nextFree[tail];
    this.free += this.chainLength[head];
    this.chainLength[head] = 0;
    this.nextFree[tail] = this.freeHead;
    this.freeHead = head;
  }

  /**
   * Asks for used-buffer notifications again (2.7.7): clears NO_INTERRUPT, or with EVENT_IDX sets
   * used_event to the next used idx. True when completions arrived meanwhile: reap before sleeping.
   */
  enableInterrupts(): boolean {
    const v = this.view;
    if (v.eventIdx) Atomics.store(v.halves, v.usedEvent, this.lastUsed);
    else Atomics.store(v.halves, v.availFlags, 0);
    return Atomics.load(v.halves, v.usedIdx) !== this.lastUsed;
  }

  /** Asks for no used-buffer notification: NO_INTERRUPT (the device ignores it with EVENT_IDX). */
  disableInterrupts(): void {
    Atomics.store(this.view.halves, this.view.availFlags, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /** With EVENT_IDX: interrupt only once the used idx passes `usedIdx` (batched completions). */
  setUsedEvent(usedIdx: number): void {
    Atomics.store(this.view.halves, this.view.usedEvent, usedIdx & U16);
  }
}

/** Why the device dropped a chain (index into VirtqueueDevice.dropped). */
export const VIRTQ_DROP_HEAD_RANGE = 0;
export const VIRTQ_DROP_NEXT_RANGE = 1;
export const VIRTQ_DROP_LOOP = 2;
export const VIRTQ_DROP_BUFFER_RANGE = 3;
export const VIRTQ_DROP_TOO_LONG = 4;
export const VIRTQ_DROP_READABLE_AFTER_WRITABLE = 5;
export const VIRTQ_DROP_INDIRECT = 6;
export const VIRTQ_DROP_REASONS = [
  'head index out of range',
  'next index out of range',
  'chain longer than the queue (loop)',
  'buffer outside guest RAM',
  'chain over 4 GiB',
  'device-readable buffer after a device-writable one',
  'indirect descriptor not negotiated',
] as const;

/** pop's answers: a chain, nothing available, or a dropped chain (see `dropped`). */
export const VIRTQ_POP_CHAIN = 1;
export const VIRTQ_POP_EMPTY = 0;
export const VIRTQ_POP_DROPPED = -1;

/** One available chain as the device validated it: readable buffers first, then writable ones. */
export class VirtqChain {
  head = 0;
  /** Buffers in the chain; [0, readable) are device-readable, [readable, count) device-writable. */
  count = 0;
  readable = 0;
  readableBytes = 0;
  writableBytes = 0;
  readonly gpa: Float64Array;
  readonly length: Uint32Array;

  constructor(queueSize: number) {
    this.gpa = new Float64Array(queueSize);
    this.length = new Uint32Array(queueSize);
  }

  /**
   * Copies the chain's device-readable bytes, in order, into `out` (up to its length); returns the
   * bytes copied. A request that spans several buffers is gathered here before it is decoded.
   */
  gather(memory: GuestMemory, out: Uint8Array): number {
    let n = 0;
    for (let i = 0; i < this.readable && n < out.length; i++) {
      const take = Math.min(this.length[i], out.length - n);
      const bytes = memory.bytes;
      // A byte loop, not set(subarray): requests are tens of bytes and a view would allocate.
      for (let b = 0, from = this.gpa[i]; b < take; b++) out[n + b] = bytes[from + b];
      n += take;
    }
    return n;
  }

  /**
   * Writes `src[0, length)` across the device-writable buffers in order (2.7.4: the device writes
   * only those); returns the bytes written, which is the used element's len.
   */
  scatter(memory: GuestMemory, src: Uint8Array, length: number): number {
    let n = 0;
    for (let i = this.readable; i < this.count && n < length; i++) {
      const take = Math.min(this.length[i], length - n);
      const bytes = memory.bytes;
      for (let b = 0, to = this.gpa[i]; b < take; b++) bytes[to + b] = src[n + b];
      n += take;
    }
    return n;
  }
}

/**
 * The device's (host's) side: reads the descriptor table and avail ring, validates all of it,
 * writes the used ring. pop a chain, handle it, push its {id, len}, then publishUsed.
 */
export class VirtqueueDevice {
  readonly view: VirtqueueView;
  readonly size: number;
  /** Avail idx values that claimed more than `size` chains in flight (counted, read as empty). */
  corruptAvailIndex = 0;
  /** Chains dropped, by VIRTQ_DROP_* reason. */
  readonly dropped: Uint32Array;
  /** The reason of the last VIRTQ_POP_DROPPED. */
  lastDrop = -1;

  private lastAvail = 0;
  private usedShadow = 0;
  private lastSignalled = 0;

  constructor(memory: GuestMemory, layout: VirtqueueLayout, eventIdx: boolean) {
    this.view = new VirtqueueView(memory, layout, eventIdx);
    this.size = layout.size;
    this.dropped = new Uint32Array(VIRTQ_DROP_REASONS.length);
    const v = this.view;
    v.halves[v.availEvent] = 0;
    Atomics.store(v.halves, v.usedFlags, 0);
    Atomics.store(v.halves, v.usedIdx, 0);
  }

  /** Chains dropped for any reason. */
  droppedTotal(): number {
    let n = 0;
    for (let i = 0; i < this.dropped.length; i++) n += this.dropped[i];
    return n;
  }

  /** Available chains not yet popped (0 when the driver's idx is impossible). */
  available(): number {
    const pending = (Atomics.load(this.view.halves, this.view.availIdx) - this.lastAvail) & U16;
    return pending > this.size ? 0 : pending;
  }

  /**
   * Takes the next available chain into `chain`, validated. VIRTQ_POP_EMPTY when none;
   * VIRTQ_POP_DROPPED when the chain broke a rule (counted in `dropped`, the reason in `lastDrop`;
   * the chain is consumed and never completed).
   */
  pop(chain: VirtqChain): number {
    const v = this.view;
    const availIdx = Atomics.load(v.halves, v.availIdx);
    const pending = (availIdx - this.lastAvail) & U16;
    if (pending === 0) return VIRTQ_POP_EMPTY;
    if (pending > this.size) {
      this.corruptAvailIndex++;
      return VIRTQ_POP_EMPTY;
    }
    const head = v.halves[v.availRing + (this.lastAvail & (this.size - 1))];
    this.lastAvail = (this.lastAvail + 1) & U16;
    const reason = this.walk(head, chain);
    if (reason < 0) return VIRTQ_POP_CHAIN;
    this.dropped[reason]++;
    this.lastDrop = reason;
    return VIRTQ_POP_DROPPED;
  }

  /** Follows the chain from `head`; -1 when valid, else the VIRTQ_DROP_* reason. */
  private walk(head: number, chain: VirtqChain): number {
    if (head >= this.size) return VIRTQ_DROP_HEAD_RANGE;
    const v = this.view;
    const memory = v.memory;
    chain.head = head;
    chain.count = 0;
    chain.readable = 0;
    chain.readableBytes = 0;
    chain.writableBytes = 0;
    let d = head;
    for (;;) {
      // 2.7.5.1: a chain never holds more descriptors than the queue; more means a loop.
      if (chain.count === this.size) return VIRTQ_DROP_LOOP;
      const w = v.descWord + d * 4;
      const gpa = joinAddress(v.words[w], v.words[w + 1]);
      const length = v.words[w + 2] >>> 0;
      const flagsNext = v.words[w + 3];
      const flags = flagsNext & U16;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) return VIRTQ_DROP_INDIRECT;
      if (!memory.contains(gpa, length)) return VIRTQ_DROP_BUFFER_RANGE;
      if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
        chain.writableBytes += length;
      } else {
        // 2.7.4.2: device-readable descriptors come before every device-writable one.
        if (chain.count > chain.readable) return VIRTQ_DROP_READABLE_AFTER_WRITABLE;
        chain.readable++;
        chain.readableBytes += length;
      }
      if (chain.readableBytes + chain.writableBytes > MAX_CHAIN_BYTES) return VIRTQ_DROP_TOO_LONG;
      chain.gpa[chain.count] = gpa;
      chain.length[chain.count] = length;
      chain.count++;
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return -1;
      d = flagsNext >>> 16;
      if (d >= this.size) return VIRTQ_DROP_NEXT_RANGE;
    }
  }

  /** Writes used element {id, len} into the next used slot (visible at publishUsed). */
  push(id: number, len: number): void {
    const v = this.view;
    const w = v.usedRingWord + (this.usedShadow & (this.size - 1)) * 2;
    v.words[w] = id;
    v.words[w + 1] = len;
    this.usedShadow = (this.usedShadow + 1) & U16;
  }

  /**
   * Stores used idx (2.7.14: after the elements) and says whether the driver wants a used-buffer
   * notification for the elements since the last publishUsed (2.7.7.2).
   */
  publishUsed(): boolean {
    const v = this.view;
    const old = this.lastSignalled;
    const now = this.usedShadow;
    if (old === now) return false;
    Atomics.store(v.halves, v.usedIdx, now);
    this.lastSignalled = now;
    if (v.eventIdx) return virtqNeedEvent(Atomics.load(v.halves, v.usedEvent), now, old);
    return (Atomics.load(v.halves, v.availFlags) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks for available-buffer notifications again (2.7.10): clears NO_NOTIFY, or with EVENT_IDX
   * sets avail_event to the next avail idx. True when chains arrived meanwhile: pop before sleeping.
   */
  enableNotifications(): boolean {
    const v = this.view;
    if (v.eventIdx) Atomics.store(v.halves, v.availEvent, this.lastAvail);
    else Atomics.store(v.halves, v.usedFlags, 0);
    return this.available() > 0;
  }

  /** Asks for no available-buffer notification: NO_NOTIFY (the driver ignores it with EVENT_IDX). */
  disableNotifications(): void {
    Atomics.store(this.view.halves, this.view.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
  }
}
