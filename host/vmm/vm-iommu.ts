/**
 * One VM's /dev/iommu, set up the way a VMM with an accelerated vSMMU does it (QEMU smmuv3-accel):
 * guest RAM mapped into an IOAS at GPA 0 (stage 2), a NEST_PARENT paging HWPT over it, a fault
 * queue, a vIOMMU with a vDEVICE per assigned device (virt_id = the guest's StreamID), and, once
 * the guest has installed its STEs, a nested HWPT per device carrying the vSTE and routing page
 * faults to the fault queue. Teardown detaches every device first, so every group still pending
 * is answered INVALID before the registry closes.
 */
import type { DeviceContext } from '../../shared/control.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import { CMDQ_ENTRY_BYTES } from '../../shared/records/cmdq-entry.ts';
import { termModelOf } from '../../shared/smmuv3-idr.ts';
import {
  encodeVste,
  IOMMU_HWPT_DATA_ARM_SMMUV3,
  IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
  IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
  IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
  type Smmuv3Ops,
} from '../iommu/smmuv3-ops.ts';
import { IOMMU_HWPT_FAULT_ID_VALID } from '../iommufd/hwpt.ts';
import type { VeventqFd } from '../iommufd/veventq.ts';
import { VmIommufd } from './vm-iommufd.ts';
import type { VdeviceMap } from './vsmmu.ts';

/** Events the host queues for the VMM before it reads them; more are lost (and say so). */
const VEVENTQ_DEPTH = 256;
/** struct iommu_hw_info_arm_smmuv3: flags, __reserved, idr[6], iidr, aidr; idr[0] at byte 8. */
const HW_INFO_BYTES = 40;
const HW_INFO_IDR0 = 8;

export interface AssignedDevice {
  /** Physical StreamID. */
  streamId: number;
  hasPasids: boolean;
  /** A platform device that stalls (STE.S1STALLD clear) rather than using PRI. */
  stall: boolean;
}

export class VmIommu extends VmIommufd implements VdeviceMap {
  /** The vIOMMU's event queue: the stage-1 events of terminated transactions. */
  readonly veventqFd: VeventqFd;
  /** The nested HWPT each device is attached to (after installContexts), and its vSTE. */
  private readonly nested: number[] = [];
  private readonly vstes: Uint8Array[] = [];
  private readonly viommuId: number;
  /**
   * The host SMMU's IDR0.TERM_MODEL, from IOMMU_GET_HW_INFO: a vSMMU can give its guest RAZ/WI
   * terminations only where the host can (QEMU's smmuv3-accel copies the field the same way).
   */
  readonly termModel: 0 | 1;

  constructor(
    ops: Smmuv3Ops,
    memory: GuestMemory,
    private readonly assigned: readonly AssignedDevice[],
  ) {
    super(
      ops.iommu.host,
      memory,
      assigned.map((d) => d.streamId),
      (streamId, i) => ops.device(streamId, assigned[i].hasPasids ? 20 : 0, assigned[i].stall),
    );
    const fd = this.fd;
    const hwInfo = new Uint8Array(HW_INFO_BYTES);
    fd.getHwInfo({ devId: this.devIds[0], dataLen: HW_INFO_BYTES, data: hwInfo });
    this.termModel = termModelOf(new DataView(hwInfo.buffer).getUint32(HW_INFO_IDR0, true));
    this.viommuId = fd.viommuAlloc({
      type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
      devId: this.devIds[0],
      hwptId: this.s2,
    }).viommuId;
    for (const [vsid, devId] of this.devIds.entries()) {
      fd.vdeviceAlloc({ viommuId: this.viommuId, devId, virtId: BigInt(vsid) });
    }
    this.veventqFd = fd.veventqAlloc({
      viommuId: this.viommuId,
      type: IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
      veventqDepth: VEVENTQ_DEPTH,
    }).veventqFd;
  }

  /** The guest installed its STEs: a nested HWPT per device with its vSTE, attached to the RID. */
  installContexts(contexts: readonly DeviceContext[]): void {
    contexts.forEach((ctx, vsid) => {
      this.vstes[vsid] = encodeVste(ctx.cdTableGpa, ctx.cdLog2);
      this.nested[vsid] = this.nestedHwpt(vsid);
      this.fd.attachDevice({ devId: this.devIds[vsid], ptId: this.nested[vsid] });
    });
  }

  private nestedHwpt(vsid: number): number {
    return this.fd.hwptAlloc({
      flags: IOMMU_HWPT_FAULT_ID_VALID,
      devId: this.devIds[vsid],
      ptId: this.viommuId,
      dataType: IOMMU_HWPT_DATA_ARM_SMMUV3,
      data: this.vstes[vsid],
      faultId: this.faultId,
    }).hwptId;
  }

  /** A fresh nested HWPT with the same vSTE for each device. */
  protected replaceAll(): void {
    this.nested.forEach((old, vsid) => {
      this.nested[vsid] = this.nestedHwpt(vsid);
      this.fd.replaceDevice({ devId: this.devIds[vsid], ptId: this.nested[vsid] });
      this.fd.destroy({ id: old });
    });
  }

  protected nestedHwpts(): Iterable<number> {
    return this.nested;
  }

  protected detachAll(): void {
    for (const devId of this.devIds) this.fd.detachDevice({ devId });
  }

  protected override closeFlavour(): void {
    this.veventqFd.close();
  }

  /**
   * One guest invalidation command (16 bytes) through the vIOMMU (HWPT_INVALIDATE on the vIOMMU):
   * done when this returns. False when the driver refused it.
   */
  invalidate(command: Uint8Array): boolean {
    return this.invalidateEntry(
      this.viommuId,
      IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
      CMDQ_ENTRY_BYTES,
      command,
    );
  }

  stalls(devId: number): boolean {
    const vsid = this.devIds.indexOf(devId);
    return vsid >= 0 && this.assigned[vsid].stall;
  }
}
