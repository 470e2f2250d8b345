/**
 * The host's Intel VT-d driver in scalable mode: the iommu_ops the registry calls for devices whose
 * VMM presents a VT-d vIOMMU (what intel-iommu and its nested.c do in Linux). The difference from
 * SMMUv3 that matters here: the PASID table is the host's, not the guest's. Each PASID of a device
 * (PASID 0 being the RID's own, RID_PASID) is attached on its own to a domain, and a nested domain
 * is one guest first-stage table (`pgtbl_addr`, a GPA) over its parent's second stage. So two
 * PASIDs of one device can translate in two different VMs, which the SMMUv3 CD table (owned by one
 * guest) cannot express.
 *
 * There is no vIOMMU object for VT-d in iommufd: nested HWPTs are allocated over the nest-parent
 * HWPT directly, and stage-1 cache invalidation goes to the nested HWPT
 * (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1). Terminated stage-1 faults stay with the host (no vEVENTQ).
 * The first-stage tables use the sandbox's one stage-1 format (shared/stage1-format.ts), not the
 * x86 page-table format: the walk and its faults are the same shape.
 */
import { RID_PASID } from '../../shared/records/page-request.ts';
import { ErrnoError } from './errno.ts';
import { HostIommuDriver, PhysicalDevice } from './host-driver.ts';
import type { Iommu } from './iommu.ts';
import type {
  Domain,
  HwInfo,
  InvalidateResult,
  InvalidationFormat,
  IommuDevice,
  IommuOps,
  NestedDomain,
  PagingDomain,
  ViommuState,
} from './iommu-ops.ts';
import type { PasidEntry } from './stage1-walker.ts';
import { Stage2Domain, type Stage2Owner } from './stage2-domain.ts';

/** uAPI constants for the Intel VT-d flavour (include/uapi/linux/iommufd.h). */
export const IOMMU_HW_INFO_TYPE_INTEL_VTD = 1;
export const IOMMU_HWPT_DATA_VTD_S1 = 1;
export const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0;
/** struct iommu_hwpt_vtd_s1 flags: supervisor requests, extended A/D, write protect enable. */
export const IOMMU_VTD_S1_SRE = 1;
export const IOMMU_VTD_S1_EAFE = 2;
export const IOMMU_VTD_S1_WPE = 4;
const S1_FLAGS = IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_EAFE | IOMMU_VTD_S1_WPE;
export const IOMMU_VTD_INV_FLAGS_LEAF = 1;
/** struct iommu_hwpt_vtd_s1 and struct iommu_hwpt_vtd_s1_invalidate are both 24 bytes. */
export const VTD_S1_BYTES = 24;
export const VTD_S1_INVALIDATE_BYTES = 24;
const ALL_PAGES = 0xffff_ffff_ffff_ffffn;

/** ECAP bits a guest's VMM reads from GET_HW_INFO: nesting, PRS, PASID, scalable mode, both stages. */
const ECAP_NEST = 1n << 26n;
const ECAP_PRS = 1n << 29n;
const ECAP_PASID = 1n << 40n;
const ECAP_SMTS = 1n << 43n;
const ECAP_SLTS = 1n << 46n;
const ECAP_FLTS = 1n << 47n;

export { RID_PASID };

/** Stage-1 invalidations go to the nested HWPT, one struct iommu_hwpt_vtd_s1_invalidate at a time. */
const NESTED_INVALIDATION: InvalidationFormat = {
  type: IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
  minLength: VTD_S1_INVALIDATE_BYTES,
  maxLength: VTD_S1_INVALIDATE_BYTES,
};

/** A handle on a PCIe function behind the VT-d unit. Two handles may name one function (shared). */
export class VtdDevice extends PhysicalDevice {}

/** A guest first-stage table (struct iommu_hwpt_vtd_s1) nested over a second stage. */
export class VtdNestedDomain implements NestedDomain {
  readonly kind = 'nested';
  readonly flags: number;
  readonly pgtblAddr: number;
  readonly addrWidth: number;
  /** (stream, PASID) pairs attached to this domain, as stream * 2^20 + PASID. */
  readonly attached = new Set<number>();

  constructor(
    readonly ops: VtdOps,
    readonly parent: PagingDomain,
    readonly data: Uint8Array,
  ) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.flags = Number(view.getBigUint64(0, true));
    this.pgtblAddr = Number(view.getBigUint64(8, true));
    this.addrWidth = view.getUint32(16, true);
  }
}

