/**
 * DEVICE objects and attachment (iommufd device.c; docs/registry.md): a bound device is
 * attached by RID or by PASID to an IOAS (through an automatic paging domain) or a HWPT. Each
 * attachment holds its HWPT and the DEVICE. Detach and replace answer every page-request group of
 * the ended attachment INVALID; removal never fails.
 *
 * Ending an attachment follows the agreed teardown order: stop routing new page requests to it,
 * flush what is on its way (the physical PRI queue, a request the IRQ thread holds, partial
 * groups), switch or block the domain, then answer INVALID every group the fault object holds for
 * it (iommufd's detach, then its automatic responses). Unbinding the device then disables its PRI.
 */
import type { IommuDevice } from '../iommu/iommu-ops.ts';
import type { IopfGroup, IopfHandler } from '../iommu/iopf.ts';
import { PRG_INVALID } from '../iommu/page-request.ts';
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import { type Hwpt, HwptPaging, ioasOf } from './hwpt.ts';
import type { Ioas } from './ioas.ts';
import { driverCall } from './ioctl.ts';
import { IommufdObject } from './object.ts';
import type { ObjectTable } from './object-table.ts';
import type { VdeviceObject } from './viommu.ts';

/** Where faults of one (device, RID or PASID) go while it is attached. */
export class Attachment implements IopfHandler {
  constructor(
    readonly device: DeviceObject,
    readonly pasid: number | undefined,
    readonly hwpt: Hwpt,
  ) {}

  handleGroup(group: IopfGroup): void {
    const fault = this.hwpt.fault;
    if (!fault) {
      group.respond(PRG_INVALID);
      return;
    }
    group.devId = this.device.id;
    group.attachment = this;
    fault.report(group);
  }

  revoke(group: IopfGroup): void {
    this.hwpt.fault?.revoke(group);
  }
}

/**
 * The first steps of ending an attachment: no new group is routed to it, and every request
 * already on its way is flushed out (answered INVALID for want of a route, or dropped as partial).
 */
function quiesce(device: DeviceObject, pasid: number | undefined): void {
  device.hw.ops.setIopfHandler(device.hw, pasid, undefined);
  device.hw.ops.flushFaults(device.hw, pasid);
}

export class DeviceObject extends IommufdObject {
  readonly type = 'DEVICE';
  /** By PASID; the RID's attachment is under key -1. */
  readonly attachments = new Map<number, Attachment>();
  vdevice: VdeviceObject | undefined;

  constructor(readonly hw: IommuDevice) {
    super();
    // The bind reference: userspace can never destroy a DEVICE (EBUSY); only unbind removes it.
    this.hold();
  }

  attachment(pasid: number | undefined): Attachment | undefined {
    return this.attachments.get(pasid ?? -1);
  }
}

/** The registry state that attachment needs. */
export interface AttachContext {
  table: ObjectTable;
  injector: FaultInjector;
  /** Create an automatic paging HWPT for `ioas` that `device` can use (not attached yet). */
  autoDomain(device: DeviceObject, ioas: Ioas): HwptPaging;
}

function checkPasid(device: DeviceObject, pasid: number | undefined, hwpt: Hwpt | Ioas): void {
  if (pasid === undefined) {
    // Moving the RID to a non-PASID-compatible HWPT while PASIDs are attached is refused.
    const anyPasid = [...device.attachments.keys()].some((k) => k >= 0);
    if (anyPasid && (hwpt.type === 'IOAS' || !hwpt.pasidCompat)) {
      throw new IommufdError('EINVAL', 'PASIDs are attached: the RID needs a PASID-compatible HWPT');
    }
    return;
  }
  if (device.hw.pasidLog2 === 0) throw new IommufdError('EINVAL', 'the device has no PASID capability');
  if (!Number.isInteger(pasid) || pasid < 0 || pasid >= 2 ** device.hw.pasidLog2) {
    throw new IommufdError(
      'EINVAL',
      `PASID ${pasid} is beyond the device's ${device.hw.pasidLog2}-bit PASID space`,
    );
  }
  if (hwpt.type === 'IOAS')
    throw new IommufdError(
      'EINVAL',
      'a PASID cannot attach to an IOAS (automatic domains are not PASID-compatible)',
    );
  if (!hwpt.pasidCompat)
    throw new IommufdError('EINVAL', 'a PASID needs a HWPT allocated with IOMMU_HWPT_ALLOC_PASID');
  const rid = device.attachment(undefined);
  if (rid && !rid.hwpt.pasidCompat)
    throw new IommufdError('EINVAL', 'the RID is attached to a HWPT that is not PASID-compatible');
}

