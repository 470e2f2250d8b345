/**
 * virtio-iommu records (virtio spec 5.13; the layouts of Linux's uapi virtio_iommu.h, v0.12, which
 * QEMU's standard-headers copy). Every field is little-endian and 4-byte aligned, so each record is
 * read and written as Int32 words (the project assumes a little-endian host, as shared/records does).
 *
 * Requests travel on the request virtqueue: the device-readable part (head + body) then the
 * device-writable tail. Byte offsets:
 *   head    0: type u8, reserved[3]                          (4 bytes)
 *   ATTACH  4: domain u32, 8: endpoint u32, 12: flags u32, 16: reserved[4], 20: tail   (24 bytes)
 *   DETACH  4: domain u32, 8: endpoint u32, 12: reserved[8], 20: tail                 (24 bytes)
 *   MAP     4: domain u32, 8: virt_start u64, 16: virt_end u64, 24: phys_start u64,
 *          32: flags u32, 36: tail                                                    (40 bytes)
 *   UNMAP   4: domain u32, 8: virt_start u64, 16: virt_end u64, 24: reserved[4], 28: tail (32 bytes)
 *   PROBE   4: endpoint u32, 8: reserved[64], 72: properties[probe_size], then the tail
 *   tail    0: status u8, reserved[3]                        (4 bytes)
 * virt_end is inclusive (5.13.6.5). PROBE's properties are device-writable, each a header
 *   {type u16 (low 12 bits), length u16 (bytes of value after the header)} and a value padded to
 *   8 bytes; RESV_MEM's value is subtype u8, reserved[3], start u64, end u64 (24 bytes in all).
 *   A NONE (0) type ends the list.
 * Fault event (event virtqueue, device-writable, 5.13.6.7): 0: reason u8, reserved[3],
 *   4: flags u32, 8: endpoint u32, 12: reserved[4], 16: address u64 (24 bytes).
 *
 * Addresses are JS numbers, exact below 2^53 (address.ts); a u64 at or above 2^53 decodes to a
 * number at or above 2^53, which every range check rejects.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';

/** Request types (5.13.6). */
export const VIRTIO_IOMMU_T_ATTACH = 1;
export const VIRTIO_IOMMU_T_DETACH = 2;
export const VIRTIO_IOMMU_T_MAP = 3;
export const VIRTIO_IOMMU_T_UNMAP = 4;
export const VIRTIO_IOMMU_T_PROBE = 5;

/** Tail status codes (5.13.6). */
export const VIRTIO_IOMMU_S_OK = 0;
export const VIRTIO_IOMMU_S_IOERR = 1;
export const VIRTIO_IOMMU_S_UNSUPP = 2;
export const VIRTIO_IOMMU_S_DEVERR = 3;
export const VIRTIO_IOMMU_S_INVAL = 4;
export const VIRTIO_IOMMU_S_RANGE = 5;
export const VIRTIO_IOMMU_S_NOENT = 6;
export const VIRTIO_IOMMU_S_FAULT = 7;
export const VIRTIO_IOMMU_S_NOMEM = 8;

/** ATTACH flags (5.13.6.3, with VIRTIO_IOMMU_F_BYPASS_CONFIG): the domain bypasses translation. */
export const VIRTIO_IOMMU_ATTACH_F_BYPASS = 1 << 0;

/** MAP flags (5.13.6.5). Any other bit is INVAL. */
export const VIRTIO_IOMMU_MAP_F_READ = 1 << 0;
export const VIRTIO_IOMMU_MAP_F_WRITE = 1 << 1;
export const VIRTIO_IOMMU_MAP_F_MMIO = 1 << 2;
export const VIRTIO_IOMMU_MAP_F_MASK =
  VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE | VIRTIO_IOMMU_MAP_F_MMIO;

/** PROBE property types (5.13.6.8): the type is the low 12 bits of the header's first u16. */
export const VIRTIO_IOMMU_PROBE_T_NONE = 0;
export const VIRTIO_IOMMU_PROBE_T_RESV_MEM = 1;
export const VIRTIO_IOMMU_PROBE_T_MASK = 0xfff;
/** RESV_MEM subtypes (5.13.6.8.1). */
export const VIRTIO_IOMMU_RESV_MEM_T_RESERVED = 0;
export const VIRTIO_IOMMU_RESV_MEM_T_MSI = 1;

/** Fault reasons and flags (5.13.6.7). ADDRESS is bit 8: the address field is valid. */
export const VIRTIO_IOMMU_FAULT_R_UNKNOWN = 0;
export const VIRTIO_IOMMU_FAULT_R_DOMAIN = 1;
export const VIRTIO_IOMMU_FAULT_R_MAPPING = 2;
export const VIRTIO_IOMMU_FAULT_F_READ = 1 << 0;
export const VIRTIO_IOMMU_FAULT_F_WRITE = 1 << 1;
export const VIRTIO_IOMMU_FAULT_F_EXEC = 1 << 2;
export const VIRTIO_IOMMU_FAULT_F_ADDRESS = 1 << 8;