/** Build struct iommu_hwpt_vtd_s1 for a first-stage table at `pgtblAddr`. */
export function encodeVtdS1(pgtblAddr: number, addrWidth = 48, flags = 0): Uint8Array {
  const data = new Uint8Array(VTD_S1_BYTES);
  const view = new DataView(data.buffer);
  view.setBigUint64(0, BigInt(flags), true);
  view.setBigUint64(8, BigInt(pgtblAddr), true);
  view.setUint32(16, addrWidth, true);
  return data;
}

/** Build struct iommu_hwpt_vtd_s1_invalidate; `npages` undefined: everything (addr 0, U64_MAX). */
export function encodeVtdS1Invalidate(addr: number, npages?: number, flags = 0): Uint8Array {
  const data = new Uint8Array(VTD_S1_INVALIDATE_BYTES);
  const view = new DataView(data.buffer);
  view.setBigUint64(0, npages === undefined ? 0n : BigInt(addr), true);
  view.setBigUint64(8, npages === undefined ? ALL_PAGES : BigInt(npages), true);
  view.setUint32(16, flags, true);
  return data;
}

/** The host PASID table of one stream, and which device handle attached each PASID. */
interface StreamState {
  table: Map<number, PasidEntry>;
  owners: Map<number, IommuDevice>;
  domains: Map<number, Domain>;
}

const PASID_SPAN = 0x10_0000;

export class VtdOps extends HostIommuDriver implements IommuOps, Stage2Owner {
  readonly name = 'intel-iommu';
  /** VT-d has no vIOMMU object in iommufd, hence no vEVENTQ and no HW queue. */
  readonly viommuType = -1;
  readonly veventqType = -1;
  private readonly streams = new Map<number, StreamState>();

  constructor(iommu: Iommu, tablePages = 1 << 16) {
    super(iommu, tablePages, { flavour: 'VT-d', unit: 'VT-d unit' });
  }

  device(streamId: number, pasidLog2: number): VtdDevice {
    return new VtdDevice(this, streamId, pasidLog2);
  }

  hwInfo(): HwInfo {
    // struct iommu_hw_info_vtd: flags, __reserved, cap_reg, ecap_reg (24 bytes).
    const data = new Uint8Array(24);
    const ecap = ECAP_NEST | ECAP_PRS | ECAP_PASID | ECAP_SMTS | ECAP_SLTS | ECAP_FLTS;
    new DataView(data.buffer).setBigUint64(16, ecap, true);
    return { type: IOMMU_HW_INFO_TYPE_INTEL_VTD, data, capabilities: 0n };
  }

  allocNested(
    _device: IommuDevice,
    parent: PagingDomain,
    dataType: number,
    data: Uint8Array,
    viommu: ViommuState | undefined,
  ): NestedDomain {
    if (viommu) throw new ErrnoError('EOPNOTSUPP', 'VT-d nested domains are allocated over a nest parent');
    if (dataType !== IOMMU_HWPT_DATA_VTD_S1)
      throw new ErrnoError('EOPNOTSUPP', `unknown nested data type ${dataType}`);
    if (!(parent instanceof Stage2Domain) || !parent.flags.nestParent)
      throw new ErrnoError('EINVAL', 'the parent is not a VT-d nest-parent domain');
    if (data.length !== VTD_S1_BYTES)
      throw new ErrnoError('EINVAL', `struct iommu_hwpt_vtd_s1 is ${VTD_S1_BYTES} bytes, got ${data.length}`);
    // The u64 fields are checked as bigints: a JS number would drop flag bits above 31 and the low
    // bits of an address above 2^53.
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const flags = view.getBigUint64(0, true);
    const pgtblAddr = view.getBigUint64(8, true);
    if ((flags & ~BigInt(S1_FLAGS)) !== 0n || view.getUint32(20, true) !== 0)
      throw new ErrnoError('EINVAL', 'struct iommu_hwpt_vtd_s1 sets unknown flags or reserved bits');
    if (pgtblAddr % 4096n !== 0n) throw new ErrnoError('EINVAL', 'pgtbl_addr is not 4 KiB aligned');
    if (pgtblAddr >= 1n << 52n)
      throw new ErrnoError('EINVAL', 'pgtbl_addr is beyond the 52-bit address space');
    const domain = new VtdNestedDomain(this, parent, data);
    // The first-stage format here is four levels: 48 bits (57 would need five).
    if (domain.addrWidth !== 48) throw new ErrnoError('EINVAL', `addr_width ${domain.addrWidth} is not 48`);
    return domain;
  }

