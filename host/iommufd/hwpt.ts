/**
 * HW_PAGETABLE objects (iommufd hw_pagetable.c): a paging HWPT is a driver domain that mirrors an
 * IOAS (every area mapped into it) and holds that IOAS; a nested HWPT is a driver domain over a
 * nest-parent paging HWPT, or allocated through a vIOMMU, and holds that. Either may route its
 * I/O page faults to a FAULT object, which it then holds.
 */
import type { IommuDevice, NestedDomain, PagingDomain } from '../iommu/iommu-ops.ts';
import type { IommufdCtx } from './context.ts';
import type { DeviceObject } from './device.ts';
import { type Errno, IommufdError } from './errors.ts';
import type { FaultObject } from './fault.ts';
import type { FaultInjector } from './fault-injector.ts';
import { type Area, Ioas, type IoasDomain } from './ioas.ts';
import { driverCall } from './ioctl.ts';
import { IommufdObject } from './object.ts';
import { ViommuObject } from './viommu.ts';

export const IOMMU_HWPT_ALLOC_NEST_PARENT = 1;
export const IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 2;
export const IOMMU_HWPT_FAULT_ID_VALID = 4;
export const IOMMU_HWPT_ALLOC_PASID = 8;
export const IOMMU_HWPT_DATA_NONE = 0;

/** The flags a paging HWPT takes; a nested one takes only FAULT_ID_VALID and PASID. */
const PAGING_FLAGS =
  IOMMU_HWPT_ALLOC_NEST_PARENT |
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING |
  IOMMU_HWPT_FAULT_ID_VALID |
  IOMMU_HWPT_ALLOC_PASID;
const NESTED_FLAGS = IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID;
const NO_DATA = new Uint8Array(0);
const NO_VDEVICES: ReadonlyMap<bigint, IommuDevice> = new Map();

export class HwptPaging extends IommufdObject implements IoasDomain {
  readonly type = 'HWPT_PAGING';
  /** Attachments (RID or PASID) that hold this HWPT. */
  attachments = 0;

  constructor(
    readonly ioas: Ioas,
    readonly domain: PagingDomain,
    readonly autoDomain: boolean,
    private readonly injector: FaultInjector,
  ) {
    super();
  }

  /** The FAULT object this HWPT routes page faults to (set once, after the domain is populated). */
  get fault(): FaultObject | undefined {
    return this.faultQueue;
  }

  private faultQueue: FaultObject | undefined;

  get pageSize(): bigint {
    return this.domain.pageSize;
  }

  get aperture() {
    return this.domain.aperture;
  }

  get nestParent(): boolean {
    return this.domain.flags.nestParent;
  }

  get pasidCompat(): boolean {
    return this.domain.flags.pasid;
  }

  /** Join the IOAS (the domain is populated with every area) and hold it. */
  link(): void {
    this.ioas.addDomain(this);
    this.ioas.hold();
  }

  /** Route faults to `fault` and hold it; the kernel looks fault_id up after populating the domain. */
  routeFaults(fault: FaultObject | undefined): void {
    fault?.hold();
    this.faultQueue = fault;
  }

  mapArea(area: Area): void {
    this.injector.check('domain-fill');
    const frames = area.pages.frames;
    if (!frames) throw new Error('domain fill of an area whose pages are not pinned');
    this.domain.map(area.start, area.last - area.start + 1n, frames, area.offset, area.writable);
  }

  unmapArea(area: Area): void {
    this.domain.unmap(area.start, area.last - area.start + 1n);
  }

  override destroy(): void {
    this.ioas.removeDomain(this);
    this.ioas.put();
    this.fault?.put();
  }

  override abort(): void {
    // Built but never linked: nothing to undo.
  }
}

export class HwptNested extends IommufdObject {
  readonly type = 'HWPT_NESTED';
  attachments = 0;

  constructor(
    readonly parent: HwptPaging,
    readonly viommu: ViommuObject | undefined,
    readonly domain: NestedDomain,
    readonly fault: FaultObject | undefined,
    readonly pasidCompat: boolean,
  ) {
    super();
    (viommu ?? parent).hold();
    fault?.hold();
  }

