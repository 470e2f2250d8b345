/**
 * Intel VT-d page request descriptor and page group response descriptor (32 bytes, 8 words each),
 * docs/queues.md (Linux prq.c `struct page_req_dsc`, iommu.h QI_PGRP_*):
 *   page request (type 0x1, written by the IOMMU into the page request queue)
 *     qw0 [7:0] type, [8] PASID present, [31:16] RID, [51:32] PASID, [52] exec requested,
 *         [53] privileged-mode requested
 *     qw1 [0] read, [1] write, [2] LPIG (last page in group), [11:3] PRG index, [63:12] page address
 *     qw2, qw3 zero (private data is not modelled)
 *   page group response (type 0x9, submitted by software on the invalidation queue)
 *     qw0 [3:0] type, [4] PASID present, [15:12] response code, [31:16] RID, [51:32] PASID
 *     qw1 [2] LPIG, [11:3] PRG index
 *     qw2, qw3 zero
 * Every other bit is RES0 and written as zero.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';
import { PRG_INDEX_MASK } from './page-request.ts';

export const VTD_PRQ_ENTRY_WORDS = 8;
/** PQH and PQT count bytes: a descriptor is 32 of them. */
export const VTD_PRQ_ENTRY_BYTES = VTD_PRQ_ENTRY_WORDS * 4;

export const VTD_PAGE_REQUEST_TYPE = 0x1;
export const VTD_PAGE_GROUP_RESPONSE_TYPE = 0x9;

/** Page group response codes (the PCIe PRG response codes). */
export const QI_RESP_SUCCESS = 0x0;
export const QI_RESP_INVALID = 0x1;
export const QI_RESP_FAILURE = 0xf;
/** The first reserved response code (2..0xe are reserved): a vIOMMU must refuse it. */
export const QI_RESP_RESERVED = 0x2;

const REQUEST_TYPE_MASK = 0xff;
const REQUEST_PASID_PRESENT = 1 << 8;
const RID_SHIFT = 16;
const RID_MASK = 0xffff;
const PASID_MASK = 0xf_ffff;
// qw0 bits 52 and 53, as bits of its high word.
const EXEC_REQUESTED = 1 << 20;
const PRIV_REQUESTED = 1 << 21;
const READ = 1 << 0;
const WRITE = 1 << 1;
const LPIG = 1 << 2;
const PRG_INDEX_SHIFT = 3;
export const VTD_PRG_INDEX_MASK = PRG_INDEX_MASK;
const PAGE_MASK = ~0xfff;

const RESPONSE_TYPE_MASK = 0xf;
const RESPONSE_PASID_PRESENT = 1 << 4;
const RESPONSE_CODE_SHIFT = 12;
const RESPONSE_CODE_MASK = 0xf;

export interface VtdPageRequest {
  /** Requester ID, bus:devfn. */
  rid: number;
  pasidPresent: boolean;
  /** Valid when `pasidPresent`. */
  pasid: number;
  execRequested: boolean;
  privilegedRequested: boolean;
  read: boolean;
  write: boolean;
  /** Last page in group: the group is complete and wants one page group response. */
  lpig: boolean;
  prgIndex: number;
  /** Page-aligned address. */
  address: number;
}

export interface VtdPageGroupResponse {
  rid: number;
  pasidPresent: boolean;
  pasid: number;
  /** QI_RESP_SUCCESS | QI_RESP_INVALID | QI_RESP_FAILURE. */
  code: number;
  lpig: boolean;
  prgIndex: number;
}

export function newVtdPageRequest(): VtdPageRequest {
  return {
    rid: 0,
    pasidPresent: false,
    pasid: 0,
    execRequested: false,
    privilegedRequested: false,
    read: false,
    write: false,
    lpig: false,
    prgIndex: 0,
    address: 0,
  };
}

export function newVtdPageGroupResponse(): VtdPageGroupResponse {
  return { rid: 0, pasidPresent: false, pasid: 0, code: 0, lpig: false, prgIndex: 0 };
}

/** qw0 [7:0] of a page request queue entry. */
export function pageRequestType(words: Int32Array, at: number): number {
  return words[at] & REQUEST_TYPE_MASK;
}

