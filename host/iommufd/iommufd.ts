/**
 * One open /dev/iommu (iommufd main.c): the object table, and one method per ioctl, named after it
 * without the IOMMU_ prefix. Each takes the uAPI struct's input fields in camelCase (u64 as bigint,
 * u32 as number; no `size`, no `__reserved`) and returns its output fields with `out` dropped. A
 * failure throws IommufdError with the kernel's errno; nothing a failed call did stays visible.
 */
import { ErrnoError } from '../iommu/errno.ts';
import type { IommuDevice } from '../iommu/iommu-ops.ts';
import { type AttachContext, attachDevice, DeviceObject, detachDevice, replaceDevice } from './device.ts';
import { IommufdError } from './errors.ts';
import { type FaultFd, FaultObject } from './fault.ts';
import { FaultInjector } from './fault-injector.ts';
import { HwQueueObject } from './hw-queue.ts';
import {
  type Hwpt,
  HwptNested,
  HwptPaging,
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_ALLOC_PASID,
  IOMMU_HWPT_FAULT_ID_VALID,
} from './hwpt.ts';
import { IOAS_MAP_FLAGS, IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE, Ioas } from './ioas.ts';
import { type IovaRange, maxOf, U64_MAX } from './iova.ts';
import type { IommufdObject } from './object.ts';
import { ObjectTable } from './object-table.ts';
import { MockIommu, SelftestObject } from './selftest.ts';
import { PAGE_SIZE, UserMemory } from './user-memory.ts';
import { type VeventqFd, VeventqObject } from './veventq.ts';
import { VdeviceObject, ViommuObject } from './viommu.ts';

export const IOMMU_OPTION_RLIMIT_MODE = 0;
export const IOMMU_OPTION_HUGE_PAGES = 1;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;
export const IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1;
export const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
export const IOMMU_HWPT_DATA_NONE = 0;
export const VEVENTQ_MAX_DEPTH = 1 << 19;

const HWPT_ALLOC_FLAGS =
  IOMMU_HWPT_ALLOC_NEST_PARENT |
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING |
  IOMMU_HWPT_FAULT_ID_VALID |
  IOMMU_HWPT_ALLOC_PASID;
const EMPTY = new Uint8Array(0);

/** Argument checks for callers that are not the type checker (scripts, fuzzers). */
function u32(value: number | undefined, field: string): number {
  const v = value ?? 0;
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff)
    throw new IommufdError('EINVAL', `${field} must be a u32 number`);
  return v;
}

function u64(value: bigint | undefined, field: string): bigint {
  const v = value ?? 0n;
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX)
    throw new IommufdError('EINVAL', `${field} must be a u64 bigint`);
  return v;
}

/** Driver refusals keep their errno but become registry errors. */
function driverCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (error instanceof ErrnoError && !(error instanceof IommufdError))
      throw new IommufdError(error.errno, error.message.replace(/^\w+: /, ''));
    throw error;
  }
}

export interface IommufdOptions {
  /** The process the registry pins from (a fresh one by default). */
  memory?: UserMemory;
  /** CAP_SYS_RESOURCE, needed to SET the RLIMIT_MODE option. */
  capSysResource?: boolean;
}

export class Iommufd {
  readonly injector = new FaultInjector();
  readonly memory: UserMemory;
  /** The selftest mock IOMMU behind every testMockDomain device. */
  readonly mock = new MockIommu();
  private readonly table: ObjectTable;
  private readonly attachCtx: AttachContext;
  private readonly capSysResource: boolean;
  private rlimitMode = 0n;
  private closed = false;

  constructor(options: IommufdOptions = {}) {
    this.memory = options.memory ?? new UserMemory();
    this.capSysResource = options.capSysResource ?? true;
    this.table = new ObjectTable(this.injector);
    this.attachCtx = {
      table: this.table,
      injector: this.injector,
      autoDomain: (device, ioas) => this.createPaging(device, ioas, 0, 0, EMPTY, undefined, true),
    };
  }

  // --- process memory -------------------------------------------------------------------------

  mmap(length: bigint): bigint {
    return this.memory.mmap(length);
  }

  munmap(userVa: bigint, length: bigint): void {
    this.memory.munmap(userVa, length);
  }

  // --- IOMMU_DESTROY ----------------------------------------------------------------------------