function lookupTarget(ctx: AttachContext, ptId: number): Hwpt | Ioas {
  const pt = ctx.table.find(ptId);
  if (!pt) throw new IommufdError('ENOENT', `no object with id ${ptId}`);
  if (pt.type !== 'IOAS' && pt.type !== 'HWPT_PAGING' && pt.type !== 'HWPT_NESTED') {
    throw new IommufdError('EINVAL', `${pt.type} ${ptId} is not an IOAS or a HWPT`);
  }
  return pt as Hwpt | Ioas;
}

/** Driver attach plus everything attaching means in the registry; all or nothing. */
function bindTo(
  device: DeviceObject,
  pasid: number | undefined,
  hwpt: Hwpt,
  replacing?: Attachment,
): Attachment {
  // The mock looks the vDEVICE up in its RID attach only (mock_domain_nop_attach); set_dev_pasid
  // takes a vIOMMU's nested domain without one.
  if (
    pasid === undefined &&
    hwpt.type === 'HWPT_NESTED' &&
    hwpt.viommu &&
    device.vdevice?.viommu !== hwpt.viommu
  ) {
    throw new IommufdError(
      'ENOENT',
      'the nested HWPT belongs to a vIOMMU on which the device has no vDEVICE',
    );
  }
  const attachment = new Attachment(device, pasid, hwpt);
  const ioas = ioasOf(hwpt);
  const oldIoas = replacing ? ioasOf(replacing.hwpt) : undefined;
  // The RID brings its reserved regions into the IOAS it translates through.
  const importRegions = pasid === undefined && ioas !== oldIoas;
  const imported: Ioas[] = [];
  try {
    if (importRegions) {
      for (const r of device.hw.reservedRegions) ioas.addReserved(r.start, r.last, attachment);
      imported.push(ioas);
    }
    const virtId = hwpt.type === 'HWPT_NESTED' && hwpt.viommu ? device.vdevice?.virtId : undefined;
    device.hw.ops.attach(device.hw, pasid, hwpt.domain, virtId);
  } catch (error) {
    for (const i of imported) i.removeReserved(attachment);
    throw error;
  }
  if (replacing && importRegions) oldIoas?.removeReserved(replacing);
  else if (replacing) ioas.transferReserved(replacing, attachment);
  hwpt.hold();
  hwpt.attachments++;
  device.attachments.set(pasid ?? -1, attachment);
  device.hw.ops.setIopfHandler(device.hw, pasid, hwpt.fault ? attachment : undefined);
  return attachment;
}

/** Drop what an attachment holds: its page-request groups, its HWPT (and an auto domain with it). */
function release(ctx: AttachContext, attachment: Attachment): void {
  attachment.hwpt.fault?.autoRespond(attachment);
  const hwpt = attachment.hwpt;
  hwpt.attachments--;
  hwpt.put();
  if (hwpt.type === 'HWPT_PAGING' && hwpt.autoDomain && hwpt.attachments === 0) ctx.table.remove(hwpt);
}

function resolveHwpt(
  ctx: AttachContext,
  device: DeviceObject,
  pt: Hwpt | Ioas,
  pasid: number | undefined,
): { hwpt: Hwpt; created: boolean } {
  if (pt.type !== 'IOAS') return { hwpt: pt, created: false };
  if (pasid !== undefined) throw new IommufdError('EINVAL', 'a PASID cannot attach to an IOAS');
  for (const object of ctx.table.objects()) {
    if (
      object instanceof HwptPaging &&
      object.autoDomain &&
      object.ioas === pt &&
      object.domain.ops === device.hw.ops
    ) {
      return { hwpt: object, created: false };
    }
  }
  return { hwpt: ctx.autoDomain(device, pt), created: true };
}

