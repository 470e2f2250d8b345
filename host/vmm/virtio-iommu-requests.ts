/**
 * The device side of the virtio-iommu request virtqueue (virtio spec 5.13.6), backed by iommufd the
 * way a VMM backs it with VFIO/iommufd: a guest domain is an IOAS, an endpoint is a bound device
 * attached to that IOAS (through an automatic paging HWPT), MAP and UNMAP are IOAS_MAP and
 * IOAS_UNMAP of guest RAM. One concept: a request in, a status out.
 *
 * Rules it keeps (spec 5.13.6.x; where the spec says SHOULD, QEMU's hw/virtio/virtio-iommu.c is
 * the tie-breaker):
 * - Every chain gets a tail unless it has no room for one (counted `noTail`, completed with len 0
 *   so the driver gets its descriptors back). Nothing throws out of `service`. A chain the
 *   virtqueue itself drops (VirtqueueDevice.dropped) is never completed.
 * - An undefined type is UNSUPP; a device-readable part shorter than its type needs, a PROBE whose
 *   writable part is shorter than probe_size + tail, or a reserved byte that is not zero, is INVAL
 *   and nothing changes (counted `malformed`).
 * - ATTACH: unknown flag bits INVAL (QEMU checks them first); BYPASS is UNSUPP (this device does
 *   not offer VIRTIO_IOMMU_F_BYPASS_CONFIG); an unknown endpoint NOENT; the first ATTACH of a
 *   domain allocates its IOAS; an endpoint attached elsewhere moves with DEVICE_REPLACE.
 * - DETACH: NOENT unless the endpoint is attached to that domain. A domain with neither endpoints
 *   nor mappings is freed (its IOAS destroyed); one with mappings keeps them for the next ATTACH.
 * - MAP: unknown domain NOENT; unknown flag bits, virt_end < virt_start, or a range overlapping an
 *   existing mapping INVAL (QEMU: an overlapping interval is INVAL); MMIO is UNSUPP (no
 *   VIRTIO_IOMMU_F_MMIO); unaligned virt_start, phys_start or virt_end + 1, or a phys range outside
 *   guest RAM, RANGE.
 * - UNMAP: every mapping inside [virt_start, virt_end] goes; a mapping that sticks out of the range
 *   is RANGE and nothing is removed (the spec never splits a mapping; the registry would refuse
 *   too, after removing the areas before it); nothing mapped in the range is OK.
 * - PROBE: RESV_MEM RESERVED for every IOVA range the endpoint's IOAS keeps off limits (the
 *   device's own reserved regions when not attached); the host drivers reserve no MSI window, so
 *   no MSI subtype is written. Properties that do not fit probe_size are DEVERR. A range end past
 *   2^53 is written as 2^53 - 1 (safeAddress).
 * - A registry error is a status through one table (statusOfErrno).
 */
