/**
 * What an IOMMU driver offers the registry (Linux iommu_ops / iommu_domain_ops, reduced to what
 * iommufd uses). The registry owns the object model and the uAPI checks; a driver owns its
 * hardware: domains, attachment, nested configuration, vIOMMU data and cache invalidation. A
 * driver refuses with an ErrnoError whose errno reaches userspace unchanged.
 */
import type { Errno } from './errno.ts';
import type { IopfHandler } from './iopf.ts';

export interface AddressRange {
  start: bigint;
  last: bigint;
}

/** HWPT_ALLOC flags as a driver sees them. */
export interface PagingFlags {
  nestParent: boolean;
  dirtyTracking: boolean;
  pasid: boolean;
}

/** A physical device behind one IOMMU instance, as its driver describes it. */
export interface IommuDevice {
  readonly ops: IommuOps;
  /** The physical IOMMU instance the device sits behind ("same physical IOMMU" checks). */
  readonly instance: object;
  readonly group: object;
  readonly streamId: number;
  /** log2 of the PASID space; 0 = no PASID capability. */
  readonly pasidLog2: number;
  readonly dirtyTracking: boolean;
  /** Firmware reserved regions, imported into an IOAS on RID attach. */
  readonly reservedRegions: readonly AddressRange[];
}

export interface PagingDomain {
  readonly kind: 'paging';
  readonly ops: IommuOps;
  readonly pageSize: bigint;
  readonly aperture: AddressRange;
  readonly flags: PagingFlags;
  /** Map [iova, iova + length) onto user page frames starting `offset` bytes into `frames[0]`. */
  map(iova: bigint, length: bigint, frames: readonly number[], offset: bigint, writable: boolean): void;
  unmap(iova: bigint, length: bigint): void;
  /** Bytes currently mapped (for the "every area mirrored in every domain" invariant). */
  readonly mappedBytes: bigint;
}

export interface NestedDomain {
  readonly kind: 'nested';
  readonly ops: IommuOps;
  readonly parent: PagingDomain;
  /** Driver data the guest gave (e.g. the vSTE), kept for the hardware model. */
  readonly data: Uint8Array;
}

export type Domain = PagingDomain | NestedDomain;

/** Where a driver reports events for a vIOMMU: the registry queues them on its vEVENTQ. */
export interface ViommuEventSink {
  /** Queue one event of `type`; false when the vIOMMU has no vEVENTQ of that type (EOPNOTSUPP). */
  report(type: number, data: Uint8Array): boolean;
}

/** A driver's vIOMMU instance state. */
export interface ViommuState {
  readonly type: number;
  /** Bytes the driver writes back into the caller's data buffer (mock: echo). */
  readonly outData?: Uint8Array;
}

export interface HwInfo {
  type: number;
  data: Uint8Array;
  capabilities: bigint;
}

/** Result of one cache-invalidation entry: undefined on success, else the errno. */
export type InvalidateResult = Errno | undefined;

export interface IommuOps {
  readonly name: string;
  hwInfo(device: IommuDevice): HwInfo;
  /** Paging domain; `dataType` 0 with empty `data` is the default format. */
  allocPaging(device: IommuDevice, flags: PagingFlags, dataType: number, data: Uint8Array): PagingDomain;
  /** Nested domain over `parent`, optionally through a vIOMMU. */
  allocNested(
    device: IommuDevice,
    parent: PagingDomain,
    dataType: number,
    data: Uint8Array,
    viommu: ViommuState | undefined,
  ): NestedDomain;
  /**
   * Attach (or replace) `device`'s RID (`pasid` undefined) or a PASID to `domain`. For a nested
   * domain of a vIOMMU, `virtId` is the device's virtual ID there (its vDEVICE), which the driver
   * puts into the events it reports to that vIOMMU.
   */
  attach(device: IommuDevice, pasid: number | undefined, domain: Domain, virtId?: bigint): void;
  /** Block the RID or PASID (detach). Never fails. */
  detach(device: IommuDevice, pasid: number | undefined): void;
  readonly viommuType: number;
  /** `events` is how the driver reports vIOMMU events (iommufd_viommu_report_event). */
  allocViommu(
    device: IommuDevice,
    parent: PagingDomain,
    type: number,
    data: Uint8Array,
    events: ViommuEventSink,
  ): ViommuState;
  readonly veventqType: number;
  /** HW queue type the driver's vIOMMU takes (0: none). */
  readonly hwQueueType: number;
  /**
   * Accept HW queue `index` on a vIOMMU given which indices exist; undefined or the errno
   * (the driver's hw_queue_init_phys rules).
   */
  checkHwQueue(viommu: ViommuState, index: number, exists: (index: number) => boolean): Errno | undefined;
  /** The invalidation data type a nested domain or a vIOMMU takes, and its entry length bounds. */
  invalidationFormat(target: NestedDomain | ViommuState): InvalidationFormat | undefined;
  /** One cache-invalidation entry (already checked against the format's type and bounds). */
  invalidate(
    target: NestedDomain | ViommuState,
    entry: Uint8Array,
    vdevices: ReadonlyMap<bigint, IommuDevice>,
  ): InvalidateResult;
  /** Route the page requests of (device, RID or PASID) to `handler`; undefined stops routing. */
  setIopfHandler(device: IommuDevice, pasid: number | undefined, handler: IopfHandler | undefined): void;
  /**
   * iopf_queue_flush_dev: make every page request of (device, RID or PASID; the RID means all its
   * PASIDs) that is on its way reach the IOPF layer now (the physical queue, an entry the IRQ
   * thread holds) and drop its partial groups. Never fails.
   */
  flushFaults(device: IommuDevice, pasid: number | undefined): void;
  /** The device left iommufd: disable its PRI once nothing else routes its faults. Never fails. */
  disablePri(device: IommuDevice): void;
}

export interface InvalidationFormat {
  type: number;
  minLength: number;
  maxLength: number;
}
