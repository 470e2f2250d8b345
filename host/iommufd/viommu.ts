/**
 * vIOMMU and vDEVICE objects (iommufd viommu.c): a vIOMMU is a driver's per-VM IOMMU instance over a
 * nest-parent HWPT, which it holds; a vDEVICE gives a bound device its virtual ID on one vIOMMU
 * and holds the vIOMMU. vEVENTQs hang off the vIOMMU, one per type.
 */
import type { IommuDevice, ViommuState } from '../iommu/iommu-ops.ts';
import type { IommufdCtx } from './context.ts';
import type { DeviceObject } from './device.ts';
import { IommufdError } from './errors.ts';
import type { HwQueueObject } from './hw-queue.ts';
import type { HwptPaging } from './hwpt.ts';
import { driverCall } from './ioctl.ts';
import { IommufdObject } from './object.ts';
import type { VeventqObject } from './veventq.ts';

const NO_DATA = new Uint8Array(0);

export class ViommuObject extends IommufdObject {
  readonly type = 'VIOMMU';
  /** vDEVICEs by virt_id. */
  readonly vdevices = new Map<bigint, VdeviceObject>();
  readonly veventqs = new Map<number, VeventqObject>();
  /** HW queues by index. */
  readonly hwQueues: (HwQueueObject | undefined)[] = [];

  constructor(
    readonly parent: HwptPaging,
    readonly instance: object,
    readonly state: ViommuState,
  ) {
    super();
    parent.hold();
  }

  /** The physical devices of this vIOMMU's vDEVICEs, by virt_id (for invalidation). */
  devicesByVirtId(): Map<bigint, IommuDevice> {
    const out = new Map<bigint, IommuDevice>();
    for (const [virtId, vdev] of this.vdevices) out.set(virtId, vdev.device.hw);
    return out;
  }

  override destroy(): void {
    this.parent.put();
  }
}

export class VdeviceObject extends IommufdObject {
  readonly type = 'VDEVICE';

  constructor(
    readonly viommu: ViommuObject,
    readonly device: DeviceObject,
    readonly virtId: bigint,
  ) {
    super();
    viommu.hold();
    viommu.vdevices.set(virtId, this);
    device.vdevice = this;
  }

  override destroy(): void {
    this.viommu.vdevices.delete(this.virtId);
    if (this.device.vdevice === this) this.device.vdevice = undefined;
    this.viommu.put();
  }
}

/**
 * A driver reports a vIOMMU event (iommufd_viommu_report_event): queued on the vIOMMU's vEVENTQ of
 * that type. False when there is none (or it is going away).
 */
export function reportEvent(viommu: ViommuObject, type: number, data: Uint8Array): boolean {
  const queue = viommu.veventqs.get(type);
  if (!queue || queue.users === 0) return false;
  queue.report(data);
  return true;
}

/** The same, for a caller that must hear about a missing queue: EOPNOTSUPP. */
export function reportVevent(viommu: ViommuObject, type: number, data: Uint8Array): void {
  if (!reportEvent(viommu, type, data)) {
    throw new IommufdError('EOPNOTSUPP', `no vEVENTQ of type 0x${type.toString(16)}`);
  }
}

// --- the vIOMMU ioctls (viommu.c); iommufd.ts's table has already checked their arguments ----------

export interface ViommuAllocCmd {
  flags: number;
  type: number;
  devId: number;
  hwptId: number;
  data: Uint8Array | undefined;
}

/**
 * IOMMU_VIOMMU_ALLOC: the driver's vIOMMU of `type` over a NEST_PARENT HWPT, on the physical IOMMU
 * of the device. The driver's output data is copied back into `data`.
 */
export function viommuAllocIoctl(ctx: IommufdCtx, cmd: ViommuAllocCmd): { viommuId: number } {
  const { type, data } = cmd;
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  if (type !== device.hw.ops.viommuType)
    throw new IommufdError('EOPNOTSUPP', `the driver has no vIOMMU of type 0x${type.toString(16)}`);
  const parent = ctx.table.get<HwptPaging>(cmd.hwptId, 'HWPT_PAGING');
  if (!parent.nestParent) throw new IommufdError('EINVAL', 'a vIOMMU needs a NEST_PARENT HWPT');
  const viommu = ctx.table.create(() => {
    // The driver reports events through the object it belongs to, once it is built.
    let object: ViommuObject | undefined;
    const events = {
      report: (t: number, d: Uint8Array) => object !== undefined && reportEvent(object, t, d),
    };
    const state = driverCall(() =>
      device.hw.ops.allocViommu(device.hw, parent.domain, type, data ?? NO_DATA, events),
    );
    object = new ViommuObject(parent, device.hw.instance, state);
    return object;
  });
  if (data && viommu.state.outData) data.set(viommu.state.outData.subarray(0, data.length));
  return { viommuId: viommu.id };
}

/** IOMMU_VDEVICE_ALLOC: the device's virtual ID on a vIOMMU of its own physical IOMMU. */
export function vdeviceAllocIoctl(
  ctx: IommufdCtx,
  cmd: { viommuId: number; devId: number; virtId: bigint },
): { vdeviceId: number } {
  const viommu = ctx.table.get<ViommuObject>(cmd.viommuId, 'VIOMMU');
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  const { virtId } = cmd;
  if (device.hw.instance !== viommu.instance)
    throw new IommufdError('EINVAL', 'the device is behind another physical IOMMU');
  if (device.vdevice) throw new IommufdError('EEXIST', `device ${device.id} already has a vDEVICE`);
  if (viommu.vdevices.has(virtId))
    throw new IommufdError('EEXIST', `virt_id ${virtId} is taken on this vIOMMU`);
  const vdevice = ctx.table.create(() => new VdeviceObject(viommu, device, virtId));
  return { vdeviceId: vdevice.id };
}