  destroy({ id }: { id: number }): void {
    this.live();
    this.table.destroy(u32(id, 'id'));
  }

  // --- IOAS -------------------------------------------------------------------------------------

  ioasAlloc({ flags = 0 }: { flags?: number } = {}): { ioasId: number } {
    this.live();
    if (u32(flags, 'flags') !== 0) throw new IommufdError('EOPNOTSUPP', 'IOAS_ALLOC takes no flags');
    const ioas = this.table.create(() => new Ioas(this.memory, this.injector));
    return { ioasId: ioas.id };
  }

  ioasMap(args: { flags: number; ioasId: number; userVa: bigint; length: bigint; iova?: bigint }): {
    iova: bigint;
  } {
    this.live();
    const flags = u32(args.flags, 'flags');
    const userVa = u64(args.userVa, 'userVa');
    const length = u64(args.length, 'length');
    const iova = u64(args.iova, 'iova');
    if ((flags & ~IOAS_MAP_FLAGS) !== 0) throw new IommufdError('EOPNOTSUPP', 'unknown IOAS_MAP flags');
    if (iova >= U64_MAX || length >= U64_MAX)
      throw new IommufdError('EOVERFLOW', 'iova or length is U64_MAX');
    if ((flags & (IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)) === 0) {
      throw new IommufdError('EINVAL', 'a mapping must be READABLE or WRITEABLE');
    }
    const ioas = this.table.get<Ioas>(u32(args.ioasId, 'ioasId'), 'IOAS');
    return { iova: ioas.map(flags, userVa, length, iova) };
  }

  ioasUnmap(args: { ioasId: number; iova: bigint; length: bigint }): { length: bigint } {
    this.live();
    const iova = u64(args.iova, 'iova');
    const length = u64(args.length, 'length');
    // The kernel looks the IOAS up before it judges the range (iommufd_ioas_unmap).
    const ioas = this.table.get<Ioas>(u32(args.ioasId, 'ioasId'), 'IOAS');
    return { length: ioas.unmap(iova, length) };
  }

  ioasCopy(args: {
    flags: number;
    dstIoasId: number;
    srcIoasId: number;
    length: bigint;
    dstIova?: bigint;
    srcIova: bigint;
  }): { dstIova: bigint } {
    this.live();
    const flags = u32(args.flags, 'flags');
    const length = u64(args.length, 'length');
    const srcIova = u64(args.srcIova, 'srcIova');
    const dstIova = u64(args.dstIova, 'dstIova');
    if ((flags & ~IOAS_MAP_FLAGS) !== 0) throw new IommufdError('EOPNOTSUPP', 'unknown IOAS_COPY flags');
    if (length >= U64_MAX || srcIova >= U64_MAX || dstIova >= U64_MAX) {
      throw new IommufdError('EOVERFLOW', 'length, src_iova or dst_iova is U64_MAX');
    }
    if ((flags & (IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)) === 0) {
      throw new IommufdError('EINVAL', 'a copy must be READABLE or WRITEABLE');
    }
    const src = this.table.get<Ioas>(u32(args.srcIoasId, 'srcIoasId'), 'IOAS');
    const slices = src.slicesOf(srcIova, length);
    const dst = this.table.get<Ioas>(u32(args.dstIoasId, 'dstIoasId'), 'IOAS');
    return { dstIova: dst.mapSlices(flags, slices, length, dstIova) };
  }

  ioasIovaRanges(args: { ioasId: number; numIovas: number }): {
    numIovas: number;
    allowedIovas: IovaRange[];
    iovaAlignment: bigint;
  } {
    this.live();
    const capacity = u32(args.numIovas, 'numIovas');
    const ioas = this.table.get<Ioas>(u32(args.ioasId, 'ioasId'), 'IOAS');
    const ranges = ioas.iovaRanges();
    const out = {
      numIovas: ranges.length,
      allowedIovas: ranges.slice(0, capacity),
      iovaAlignment: ioas.iovaAlignment,
    };
    if (ranges.length > capacity) {
      throw new IommufdError('EMSGSIZE', `${ranges.length} ranges do not fit in ${capacity}`, out);
    }
    return out;
  }