export const VIRTIO_IOMMU_HEAD_BYTES = 4;
export const VIRTIO_IOMMU_TAIL_BYTES = 4;
export const VIRTIO_IOMMU_ATTACH_BYTES = 24;
export const VIRTIO_IOMMU_DETACH_BYTES = 24;
export const VIRTIO_IOMMU_MAP_BYTES = 40;
export const VIRTIO_IOMMU_UNMAP_BYTES = 32;
/** PROBE up to its properties: head, endpoint, reserved[64]. */
export const VIRTIO_IOMMU_PROBE_FIXED_BYTES = 72;
export const VIRTIO_IOMMU_PROPERTY_HEADER_BYTES = 4;
export const VIRTIO_IOMMU_RESV_MEM_BYTES = 24;
export const VIRTIO_IOMMU_FAULT_BYTES = 24;
export const VIRTIO_IOMMU_FAULT_WORDS = VIRTIO_IOMMU_FAULT_BYTES / 4;

const U8 = 0xff;
const U16 = 0xffff;

/**
 * Bytes of a request's device-readable part (head and body, everything before the tail; for PROBE,
 * before the properties), or -1 for a type the spec does not define (UNSUPP).
 */
export function virtioIommuRequestInBytes(type: number): number {
  switch (type) {
    case VIRTIO_IOMMU_T_ATTACH:
      return VIRTIO_IOMMU_ATTACH_BYTES - VIRTIO_IOMMU_TAIL_BYTES;
    case VIRTIO_IOMMU_T_DETACH:
      return VIRTIO_IOMMU_DETACH_BYTES - VIRTIO_IOMMU_TAIL_BYTES;
    case VIRTIO_IOMMU_T_MAP:
      return VIRTIO_IOMMU_MAP_BYTES - VIRTIO_IOMMU_TAIL_BYTES;
    case VIRTIO_IOMMU_T_UNMAP:
      return VIRTIO_IOMMU_UNMAP_BYTES - VIRTIO_IOMMU_TAIL_BYTES;
    case VIRTIO_IOMMU_T_PROBE:
      return VIRTIO_IOMMU_PROBE_FIXED_BYTES;
    default:
      return -1;
  }
}

/**
 * One request's fields, reused for every request: a field a type does not carry stays 0.
 * `flags` is ATTACH's or MAP's.
 */
export interface VirtioIommuRequest {
  type: number;
  domain: number;
  endpoint: number;
  flags: number;
  virtStart: number;
  /** Inclusive. */
  virtEnd: number;
  physStart: number;
}

export function newVirtioIommuRequest(): VirtioIommuRequest {
  return { type: 0, domain: 0, endpoint: 0, flags: 0, virtStart: 0, virtEnd: 0, physStart: 0 };
}

/** The head's type byte. */
export function virtioIommuRequestType(words: Int32Array, at: number): number {
  return words[at] & U8;
}

/**
 * Writes the device-readable part of `r` (head and body, by r.type) at word `at`, reserved bytes
 * zero; returns its length in bytes. The tail follows in a device-writable buffer.
 */
export function encodeVirtioIommuRequest(words: Int32Array, at: number, r: VirtioIommuRequest): number {
  const bytes = virtioIommuRequestInBytes(r.type);
  if (bytes < 0) throw new RangeError(`virtio-iommu request type ${r.type} is not defined`);
  words.fill(0, at, at + bytes / 4);
  words[at] = r.type & U8;
  const type = r.type;
  if (type === VIRTIO_IOMMU_T_ATTACH || type === VIRTIO_IOMMU_T_DETACH) {
    words[at + 1] = r.domain;
    words[at + 2] = r.endpoint;
    // DETACH has reserved bytes where ATTACH has its flags.
    if (type === VIRTIO_IOMMU_T_ATTACH) words[at + 3] = r.flags;
  } else if (type === VIRTIO_IOMMU_T_MAP || type === VIRTIO_IOMMU_T_UNMAP) {
    words[at + 1] = r.domain;
    words[at + 2] = addressLow(r.virtStart);
    words[at + 3] = addressHigh(r.virtStart);
    words[at + 4] = addressLow(r.virtEnd);
    words[at + 5] = addressHigh(r.virtEnd);
    // UNMAP has reserved bytes where MAP has phys_start and flags.
    if (type === VIRTIO_IOMMU_T_MAP) {
      words[at + 6] = addressLow(r.physStart);
      words[at + 7] = addressHigh(r.physStart);
      words[at + 8] = r.flags;
    }
  } else {
    words[at + 1] = r.endpoint;
  }
  return bytes;
}

/**
 * Reads a request of type words[at] into `out`; the caller checked it has
 * virtioIommuRequestInBytes(type) readable bytes. Decodes without judging (the device validates).
 * Returns the type, or -1 for an undefined one (out.type set, other fields 0).
 */
