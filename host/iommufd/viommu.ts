/**
 * vIOMMU and vDEVICE objects (iommufd viommu.c): a vIOMMU is a driver's per-VM IOMMU instance over a
 * nest-parent HWPT, which it holds; a vDEVICE gives a bound device its virtual ID on one vIOMMU
 * and holds the vIOMMU. vEVENTQs hang off the vIOMMU, one per type.
 */
import type { IommuDevice, ViommuState } from '../iommu/iommu-ops.ts';
import type { DeviceObject } from './device.ts';
import type { HwQueueObject } from './hw-queue.ts';
import type { HwptPaging } from './hwpt.ts';
import { IommufdObject } from './object.ts';
import type { VeventqObject } from './veventq.ts';

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
