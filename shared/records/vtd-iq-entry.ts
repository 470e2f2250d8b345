/**
 * Intel VT-d invalidation queue descriptors in scalable mode (256 bits, 8 words each; Linux
 * iommu.h QI_*; docs/queues.md). The guest's driver writes them; the host's vIOMMU model
 * carries them out. The page group response (type 0x9) is in vtd-prq-entry.ts.
 *   invalidation wait (type 0x5)
 *     qw0 [3:0] type, [4] IF, [5] SW (status write), [6] FN (fence), [7] PD, [63:32] status data
 *     qw1 [63:2] status address (4-byte aligned)
 *   PASID-based IOTLB invalidation (type 0x6, p_iotlb_inv_dsc)
 *     qw0 [3:0] type, [5:4] granularity (2: every non-global entry of the PASID, 3: page-selective),
 *         [31:16] domain id, [51:32] PASID
 *     qw1 [5:0] address mask (2^AM pages), [6] IH, [63:12] address
 * Every other bit is RES0.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';

export const VTD_IQ_ENTRY_WORDS = 8;

export const VTD_INV_WAIT_TYPE = 0x5;
export const VTD_PIOTLB_TYPE = 0x6;

export const PIOTLB_GRAN_PASID = 2;
export const PIOTLB_GRAN_PAGES = 3;

const TYPE_MASK = 0xf;
const WAIT_SW = 1 << 5;
const WAIT_FN = 1 << 6;
const GRAN_SHIFT = 4;
const DID_SHIFT = 16;
const PASID_MASK = 0xf_ffff;
const AM_MASK = 0x3f;

export interface VtdPasidIotlbInvalidation {
  granularity: number;
  domainId: number;
  pasid: number;
  /** 2^addressMask pages from `address` (page-selective only). */
  addressMask: number;
  address: number;
}

export function newVtdPasidIotlbInvalidation(): VtdPasidIotlbInvalidation {
  return { granularity: PIOTLB_GRAN_PASID, domainId: 0, pasid: 0, addressMask: 0, address: 0 };
}

/** qw0 [3:0] of a descriptor. */
export function vtdDescriptorType(words: Int32Array, at: number): number {
  return words[at] & TYPE_MASK;
}

function clearTail(words: Int32Array, at: number): void {
  for (let i = 2; i < VTD_IQ_ENTRY_WORDS; i++) words[at + i] = 0;
}

/** An invalidation wait that writes `statusData` to `statusAddress` once every earlier descriptor is done. */
export function encodeVtdInvWait(
  words: Int32Array,
  at: number,
  statusAddress: number,
  statusData: number,
): void {
  clearTail(words, at);
  words[at] = VTD_INV_WAIT_TYPE | WAIT_SW | WAIT_FN;
  words[at + 1] = statusData;
  words[at + 2] = addressLow(statusAddress) & ~3;
  words[at + 3] = addressHigh(statusAddress);
}

/** The status write of an invalidation wait: its address (0: no SW bit) and data. */
export function vtdInvWaitAddress(words: Int32Array, at: number): number {
  if ((words[at] & WAIT_SW) === 0) return 0;
  // Status Address is bits 127:66: a dword address, its bits 1:0 reserved (VT-d spec, Invalidation Wait Descriptor).
  return joinAddress(words[at + 2] & ~3, words[at + 3]);
}

export function vtdInvWaitData(words: Int32Array, at: number): number {
  return words[at + 1];
}

export function encodeVtdPasidIotlb(words: Int32Array, at: number, d: VtdPasidIotlbInvalidation): void {
  clearTail(words, at);
  words[at] = VTD_PIOTLB_TYPE | ((d.granularity & 3) << GRAN_SHIFT) | ((d.domainId & 0xffff) << DID_SHIFT);
  words[at + 1] = d.pasid & PASID_MASK;
  words[at + 2] = (d.addressMask & AM_MASK) | (addressLow(d.address) & ~0xfff);
  words[at + 3] = addressHigh(d.address);
}

export function decodeVtdPasidIotlb(
  words: Int32Array,
  at: number,
  out: VtdPasidIotlbInvalidation,
): VtdPasidIotlbInvalidation {
  const w0 = words[at];
  out.granularity = (w0 >>> GRAN_SHIFT) & 3;
  out.domainId = (w0 >>> DID_SHIFT) & 0xffff;
  out.pasid = words[at + 1] & PASID_MASK;
  out.addressMask = words[at + 2] & AM_MASK;
  out.address = joinAddress(words[at + 2] & ~0xfff, words[at + 3]);
  return out;
}