export function decodeVirtioIommuRequest(words: Int32Array, at: number, out: VirtioIommuRequest): number {
  const type = words[at] & U8;
  out.type = type;
  out.domain = 0;
  out.endpoint = 0;
  out.flags = 0;
  out.virtStart = 0;
  out.virtEnd = 0;
  out.physStart = 0;
  if (type === VIRTIO_IOMMU_T_ATTACH || type === VIRTIO_IOMMU_T_DETACH) {
    out.domain = words[at + 1] >>> 0;
    out.endpoint = words[at + 2] >>> 0;
    if (type === VIRTIO_IOMMU_T_ATTACH) out.flags = words[at + 3] >>> 0;
    return type;
  }
  if (type === VIRTIO_IOMMU_T_MAP || type === VIRTIO_IOMMU_T_UNMAP) {
    out.domain = words[at + 1] >>> 0;
    out.virtStart = joinAddress(words[at + 2], words[at + 3]);
    out.virtEnd = joinAddress(words[at + 4], words[at + 5]);
    if (type === VIRTIO_IOMMU_T_MAP) {
      out.physStart = joinAddress(words[at + 6], words[at + 7]);
      out.flags = words[at + 8] >>> 0;
    }
    return type;
  }
  if (type === VIRTIO_IOMMU_T_PROBE) {
    out.endpoint = words[at + 1] >>> 0;
    return type;
  }
  return -1;
}

/** The tail: status in byte 0, reserved bytes zero. */
export function encodeVirtioIommuTail(words: Int32Array, at: number, status: number): void {
  words[at] = status & U8;
}

export function virtioIommuTailStatus(words: Int32Array, at: number): number {
  return words[at] & U8;
}

/** One PROBE property as decoded; `subtype`, `start`, `end` are RESV_MEM's. */
export interface VirtioIommuProbeProperty {
  type: number;
  /** Bytes of value after the 4-byte header. */
  length: number;
  subtype: number;
  start: number;
  /** Inclusive. */
  end: number;
}

export function newVirtioIommuProbeProperty(): VirtioIommuProbeProperty {
  return { type: 0, length: 0, subtype: 0, start: 0, end: 0 };
}

/** Writes a RESV_MEM property at word `at` (24 bytes); returns its bytes. */
export function encodeVirtioIommuResvMem(
  words: Int32Array,
  at: number,
  subtype: number,
  start: number,
  end: number,
): number {
  const length = VIRTIO_IOMMU_RESV_MEM_BYTES - VIRTIO_IOMMU_PROPERTY_HEADER_BYTES;
  words[at] = VIRTIO_IOMMU_PROBE_T_RESV_MEM | (length << 16);
  words[at + 1] = subtype & U8;
  words[at + 2] = addressLow(start);
  words[at + 3] = addressHigh(start);
  words[at + 4] = addressLow(end);
  words[at + 5] = addressHigh(end);
  return VIRTIO_IOMMU_RESV_MEM_BYTES;
}

/**
 * Reads the property header at word `at` (and RESV_MEM's value) into `out`; returns the bytes the
 * property occupies (header + length padded to 8), or 0 for NONE, the end of the list.
 */
export function decodeVirtioIommuProbeProperty(
  words: Int32Array,
  at: number,
  out: VirtioIommuProbeProperty,
): number {
  const w0 = words[at];
  out.type = w0 & VIRTIO_IOMMU_PROBE_T_MASK;
  out.length = (w0 >>> 16) & U16;
  out.subtype = 0;
  out.start = 0;
  out.end = 0;
  if (out.type === VIRTIO_IOMMU_PROBE_T_NONE) return 0;
  if (out.type === VIRTIO_IOMMU_PROBE_T_RESV_MEM) {
    out.subtype = words[at + 1] & U8;
    out.start = joinAddress(words[at + 2], words[at + 3]);
    out.end = joinAddress(words[at + 4], words[at + 5]);
  }
  return VIRTIO_IOMMU_PROPERTY_HEADER_BYTES + Math.ceil(out.length / 8) * 8;
}

/** One fault event, reused. */
export interface VirtioIommuFault {
  /** VIRTIO_IOMMU_FAULT_R_*. */
  reason: number;
  /** VIRTIO_IOMMU_FAULT_F_*. */
  flags: number;
  endpoint: number;
  /** Meaningful when flags has VIRTIO_IOMMU_FAULT_F_ADDRESS. */
  address: number;
}

export function newVirtioIommuFault(): VirtioIommuFault {
  return { reason: 0, flags: 0, endpoint: 0, address: 0 };
}

export function encodeVirtioIommuFault(words: Int32Array, at: number, f: VirtioIommuFault): void {
  words[at] = f.reason & U8;
  words[at + 1] = f.flags;
  words[at + 2] = f.endpoint;
  words[at + 3] = 0;
  words[at + 4] = addressLow(f.address);
  words[at + 5] = addressHigh(f.address);
}

export function decodeVirtioIommuFault(
  words: Int32Array,
  at: number,
  out: VirtioIommuFault,
): VirtioIommuFault {
  out.reason = words[at] & U8;
  out.flags = words[at + 1] >>> 0;
  out.endpoint = words[at + 2] >>> 0;
  out.address = joinAddress(words[at + 4], words[at + 5]);
  return out;
}
