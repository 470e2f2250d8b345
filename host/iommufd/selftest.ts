/**
 * The selftest mock driver (drivers/iommu/iommufd/selftest.c, docs/registry.md): a fake
 * IOMMU whose constants the kernel's selftests observe, so those tests port case by case. Its
 * domains remember their mappings; nested domains carry a 4-slot IOTLB and devices a 4-slot cache
 * that invalidation clears.
 */
import { type Errno, ErrnoError } from '../iommu/errno.ts';
import type { IopfRoutes } from '../iommu/fault-router.ts';
import type {
  Domain,
  HwInfo,
  InvalidateResult,
  InvalidationFormat,
  IommuDevice,
  IommuOps,
  NestedDomain,
  PagingDomain,
  PagingFlags,
  ViommuState,
} from '../iommu/iommu-ops.ts';
import { type IopfHandler, IopfQueue } from '../iommu/iopf.ts';
import { newPageRequest, type PriEndpoint } from '../iommu/page-request.ts';
import { IommufdObject } from './object.ts';

export const MOCK_APERTURE_START = 1n << 24n;
export const MOCK_APERTURE_LAST = (1n << 31n) - 1n;
export const MOCK_PAGE_SIZE = 2048n;
export const MOCK_FLAGS_DEVICE_NO_DIRTY = 1;
export const MOCK_FLAGS_DEVICE_HUGE_IOVA = 2;
export const MOCK_FLAGS_DEVICE_PASID = 4;
export const MOCK_PASID_WIDTH = 20;
export const MOCK_NESTED_DOMAIN_IOTLB_NUM = 4;
export const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = MOCK_NESTED_DOMAIN_IOTLB_NUM - 1;
export const IOMMU_TEST_IOTLB_DEFAULT = 0xbadbeef;
export const MOCK_DEV_CACHE_NUM = 4;
export const MOCK_DEV_CACHE_ID_MAX = MOCK_DEV_CACHE_NUM - 1;
export const IOMMU_TEST_DEV_CACHE_DEFAULT = 0xbaddad;
export const IOMMU_HWPT_DATA_SELFTEST = 0xdead;
export const IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
export const IOMMU_HW_INFO_SELFTEST_REGVAL = 0xdeadbeef;
export const IOMMU_VIOMMU_TYPE_SELFTEST = 0xdeadbeef;
export const IOMMU_VEVENTQ_TYPE_SELFTEST = 0xbeefbeef;
export const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
export const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xdadbeef;
export const IOMMU_TEST_INVALIDATE_FLAG_ALL = 1;
export const IOMMU_HW_QUEUE_TYPE_SELFTEST = 0xdeadbeef;
export const IOMMU_TEST_HW_QUEUE_MAX = 2;
const MOCK_FLAGS_DEVICE_VALID =
  MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA | MOCK_FLAGS_DEVICE_PASID;
/**
 * The PASID on which, per device, the set following a good set fails ENOMEM (tests rollback); a
 * detach (the blocking domain) clears the rig.
 */
export const MOCK_RIGGED_PASID = 1024;
/** IOMMU_HW_CAP_DIRTY_TRACKING. */
export const IOMMU_HW_CAP_DIRTY_TRACKING = 1n;

const le32 = (data: Uint8Array, offset: number) =>
  new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(offset, true);

export class MockPagingDomain implements PagingDomain {
  readonly kind = 'paging';
  readonly pageSize = MOCK_PAGE_SIZE;
  readonly aperture = { start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST };
  /** IOVA page (mock page size) -> user frame, for tests that check what is mapped. */
  readonly pages = new Map<bigint, number>();
  mappedBytes = 0n;

  constructor(
    readonly ops: MockIommu,
    readonly flags: PagingFlags,
  ) {}

  map(iova: bigint, length: bigint, frames: readonly number[], offset: bigint, _writable: boolean): void {
    for (let at = 0n; at < length; at += MOCK_PAGE_SIZE) {
      this.pages.set((iova + at) / MOCK_PAGE_SIZE, frames[Number((offset + at) / 4096n)] ?? 0);
    }
    this.mappedBytes += length;
  }

  unmap(iova: bigint, length: bigint): void {
    for (let at = 0n; at < length; at += MOCK_PAGE_SIZE) this.pages.delete((iova + at) / MOCK_PAGE_SIZE);
    this.mappedBytes -= length;
  }
}

export class MockNestedDomain implements NestedDomain {
  readonly kind = 'nested';
  readonly iotlb: number[];

  constructor(
    readonly ops: MockIommu,
    readonly parent: PagingDomain,
    readonly data: Uint8Array,
  ) {
    this.iotlb = new Array(MOCK_NESTED_DOMAIN_IOTLB_NUM).fill(le32(data, 0));
  }
}

export class MockViommu implements ViommuState {
  readonly type = IOMMU_VIOMMU_TYPE_SELFTEST;
  constructor(readonly outData: Uint8Array | undefined) {}
}