  override destroy(): void {
    (this.viommu ?? this.parent).put();
    this.fault?.put();
  }
}

export type Hwpt = HwptPaging | HwptNested;

/** The IOAS whose areas a HWPT translates through (a nested HWPT's parent's). */
export function ioasOf(hwpt: Hwpt): Ioas {
  return hwpt.type === 'HWPT_PAGING' ? hwpt.ioas : hwpt.parent.ioas;
}

// --- the HWPT ioctls (hw_pagetable.c); iommufd.ts's table has already checked their arguments -----

/**
 * A paging HWPT of `device`'s driver over `ioas`, populated with every area, routing its faults to
 * FAULT `faultId` (undefined: nowhere). hw_pagetable.c populates the domain first; a bad fault_id
 * then undoes it.
 */
export function allocPaging(
  ctx: IommufdCtx,
  device: DeviceObject,
  ioas: Ioas,
  flags: number,
  dataType: number,
  data: Uint8Array,
  faultId: number | undefined,
  autoDomain: boolean,
): HwptPaging {
  return ctx.table.create(() => {
    const domain = driverCall(() =>
      device.hw.ops.allocPaging(
        device.hw,
        {
          nestParent: (flags & IOMMU_HWPT_ALLOC_NEST_PARENT) !== 0,
          dirtyTracking: (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) !== 0,
          pasid: (flags & IOMMU_HWPT_ALLOC_PASID) !== 0,
        },
        dataType,
        data,
      ),
    );
    const hwpt = new HwptPaging(ioas, domain, autoDomain, ctx.injector);
    hwpt.link();
    try {
      hwpt.routeFaults(faultId === undefined ? undefined : ctx.table.get<FaultObject>(faultId, 'FAULT'));
    } catch (error) {
      hwpt.destroy();
      throw error;
    }
    return hwpt;
  });
}

export interface HwptAllocCmd {
  flags: number;
  devId: number;
  ptId: number;
  dataType: number;
  data: Uint8Array | undefined;
  faultId: number;
}

/**
 * IOMMU_HWPT_ALLOC: a paging HWPT over an IOAS, or a nested HWPT over a NEST_PARENT paging HWPT or
 * through a vIOMMU. Which flags are known depends on that target, so they are checked here.
 */
export function hwptAllocIoctl(ctx: IommufdCtx, cmd: HwptAllocCmd): { hwptId: number } {
  const { flags, dataType } = cmd;
  const data = cmd.data ?? NO_DATA;
  if ((dataType === IOMMU_HWPT_DATA_NONE) !== (data.length === 0)) {
    throw new IommufdError('EINVAL', 'data_type NONE goes with no data, any other type needs data');
  }
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  const pt = ctx.table.find(cmd.ptId);
  if (!pt) throw new IommufdError('EINVAL', `pt_id ${cmd.ptId} names no object`);
  const faultId = (flags & IOMMU_HWPT_FAULT_ID_VALID) !== 0 ? cmd.faultId : undefined;
  if (pt instanceof Ioas) {
    if ((flags & ~PAGING_FLAGS) !== 0) throw new IommufdError('EOPNOTSUPP', 'unknown HWPT_ALLOC flags');
    if ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) !== 0 && !device.hw.dirtyTracking) {
      throw new IommufdError('EOPNOTSUPP', 'the device cannot do dirty tracking');
    }
    if (faultId !== undefined && (flags & IOMMU_HWPT_ALLOC_NEST_PARENT) !== 0) {
      throw new IommufdError('EOPNOTSUPP', 'a nest parent cannot take faults');
    }
    return { hwptId: allocPaging(ctx, device, pt, flags, dataType, data, faultId, false).id };
  }
  if (pt instanceof HwptPaging || pt instanceof ViommuObject) {
    // hw_pagetable.c order: through a vIOMMU the IOMMU instance is checked first; then flags and
    // missing driver data (both EOPNOTSUPP), then the parent.
    if (pt instanceof ViommuObject && pt.instance !== device.hw.instance) {
      throw new IommufdError('EINVAL', 'the device is behind another physical IOMMU than the vIOMMU');
    }
    if ((flags & ~NESTED_FLAGS) !== 0) {
      throw new IommufdError('EOPNOTSUPP', 'a nested HWPT takes only FAULT_ID_VALID and PASID flags');
    }
    if (data.length === 0) throw new IommufdError('EOPNOTSUPP', 'a nested HWPT needs driver data');
    const parent = pt instanceof ViommuObject ? pt.parent : pt;
    if (pt instanceof HwptPaging && (pt.autoDomain || !pt.nestParent || pt.domain.ops !== device.hw.ops)) {
      throw new IommufdError(
        'EINVAL',
        "the parent must be a NEST_PARENT HWPT of the device's driver, not an automatic domain",
      );
    }
    const viommu = pt instanceof ViommuObject ? pt : undefined;
    const hwpt = ctx.table.create(() => {
      const domain = driverCall(() =>
        device.hw.ops.allocNested(device.hw, parent.domain, dataType, data, viommu?.state),
      );
      const fault = faultId === undefined ? undefined : ctx.table.get<FaultObject>(faultId, 'FAULT');
      return new HwptNested(parent, viommu, domain, fault, (flags & IOMMU_HWPT_ALLOC_PASID) !== 0);
    });
    return { hwptId: hwpt.id };
  }
  throw new IommufdError('EINVAL', `pt_id ${pt.id} is a ${pt.type}, not an IOAS, a paging HWPT or a vIOMMU`);
}

