/**
 * One open /dev/iommu (iommufd main.c): the fd, its ioctl table, and the one dispatch every call
 * goes through. Each public method is one ioctl, named after it without the IOMMU_ prefix. It takes
 * the uAPI struct's input fields in camelCase (u64 as bigint, u32 as number; no `size`, no
 * `__reserved`) and returns its output fields with `out` dropped. A failure throws IommufdError with
 * the kernel's errno; nothing a failed call did stays visible.
 *
 * A row of the table declares the command's argument fields and the checks the kernel makes on
 * them before the body runs (ioctl.ts runs them); the bodies live with their objects: ioas.ts,
 * hwpt.ts, device.ts, fault.ts, viommu.ts, veventq.ts, hw-queue.ts, selftest-ops.ts, and
 * context.ts for DESTROY and OPTION. One concept (the fd and its table), a little over 450 lines:
 * the table has a row per ioctl.
 */
import type { IommuDevice } from '../iommu/iommu-ops.ts';
import { destroyIoctl, IommufdCtx, optionIoctl } from './context.ts';
import {
  attachIoctl,
  bindIoctl,
  detachIoctl,
  getHwInfoIoctl,
  type HwInfoOut,
  IOMMU_HW_INFO_FLAG_INPUT_TYPE,
  replaceIoctl,
  unbindIoctl,
} from './device.ts';
import { IommufdError } from './errors.ts';
import { type FaultFd, FaultObject, faultQueueAllocIoctl } from './fault.ts';
import { FaultInjector } from './fault-injector.ts';
import { hwQueueAllocIoctl } from './hw-queue.ts';
import { type Hwpt, hwptAllocIoctl, hwptInvalidateIoctl } from './hwpt.ts';
import {
  IOAS_MAP_FLAGS,
  ioasAllocIoctl,
  ioasAllowIovasIoctl,
  ioasCopyIoctl,
  ioasIovaRangesIoctl,
  ioasMapIoctl,
  ioasUnmapIoctl,
} from './ioas.ts';
import { checkArgs, type Field, type Ioctl, ioctl } from './ioctl.ts';
import type { IovaRange } from './iova.ts';
import type { IommufdObject } from './object.ts';
import { MockIommu } from './selftest.ts';
import {
  testAddReservedIoctl,
  testMockDomainIoctl,
  testMockDomainReplaceIoctl,
  testPasidAttachIoctl,
  testPasidDetachIoctl,
  testPasidReplaceIoctl,
  testTriggerIopfIoctl,
  testTriggerVeventIoctl,
} from './selftest-ops.ts';
import { UserMemory } from './user-memory.ts';
import { VEVENTQ_MAX_DEPTH, type VeventqFd, veventqAllocIoctl } from './veventq.ts';
import { reportVevent, type ViommuObject, vdeviceAllocIoctl, viommuAllocIoctl } from './viommu.ts';

export {
  IOMMU_OPTION_HUGE_PAGES,
  IOMMU_OPTION_OP_GET,
  IOMMU_OPTION_OP_SET,
  IOMMU_OPTION_RLIMIT_MODE,
} from './context.ts';
export { IOMMU_HW_INFO_FLAG_INPUT_TYPE, IOMMU_HW_INFO_TYPE_DEFAULT } from './device.ts';
export { IOMMU_HWPT_DATA_NONE } from './hwpt.ts';
export { VEVENTQ_MAX_DEPTH } from './veventq.ts';

// --- the ioctl table (main.c's iommufd_ioctl_ops) ----------------------------------------------------

