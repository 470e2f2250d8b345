/**
 * The binary records of the iommufd event queues (uapi iommufd.h), little-endian, defined once:
 *   struct iommu_hwpt_pgfault        (40 bytes) read() from a FAULT fd, one per page request
 *   struct iommu_hwpt_page_response  (8 bytes)  write() to a FAULT fd, one per group
 *   struct iommufd_vevent_header     (8 bytes)  read() from a VEVENTQ fd, before each event's data
 * Encoders and the `...Into`/`...From` hot-path variants allocate nothing: the DataView of a buffer is
 * made once and remembered (weakly) for as long as the buffer lives.
 */

const LE = true;
const TWO_32 = 0x1_0000_0000;

/** One DataView per buffer, so a record encoder called per record does not allocate one each time. */
const views = new WeakMap<Uint8Array, DataView>();

/** The DataView over exactly `buf`, made on first use and remembered while `buf` lives. */
export function recordView(buf: Uint8Array): DataView {
  let view = views.get(buf);
  if (view === undefined) {
    view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    views.set(buf, view);
  }
  return view;
}

// --- struct iommu_hwpt_pgfault ---------------------------------------------------------------------

export const PGFAULT_BYTES = 40;

/** `flags`: copied from the IOMMU core's page request flags. */
export const PGFAULT_FLAGS_PASID_VALID = 1;
export const PGFAULT_FLAGS_LAST_PAGE = 2;

/** `perm`: the access the device asked for. */
export const PERM_READ = 1;
export const PERM_WRITE = 2;
export const PERM_EXEC = 4;
export const PERM_PRIV = 8;

const PGFAULT_FLAGS = 0;
const PGFAULT_DEV_ID = 4;
const PGFAULT_PASID = 8;
const PGFAULT_GRPID = 12;
const PGFAULT_PERM = 16;
const PGFAULT_RESERVED = 20;
const PGFAULT_ADDR = 24;
const PGFAULT_LENGTH = 32;
const PGFAULT_COOKIE = 36;

export interface PgfaultRecord {
  flags: number;
  /** The iommufd DEVICE object id, not a VFIO or selftest id. */
  devId: number;
  pasid: number;
  grpid: number;
  perm: number;
  addr: bigint;
  /** Always 0 in today's kernels. */
  length: number;
  /** Names the group; every record of a group carries the same one. */
  cookie: number;
}

/** The same record with the address as two u32 halves, for a reused `out` object on hot paths. */
export interface PgfaultFields {
  flags: number;
  devId: number;
  pasid: number;
  grpid: number;
  perm: number;
  addrLow: number;
  addrHigh: number;
  length: number;
  cookie: number;
}

export function newPgfaultFields(): PgfaultFields {
  return { flags: 0, devId: 0, pasid: 0, grpid: 0, perm: 0, addrLow: 0, addrHigh: 0, length: 0, cookie: 0 };
}

/** The address of a `PgfaultFields` as a plain number (exact below 2^53). */
export function pgfaultAddress(f: PgfaultFields): number {
  return (f.addrHigh >>> 0) * TWO_32 + (f.addrLow >>> 0);
}

export function encodePgfault(buf: Uint8Array, offset: number, f: PgfaultRecord): void {
  const view = recordView(buf);
  view.setUint32(offset + PGFAULT_FLAGS, f.flags, LE);
  view.setUint32(offset + PGFAULT_DEV_ID, f.devId, LE);
  view.setUint32(offset + PGFAULT_PASID, f.pasid, LE);
  view.setUint32(offset + PGFAULT_GRPID, f.grpid, LE);
  view.setUint32(offset + PGFAULT_PERM, f.perm, LE);
  view.setUint32(offset + PGFAULT_RESERVED, 0, LE);
  view.setBigUint64(offset + PGFAULT_ADDR, f.addr, LE);
  view.setUint32(offset + PGFAULT_LENGTH, f.length, LE);
  view.setUint32(offset + PGFAULT_COOKIE, f.cookie, LE);
}

export function decodePgfault(buf: Uint8Array, offset: number): PgfaultRecord {
  const view = recordView(buf);
  return {
    flags: view.getUint32(offset + PGFAULT_FLAGS, LE),
    devId: view.getUint32(offset + PGFAULT_DEV_ID, LE),
    pasid: view.getUint32(offset + PGFAULT_PASID, LE),
    grpid: view.getUint32(offset + PGFAULT_GRPID, LE),
    perm: view.getUint32(offset + PGFAULT_PERM, LE),
    addr: view.getBigUint64(offset + PGFAULT_ADDR, LE),
    length: view.getUint32(offset + PGFAULT_LENGTH, LE),
    cookie: view.getUint32(offset + PGFAULT_COOKIE, LE),
  };
}