/** Attach (never overwrites: EBUSY if that RID/PASID is attached). Returns the HWPT id used. */
export function attachDevice(
  ctx: AttachContext,
  device: DeviceObject,
  pasid: number | undefined,
  ptId: number,
): number {
  const pt = lookupTarget(ctx, ptId);
  // The slot is taken before anything about the target is judged (xa_insert into the group's
  // device_array comes first in iommufd_hw_pagetable_attach).
  if (device.attachment(pasid))
    throw new IommufdError(
      'EBUSY',
      `${pasid === undefined ? 'the RID' : `PASID ${pasid}`} is already attached`,
    );
  checkPasid(device, pasid, pt);
  if (pasid === undefined) checkGroup(ctx, device, pt);
  const { hwpt, created } = resolveHwpt(ctx, device, pt, pasid);
  try {
    bindTo(device, pasid, hwpt);
  } catch (error) {
    if (created) ctx.table.remove(hwpt);
    throw error;
  }
  device.hold();
  return hwpt.id;
}

/** Replace: EINVAL if not attached; the same HWPT is a no-op; failure keeps the old attachment. */
export function replaceDevice(
  ctx: AttachContext,
  device: DeviceObject,
  pasid: number | undefined,
  ptId: number,
): number {
  const old = device.attachment(pasid);
  const pt = lookupTarget(ctx, ptId);
  if (!old)
    throw new IommufdError('EINVAL', `${pasid === undefined ? 'the RID' : `PASID ${pasid}`} is not attached`);
  checkPasid(device, pasid, pt);
  if (
    pt === old.hwpt ||
    (pt.type === 'IOAS' && old.hwpt.type === 'HWPT_PAGING' && old.hwpt.autoDomain && old.hwpt.ioas === pt)
  ) {
    return old.hwpt.id;
  }
  const { hwpt, created } = resolveHwpt(ctx, device, pt, pasid);
  // A request raised under the old domain must not reach the new one's fault queue.
  quiesce(device, pasid);
  try {
    bindTo(device, pasid, hwpt, old);
  } catch (error) {
    device.hw.ops.setIopfHandler(device.hw, pasid, old.hwpt.fault ? old : undefined);
    if (created) ctx.table.remove(hwpt);
    throw error;
  }
  release(ctx, old);
  return hwpt.id;
}

/** Detach: a silent no-op when nothing is attached. The RID or PASID ends up blocked. */
export function detachDevice(ctx: AttachContext, device: DeviceObject, pasid: number | undefined): void {
  const attachment = device.attachment(pasid);
  if (!attachment) return;
  quiesce(device, pasid);
  device.hw.ops.detach(device.hw, pasid);
  device.attachments.delete(pasid ?? -1);
  if (pasid === undefined) ioasOf(attachment.hwpt).removeReserved(attachment);
  release(ctx, attachment);
  device.put();
}

/** Devices of one IOMMU group must share a HWPT. */
function checkGroup(ctx: AttachContext, device: DeviceObject, pt: Hwpt | Ioas): void {
  for (const object of ctx.table.objects()) {
    if (!(object instanceof DeviceObject) || object === device || object.hw.group !== device.hw.group)
      continue;
    const rid = object.attachment(undefined);
    if (!rid) continue;
    const same =
      rid.hwpt === pt ||
      (pt.type === 'IOAS' && rid.hwpt.type === 'HWPT_PAGING' && rid.hwpt.autoDomain && rid.hwpt.ioas === pt);
    if (!same)
      throw new IommufdError('EINVAL', `device ${object.id} of the same IOMMU group is attached elsewhere`);
  }
}

// --- the device commands (device.c, and the VFIO bind and attach that reach it) --------------------
// iommufd.ts's table has already checked their arguments.

export const IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1;
export const IOMMU_HW_INFO_TYPE_DEFAULT = 0;