/** qw0 [3:0] of an invalidation queue descriptor. */
export function invalidationDescriptorType(words: Int32Array, at: number): number {
  return words[at] & RESPONSE_TYPE_MASK;
}

export function encodeVtdPageRequest(words: Int32Array, at: number, r: VtdPageRequest): void {
  words[at] =
    VTD_PAGE_REQUEST_TYPE | (r.pasidPresent ? REQUEST_PASID_PRESENT : 0) | ((r.rid & RID_MASK) << RID_SHIFT);
  words[at + 1] =
    (r.pasid & PASID_MASK) |
    (r.execRequested ? EXEC_REQUESTED : 0) |
    (r.privilegedRequested ? PRIV_REQUESTED : 0);
  words[at + 2] =
    (r.read ? READ : 0) |
    (r.write ? WRITE : 0) |
    (r.lpig ? LPIG : 0) |
    ((r.prgIndex & VTD_PRG_INDEX_MASK) << PRG_INDEX_SHIFT) |
    (addressLow(r.address) & PAGE_MASK);
  words[at + 3] = addressHigh(r.address);
  words[at + 4] = 0;
  words[at + 5] = 0;
  words[at + 6] = 0;
  words[at + 7] = 0;
}

export function decodeVtdPageRequest(words: Int32Array, at: number, out: VtdPageRequest): VtdPageRequest {
  const w0 = words[at];
  const w1 = words[at + 1];
  const w2 = words[at + 2];
  out.rid = (w0 >>> RID_SHIFT) & RID_MASK;
  out.pasidPresent = (w0 & REQUEST_PASID_PRESENT) !== 0;
  out.pasid = w1 & PASID_MASK;
  out.execRequested = (w1 & EXEC_REQUESTED) !== 0;
  out.privilegedRequested = (w1 & PRIV_REQUESTED) !== 0;
  out.read = (w2 & READ) !== 0;
  out.write = (w2 & WRITE) !== 0;
  out.lpig = (w2 & LPIG) !== 0;
  out.prgIndex = (w2 >>> PRG_INDEX_SHIFT) & VTD_PRG_INDEX_MASK;
  out.address = joinAddress(w2 & PAGE_MASK, words[at + 3]);
  return out;
}

/** A stop marker: LPIG with neither read nor write; it needs no response (Linux drops it). */
export function isVtdStopMarker(r: VtdPageRequest): boolean {
  return r.lpig && !r.read && !r.write;
}

export function encodeVtdPageGroupResponse(words: Int32Array, at: number, r: VtdPageGroupResponse): void {
  words[at] =
    VTD_PAGE_GROUP_RESPONSE_TYPE |
    (r.pasidPresent ? RESPONSE_PASID_PRESENT : 0) |
    ((r.code & RESPONSE_CODE_MASK) << RESPONSE_CODE_SHIFT) |
    ((r.rid & RID_MASK) << RID_SHIFT);
  words[at + 1] = r.pasid & PASID_MASK;
  words[at + 2] = (r.lpig ? LPIG : 0) | ((r.prgIndex & VTD_PRG_INDEX_MASK) << PRG_INDEX_SHIFT);
  words[at + 3] = 0;
  words[at + 4] = 0;
  words[at + 5] = 0;
  words[at + 6] = 0;
  words[at + 7] = 0;
}

export function decodeVtdPageGroupResponse(
  words: Int32Array,
  at: number,
  out: VtdPageGroupResponse,
): VtdPageGroupResponse {
  const w0 = words[at];
  const w2 = words[at + 2];
  out.pasidPresent = (w0 & RESPONSE_PASID_PRESENT) !== 0;
  out.code = (w0 >>> RESPONSE_CODE_SHIFT) & RESPONSE_CODE_MASK;
  out.rid = (w0 >>> RID_SHIFT) & RID_MASK;
  out.pasid = words[at + 1] & PASID_MASK;
  out.lpig = (w2 & LPIG) !== 0;
  out.prgIndex = (w2 >>> PRG_INDEX_SHIFT) & VTD_PRG_INDEX_MASK;
  return out;
}
