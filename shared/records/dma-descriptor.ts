/**
 * A device's work queue: the guest's driver submits DMA descriptors (32 bytes, 8 words), the device
 * answers each with a completion (16 bytes, 4 words) on its completion queue.
 *   descriptor: w0 opcode, w1 PASID, w2 tag, w3 length in bytes, w4..w5 VA (low, high), w6 flags,
 *               w7 reserved (zero)
 *   completion: w0 tag, w1 status, w2 bytes transferred, w3 reserved (zero)
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';

export const DMA_DESCRIPTOR_WORDS = 8;
export const DMA_COMPLETION_WORDS = 4;

export const DMA_OP_READ = 1;

/** Ask the sandbox's oracle to check every byte read against the workload's pattern. */
export const DMA_FLAG_VERIFY = 1 << 0;
/** Every flag a descriptor may set: any other bit makes it malformed. */
export const DMA_KNOWN_FLAGS = DMA_FLAG_VERIFY;

export const DMA_STATUS_OK = 0;
/** A page request for the access was answered Invalid Request: the access failed. */
export const DMA_STATUS_PAGE_INVALID = 1;
/** The translation faulted and could not be recovered (no PRI, or PRI stopped). */
export const DMA_STATUS_FAULT = 2;
/** The descriptor itself was malformed (opcode, length, reserved word). */
export const DMA_STATUS_BAD_DESCRIPTOR = 3;

export interface DmaDescriptor {
  opcode: number;
  pasid: number;
  tag: number;
  length: number;
  va: number;
  flags: number;
}

export function newDmaDescriptor(): DmaDescriptor {
  return { opcode: 0, pasid: 0, tag: 0, length: 0, va: 0, flags: 0 };
}

export function encodeDmaDescriptor(words: Int32Array, at: number, d: DmaDescriptor): void {
  words[at] = d.opcode;
  words[at + 1] = d.pasid;
  words[at + 2] = d.tag;
  words[at + 3] = d.length;
  words[at + 4] = addressLow(d.va);
  words[at + 5] = addressHigh(d.va);
  words[at + 6] = d.flags;
  words[at + 7] = 0;
}

/** w7 of a descriptor: reserved, so anything but zero makes the descriptor malformed. */
export function dmaDescriptorReserved(words: Int32Array, at: number): number {
  return words[at + 7];
}

/** Decodes without judging; the device validates (a guest may submit anything). */
export function decodeDmaDescriptor(words: Int32Array, at: number, out: DmaDescriptor): DmaDescriptor {
  out.opcode = words[at];
  out.pasid = words[at + 1];
  out.tag = words[at + 2];
  out.length = words[at + 3];
  out.va = joinAddress(words[at + 4], words[at + 5]);
  out.flags = words[at + 6];
  return out;
}

export function encodeDmaCompletion(
  words: Int32Array,
  at: number,
  tag: number,
  status: number,
  bytes: number,
): void {
  words[at] = tag;
  words[at + 1] = status;
  words[at + 2] = bytes;
  words[at + 3] = 0;
}

export interface DmaCompletion {
  tag: number;
  status: number;
  bytes: number;
}

export function decodeDmaCompletion(words: Int32Array, at: number, out: DmaCompletion): DmaCompletion {
  out.tag = words[at];
  out.status = words[at + 1];
  out.bytes = words[at + 2];
  return out;
}