  ioasAllowIovas(args: { ioasId: number; allowedIovas: IovaRange[] }): void {
    this.live();
    for (const [i, r] of args.allowedIovas.entries()) {
      u64(r.start, `allowedIovas[${i}].start`);
      u64(r.last, `allowedIovas[${i}].last`);
    }
    const ioas = this.table.get<Ioas>(u32(args.ioasId, 'ioasId'), 'IOAS');
    ioas.allowIovas(args.allowedIovas);
  }

  option(args: { optionId: number; op: number; objectId?: number; val64?: bigint }): { val64: bigint } {
    this.live();
    const optionId = u32(args.optionId, 'optionId');
    const op = args.op;
    const objectId = u32(args.objectId, 'objectId');
    const val64 = u64(args.val64, 'val64');
    const badOp = () => new IommufdError('EOPNOTSUPP', `unknown option op ${op}`);
    // Each option judges its object before the op, as iommufd_option_rlimit_mode and
    // iommufd_ioas_option do.
    if (optionId === IOMMU_OPTION_RLIMIT_MODE) {
      if (objectId !== 0) throw new IommufdError('EOPNOTSUPP', 'RLIMIT_MODE is global: object_id must be 0');
      if (op === IOMMU_OPTION_OP_GET) return { val64: this.rlimitMode };
      if (op !== IOMMU_OPTION_OP_SET) throw badOp();
      if (!this.capSysResource) throw new IommufdError('EPERM', 'setting RLIMIT_MODE needs CAP_SYS_RESOURCE');
      if (this.table.objects().length > 0) {
        throw new IommufdError('EBUSY', 'RLIMIT_MODE can only change on an empty iommufd');
      }
      if (val64 > 1n) throw new IommufdError('EINVAL', 'RLIMIT_MODE is 0 (user) or 1 (mm)');
      this.rlimitMode = val64;
      return { val64 };
    }
    if (optionId === IOMMU_OPTION_HUGE_PAGES) {
      const ioas = this.table.get<Ioas>(objectId, 'IOAS');
      if (op === IOMMU_OPTION_OP_GET) return { val64: ioas.disableLargePages ? 0n : 1n };
      if (op !== IOMMU_OPTION_OP_SET) throw badOp();
      if (val64 === 0n) {
        // Disabling twice is a no-op (iopt_disable_large_pages returns early).
        if (!ioas.disableLargePages) {
          if (ioas.domains.length > 0 && ioas.areas.length > 0) {
            throw new IommufdError('EINVAL', 'cannot disable huge pages while domains map areas');
          }
          ioas.checkAlignment(maxOf(PAGE_SIZE, ioas.iovaAlignment));
          ioas.disableLargePages = true;
        }
      } else if (val64 === 1n) {
        ioas.disableLargePages = false;
      } else {
        throw new IommufdError('EINVAL', 'HUGE_PAGES is 0 or 1');
      }
      return { val64 };
    }
    throw new IommufdError('EOPNOTSUPP', `unknown option ${optionId}`);
  }

  // --- devices (the sandbox's VFIO bind/attach) ---------------------------------------------------

  /** Bind a physical device (VFIO_DEVICE_BIND_IOMMUFD): returns its DEVICE id. */
  bindDevice({ device }: { device: IommuDevice }): { devId: number } {
    this.live();
    const object = this.table.create(() => new DeviceObject(device));
    return { devId: object.id };
  }

  /** Unbind: detach everything; a vDEVICE of the device becomes a tombstone. */
  unbindDevice({ devId }: { devId: number }): void {
    this.live();
    this.unbind(this.table.get<DeviceObject>(devId, 'DEVICE'));
  }

  /** Attach the RID (no `pasid`) or a PASID to an IOAS or HWPT; returns the HWPT used. */
  attachDevice(args: { devId: number; pasid?: number; ptId: number }): { ptId: number } {
    this.live();
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    return {
      ptId: driverCall(() => attachDevice(this.attachCtx, device, args.pasid, u32(args.ptId, 'ptId'))),
    };
  }

  replaceDevice(args: { devId: number; pasid?: number; ptId: number }): { ptId: number } {
    this.live();
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    return {
      ptId: driverCall(() => replaceDevice(this.attachCtx, device, args.pasid, u32(args.ptId, 'ptId'))),
    };
  }

  detachDevice(args: { devId: number; pasid?: number }): void {
    this.live();
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    detachDevice(this.attachCtx, device, args.pasid);
  }