const U32: Field<'u32'> = { type: 'u32' };
const U64: Field<'u64'> = { type: 'u64' };
/** Fields a caller may leave out: they read as zero, as past the end of a shorter struct. */
const OPT_U32: Field<'u32'> = { type: 'u32', optional: true };
const OPT_U64: Field<'u64'> = { type: 'u64', optional: true };
const BYTES: Field<'bytes'> = { type: 'bytes', optional: true };
/** Left out, the RID; given, one of its PASIDs. */
const PASID: Field<'pasid'> = { type: 'pasid', optional: true };
/** A flags field of a command that knows none yet. */
const NO_FLAGS: Field<'u32'> = { type: 'u32', optional: true, mask: 0 };
/** An object type: DEFAULT (0) names none a driver can allocate. */
const TYPE: Field<'u32'> = { type: 'u32', nonzero: 'EOPNOTSUPP' };
const MAP_FLAGS: Field<'u32'> = { type: 'u32', mask: IOAS_MAP_FLAGS };

const IOCTLS = {
  DESTROY: ioctl('DESTROY', { id: U32 }, destroyIoctl),
  OPTION: ioctl('OPTION', { optionId: U32, op: U32, objectId: OPT_U32, val64: OPT_U64 }, optionIoctl),

  IOAS_ALLOC: ioctl('IOAS_ALLOC', { flags: NO_FLAGS }, ioasAllocIoctl),
  IOAS_MAP: ioctl(
    'IOAS_MAP',
    { flags: MAP_FLAGS, ioasId: U32, userVa: U64, length: U64, iova: OPT_U64 },
    ioasMapIoctl,
  ),
  IOAS_UNMAP: ioctl('IOAS_UNMAP', { ioasId: U32, iova: U64, length: U64 }, ioasUnmapIoctl),
  IOAS_COPY: ioctl(
    'IOAS_COPY',
    { flags: MAP_FLAGS, dstIoasId: U32, srcIoasId: U32, length: U64, dstIova: OPT_U64, srcIova: U64 },
    ioasCopyIoctl,
  ),
  IOAS_IOVA_RANGES: ioctl('IOAS_IOVA_RANGES', { ioasId: U32, numIovas: U32 }, ioasIovaRangesIoctl),
  IOAS_ALLOW_IOVAS: ioctl(
    'IOAS_ALLOW_IOVAS',
    { ioasId: U32, allowedIovas: { type: 'ranges' } },
    ioasAllowIovasIoctl,
  ),

  // The VFIO device file's bind and attach, which reach the registry's device.c.
  DEVICE_BIND: ioctl('DEVICE_BIND', { device: { type: 'device' } }, bindIoctl),
  DEVICE_UNBIND: ioctl('DEVICE_UNBIND', { devId: U32 }, unbindIoctl),
  DEVICE_ATTACH: ioctl('DEVICE_ATTACH', { devId: U32, pasid: PASID, ptId: U32 }, attachIoctl),
  DEVICE_REPLACE: ioctl('DEVICE_REPLACE', { devId: U32, pasid: PASID, ptId: U32 }, replaceIoctl),
  DEVICE_DETACH: ioctl('DEVICE_DETACH', { devId: U32, pasid: PASID }, detachIoctl),
  GET_HW_INFO: ioctl(
    'GET_HW_INFO',
    {
      devId: U32,
      dataLen: U32,
      data: BYTES,
      flags: { type: 'u32', optional: true, mask: IOMMU_HW_INFO_FLAG_INPUT_TYPE },
      inDataType: OPT_U32,
    },
    getHwInfoIoctl,
  ),

  // Which flags HWPT_ALLOC knows depends on its target (paging or nested): its body checks them.
  HWPT_ALLOC: ioctl(
    'HWPT_ALLOC',
    { flags: OPT_U32, devId: U32, ptId: U32, dataType: OPT_U32, data: BYTES, faultId: OPT_U32 },
    hwptAllocIoctl,
  ),
  HWPT_INVALIDATE: ioctl(
    'HWPT_INVALIDATE',
    { hwptId: U32, dataType: U32, entryLen: U32, entryNum: U32, data: BYTES },
    hwptInvalidateIoctl,
  ),

  FAULT_QUEUE_ALLOC: ioctl('FAULT_QUEUE_ALLOC', { flags: NO_FLAGS }, faultQueueAllocIoctl),
  VIOMMU_ALLOC: ioctl(
    'VIOMMU_ALLOC',
    { flags: NO_FLAGS, type: TYPE, devId: U32, hwptId: U32, data: BYTES },
    viommuAllocIoctl,
  ),
  VDEVICE_ALLOC: ioctl('VDEVICE_ALLOC', { viommuId: U32, devId: U32, virtId: U64 }, vdeviceAllocIoctl),
  VEVENTQ_ALLOC: ioctl(
    'VEVENTQ_ALLOC',
    {
      flags: NO_FLAGS,
      viommuId: U32,
      type: TYPE,
      veventqDepth: { type: 'u32', nonzero: 'EINVAL', max: VEVENTQ_MAX_DEPTH },
    },
    veventqAllocIoctl,
  ),
  HW_QUEUE_ALLOC: ioctl(
    'HW_QUEUE_ALLOC',
    {
      flags: NO_FLAGS,
      viommuId: U32,
      type: TYPE,
      index: U32,
      nestingParentIova: U64,
      length: { type: 'u64', nonzero: 'EINVAL' },
    },
    hwQueueAllocIoctl,
  ),

  // IOMMU_TEST_CMD's ops (selftest.c).
  TEST_MOCK_DOMAIN: ioctl('TEST_MOCK_DOMAIN', { id: U32, flags: OPT_U32 }, testMockDomainIoctl),
  TEST_MOCK_DOMAIN_REPLACE: ioctl(
    'TEST_MOCK_DOMAIN_REPLACE',
    { stdevId: U32, ptId: U32 },
    testMockDomainReplaceIoctl,
  ),
  TEST_ADD_RESERVED: ioctl(
    'TEST_ADD_RESERVED',
    { ioasId: U32, start: U64, length: U64 },
    testAddReservedIoctl,
  ),
  TEST_PASID_ATTACH: ioctl(
    'TEST_PASID_ATTACH',
    { stdevId: U32, pasid: U32, ptId: U32 },
    testPasidAttachIoctl,
  ),
  TEST_PASID_REPLACE: ioctl(
    'TEST_PASID_REPLACE',
    { stdevId: U32, pasid: U32, ptId: U32 },
    testPasidReplaceIoctl,
  ),
  TEST_PASID_DETACH: ioctl('TEST_PASID_DETACH', { stdevId: U32, pasid: U32 }, testPasidDetachIoctl),
  TEST_TRIGGER_IOPF: ioctl(
    'TEST_TRIGGER_IOPF',
    { devId: U32, pasid: U32, grpid: U32, perm: U32, addr: U64 },
    testTriggerIopfIoctl,
  ),
  TEST_TRIGGER_VEVENT: ioctl('TEST_TRIGGER_VEVENT', { devId: U32 }, testTriggerVeventIoctl),
} as const;