export interface HwptInvalidateCmd {
  hwptId: number;
  dataType: number;
  entryLen: number;
  entryNum: number;
  data: Uint8Array | undefined;
}

/** An HWPT_INVALIDATE failure: the kernel writes back how many entries were done before it. */
function invalidateError(errno: Errno, message: string, done: number): IommufdError {
  return new IommufdError(errno, message, { entryNum: done });
}

/**
 * IOMMU_HWPT_INVALIDATE: the driver's cache invalidation, entry by entry, on a nested HWPT or a
 * vIOMMU; stops at the first entry refused. An empty array still asks "is this data_type yours?".
 */
export function hwptInvalidateIoctl(ctx: IommufdCtx, cmd: HwptInvalidateCmd): { entryNum: number } {
  const { hwptId, dataType, entryLen, entryNum, data } = cmd;
  if (entryNum !== 0 && (!data || entryLen === 0))
    throw invalidateError('EINVAL', 'entries need data and a non-zero entry_len', 0);
  const target = ctx.table.find(hwptId);
  if (!target) throw invalidateError('ENOENT', `no object with id ${hwptId}`, 0);
  if (!(target instanceof HwptNested) && !(target instanceof ViommuObject)) {
    throw invalidateError(
      'EINVAL',
      `${target.type} ${hwptId} cannot be invalidated (not nested, not a vIOMMU)`,
      0,
    );
  }
  const ops = target instanceof HwptNested ? target.domain.ops : target.parent.domain.ops;
  const state = target instanceof HwptNested ? target.domain : target.state;
  const format = ops.invalidationFormat(state);
  if (!format) throw invalidateError('EOPNOTSUPP', 'the driver has no cache invalidation for this object', 0);
  // The mock checks the type first, so even an empty array learns whether it is the driver's.
  if (dataType !== format.type)
    throw invalidateError('EINVAL', `data_type 0x${dataType.toString(16)} is not the driver's`, 0);
  if (entryNum === 0 || !data) return { entryNum: 0 };
  if (data.length < entryLen * entryNum)
    throw invalidateError('EFAULT', 'data is shorter than entry_len * entry_num', 0);
  const vdevices = target instanceof ViommuObject ? target.devicesByVirtId() : NO_VDEVICES;
  for (let i = 0; i < entryNum; i++) {
    if (entryLen < format.minLength || entryLen > format.maxLength) {
      throw invalidateError(
        'EINVAL',
        `entry_len ${entryLen} is outside ${format.minLength}..${format.maxLength}`,
        i,
      );
    }
    const errno = ops.invalidate(state, data.subarray(i * entryLen, (i + 1) * entryLen), vdevices);
    if (errno) throw invalidateError(errno, `entry ${i} refused by the driver`, i);
  }
  return { entryNum };
}