export class MockDevice implements IommuDevice, PriEndpoint {
  readonly group = {};
  readonly pasidLog2: number;
  readonly dirtyTracking: boolean;
  readonly reservedRegions = [];
  readonly cache = new Array<number>(MOCK_DEV_CACHE_NUM).fill(IOMMU_TEST_DEV_CACHE_DEFAULT);
  /** PRG responses the mock device received, for tests. */
  readonly responses: { pasid: number; grpid: number; code: number }[] = [];
  /** Domain kind attached per PASID (RID under -1), for the PASID-table fallback. */
  readonly attachedKinds = new Map<number, Domain['kind']>();
  /** mdev->pasid_1024_fake_error: set by a good set on PASID 1024, consumed by the next one. */
  pasid1024FakeError = false;

  constructor(
    readonly ops: MockIommu,
    readonly streamId: number,
    readonly flags: number,
  ) {
    this.pasidLog2 = (flags & MOCK_FLAGS_DEVICE_PASID) !== 0 ? MOCK_PASID_WIDTH : 0;
    this.dirtyTracking = (flags & MOCK_FLAGS_DEVICE_NO_DIRTY) === 0;
  }

  get instance(): object {
    return this.ops;
  }

  prgResponse(pasid: number, _ssv: boolean, grpid: number, code: number): void {
    this.responses.push({ pasid, grpid, code });
  }
}

/** The mock IOMMU: one instance serves every mock device of a registry. */
export class MockIommu implements IommuOps, IopfRoutes {
  readonly name = 'mock';
  readonly viommuType = IOMMU_VIOMMU_TYPE_SELFTEST;
  readonly veventqType = IOMMU_VEVENTQ_TYPE_SELFTEST;
  readonly hwQueueType = IOMMU_HW_QUEUE_TYPE_SELFTEST;
  readonly iopf: IopfQueue;
  private readonly devices = new Map<number, MockDevice>();
  private readonly handlers = new Map<string, IopfHandler>();
  private nextStreamId = 1;

  constructor() {
    this.iopf = new IopfQueue(this);
  }

  createDevice(flags: number): MockDevice {
    if ((flags & ~MOCK_FLAGS_DEVICE_VALID) !== 0)
      throw new ErrnoError('EINVAL', `unknown mock device flags 0x${flags.toString(16)}`);
    const device = new MockDevice(this, this.nextStreamId++, flags);
    this.devices.set(device.streamId, device);
    return device;
  }

  removeDevice(device: MockDevice): void {
    this.devices.delete(device.streamId);
  }

  hwInfo(device: IommuDevice): HwInfo {
    const data = new Uint8Array(8);
    new DataView(data.buffer).setUint32(4, IOMMU_HW_INFO_SELFTEST_REGVAL, true);
    return {
      type: IOMMU_HW_INFO_TYPE_SELFTEST,
      data,
      capabilities: device.dirtyTracking ? IOMMU_HW_CAP_DIRTY_TRACKING : 0n,
    };
  }

  allocPaging(_device: IommuDevice, flags: PagingFlags, dataType: number, data: Uint8Array): PagingDomain {
    if (dataType !== 0 || data.length !== 0)
      throw new ErrnoError('EOPNOTSUPP', 'the mock takes no paging-domain data');
    return new MockPagingDomain(this, flags);
  }

  allocNested(_device: IommuDevice, parent: PagingDomain, dataType: number, data: Uint8Array): NestedDomain {
    if (dataType !== IOMMU_HWPT_DATA_SELFTEST)
      throw new ErrnoError('EOPNOTSUPP', `unknown nested data type 0x${dataType.toString(16)}`);
    if (data.length !== 4)
      throw new ErrnoError('EINVAL', `struct iommu_hwpt_selftest is 4 bytes, got ${data.length}`);
    return new MockNestedDomain(this, parent, data);
  }

  attach(device: IommuDevice, pasid: number | undefined, domain: Domain): void {
    const mock = device as MockDevice;
    const dirty = domain.kind === 'paging' ? domain.flags.dirtyTracking : domain.parent.flags.dirtyTracking;
    if (dirty && !device.dirtyTracking) throw new ErrnoError('EINVAL', 'the device cannot do dirty tracking');
    if (pasid === MOCK_RIGGED_PASID) {
      mock.pasid1024FakeError = !mock.pasid1024FakeError;
      if (!mock.pasid1024FakeError)
        throw new ErrnoError('ENOMEM', 'rigged PASID 1024 refuses the set after a good one');
    }
    mock.attachedKinds.set(pasid ?? -1, domain.kind);
  }

  detach(device: IommuDevice, pasid: number | undefined): void {
    const mock = device as MockDevice;
    mock.attachedKinds.delete(pasid ?? -1);
    if (pasid === MOCK_RIGGED_PASID) mock.pasid1024FakeError = false;
  }

