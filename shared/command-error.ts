/**
 * The command-error register line of a VM's channel: how the host's vIOMMU model tells the guest
 * that it refused a command, the way SMMUv3 sets GERROR.CMDQ_ERR with CMDQ_CONS.ERR (CERROR_ILL)
 * and VT-d sets FSTS.IQE. The host raises it (error bit and the code of the last refused command,
 * with a running count); the guest's driver sees it on its next pass, counts it and acknowledges by
 * clearing the bit (GERRORN / writing 1 to IQE).
 *
 * Unlike the hardware, the model does not halt the command queue at the bad command: it skips it
 * and goes on, so a guest that never acknowledges only loses the signal, never its queue.
 *
 *   word 0  status: bit 0 error pending (host sets, guest clears)
 *   word 1  code of the last refused command (CERROR_ILL = 1 for an illegal command)
 *   word 2  refused commands so far (host's count)
 */
import type { RegisterMirror } from './posted-link.ts';

export const COMMAND_ERROR_BYTES = 64;
export const CERROR_ILL = 1;

const STATUS = 0;
const CODE = 1;
const COUNT = 2;
const PENDING = 1;

export class CommandErrorRegister {
  private readonly words: Int32Array;

  /** @param mirror carries each change to the other side (postMessage transport). */
  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    private readonly mirror?: RegisterMirror,
  ) {
    this.words = new Int32Array(buffer, byteOffset, COMMAND_ERROR_BYTES / 4);
  }

  /** Host: a command was refused. */
  raise(code = CERROR_ILL): void {
    Atomics.store(this.words, CODE, code);
    Atomics.add(this.words, COUNT, 1);
    Atomics.or(this.words, STATUS, PENDING);
    if (this.mirror) {
      this.mirror.store(this.words, CODE, 1);
      this.mirror.add(this.words, COUNT, 1);
      this.mirror.or(this.words, STATUS, PENDING);
    }
  }

  /** Guest: an error is waiting to be acknowledged. */
  get pending(): boolean {
    return (Atomics.load(this.words, STATUS) & PENDING) !== 0;
  }

  get code(): number {
    return Atomics.load(this.words, CODE);
  }

  /** Guest: acknowledge (the model's GERRORN write / IQE RW1C). */
  acknowledge(): void {
    Atomics.and(this.words, STATUS, ~PENDING);
    this.mirror?.and(this.words, STATUS, ~PENDING);
  }
}
