/**
 * The shared-memory region of one VT-d page request queue (docs/queues.md): a
 * 64-byte register line followed by the project's ring of 8-word descriptors.
 *
 *   PQT / PQH   the ring's PROD / CONS. VT-d keeps byte offsets without a wrap bit; the ring keeps
 *               entry index + wrap. The wrap bit never matters here because the host never fills
 *               the last slot, so head == tail always means empty (PQT = index * 32).
 *   PRS         word 0 of the register line: PPR b0 (pending page request), PRO b1 (overflow).
 *               The host only sets bits (Atomics.or, which also returns the old value the
 *               interrupt edge is computed from); software clears them by writing 1 (RW1C,
 *               Atomics.and with the complement). Neither side ever stores the whole word, so a
 *               clear never loses a set that raced with it.
 *   PQA size    the ring's size (VT-d: 2^(PQS+7) entries; the model accepts any ring size).
 *
 * PECTL (IM/IP interrupt masking) is not modelled: the interrupt is the doorbell's ring.
 */

import type { RegisterMirror } from './posted-link.ts';
import { VTD_PRQ_ENTRY_WORDS } from './records/vtd-prq-entry.ts';
import { RingConsumer, type RingMirror, RingProducer, ringBytes } from './ring.ts';

export const PRS_PPR = 1 << 0;
export const PRS_PRO = 1 << 1;
const PRS_RW1C = PRS_PPR | PRS_PRO;

/** Word offsets in the register line. */
const PRS = 0;
export const VTD_PRQ_REGISTER_BYTES = 64;

/** Bytes of a queue of 2^log2Size descriptors (2^log2Size - 1 usable), registers included. */
export function vtdPrqBytes(log2Size: number): number {
  return VTD_PRQ_REGISTER_BYTES + ringBytes({ log2Size, recordWords: VTD_PRQ_ENTRY_WORDS });
}

/** The Page Request Status register, as both sides see it. */
export class PageRequestStatus {
  private readonly words: Int32Array;

  /** @param mirror carries each change to the other side (postMessage transport). */
  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    private readonly mirror?: RegisterMirror,
  ) {
    this.words = new Int32Array(buffer, byteOffset, VTD_PRQ_REGISTER_BYTES / 4);
  }

  read(): number {
    return Atomics.load(this.words, PRS);
  }

  /** Hardware side: set `bits` and return the value before. */
  set(bits: number): number {
    this.mirror?.or(this.words, PRS, bits);
    return Atomics.or(this.words, PRS, bits);
  }

  /** Software side: a register write. Each 1 in a RW1C bit clears it; 0 bits change nothing. */
  write(value: number): void {
    this.mirror?.and(this.words, PRS, ~(value & PRS_RW1C));
    Atomics.and(this.words, PRS, ~(value & PRS_RW1C));
  }
}

function checkOffset(byteOffset: number): void {
  if (byteOffset % 64 !== 0)
    throw new RangeError(`VT-d page request queue offset ${byteOffset} is not 64-byte aligned`);
}

/** The host's (IOMMU's) endpoint: the ring without a doorbell, since PPR/PRO decide the interrupt. */
export function vtdPrqProducer(
  buffer: SharedArrayBuffer,
  byteOffset: number,
  log2Size: number,
  mirror?: RingMirror & RegisterMirror,
): { ring: RingProducer; status: PageRequestStatus } {
  checkOffset(byteOffset);
  const ring = new RingProducer(
    buffer,
    byteOffset + VTD_PRQ_REGISTER_BYTES,
    { log2Size, recordWords: VTD_PRQ_ENTRY_WORDS },
    undefined,
    mirror,
  );
  return { ring, status: new PageRequestStatus(buffer, byteOffset, mirror) };
}

/** The guest's (driver's) endpoint. */
export function vtdPrqConsumer(
  buffer: SharedArrayBuffer,
  byteOffset: number,
  log2Size: number,
  mirror?: RingMirror & RegisterMirror,
): { ring: RingConsumer; status: PageRequestStatus } {
  checkOffset(byteOffset);
  const ring = new RingConsumer(
    buffer,
    byteOffset + VTD_PRQ_REGISTER_BYTES,
    { log2Size, recordWords: VTD_PRQ_ENTRY_WORDS },
    mirror,
  );
  return { ring, status: new PageRequestStatus(buffer, byteOffset, mirror) };
}