/** Encoder for hot paths: no BigInt, `__reserved` written as 0. */
export function writePgfaultFrom(view: DataView, offset: number, f: PgfaultFields): void {
  view.setUint32(offset + PGFAULT_FLAGS, f.flags, LE);
  view.setUint32(offset + PGFAULT_DEV_ID, f.devId, LE);
  view.setUint32(offset + PGFAULT_PASID, f.pasid, LE);
  view.setUint32(offset + PGFAULT_GRPID, f.grpid, LE);
  view.setUint32(offset + PGFAULT_PERM, f.perm, LE);
  view.setUint32(offset + PGFAULT_RESERVED, 0, LE);
  view.setUint32(offset + PGFAULT_ADDR, f.addrLow, LE);
  view.setUint32(offset + PGFAULT_ADDR + 4, f.addrHigh, LE);
  view.setUint32(offset + PGFAULT_LENGTH, f.length, LE);
  view.setUint32(offset + PGFAULT_COOKIE, f.cookie, LE);
}

/** Decoder for hot paths: fills `out` (reusable), no BigInt; `__reserved` is not reported. */
export function readPgfaultInto(view: DataView, offset: number, out: PgfaultFields): PgfaultFields {
  out.flags = view.getUint32(offset + PGFAULT_FLAGS, LE);
  out.devId = view.getUint32(offset + PGFAULT_DEV_ID, LE);
  out.pasid = view.getUint32(offset + PGFAULT_PASID, LE);
  out.grpid = view.getUint32(offset + PGFAULT_GRPID, LE);
  out.perm = view.getUint32(offset + PGFAULT_PERM, LE);
  out.addrLow = view.getUint32(offset + PGFAULT_ADDR, LE);
  out.addrHigh = view.getUint32(offset + PGFAULT_ADDR + 4, LE);
  out.length = view.getUint32(offset + PGFAULT_LENGTH, LE);
  out.cookie = view.getUint32(offset + PGFAULT_COOKIE, LE);
  return out;
}

// --- struct iommu_hwpt_page_response ---------------------------------------------------------------

export const PAGE_RESPONSE_BYTES = 8;

/** The only two codes Linux's FAULT fd accepts (they equal the IOMMU core's and PCIe PRG codes). */
export const IOMMUFD_PAGE_RESP_SUCCESS = 0;
export const IOMMUFD_PAGE_RESP_INVALID = 1;
/**
 * A sandbox extension, not in Linux's uAPI: terminate a stalled transaction without the abort bit
 * (SMMUv3 CMD_RESUME Ac=0 Ab=0), which completes it RAZ/WI when the SMMU's IDR0.TERM_MODEL is 0
 * and aborts it when 1. Linux's fault fd takes SUCCESS and INVALID only, so a VMM on it cannot pass
 * a guest's Ab=0 on and has to advertise TERM_MODEL=1; the sandbox carries it so that both
 * terminate models can be run. Refused (EINVAL) for a page-request group. Equals
 * stall-iopf-bridge.ts's STALL_RESP_TERMINATE.
 */
export const IOMMUFD_PAGE_RESP_TERMINATE = 2;

const RESPONSE_COOKIE = 0;
const RESPONSE_CODE = 4;

export interface PageResponse {
  cookie: number;
  code: number;
}

export function encodePageResponse(buf: Uint8Array, offset: number, r: PageResponse): void {
  const view = recordView(buf);
  view.setUint32(offset + RESPONSE_COOKIE, r.cookie, LE);
  view.setUint32(offset + RESPONSE_CODE, r.code, LE);
}

export function decodePageResponse(buf: Uint8Array, offset: number): PageResponse {
  return readPageResponseInto(recordView(buf), offset, { cookie: 0, code: 0 });
}

/** Decoder for hot paths: fills `out` (reusable). */
export function readPageResponseInto(view: DataView, offset: number, out: PageResponse): PageResponse {
  out.cookie = view.getUint32(offset + RESPONSE_COOKIE, LE);
  out.code = view.getUint32(offset + RESPONSE_CODE, LE);
  return out;
}

// --- struct iommufd_vevent_header ------------------------------------------------------------------

export const VEVENT_HEADER_BYTES = 8;

/** A bare header with this flag stands for events dropped before the next sequence number. */
export const IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1;

const VEVENT_FLAGS = 0;
const VEVENT_SEQUENCE = 4;

export interface VeventHeader {
  flags: number;
  /** Per queue, from 0, wrapping from INT_MAX back to 0. */
  sequence: number;
}

export function encodeVeventHeader(buf: Uint8Array, offset: number, h: VeventHeader): void {
  const view = recordView(buf);
  view.setUint32(offset + VEVENT_FLAGS, h.flags, LE);
  view.setUint32(offset + VEVENT_SEQUENCE, h.sequence, LE);
}

export function decodeVeventHeader(buf: Uint8Array, offset: number): VeventHeader {
  const view = recordView(buf);
  return {
    flags: view.getUint32(offset + VEVENT_FLAGS, LE),
    sequence: view.getUint32(offset + VEVENT_SEQUENCE, LE),
  };
}