  getHwInfo(args: {
    devId: number;
    dataLen: number;
    data?: Uint8Array;
    flags?: number;
    inDataType?: number;
  }): {
    dataLen: number;
    dataType: number;
    capabilities: bigint;
    maxPasidLog2: number;
  } {
    this.live();
    const flags = u32(args.flags, 'flags');
    if ((flags & ~IOMMU_HW_INFO_FLAG_INPUT_TYPE) !== 0)
      throw new IommufdError('EOPNOTSUPP', 'unknown GET_HW_INFO flags');
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    const info = driverCall(() => device.hw.ops.hwInfo(device.hw));
    // Without INPUT_TYPE the request is for DEFAULT (0), which every driver answers with its own type.
    const wanted = (flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE) !== 0 ? u32(args.inDataType, 'inDataType') : 0;
    if (wanted !== IOMMU_HW_INFO_TYPE_DEFAULT && wanted !== info.type) {
      throw new IommufdError('EOPNOTSUPP', `the driver has no hw info of type ${args.inDataType}`);
    }
    const userLen = u32(args.dataLen, 'dataLen');
    if (userLen > 0) {
      const data = args.data;
      if (!data || data.length < userLen)
        throw new IommufdError('EFAULT', 'data buffer is smaller than data_len');
      data.fill(0, 0, userLen);
      data.set(info.data.subarray(0, Math.min(userLen, info.data.length)));
    }
    return {
      dataLen: info.data.length,
      dataType: info.type,
      capabilities: info.capabilities,
      maxPasidLog2: device.hw.pasidLog2,
    };
  }

  // --- HWPT ---------------------------------------------------------------------------------------

