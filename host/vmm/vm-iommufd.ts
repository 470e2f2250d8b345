/**
 * One VM's /dev/iommu, the part every flavour's VMM sets up alike: guest RAM mapped into an IOAS
 * at GPA 0, its devices bound, a NEST_PARENT paging HWPT over the IOAS (the second stage), and a
 * fault queue. A flavour (vm-iommu.ts for SMMUv3, vtd-vm-iommu.ts for VT-d) adds how the guest's
 * first-stage tables become nested HWPTs and where they attach.
 *
 * Teardown detaches every attachment first, so every group still pending is answered INVALID
 * before the registry closes.
 */

import type { DeviceContext } from '../../shared/control.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import type { HostMemory } from '../iommu/host-memory.ts';
import type { IommuDevice } from '../iommu/iommu-ops.ts';
import { IommufdError } from '../iommufd/errors.ts';
import type { FaultFd, FaultObject } from '../iommufd/fault.ts';
import { IOMMU_HWPT_ALLOC_NEST_PARENT } from '../iommufd/hwpt.ts';
import { Iommufd } from '../iommufd/iommufd.ts';
import { mapGuestRam } from './guest-ram.ts';
import { errnoOutcome, type RegistryTeardownOp, type VmRegistry } from './viommu-model.ts';

/** The teardown operations on attachments: carried out here, on the attachments a flavour names. */
export type AttachmentTeardownOp = Exclude<RegistryTeardownOp, 'fault-fd-close' | 'unbind'>;

export abstract class VmIommufd implements VmRegistry {
  readonly fd = new Iommufd();
  readonly faultFd: FaultFd;
  readonly fault: FaultObject;
  protected readonly faultId: number;
  /** iommufd DEVICE of each of the guest's devices, by the guest's index (its vSID or RID). */
  protected readonly devIds: number[];
  /** The NEST_PARENT paging HWPT over guest RAM: the VM's stage 2. */
  protected readonly s2: number;
  private readonly ramBase: number;
  private faultFdOpen = true;
  private unbound = false;

  constructor(
    private readonly host: HostMemory,
    memory: GuestMemory,
    /** Physical StreamID of each of the guest's devices. */
    private readonly streamIds: readonly number[],
    /** The host driver's device for the guest's device `index`. */
    device: (streamId: number, index: number) => IommuDevice,
  ) {
    const fd = this.fd;
    const { ioasId, ramBase } = mapGuestRam(fd, host, memory);
    this.ramBase = ramBase;
    this.devIds = streamIds.map(
      (streamId, index) => fd.bindDevice({ device: device(streamId, index) }).devId,
    );
    this.s2 = fd.hwptAlloc({
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
      devId: this.devIds[0],
      ptId: ioasId,
    }).hwptId;
    const { faultId, faultFd } = fd.faultQueueAlloc();
    this.faultId = faultId;
    this.faultFd = faultFd;
    this.fault = fd.lookup<FaultObject>(faultId, 'FAULT');
  }

  abstract installContexts(contexts: readonly DeviceContext[]): void;

  /** Detach every attachment (pending groups are answered INVALID). */
  protected abstract detachAll(): void;

  /**
   * Move every attachment onto a fresh nested HWPT over the same first-stage table, then destroy
   * the old one: the device goes on, its faults in flight do not.
   */
  protected abstract replaceAll(): void;

  /** Every nested HWPT the VM's attachments use. */
  protected abstract nestedHwpts(): Iterable<number>;

  get devices(): number {
    return this.devIds.length;
  }

  get objectCount(): number {
    return this.fd.objects().length;
  }

  /** The guest's index of iommufd DEVICE `devId`, or -1. */
  vsidOf(devId: number): number {
    return this.devIds.indexOf(devId);
  }

  /** Physical StreamID of iommufd DEVICE `devId`, or -1. */
  streamIdOf(devId: number): number {
    const index = this.devIds.indexOf(devId);
    return index < 0 ? -1 : this.streamIds[index];
  }

  teardownOp(op: RegistryTeardownOp): string {
    switch (op) {
      case 'fault-fd-close':
        this.closeFaultFd();
        return 'done';
      case 'unbind':
        for (const devId of this.devIds) this.fd.unbindDevice({ devId });
        this.unbound = true;
        return 'done';
      default:
        return this.attachmentOp(op);
    }
  }

  /** Detach, replace or destroy every attachment of the VM; 'done' or the errno answered. */
  private attachmentOp(op: AttachmentTeardownOp): string {
    switch (op) {
      case 'detach':
        this.detachAll();
        return 'done';
      case 'replace':
        this.replaceAll();
        return 'done';
      case 'hwpt-destroy':
        return errnoOutcome(() => {
          for (const id of this.nestedHwpts()) this.fd.destroy({ id });
        });
    }
  }

  /**
   * One cache-invalidation entry through HWPT_INVALIDATE on `hwptId` (a nested HWPT, or the
   * vIOMMU): done when this returns. False when the driver refused it.
   */
  protected invalidateEntry(hwptId: number, dataType: number, entryLen: number, data: Uint8Array): boolean {
    try {
      this.fd.hwptInvalidate({ hwptId, dataType, entryLen, entryNum: 1, data });
      return true;
    } catch (error) {
      if (error instanceof IommufdError) return false;
      throw error;
    }
  }

  /** Detach everything (pending groups are answered INVALID), then close the fd and the registry. */
  teardown(): void {
    if (!this.fd.objects().length) return;
    if (!this.unbound) this.detachAll();
    this.closeFaultFd();
    this.closeFlavour();
    this.fd.close();
    this.host.unregister(this.ramBase);
  }

  /** Close what the flavour opened besides the fault fd (a vEVENTQ fd). */
  protected closeFlavour(): void {}

  private closeFaultFd(): void {
    if (!this.faultFdOpen) return;
    this.faultFdOpen = false;
    this.faultFd.close();
  }
}
