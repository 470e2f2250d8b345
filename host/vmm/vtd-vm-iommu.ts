/**
 * One VM's /dev/iommu, set up the way a VMM with a VT-d vIOMMU in scalable mode does it: guest RAM
 * mapped into an IOAS at GPA 0, a NEST_PARENT paging HWPT over it (the second stage), a fault
 * queue, and, once the guest has written its PASID tables, a nested HWPT per (device, PASID) with
 * that PASID's first-stage table, attached to the RID (PASID 0) or to the PASID. There is no
 * vIOMMU object: VT-d invalidations go to the nested HWPTs.
 *
 * The guest's PASID table is read from guest RAM, as a VMM shadows it on the guest's PASID-cache
 * invalidation. Its entries use the sandbox's 16-byte context format (shared/stage1-format.ts):
 * V, and the first-stage table's address. An entry the registry refuses (a PASID another VM holds,
 * a bad table address) is counted, never fatal.
 *
 * Routing: with `ioasid-owner` every nested HWPT names this VM's fault queue (its fault_id). With
 * `device-owner` only the RID's HWPT does, and a PASID's page requests fall back to whoever holds
 * the RID: the owner of the device, as with a per-device fault region.
 */
import type { DeviceContext } from '../../shared/control.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import {
  CD_BYTES,
  CD_HIGH_RES0,
  CD_VALID,
  PTE_ADDR_LOW_MASK,
  PTE_HIGH_ADDR_MASK,
} from '../../shared/stage1-format.ts';
import {
  encodeVtdS1,
  encodeVtdS1Invalidate,
  IOMMU_HWPT_DATA_VTD_S1,
  IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
  type VtdOps,
} from '../iommu/vtd-ops.ts';
import { IommufdError } from '../iommufd/errors.ts';
import { IOMMU_HWPT_ALLOC_PASID, IOMMU_HWPT_FAULT_ID_VALID } from '../iommufd/hwpt.ts';
import { VmIommufd } from './vm-iommufd.ts';

export interface VtdAssignedDevice {
  /** Physical StreamID (the function's RID). */
  streamId: number;
  /** This VM holds the function's RID (PASID 0); false for an interface on a shared function. */
  ownsRid: boolean;
}

/** Largest PASID table a guest may give: one page of 16-byte entries. */
const MAX_PASID_LOG2 = 8;
const TWO_32 = 0x1_0000_0000;

export class VtdVmIommu extends VmIommufd {
  /** PASID-table entries the registry refused (another VM's PASID, a bad table address). */
  rejectedEntries = 0;
  /** Nested HWPT of (guest device index, PASID), as index * 2^20 + PASID. */
  private readonly hwpts = new Map<number, number>();
  /** First-stage table address of each (device, PASID) with a nested HWPT, keyed the same way. */
  private readonly ttbs = new Map<number, number>();
  private readonly invalidation = new Uint8Array(24);

  constructor(
    ops: VtdOps,
    private readonly memory: GuestMemory,
    private readonly assigned: readonly VtdAssignedDevice[],
    private readonly routing: 'ioasid-owner' | 'device-owner',
  ) {
    super(
      ops.iommu.host,
      memory,
      assigned.map((d) => d.streamId),
      (streamId) => ops.device(streamId, 20),
    );
  }

  /** Shadow each device's PASID table: a nested HWPT per valid entry, attached to its PASID. */
  installContexts(contexts: readonly DeviceContext[]): void {
    contexts.forEach((ctx, index) => {
      const entries = 2 ** Math.min(ctx.cdLog2, MAX_PASID_LOG2);
      for (let pasid = 0; pasid < entries; pasid++) {
        const gpa = ctx.cdTableGpa + pasid * CD_BYTES;
        if (!this.memory.contains(gpa, CD_BYTES)) break;
        const low = Atomics.load(this.memory.words, gpa >>> 2);
        if ((low & CD_VALID) === 0) continue;
        const high = this.memory.words[(gpa >>> 2) + 1];
        if ((high & CD_HIGH_RES0) !== 0) {
          this.rejectedEntries++;
          continue;
        }
        this.attachPasid(
          index,
          pasid,
          ((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * TWO_32,
        );
      }
    });
  }

  private attachPasid(index: number, pasid: number, ttb: number): void {
    const devId = this.devIds[index];
    const rid = pasid === 0;
    if (rid && !this.assigned[index].ownsRid) {
      this.rejectedEntries++;
      return;
    }
    try {
      const hwptId = this.nestedHwpt(index, pasid, ttb);
      try {
        this.fd.attachDevice(rid ? { devId, ptId: hwptId } : { devId, ptId: hwptId, pasid });
      } catch (error) {
        this.fd.destroy({ id: hwptId });
        throw error;
      }
      this.ttbs.set(index * 0x10_0000 + pasid, ttb);
      this.hwpts.set(index * 0x10_0000 + pasid, hwptId);
    } catch (error) {
      if (!(error instanceof IommufdError)) throw error;
      this.rejectedEntries++;
    }
  }

  /** A nested HWPT for (device, PASID) over the first-stage table at `ttb`. */
  private nestedHwpt(index: number, pasid: number, ttb: number): number {
    const routed = this.routing === 'ioasid-owner' || pasid === 0;
    return this.fd.hwptAlloc({
      flags: IOMMU_HWPT_ALLOC_PASID | (routed ? IOMMU_HWPT_FAULT_ID_VALID : 0),
      devId: this.devIds[index],
      ptId: this.s2,
      dataType: IOMMU_HWPT_DATA_VTD_S1,
      data: encodeVtdS1(ttb),
      faultId: routed ? this.faultId : 0,
    }).hwptId;
  }

  /** A fresh nested HWPT over the same first-stage table for each attached (device, PASID). */
  protected replaceAll(): void {
    for (const [key, old] of this.hwpts) {
      const hwptId = this.nestedHwpt(
        Math.floor(key / 0x10_0000),
        key % 0x10_0000,
        this.ttbs.get(key) as number,
      );
      this.fd.replaceDevice({ ...this.attachTarget(key), ptId: hwptId });
      this.fd.destroy({ id: old });
      this.hwpts.set(key, hwptId);
    }
  }

  protected nestedHwpts(): Iterable<number> {
    return this.hwpts.values();
  }

  protected detachAll(): void {
    for (const key of this.hwpts.keys()) this.fd.detachDevice(this.attachTarget(key));
  }

  /** The DEVICE and PASID (none for the RID) of a (device, PASID) key. */
  private attachTarget(key: number): { devId: number; pasid?: number } {
    const devId = this.devIds[Math.floor(key / 0x10_0000)];
    const pasid = key % 0x10_0000;
    return pasid === 0 ? { devId } : { devId, pasid };
  }

  /**
   * A guest PASID-based IOTLB invalidation: `pages` pages from `address` of `pasid` (undefined:
   * all of it), in every nested HWPT of that PASID. False when no HWPT has the PASID or the driver
   * refused the request.
   */
  invalidate(pasid: number, address: number, pages: number | undefined): boolean {
    let done = false;
    for (let index = 0; index < this.devIds.length; index++) {
      const hwptId = this.hwpts.get(index * 0x10_0000 + pasid);
      if (hwptId === undefined) continue;
      this.invalidation.set(encodeVtdS1Invalidate(address, pages));
      if (!this.invalidateEntry(hwptId, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, 24, this.invalidation))
        return false;
      done = true;
    }
    return done;
  }

  override teardown(): void {
    super.teardown();
    this.hwpts.clear();
  }
}