  hwptAlloc(args: {
    flags?: number;
    devId: number;
    ptId: number;
    dataType?: number;
    data?: Uint8Array;
    faultId?: number;
  }): { hwptId: number } {
    this.live();
    const flags = u32(args.flags, 'flags');
    const dataType = u32(args.dataType, 'dataType');
    const data = args.data ?? EMPTY;
    if ((dataType === IOMMU_HWPT_DATA_NONE) !== (data.length === 0)) {
      throw new IommufdError('EINVAL', 'data_type NONE goes with no data, any other type needs data');
    }
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    const pt = this.table.find(u32(args.ptId, 'ptId'));
    if (!pt) throw new IommufdError('EINVAL', `pt_id ${args.ptId} names no object`);
    const fault = () => this.faultFor(flags, args.faultId);
    if (pt instanceof Ioas) {
      if ((flags & ~HWPT_ALLOC_FLAGS) !== 0) throw new IommufdError('EOPNOTSUPP', 'unknown HWPT_ALLOC flags');
      if ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) !== 0 && !device.hw.dirtyTracking) {
        throw new IommufdError('EOPNOTSUPP', 'the device cannot do dirty tracking');
      }
      if ((flags & IOMMU_HWPT_FAULT_ID_VALID) !== 0 && (flags & IOMMU_HWPT_ALLOC_NEST_PARENT) !== 0) {
        throw new IommufdError('EOPNOTSUPP', 'a nest parent cannot take faults');
      }
      return { hwptId: this.createPaging(device, pt, flags, dataType, data, fault, false).id };
    }
    if (pt instanceof HwptPaging || pt instanceof ViommuObject) {
      // hw_pagetable.c order: through a vIOMMU the IOMMU instance is checked first; then flags and
      // missing driver data (both EOPNOTSUPP), then the parent.
      if (pt instanceof ViommuObject && pt.instance !== device.hw.instance) {
        throw new IommufdError('EINVAL', 'the device is behind another physical IOMMU than the vIOMMU');
      }
      if ((flags & ~(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID)) !== 0) {
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
      const hwpt = this.table.create(() => {
        const domain = driverCall(() =>
          device.hw.ops.allocNested(device.hw, parent.domain, dataType, data, viommu?.state),
        );
        return new HwptNested(parent, viommu, domain, fault(), (flags & IOMMU_HWPT_ALLOC_PASID) !== 0);
      });
      return { hwptId: hwpt.id };
    }
    throw new IommufdError(
      'EINVAL',
      `pt_id ${pt.id} is a ${pt.type}, not an IOAS, a paging HWPT or a vIOMMU`,
    );
  }

  hwptInvalidate(args: {
    hwptId: number;
    dataType: number;
    entryLen: number;
    entryNum: number;
    data?: Uint8Array;
  }): {
    entryNum: number;
  } {
    this.live();
    const entryLen = u32(args.entryLen, 'entryLen');
    const entryNum = u32(args.entryNum, 'entryNum');
    const dataType = u32(args.dataType, 'dataType');
    const fail = (errno: 'EINVAL' | 'ENOENT' | 'EOPNOTSUPP' | 'EFAULT', message: string, done = 0): never => {
      throw new IommufdError(errno, message, { entryNum: done });
    };
    if (entryNum !== 0 && (!args.data || entryLen === 0))
      fail('EINVAL', 'entries need data and a non-zero entry_len');
    const target = this.table.find(u32(args.hwptId, 'hwptId'));
    if (!target) fail('ENOENT', `no object with id ${args.hwptId}`);
    if (!(target instanceof HwptNested) && !(target instanceof ViommuObject)) {
      return fail(
        'EINVAL',
        `${target?.type} ${args.hwptId} cannot be invalidated (not nested, not a vIOMMU)`,
      );
    }
    const ops = target instanceof HwptNested ? target.domain.ops : target.parent.domain.ops;
    const state = target instanceof HwptNested ? target.domain : target.state;
    const format = ops.invalidationFormat(state);
    if (!format) return fail('EOPNOTSUPP', 'the driver has no cache invalidation for this object');
    // An empty array still asks "is this data_type yours?": the mock checks the type first.
    if (dataType !== format.type) fail('EINVAL', `data_type 0x${dataType.toString(16)} is not the driver's`);
    if (entryNum === 0) return { entryNum: 0 };
    const data = args.data as Uint8Array;
    if (data.length < entryLen * entryNum) fail('EFAULT', 'data is shorter than entry_len * entry_num');
    const vdevices = target instanceof ViommuObject ? target.devicesByVirtId() : new Map();
    for (let i = 0; i < entryNum; i++) {
      if (entryLen < format.minLength || entryLen > format.maxLength) {
        fail('EINVAL', `entry_len ${entryLen} is outside ${format.minLength}..${format.maxLength}`, i);
      }
      const errno = ops.invalidate(state, data.subarray(i * entryLen, (i + 1) * entryLen), vdevices);
      if (errno) throw new IommufdError(errno, `entry ${i} refused by the driver`, { entryNum: i });
    }
    return { entryNum };
  }

  // --- FAULT, vIOMMU, vDEVICE, vEVENTQ -------------------------------------------------------------

  faultQueueAlloc({ flags = 0 }: { flags?: number } = {}): { faultId: number; faultFd: FaultFd } {
    this.live();
    if (u32(flags, 'flags') !== 0) throw new IommufdError('EOPNOTSUPP', 'FAULT_QUEUE_ALLOC takes no flags');
    let fd: FaultFd | undefined;
    const fault = this.table.create(() => {
      const object = new FaultObject(this.injector);
      fd = this.wrapFd(object.openFd());
      return object;
    });
    return { faultId: fault.id, faultFd: fd as FaultFd };
  }

  viommuAlloc(args: { flags?: number; type: number; devId: number; hwptId: number; data?: Uint8Array }): {
    viommuId: number;
  } {
    this.live();
    const type = u32(args.type, 'type');
    if (u32(args.flags, 'flags') !== 0 || type === 0)
      throw new IommufdError('EOPNOTSUPP', 'flags must be 0 and type not DEFAULT');
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    if (type !== device.hw.ops.viommuType)
      throw new IommufdError('EOPNOTSUPP', `the driver has no vIOMMU of type 0x${type.toString(16)}`);
    const parent = this.table.get<HwptPaging>(u32(args.hwptId, 'hwptId'), 'HWPT_PAGING');
    if (!parent.nestParent) throw new IommufdError('EINVAL', 'a vIOMMU needs a NEST_PARENT HWPT');
    const viommu = this.table.create(() => {
      // The driver reports events through the object it belongs to, once it is built.
      let object: ViommuObject | undefined;
      const events = {
        report: (t: number, d: Uint8Array) => object !== undefined && this.reportEvent(object, t, d),
      };
      const state = driverCall(() =>
        device.hw.ops.allocViommu(device.hw, parent.domain, type, args.data ?? EMPTY, events),
      );
      object = new ViommuObject(parent, device.hw.instance, state);
      return object;
    });
    if (args.data && viommu.state.outData) args.data.set(viommu.state.outData.subarray(0, args.data.length));
    return { viommuId: viommu.id };
  }

  vdeviceAlloc(args: { viommuId: number; devId: number; virtId: bigint }): { vdeviceId: number } {
    this.live();
    const viommu = this.table.get<ViommuObject>(u32(args.viommuId, 'viommuId'), 'VIOMMU');
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    const virtId = u64(args.virtId, 'virtId');
    if (device.hw.instance !== viommu.instance)
      throw new IommufdError('EINVAL', 'the device is behind another physical IOMMU');
    if (device.vdevice) throw new IommufdError('EEXIST', `device ${device.id} already has a vDEVICE`);
    if (viommu.vdevices.has(virtId))
      throw new IommufdError('EEXIST', `virt_id ${virtId} is taken on this vIOMMU`);
    const vdevice = this.table.create(() => new VdeviceObject(viommu, device, virtId));
    return { vdeviceId: vdevice.id };
  }

  veventqAlloc(args: { flags?: number; viommuId: number; type: number; veventqDepth: number }): {
    veventqId: number;
    veventqFd: VeventqFd;
  } {
    this.live();
    const type = u32(args.type, 'type');
    if (u32(args.flags, 'flags') !== 0 || type === 0)
      throw new IommufdError('EOPNOTSUPP', 'flags must be 0 and type not DEFAULT');
    const depth = u32(args.veventqDepth, 'veventqDepth');
    if (depth === 0 || depth > VEVENTQ_MAX_DEPTH)
      throw new IommufdError('EINVAL', `depth must be 1..${VEVENTQ_MAX_DEPTH}`);
    const viommu = this.table.get<ViommuObject>(u32(args.viommuId, 'viommuId'), 'VIOMMU');
    if (viommu.veventqs.has(type))
      throw new IommufdError('EEXIST', `the vIOMMU already has a vEVENTQ of type 0x${type.toString(16)}`);
    let fd: VeventqFd | undefined;
    const veventq = this.table.create(() => {
      const object = new VeventqObject(viommu, type, depth, this.injector);
      try {
        fd = this.wrapFd(object.openFd());
      } catch (error) {
        object.destroy();
        throw error;
      }
      return object;
    });
    viommu.veventqs.set(type, veventq);
    return { veventqId: veventq.id, veventqFd: fd as VeventqFd };
  }

  /**
   * HW_QUEUE_ALLOC: a guest queue at `nestingParentIova` of the vIOMMU's nesting-parent IOAS, pinned
   * and locked (IOAS_UNMAP over it is EBUSY) until the queue is destroyed.
   */
  hwQueueAlloc(args: {
    flags?: number;
    viommuId: number;
    type: number;
    index: number;
    nestingParentIova: bigint;
    length: bigint;
  }): { hwQueueId: number } {
    this.live();
    const type = u32(args.type, 'type');
    const index = u32(args.index, 'index');
    const iova = u64(args.nestingParentIova, 'nestingParentIova');
    const length = u64(args.length, 'length');
    if (u32(args.flags, 'flags') !== 0 || type === 0)
      throw new IommufdError('EOPNOTSUPP', 'flags must be 0 and type not DEFAULT');
    if (length === 0n) throw new IommufdError('EINVAL', 'length is 0');
    if (iova + length - 1n > U64_MAX)
      throw new IommufdError('EOVERFLOW', 'nesting_parent_iova + length - 1 overflows');
    const viommu = this.table.get<ViommuObject>(u32(args.viommuId, 'viommuId'), 'VIOMMU');
    const ops = viommu.parent.domain.ops;
    if (ops.hwQueueType === 0 || type !== ops.hwQueueType) {
      throw new IommufdError('EOPNOTSUPP', `the driver has no HW queue of type 0x${type.toString(16)}`);
    }
    const ioas = viommu.parent.ioas;
    const queue = this.table.create(() => {
      this.injector.check('pin');
      const lock = ioas.lockRange(iova, length);
      const errno = ops.checkHwQueue(viommu.state, index, (i) => viommu.hwQueues[i] !== undefined);
      if (errno) {
        ioas.unlockRange(lock);
        throw new IommufdError(errno, `the driver refused HW queue index ${index}`);
      }
      return new HwQueueObject(viommu, index, index > 0 ? viommu.hwQueues[index - 1] : undefined, ioas, lock);
    });
    return { hwQueueId: queue.id };
  }

  /** A driver reports a vIOMMU event (iommufd_viommu_report_event). EOPNOTSUPP without a queue. */
  reportVevent(viommu: ViommuObject, type: number, data: Uint8Array): void {
    if (!this.reportEvent(viommu, type, data)) {
      throw new IommufdError('EOPNOTSUPP', `no vEVENTQ of type 0x${type.toString(16)}`);
    }
  }

  private reportEvent(viommu: ViommuObject, type: number, data: Uint8Array): boolean {
    const queue = viommu.veventqs.get(type);
    if (!queue || queue.users === 0) return false;
    queue.report(data);
    return true;
  }

  // --- selftest ops ----------------------------------------------------------------------------------

  /** IOMMU_TEST_OP_MOCK_DOMAIN: a mock device, bound and attached to `id` (an IOAS or HWPT). */
  testMockDomain({ id, flags = 0 }: { id: number; flags?: number }): {
    stdevId: number;
    hwptId: number;
    idevId: number;
  } {
    this.live();
    const mock = driverCall(() => this.mock.createDevice(u32(flags, 'flags')));
    let device: DeviceObject | undefined;
    try {
      const stdevId = this.table.reserve();
      try {
        device = this.table.create(() => new DeviceObject(mock));
        const hwptId = driverCall(() => attachDevice(this.attachCtx, device as DeviceObject, undefined, id));
        const owned = device;
        const stdev = this.table.finalize(stdevId, new SelftestObject(mock, () => this.unbind(owned)));
        return { stdevId: stdev.id, hwptId, idevId: owned.id };
      } catch (error) {
        this.table.abort(stdevId);
        throw error;
      }
    } catch (error) {
      if (device && this.table.find(device.id) === device) this.unbind(device);
      this.mock.removeDevice(mock);
      throw error;
    }
  }

  testMockDomainReplace({ stdevId, ptId }: { stdevId: number; ptId: number }): { ptId: number } {
    const device = this.mockDevice(stdevId);
    return { ptId: driverCall(() => replaceDevice(this.attachCtx, device, undefined, u32(ptId, 'ptId'))) };
  }

  testAddReserved({ ioasId, start, length }: { ioasId: number; start: bigint; length: bigint }): void {
    this.live();
    const ioas = this.table.get<Ioas>(u32(ioasId, 'ioasId'), 'IOAS');
    if (u64(length, 'length') === 0n) throw new IommufdError('EINVAL', 'length is 0');
    ioas.addReserved(u64(start, 'start'), start + length - 1n, undefined);
  }

  testPasidAttach({ stdevId, pasid, ptId }: { stdevId: number; pasid: number; ptId: number }): void {
    const device = this.mockDevice(stdevId);
    driverCall(() => attachDevice(this.attachCtx, device, u32(pasid, 'pasid'), u32(ptId, 'ptId')));
  }

  testPasidReplace({ stdevId, pasid, ptId }: { stdevId: number; pasid: number; ptId: number }): void {
    const device = this.mockDevice(stdevId);
    driverCall(() => replaceDevice(this.attachCtx, device, u32(pasid, 'pasid'), u32(ptId, 'ptId')));
  }

  testPasidDetach({ stdevId, pasid }: { stdevId: number; pasid: number }): void {
    detachDevice(this.attachCtx, this.mockDevice(stdevId), u32(pasid, 'pasid'));
  }

  /** IOMMU_TEST_OP_TRIGGER_IOPF: always succeeds; the group goes where the attachment routes it. */
  testTriggerIopf(args: { devId: number; pasid: number; grpid: number; perm: number; addr: bigint }): void {
    this.live();
    const device = this.table.get<DeviceObject>(u32(args.devId, 'devId'), 'DEVICE');
    if (device.hw.ops !== this.mock) throw new IommufdError('EINVAL', 'not a mock device');
    this.mock.triggerIopf(
      device.hw as never,
      u32(args.pasid, 'pasid'),
      u32(args.grpid, 'grpid') & 0x1ff,
      u32(args.perm, 'perm'),
      Number(u64(args.addr, 'addr')),
    );
  }

  /** IOMMU_TEST_OP_TRIGGER_VEVENT: ENOENT unless attached to a vIOMMU's nested HWPT through a vDEVICE with virt_id != 0. */
  testTriggerVevent({ devId }: { devId: number }): void {
    this.live();
    const device = this.table.get<DeviceObject>(u32(devId, 'devId'), 'DEVICE');
    const hwpt = device.attachment(undefined)?.hwpt;
    const viommu = hwpt?.type === 'HWPT_NESTED' ? hwpt.viommu : undefined;
    const vdevice = device.vdevice;
    if (!viommu || !vdevice || vdevice.virtId === 0n) {
      throw new IommufdError('ENOENT', 'the device is not attached to a vIOMMU through a vDEVICE');
    }
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, Number(vdevice.virtId & 0xffff_ffffn), true);
    this.reportVevent(viommu, this.mock.veventqType, data);
  }

  // --- teardown and introspection ---------------------------------------------------------------------

  /** close(): destroy everything leaf first; objects held by open fds go when those fds close. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.finishClose();
  }

  /** Live objects (for invariant checks and tests). */
  objects(): IommufdObject[] {
    return this.table.objects();
  }

  get reservedIds(): number {
    return this.table.reservedIds();
  }

  /** Page-request groups held by FAULT objects, undelivered or awaiting a response. */
  get pendingFaultGroups(): number {
    let n = 0;
    for (const o of this.table.objects())
      if (o instanceof FaultObject) n += o.undeliveredCount + o.awaitingCount;
    return n;
  }

  /** The object behind an id, for the sandbox's own layers (not part of the uAPI). */
  lookup<T extends IommufdObject>(id: number, ...types: IommufdObject['type'][]): T {
    return this.table.get<T>(id, ...types);
  }

  private live(): void {
    if (this.closed) throw new IommufdError('EBADF', 'the iommufd is closed');
  }

  private faultFor(flags: number, faultId: number | undefined): FaultObject | undefined {
    if ((flags & IOMMU_HWPT_FAULT_ID_VALID) === 0) return undefined;
    return this.table.get<FaultObject>(u32(faultId, 'faultId'), 'FAULT');
  }

  private createPaging(
    device: DeviceObject,
    ioas: Ioas,
    flags: number,
    dataType: number,
    data: Uint8Array,
    fault: (() => FaultObject | undefined) | undefined,
    autoDomain: boolean,
  ): HwptPaging {
    return this.table.create(() => {
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
      const hwpt = new HwptPaging(ioas, domain, autoDomain, this.injector);
      hwpt.link();
      try {
        // hw_pagetable.c: the domain is populated first; a bad fault_id then undoes it.
        hwpt.routeFaults(fault?.());
      } catch (error) {
        hwpt.destroy();
        throw error;
      }
      return hwpt;
    });
  }

  private mockDevice(stdevId: number): DeviceObject {
    this.live();
    const stdev = this.table.get<SelftestObject>(u32(stdevId, 'stdevId'), 'SELFTEST');
    const device = this.table
      .objects()
      .find((o): o is DeviceObject => o instanceof DeviceObject && o.hw === stdev.device);
    if (!device) throw new IommufdError('ENOENT', `selftest device ${stdevId} has no DEVICE`);
    return device;
  }

  private unbind(device: DeviceObject): void {
    for (const key of [...device.attachments.keys()])
      detachDevice(this.attachCtx, device, key < 0 ? undefined : key);
    // Every group is answered by now: the device may stop asking (PCI PRI disable).
    device.hw.ops.disablePri(device.hw);
    if (device.vdevice) this.table.tombstone(device.vdevice);
    device.put();
    this.table.remove(device);
    if (device.hw.ops === this.mock) this.mock.removeDevice(device.hw as never);
  }

  /** Wrap an fd so that closing the last one after close() finishes the teardown. */
  private wrapFd<T extends { close(): void }>(fd: T): T {
    const close = fd.close.bind(fd);
    fd.close = () => {
      close();
      if (this.closed) this.finishClose();
    };
    return fd;
  }

  private finishClose(): void {
    for (const object of this.table.objects()) {
      if (object instanceof SelftestObject) this.table.remove(object);
    }
    for (const object of this.table.objects()) {
      if (object instanceof DeviceObject) this.unbind(object);
    }
    this.table.closeAll();
  }
}

export type { Hwpt };