  /** Attach (or replace) one PASID of a stream (the RID is PASID 0). */
  attach(device: IommuDevice, pasid: number | undefined, domain: Domain): void {
    const key = pasid ?? RID_PASID;
    const stream = this.stream(device.streamId);
    const holder = stream.owners.get(key);
    if (holder && holder !== device) {
      throw new ErrnoError(
        'EBUSY',
        `PASID ${key} of stream ${device.streamId} is attached by another handle`,
      );
    }
    const s2 = (domain.kind === 'paging' ? domain : domain.parent) as Stage2Domain;
    const entry: PasidEntry = {
      s2: s2.table,
      host: this.iommu.host,
      cdTableGpa: 0,
      cdLog2: 0,
      ttbGpa: domain.kind === 'nested' ? (domain as VtdNestedDomain).pgtblAddr : 0,
      s1Bypass: domain.kind === 'paging',
      recordFaults: true,
    };
    this.forget(stream, device.streamId, key);
    stream.table.set(key, entry);
    stream.owners.set(key, device);
    stream.domains.set(key, domain);
    if (domain instanceof VtdNestedDomain) domain.attached.add(device.streamId * PASID_SPAN + key);
    if (!this.iommu.contextOf(device.streamId)) {
      this.iommu.installStream(device.streamId, {
        host: this.iommu.host,
        cdTableGpa: 0,
        cdLog2: 0,
        pasidTable: stream.table,
      });
    }
    this.iommu.invalidateStream(device.streamId, key);
  }

  /** Block one PASID (or the RID's PASID 0). Never fails; a handle that does not hold it changes nothing. */
  detach(device: IommuDevice, pasid: number | undefined): void {
    const key = pasid ?? RID_PASID;
    const stream = this.streams.get(device.streamId);
    if (!stream || stream.owners.get(key) !== device) return;
    this.forget(stream, device.streamId, key);
    this.iommu.invalidateStream(device.streamId, key);
    if (stream.table.size === 0) {
      this.streams.delete(device.streamId);
      this.iommu.removeStream(device.streamId);
    }
  }

  private stream(streamId: number): StreamState {
    let stream = this.streams.get(streamId);
    if (!stream) {
      stream = { table: new Map(), owners: new Map(), domains: new Map() };
      this.streams.set(streamId, stream);
    }
    return stream;
  }

  private forget(stream: StreamState, streamId: number, key: number): void {
    const old = stream.domains.get(key);
    if (old instanceof VtdNestedDomain) old.attached.delete(streamId * PASID_SPAN + key);
    stream.table.delete(key);
    stream.owners.delete(key);
    stream.domains.delete(key);
  }

  /** A second-stage mapping went: every stream with a PASID over it drops its cached translations. */
  invalidateStage2(domain: PagingDomain): void {
    const table = (domain as Stage2Domain).table;
    for (const [streamId, stream] of this.streams) {
      for (const entry of stream.table.values()) {
        if (entry.s2 === table) {
          this.iommu.invalidateStream(streamId);
          break;
        }
      }
    }
  }

  allocViommu(): ViommuState {
    throw new ErrnoError('EOPNOTSUPP', 'the VT-d driver has no vIOMMU type');
  }

  invalidationFormat(target: NestedDomain | ViommuState): InvalidationFormat | undefined {
    return target instanceof VtdNestedDomain ? NESTED_INVALIDATION : undefined;
  }

  /**
   * One struct iommu_hwpt_vtd_s1_invalidate: `npages` pages from `addr` (or everything: addr 0 and
   * npages U64_MAX) in every (stream, PASID) the nested domain is attached to. Unknown flags or a
   * reserved word are EOPNOTSUPP, an unaligned address or U64_MAX pages from a non-zero address
   * EINVAL (intel_nested_cache_invalidate_user).
   */
  invalidate(target: NestedDomain | ViommuState, entry: Uint8Array): InvalidateResult {
    const domain = target as VtdNestedDomain;
    const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength);
    const addr = view.getBigUint64(0, true);
    const npages = view.getBigUint64(8, true);
    const flags = view.getUint32(16, true);
    if ((flags & ~IOMMU_VTD_INV_FLAGS_LEAF) !== 0 || view.getUint32(20, true) !== 0) return 'EOPNOTSUPP';
    if (addr % 4096n !== 0n || (npages === ALL_PAGES && addr !== 0n)) return 'EINVAL';
    for (const key of domain.attached) {
      const streamId = Math.floor(key / PASID_SPAN);
      const pasid = key % PASID_SPAN;
      if (npages === ALL_PAGES || npages * 4096n > 1n << 48n) this.iommu.invalidateStream(streamId, pasid);
      else this.iommu.invalidateStream(streamId, pasid, Number(addr), Number(npages) * 4096);
    }
    return undefined;
  }
}