// --- the fd ------------------------------------------------------------------------------------------

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
  private readonly ctx: IommufdCtx;

  constructor(options: IommufdOptions = {}) {
    this.memory = options.memory ?? new UserMemory();
    this.ctx = new IommufdCtx(this.memory, this.injector, this.mock, options.capSysResource ?? true);
  }

  // --- process memory -------------------------------------------------------------------------

  mmap(length: bigint): bigint {
    return this.memory.mmap(length);
  }

  munmap(userVa: bigint, length: bigint): void {
    this.memory.munmap(userVa, length);
  }

  // --- the context ----------------------------------------------------------------------------

  destroy(args: { id: number }): void {
    this.ioctl(IOCTLS.DESTROY, args);
  }

  option(args: { optionId: number; op: number; objectId?: number; val64?: bigint }): { val64: bigint } {
    return this.ioctl(IOCTLS.OPTION, args);
  }

  // --- IOAS -------------------------------------------------------------------------------------

  ioasAlloc(args: { flags?: number } = {}): { ioasId: number } {
    return this.ioctl(IOCTLS.IOAS_ALLOC, args);
  }

  ioasMap(args: { flags: number; ioasId: number; userVa: bigint; length: bigint; iova?: bigint }): {
    iova: bigint;
  } {
    return this.ioctl(IOCTLS.IOAS_MAP, args);
  }

  ioasUnmap(args: { ioasId: number; iova: bigint; length: bigint }): { length: bigint } {
    return this.ioctl(IOCTLS.IOAS_UNMAP, args);
  }

  ioasCopy(args: {
    flags: number;
    dstIoasId: number;
    srcIoasId: number;
    length: bigint;
    dstIova?: bigint;
    srcIova: bigint;
  }): { dstIova: bigint } {
    return this.ioctl(IOCTLS.IOAS_COPY, args);
  }

  ioasIovaRanges(args: { ioasId: number; numIovas: number }): {
    numIovas: number;
    allowedIovas: IovaRange[];
    iovaAlignment: bigint;
  } {
    return this.ioctl(IOCTLS.IOAS_IOVA_RANGES, args);
  }

  ioasAllowIovas(args: { ioasId: number; allowedIovas: IovaRange[] }): void {
    this.ioctl(IOCTLS.IOAS_ALLOW_IOVAS, args);
  }

  // --- devices (the sandbox's VFIO bind/attach) ---------------------------------------------------

  /** Bind a physical device (VFIO_DEVICE_BIND_IOMMUFD): returns its DEVICE id. */
  bindDevice(args: { device: IommuDevice }): { devId: number } {
    return this.ioctl(IOCTLS.DEVICE_BIND, args);
  }

  /** Unbind: detach everything; a vDEVICE of the device becomes a tombstone. */
  unbindDevice(args: { devId: number }): void {
    this.ioctl(IOCTLS.DEVICE_UNBIND, args);
  }

  /** Attach the RID (no `pasid`) or a PASID to an IOAS or HWPT; returns the HWPT used. */
  attachDevice(args: { devId: number; pasid?: number; ptId: number }): { ptId: number } {
    return this.ioctl(IOCTLS.DEVICE_ATTACH, args);
  }

  replaceDevice(args: { devId: number; pasid?: number; ptId: number }): { ptId: number } {
    return this.ioctl(IOCTLS.DEVICE_REPLACE, args);
  }

  detachDevice(args: { devId: number; pasid?: number }): void {
    this.ioctl(IOCTLS.DEVICE_DETACH, args);
  }

  getHwInfo(args: {
    devId: number;
    dataLen: number;
    data?: Uint8Array;
    flags?: number;
    inDataType?: number;
  }): HwInfoOut {
    return this.ioctl(IOCTLS.GET_HW_INFO, args);
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
    return this.ioctl(IOCTLS.HWPT_ALLOC, args);
  }

  hwptInvalidate(args: {
    hwptId: number;
    dataType: number;
    entryLen: number;
    entryNum: number;
    data?: Uint8Array;
  }): { entryNum: number } {
    return this.ioctl(IOCTLS.HWPT_INVALIDATE, args);
  }

  // --- FAULT, vIOMMU, vDEVICE, vEVENTQ, HW queue ---------------------------------------------------

  faultQueueAlloc(args: { flags?: number } = {}): { faultId: number; faultFd: FaultFd } {
    return this.ioctl(IOCTLS.FAULT_QUEUE_ALLOC, args);
  }

  viommuAlloc(args: { flags?: number; type: number; devId: number; hwptId: number; data?: Uint8Array }): {
    viommuId: number;
  } {
    return this.ioctl(IOCTLS.VIOMMU_ALLOC, args);
  }

  vdeviceAlloc(args: { viommuId: number; devId: number; virtId: bigint }): { vdeviceId: number } {
    return this.ioctl(IOCTLS.VDEVICE_ALLOC, args);
  }

  veventqAlloc(args: { flags?: number; viommuId: number; type: number; veventqDepth: number }): {
    veventqId: number;
    veventqFd: VeventqFd;
  } {
    return this.ioctl(IOCTLS.VEVENTQ_ALLOC, args);
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
    return this.ioctl(IOCTLS.HW_QUEUE_ALLOC, args);
  }

  /** A driver reports a vIOMMU event (iommufd_viommu_report_event). EOPNOTSUPP without a queue. */
  reportVevent(viommu: ViommuObject, type: number, data: Uint8Array): void {
    reportVevent(viommu, type, data);
  }

  // --- selftest ops ----------------------------------------------------------------------------------

  /** IOMMU_TEST_OP_MOCK_DOMAIN: a mock device, bound and attached to `id` (an IOAS or HWPT). */
  testMockDomain(args: { id: number; flags?: number }): { stdevId: number; hwptId: number; idevId: number } {
    return this.ioctl(IOCTLS.TEST_MOCK_DOMAIN, args);
  }

  testMockDomainReplace(args: { stdevId: number; ptId: number }): { ptId: number } {
    return this.ioctl(IOCTLS.TEST_MOCK_DOMAIN_REPLACE, args);
  }

  testAddReserved(args: { ioasId: number; start: bigint; length: bigint }): void {
    this.ioctl(IOCTLS.TEST_ADD_RESERVED, args);
  }

  testPasidAttach(args: { stdevId: number; pasid: number; ptId: number }): void {
    this.ioctl(IOCTLS.TEST_PASID_ATTACH, args);
  }

  testPasidReplace(args: { stdevId: number; pasid: number; ptId: number }): void {
    this.ioctl(IOCTLS.TEST_PASID_REPLACE, args);
  }

  testPasidDetach(args: { stdevId: number; pasid: number }): void {
    this.ioctl(IOCTLS.TEST_PASID_DETACH, args);
  }

  /** IOMMU_TEST_OP_TRIGGER_IOPF: always succeeds; the group goes where the attachment routes it. */
  testTriggerIopf(args: { devId: number; pasid: number; grpid: number; perm: number; addr: bigint }): void {
    this.ioctl(IOCTLS.TEST_TRIGGER_IOPF, args);
  }

  /** IOMMU_TEST_OP_TRIGGER_VEVENT: ENOENT unless attached to a vIOMMU's nested HWPT through a vDEVICE with virt_id != 0. */
  testTriggerVevent(args: { devId: number }): void {
    this.ioctl(IOCTLS.TEST_TRIGGER_VEVENT, args);
  }

  // --- teardown and introspection ---------------------------------------------------------------------

  /** close(): destroy everything leaf first; objects held by open fds go when those fds close. */
  close(): void {
    this.ctx.close();
  }

  /** Live objects (for invariant checks and tests). */
  objects(): IommufdObject[] {
    return this.ctx.table.objects();
  }

  get reservedIds(): number {
    return this.ctx.table.reservedIds();
  }

  /** Page-request groups held by FAULT objects, undelivered or awaiting a response. */
  get pendingFaultGroups(): number {
    let n = 0;
    for (const o of this.ctx.table.objects())
      if (o instanceof FaultObject) n += o.undeliveredCount + o.awaitingCount;
    return n;
  }

  /** The object behind an id, for the sandbox's own layers (not part of the uAPI). */
  lookup<T extends IommufdObject>(id: number, ...types: IommufdObject['type'][]): T {
    return this.ctx.table.get<T>(id, ...types);
  }

  /**
   * The one dispatch (main.c's iommufd_fops_ioctl): EBADF once closed, then the row's declared
   * argument checks, then its body with the checked copy of the arguments.
   */
  private ioctl<C, R>(op: Ioctl<C, R>, args: Partial<C>): R {
    if (this.ctx.closed) throw new IommufdError('EBADF', 'the iommufd is closed');
    return op.handler(this.ctx, checkArgs(op, args));
  }
}

export type { Hwpt };
