/**
 * The host's one interrupt line for every VM: a doorbell and a pending-word array in one
 * SharedArrayBuffer. A guest signals the host by setting its bit in the pending words, then
 * ringing the doorbell; the host's reactor (host/vmm/reactor.ts) wakes once and drains only the VMs
 * whose bits it took, however many rang while it slept.
 *
 *   bytes 0..63     the doorbell (SEQ, SLEEPING, CONTROL; doorbell.ts)
 *   bytes 64..      pending words: bit (vm % 32) of word (vm >> 5) is VM `vm`'s
 *
 * With the `sab` transport every guest maps this buffer, so a hostile guest can set or clear other
 * VMs' bits and play with the doorbell. Neither loses anything: the reactor sweeps every VM on each
 * timed wake-up and before it sleeps (docs/reactor.md, "What a guest can do to the line").
 */
import { DOORBELL_BYTES, Doorbell } from './doorbell.ts';

const PENDING_BYTE = DOORBELL_BYTES;

/** Bytes of a host signal for `vms` VMs. */
export function hostSignalBytes(vms: number): number {
  return PENDING_BYTE + Math.max(1, Math.ceil(vms / 32)) * 4;
}

/** The pending words of a host signal buffer. */
export function pendingWords(buffer: SharedArrayBuffer): Int32Array {
  return new Int32Array(buffer, PENDING_BYTE);
}

/**
 * What one VM rings to reach the host: its pending bit, then the shared doorbell. A drop-in for a
 * `Doorbell` wherever a guest's producer rings the host (command queue, DMA descriptor queues).
 */
export class VmSignal extends Doorbell {
  private readonly pending: Int32Array;
  private readonly word: number;
  private readonly bit: number;

  constructor(buffer: SharedArrayBuffer, vm: number) {
    super(buffer, 0);
    this.pending = pendingWords(buffer);
    if (!Number.isInteger(vm) || vm < 0 || vm >= this.pending.length * 32)
      throw new RangeError(`VM index ${vm} outside the host signal's ${this.pending.length * 32} bits`);
    this.word = vm >>> 5;
    this.bit = 1 << (vm & 31);
  }

  /** Mark this VM pending without waking the host (the host's own thread, which is not asleep). */
  mark(): void {
    if ((Atomics.load(this.pending, this.word) & this.bit) === 0)
      Atomics.or(this.pending, this.word, this.bit);
  }

  override ring(): void {
    this.mark();
    super.ring();
  }

  override ringIfSleeping(): void {
    this.mark();
    super.ringIfSleeping();
  }
}