/**
 * Unbind on the registry's own behalf: detach everything, let the device stop asking (PCI PRI
 * disable), make its vDEVICE a tombstone and drop the DEVICE.
 */
export function unbind(ctx: IommufdCtx, device: DeviceObject): void {
  for (const key of [...device.attachments.keys()]) detachDevice(ctx, device, key < 0 ? undefined : key);
  // Every group is answered by now: the device may stop asking (PCI PRI disable).
  device.hw.ops.disablePri(device.hw);
  if (device.vdevice) ctx.table.tombstone(device.vdevice);
  device.put();
  ctx.table.remove(device);
  if (device.hw.ops === ctx.mock) ctx.mock.removeDevice(device.hw as never);
}

/** VFIO_DEVICE_BIND_IOMMUFD: a DEVICE object for a physical device. */
export function bindIoctl(ctx: IommufdCtx, cmd: { device: IommuDevice }): { devId: number } {
  const object = ctx.table.create(() => new DeviceObject(cmd.device));
  return { devId: object.id };
}

/** Unbind (closing the VFIO device): detach everything; a vDEVICE of the device becomes a tombstone. */
export function unbindIoctl(ctx: IommufdCtx, cmd: { devId: number }): void {
  unbind(ctx, ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE'));
}

/** A device's RID (no `pasid`) or one of its PASIDs, and the IOAS or HWPT it goes to. */
export interface AttachCmd {
  devId: number;
  pasid: number | undefined;
  ptId: number;
}

/** VFIO_DEVICE_ATTACH_IOMMUFD_PT (or its PASID form): returns the HWPT used. */
export function attachIoctl(ctx: IommufdCtx, cmd: AttachCmd): { ptId: number } {
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  return { ptId: driverCall(() => attachDevice(ctx, device, cmd.pasid, cmd.ptId)) };
}

/** The same, over an existing attachment (replace): returns the HWPT used. */
export function replaceIoctl(ctx: IommufdCtx, cmd: AttachCmd): { ptId: number } {
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  return { ptId: driverCall(() => replaceDevice(ctx, device, cmd.pasid, cmd.ptId)) };
}

/** VFIO_DEVICE_DETACH_IOMMUFD_PT: a silent no-op when nothing is attached. */
export function detachIoctl(ctx: IommufdCtx, cmd: { devId: number; pasid: number | undefined }): void {
  detachDevice(ctx, ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE'), cmd.pasid);
}

export interface GetHwInfoCmd {
  devId: number;
  dataLen: number;
  data: Uint8Array | undefined;
  flags: number;
  inDataType: number;
}

export interface HwInfoOut {
  dataLen: number;
  dataType: number;
  capabilities: bigint;
  maxPasidLog2: number;
}

/**
 * IOMMU_GET_HW_INFO: the driver's hardware info of the device's IOMMU, copied into `data` up to
 * `dataLen` (zero-filled past what the driver has); the driver's full length comes back.
 */
export function getHwInfoIoctl(ctx: IommufdCtx, cmd: GetHwInfoCmd): HwInfoOut {
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  const info = driverCall(() => device.hw.ops.hwInfo(device.hw));
  // Without INPUT_TYPE the request is for DEFAULT (0), which every driver answers with its own type.
  const wanted =
    (cmd.flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE) !== 0 ? cmd.inDataType : IOMMU_HW_INFO_TYPE_DEFAULT;
  if (wanted !== IOMMU_HW_INFO_TYPE_DEFAULT && wanted !== info.type) {
    throw new IommufdError('EOPNOTSUPP', `the driver has no hw info of type ${wanted}`);
  }
  if (cmd.dataLen > 0) {
    const data = cmd.data;
    if (!data || data.length < cmd.dataLen)
      throw new IommufdError('EFAULT', 'data buffer is smaller than data_len');
    data.fill(0, 0, cmd.dataLen);
    data.set(info.data.subarray(0, Math.min(cmd.dataLen, info.data.length)));
  }
  return {
    dataLen: info.data.length,
    dataType: info.type,
    capabilities: info.capabilities,
    maxPasidLog2: device.hw.pasidLog2,
  };
}
