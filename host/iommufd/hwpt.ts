/**
 * HW_PAGETABLE objects (iommufd hw_pagetable.c): a paging HWPT is a driver domain that mirrors an
 * IOAS (every area mapped into it) and holds that IOAS; a nested HWPT is a driver domain over a
 * nest-parent paging HWPT, or allocated through a vIOMMU, and holds that. Either may route its
 * I/O page faults to a FAULT object, which it then holds.
 */
import type { NestedDomain, PagingDomain } from '../iommu/iommu-ops.ts';
import type { FaultObject } from './fault.ts';
import type { FaultInjector } from './fault-injector.ts';
import type { Area, Ioas, IoasDomain } from './ioas.ts';
import { IommufdObject } from './object.ts';
import type { ViommuObject } from './viommu.ts';

export const IOMMU_HWPT_ALLOC_NEST_PARENT = 1;
export const IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 2;
export const IOMMU_HWPT_FAULT_ID_VALID = 4;
export const IOMMU_HWPT_ALLOC_PASID = 8;

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