  allocViommu(_device: IommuDevice, _parent: PagingDomain, type: number, data: Uint8Array): ViommuState {
    if (type !== IOMMU_VIOMMU_TYPE_SELFTEST)
      throw new ErrnoError('EOPNOTSUPP', `unsupported vIOMMU type 0x${type.toString(16)}`);
    if (data.length === 0) return new MockViommu(undefined);
    // iommu_copy_struct_from_user(..., out_data): at least up to out_data, at most the struct.
    if (data.length < 8 || data.length > 24)
      throw new ErrnoError('EINVAL', `struct iommu_viommu_selftest is 8..24 bytes, got ${data.length}`);
    // Echo in_data into out_data, as the mock does.
    const out = new Uint8Array(data);
    new DataView(out.buffer).setUint32(4, le32(data, 0), true);
    return new MockViommu(out);
  }

  /** mock_hw_queue_init_phys: two queues, each index once, and k needs k-1 first. */
  checkHwQueue(_viommu: ViommuState, index: number, exists: (index: number) => boolean): Errno | undefined {
    if (index >= IOMMU_TEST_HW_QUEUE_MAX) return 'EINVAL';
    if (exists(index)) return 'EEXIST';
    if (index > 0 && !exists(index - 1)) return 'EIO';
    return undefined;
  }

  invalidationFormat(target: NestedDomain | ViommuState): InvalidationFormat | undefined {
    return target instanceof MockViommu
      ? { type: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, minLength: 12, maxLength: 12 }
      : { type: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, minLength: 8, maxLength: 8 };
  }

  invalidate(
    target: NestedDomain | ViommuState,
    entry: Uint8Array,
    vdevices: ReadonlyMap<bigint, IommuDevice>,
  ): InvalidateResult {
    const flags = le32(entry, 0);
    if ((flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL) !== 0) return 'EOPNOTSUPP';
    const all = (flags & IOMMU_TEST_INVALIDATE_FLAG_ALL) !== 0;
    // The mock range-checks the index before looking at FLAG_ALL, which then ignores it.
    if (target instanceof MockNestedDomain) {
      const id = le32(entry, 4);
      if (id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX) return 'EINVAL';
      if (all) target.iotlb.fill(0);
      else target.iotlb[id] = 0;
      return undefined;
    }
    const cacheId = le32(entry, 8);
    if (cacheId > MOCK_DEV_CACHE_ID_MAX) return 'EINVAL';
    const device = vdevices.get(BigInt(le32(entry, 4))) as MockDevice | undefined;
    if (!device) return 'EINVAL';
    if (all) device.cache.fill(0);
    else device.cache[cacheId] = 0;
    return undefined;
  }

  setIopfHandler(device: IommuDevice, pasid: number | undefined, handler: IopfHandler | undefined): void {
    const key = `${device.streamId}/${pasid ?? -1}`;
    if (handler) this.handlers.set(key, handler);
    else this.handlers.delete(key);
  }

  /** The mock's TRIGGER_IOPF reports at once: nothing waits on the way, nothing to flush. */
  flushFaults(device: IommuDevice, pasid: number | undefined): void {
    this.iopf.flushPartial(device.streamId, pasid);
  }

  /** The mock has no PRI capability to disable. */
  disablePri(_device: IommuDevice): void {}

  /** IOMMU_TEST_OP_TRIGGER_IOPF: one request with LAST_PAGE (and PASID_VALID when pasid != 0). */
  triggerIopf(device: MockDevice, pasid: number, grpid: number, perm: number, addr: number): void {
    const r = newPageRequest();
    r.streamId = device.streamId;
    r.pasid = pasid;
    r.ssv = pasid !== 0;
    r.prgIndex = grpid;
    r.address = addr;
    r.read = (perm & 1) !== 0;
    r.write = (perm & 2) !== 0;
    r.exec = (perm & 4) !== 0;
    r.privileged = (perm & 8) !== 0;
    r.last = true;
    this.iopf.report(r);
  }

  /**
   * PASID -> its handler. A PASID with no attachment at all goes to the RID's nested domain (the
   * mock keeps PASID tables in the guest); an attached PASID whose domain takes no faults does not
   * (find_fault_handler() falls back only when the PASID has no attach handle).
   */
  handlerOf(streamId: number, pasid: number): IopfHandler | undefined {
    const direct = this.handlers.get(`${streamId}/${pasid === 0 ? -1 : pasid}`);
    if (direct || pasid === 0) return direct;
    const device = this.devices.get(streamId);
    if (!device || device.attachedKinds.has(pasid)) return undefined;
    if (device.attachedKinds.get(-1) === 'nested') return this.handlers.get(`${streamId}/-1`);
    return undefined;
  }
  /** The mock device answers its own groups (IOMMU_TEST_OP_TRIGGER_IOPF's responses). */
  endpointOf(streamId: number): MockDevice | undefined {
    return this.devices.get(streamId);
  }
}

/** The selftest object a MOCK_DOMAIN op creates: destroying it detaches and unbinds its device. */
export class SelftestObject extends IommufdObject {
  readonly type = 'SELFTEST';

  constructor(
    readonly device: MockDevice,
    private readonly teardown: () => void,
  ) {
    super();
  }

  override destroy(): void {
    this.teardown();
  }
}