import { type GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import {
  decodeVirtioIommuRequest,
  encodeVirtioIommuResvMem,
  encodeVirtioIommuTail,
  newVirtioIommuRequest,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_HEAD_BYTES,
  VIRTIO_IOMMU_MAP_F_MASK,
  VIRTIO_IOMMU_MAP_F_MMIO,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_MAP_F_WRITE,
  VIRTIO_IOMMU_PROBE_FIXED_BYTES,
  VIRTIO_IOMMU_RESV_MEM_BYTES,
  VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
  VIRTIO_IOMMU_S_DEVERR,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
  VIRTIO_IOMMU_T_ATTACH,
  VIRTIO_IOMMU_T_DETACH,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_PROBE,
  VIRTIO_IOMMU_T_UNMAP,
  VIRTIO_IOMMU_TAIL_BYTES,
  virtioIommuRequestInBytes,
} from '../../shared/records/virtio-iommu.ts';
import {
  VIRTQ_POP_CHAIN,
  VIRTQ_POP_EMPTY,
  VirtqChain,
  type VirtqueueDevice,
} from '../../shared/virtqueue.ts';
import { ErrnoError } from '../iommu/errno.ts';
import type { AddressRange, IommuDevice } from '../iommu/iommu-ops.ts';
import type { Ioas } from '../iommufd/ioas.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../iommufd/ioas.ts';
import type { Iommufd } from '../iommufd/iommufd.ts';
import { U64_MAX } from '../iommufd/iova.ts';

/** QEMU's default probe_size (VIOMMU_PROBE_SIZE): the config space value the driver reads. */
export const VIRTIO_IOMMU_DEFAULT_PROBE_SIZE = 512;

/** Tail statuses 0..8 (VIRTIO_IOMMU_S_*). */
const STATUSES = 9;
/** The longest device-readable part of any request (PROBE's fixed part). */
const MAX_IN_BYTES = VIRTIO_IOMMU_PROBE_FIXED_BYTES;
const NO_DOMAIN = -1;

/**
 * Records carry addresses as numbers, exact below 2^53: an end past that is written as 2^53 - 1.
 * The guest loses nothing by it, since MAP refuses any range that reaches 2^53 (RANGE).
 */
function safeAddress(address: bigint): number {
  return address > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(address);
}

/** One registry errno to one virtio status (5.13.6): the only place the two meet. */
export function statusOfErrno(errno: string): number {
  switch (errno) {
    case 'ENOENT':
      return VIRTIO_IOMMU_S_NOENT;
    case 'EINVAL':
      return VIRTIO_IOMMU_S_INVAL;
    case 'ERANGE':
    case 'EOVERFLOW':
      return VIRTIO_IOMMU_S_RANGE;
    case 'ENOMEM':
      return VIRTIO_IOMMU_S_NOMEM;
    default:
      return VIRTIO_IOMMU_S_DEVERR;
  }
}

export interface VirtioIommuRequestsOptions {
  /** probe_size from the device's config space; a PROBE's writable part is this plus the tail. */
  probeSize?: number;
}

/** A guest domain: the IOAS behind it and how many endpoints it holds. */
interface GuestDomain {
  readonly ioasId: number;
  endpoints: number;
}

export interface VirtioIommuRequestStats {
  /** Requests completed, by tail status (index VIRTIO_IOMMU_S_*). */
  readonly byStatus: Uint32Array;
  /** Completed with a non-OK status because of the request's own bytes (short, reserved, type). */
  malformed: number;
  /** Chains with no room for a tail: completed with len 0, no status written. */
  noTail: number;
  /** Registry calls that failed, mapped through statusOfErrno. */
  registryErrors: number;
}

export class VirtioIommuRequests {
  readonly stats: VirtioIommuRequestStats = {
    byStatus: new Uint32Array(STATUSES),
    malformed: 0,
    noTail: 0,
    registryErrors: 0,
  };
  readonly probeSize: number;
  /** DEVICE ids of the endpoints, by endpoint index. */
  private readonly devIds: number[] = [];
  private readonly devices: readonly IommuDevice[];
  /** Guest domain id attached to each endpoint, or NO_DOMAIN. */
  private readonly endpointDomain: number[] = [];
  private readonly domains = new Map<number, GuestDomain>();
  private readonly chain: VirtqChain;
  private readonly request = newVirtioIommuRequest();
  private readonly inBytes = new Uint8Array(MAX_IN_BYTES);
  private readonly inWords = new Int32Array(this.inBytes.buffer);
  /** The writable part as the device fills it: PROBE's properties, then the tail. */
  private readonly outBytes: Uint8Array;
  private readonly outWords: Int32Array;

  constructor(
    private readonly fd: Iommufd,
    private readonly memory: GuestMemory,
    /** Where the VMM's process maps guest RAM (GPA 0), as fd.memory.mmap returned it. */
    private readonly ramUserVa: bigint,
    private readonly queue: VirtqueueDevice,
    /** The VM's devices; a request's endpoint is an index into this list. */
    devices: readonly IommuDevice[],
    options: VirtioIommuRequestsOptions = {},
  ) {
    const probeSize = options.probeSize ?? VIRTIO_IOMMU_DEFAULT_PROBE_SIZE;
    if (!Number.isInteger(probeSize) || probeSize < 0 || probeSize % 4 !== 0) {
      throw new RangeError(`probeSize must be a non-negative multiple of 4, got ${probeSize}`);
    }
    this.probeSize = probeSize;
    this.devices = devices;
    for (const device of devices) {
      this.devIds.push(fd.bindDevice({ device }).devId);
      this.endpointDomain.push(NO_DOMAIN);
    }
    this.chain = new VirtqChain(queue.size);
    this.outBytes = new Uint8Array(probeSize + VIRTIO_IOMMU_TAIL_BYTES);
    this.outWords = new Int32Array(this.outBytes.buffer);
  }

  /** The IOAS behind guest domain `domain`, or undefined (for tests and the fault path). */
  ioasOf(domain: number): number | undefined {
    return this.domains.get(domain)?.ioasId;
  }

  /**
   * Handles every available chain: pop, gather, carry out, scatter the tail, push. Returns whether
   * the guest wants a used-buffer interrupt. A chain the virtqueue drops is counted there
   * (VirtqueueDevice.dropped) and never completed.
   */
  service(): boolean {
    const q = this.queue;
    const chain = this.chain;
    let pushed = false;
    for (;;) {
      const popped = q.pop(chain);
      if (popped === VIRTQ_POP_EMPTY) break;
      if (popped !== VIRTQ_POP_CHAIN) continue;
      q.push(chain.head, this.handle(chain));
      pushed = true;
    }
    return pushed && q.publishUsed();
  }

  /**
   * One chain; returns the bytes written into its writable part (the used len). As QEMU does, the
   * device writes from the start of the writable part: PROBE's probe_size bytes of properties,
   * then the tail; every other type, the tail alone.
   */
  private handle(chain: VirtqChain): number {
    const writable = chain.writableBytes;
    if (writable < VIRTIO_IOMMU_TAIL_BYTES) {
      this.stats.noTail++;
      return 0;
    }
    const got = chain.gather(this.memory, this.inBytes);
    const type = got >= VIRTIO_IOMMU_HEAD_BYTES ? this.inBytes[0] : -1;
    const need = type < 0 ? -1 : virtioIommuRequestInBytes(type);
    const probe = type === VIRTIO_IOMMU_T_PROBE && writable >= this.outBytes.length;
    // 5.13.6: an undefined type is UNSUPP; a short request or a reserved byte set is INVAL.
    const malformed =
      need < 0 || got < need || (type === VIRTIO_IOMMU_T_PROBE && !probe) || !this.reservedZero(type);
    let status: number;
    if (!malformed) status = this.execute(type);
    else status = type >= 0 && need < 0 ? VIRTIO_IOMMU_S_UNSUPP : VIRTIO_IOMMU_S_INVAL;
    if (malformed) this.stats.malformed++;
    this.stats.byStatus[status]++;
    const out = this.outWords;
    if (!probe) {
      encodeVirtioIommuTail(out, 0, status);
      return chain.scatter(this.memory, this.outBytes, VIRTIO_IOMMU_TAIL_BYTES);
    }
    // A PROBE that failed before its properties were written reports none.
    if (status !== VIRTIO_IOMMU_S_OK) out.fill(0);
    encodeVirtioIommuTail(out, this.probeSize >>> 2, status);
    return chain.scatter(this.memory, this.outBytes, this.outBytes.length);
  }

  /** 5.13.6: reserved bytes of a request body must be zero. */
  private reservedZero(type: number): boolean {
    const w = this.inWords;
    // Head reserved[3]: bytes 1..3.
    if ((w[0] & ~0xff) !== 0) return false;
    switch (type) {
      case VIRTIO_IOMMU_T_ATTACH:
        return w[4] === 0;
      case VIRTIO_IOMMU_T_DETACH:
        return w[3] === 0 && w[4] === 0;
      case VIRTIO_IOMMU_T_UNMAP:
        return w[6] === 0;
      case VIRTIO_IOMMU_T_PROBE:
        for (let i = 2; i < VIRTIO_IOMMU_PROBE_FIXED_BYTES / 4; i++) if (w[i] !== 0) return false;
        return true;
      default:
        return true;
    }
  }

  private execute(type: number): number {
    const r = this.request;
    decodeVirtioIommuRequest(this.inWords, 0, r);
    try {
      switch (type) {
        case VIRTIO_IOMMU_T_ATTACH:
          return this.attach(r.domain, r.endpoint, r.flags);
        case VIRTIO_IOMMU_T_DETACH:
          return this.detach(r.domain, r.endpoint);
        case VIRTIO_IOMMU_T_MAP:
          return this.map(r.domain, r.virtStart, r.virtEnd, r.physStart, r.flags);
        case VIRTIO_IOMMU_T_UNMAP:
          return this.unmap(r.domain, r.virtStart, r.virtEnd);
        default:
          return this.probe(r.endpoint);
      }
    } catch (error) {
      this.stats.registryErrors++;
      return error instanceof ErrnoError ? statusOfErrno(error.errno) : VIRTIO_IOMMU_S_DEVERR;
    }
  }

  private attach(domainId: number, endpoint: number, flags: number): number {
    if ((flags & ~VIRTIO_IOMMU_ATTACH_F_BYPASS) !== 0) return VIRTIO_IOMMU_S_INVAL;
    if (flags !== 0) return VIRTIO_IOMMU_S_UNSUPP;
    if (endpoint >= this.devIds.length) return VIRTIO_IOMMU_S_NOENT;
    const current = this.endpointDomain[endpoint];
    if (current === domainId) return VIRTIO_IOMMU_S_OK;
    let domain = this.domains.get(domainId);
    const created = domain === undefined;
    if (domain === undefined) domain = { ioasId: this.fd.ioasAlloc().ioasId, endpoints: 0 };
    const devId = this.devIds[endpoint];
    try {
      if (current === NO_DOMAIN) this.fd.attachDevice({ devId, ptId: domain.ioasId });
      else this.fd.replaceDevice({ devId, ptId: domain.ioasId });
    } catch (error) {
      if (created) this.fd.destroy({ id: domain.ioasId });
      throw error;
    }
    if (created) this.domains.set(domainId, domain);
    domain.endpoints++;
    this.endpointDomain[endpoint] = domainId;
    if (current !== NO_DOMAIN) this.leave(current);
    return VIRTIO_IOMMU_S_OK;
  }

  private detach(domainId: number, endpoint: number): number {
    if (endpoint >= this.devIds.length || this.endpointDomain[endpoint] !== domainId) {
      return VIRTIO_IOMMU_S_NOENT;
    }
    this.fd.detachDevice({ devId: this.devIds[endpoint] });
    this.endpointDomain[endpoint] = NO_DOMAIN;
    this.leave(domainId);
    return VIRTIO_IOMMU_S_OK;
  }

  /** An endpoint left `domainId`: free the domain once it holds neither endpoints nor mappings. */
  private leave(domainId: number): void {
    const domain = this.domains.get(domainId);
    if (domain === undefined) return;
    domain.endpoints--;
    if (domain.endpoints > 0 || this.ioas(domain).areas.length > 0) return;
    this.domains.delete(domainId);
    this.fd.destroy({ id: domain.ioasId });
  }

  private map(
    domainId: number,
    virtStart: number,
    virtEnd: number,
    physStart: number,
    flags: number,
  ): number {
    const domain = this.domains.get(domainId);
    if (domain === undefined) return VIRTIO_IOMMU_S_NOENT;
    if ((flags & ~VIRTIO_IOMMU_MAP_F_MASK) !== 0 || virtEnd < virtStart) return VIRTIO_IOMMU_S_INVAL;
    if ((flags & VIRTIO_IOMMU_MAP_F_MMIO) !== 0) return VIRTIO_IOMMU_S_UNSUPP;
    const length = virtEnd - virtStart + 1;
    if (
      virtStart % PAGE_SIZE !== 0 ||
      physStart % PAGE_SIZE !== 0 ||
      length % PAGE_SIZE !== 0 ||
      !Number.isSafeInteger(virtEnd) ||
      !this.memory.contains(physStart, length)
    ) {
      return VIRTIO_IOMMU_S_RANGE;
    }
    const start = BigInt(virtStart);
    const last = BigInt(virtEnd);
    for (const area of this.ioas(domain).areas) {
      if (area.start <= last && area.last >= start) return VIRTIO_IOMMU_S_INVAL;
    }
    let ioasFlags = IOMMU_IOAS_MAP_FIXED_IOVA;
    if ((flags & VIRTIO_IOMMU_MAP_F_READ) !== 0) ioasFlags |= IOMMU_IOAS_MAP_READABLE;
    if ((flags & VIRTIO_IOMMU_MAP_F_WRITE) !== 0) ioasFlags |= IOMMU_IOAS_MAP_WRITEABLE;
    this.fd.ioasMap({
      flags: ioasFlags,
      ioasId: domain.ioasId,
      userVa: this.ramUserVa + BigInt(physStart),
      length: BigInt(length),
      iova: start,
    });
    return VIRTIO_IOMMU_S_OK;
  }

  private unmap(domainId: number, virtStart: number, virtEnd: number): number {
    const domain = this.domains.get(domainId);
    if (domain === undefined) return VIRTIO_IOMMU_S_NOENT;
    if (virtEnd < virtStart) return VIRTIO_IOMMU_S_INVAL;
    // A u64 past 2^53 decodes inexactly; no mapping reaches there, so clamp to the last exact one.
    const start = BigInt(Math.min(virtStart, Number.MAX_SAFE_INTEGER));
    const last = BigInt(Math.min(virtEnd, Number.MAX_SAFE_INTEGER));
    let first = U64_MAX;
    let end = 0n;
    for (const area of this.ioas(domain).areas) {
      if (area.start > last || area.last < start) continue;
      if (area.start < start || area.last > last) return VIRTIO_IOMMU_S_RANGE;
      if (area.start < first) first = area.start;
      if (area.last > end) end = area.last;
    }
    if (first === U64_MAX) return VIRTIO_IOMMU_S_OK;
    this.fd.ioasUnmap({ ioasId: domain.ioasId, iova: first, length: end - first + 1n });
    return VIRTIO_IOMMU_S_OK;
  }

  private probe(endpoint: number): number {
    if (endpoint >= this.devIds.length) return VIRTIO_IOMMU_S_NOENT;
    const out = this.outWords;
    out.fill(0);
    const domainId = this.endpointDomain[endpoint];
    const domain = domainId === NO_DOMAIN ? undefined : this.domains.get(domainId);
    const ranges: readonly AddressRange[] =
      domain === undefined ? this.devices[endpoint].reservedRegions : this.ioas(domain).reserved;
    let at = 0;
    for (const r of ranges) {
      // A NONE header (4 zero bytes) ends the list unless the properties fill probe_size exactly.
      if (at + VIRTIO_IOMMU_RESV_MEM_BYTES > this.probeSize) return VIRTIO_IOMMU_S_DEVERR;
      encodeVirtioIommuResvMem(
        out,
        at >>> 2,
        VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
        safeAddress(r.start),
        safeAddress(r.last),
      );
      at += VIRTIO_IOMMU_RESV_MEM_BYTES;
    }
    return VIRTIO_IOMMU_S_OK;
  }

  private ioas(domain: GuestDomain): Ioas {
    return this.fd.lookup<Ioas>(domain.ioasId, 'IOAS');
  }
}
