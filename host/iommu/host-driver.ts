/**
 * What the host's IOMMU drivers over the physical IOMMU model (smmuv3-ops.ts, vtd-ops.ts) do alike:
 * their devices are PCIe functions behind one physical IOMMU, their paging domains are stage-2
 * tables in a host-only pool, they offer no direct-access guest queues, and their fault plumbing
 * (IOPF routes, flushes, PRI disable) goes straight to the Iommu model. A flavour adds its nested
 * domains, attach and detach, its vIOMMU and its cache invalidation.
 */
import { type Errno, ErrnoError } from './errno.ts';
import { TablePool } from './io-pagetable.ts';
import type { Iommu } from './iommu.ts';
import type { AddressRange, IommuDevice, IommuOps, PagingDomain, PagingFlags } from './iommu-ops.ts';
import type { IopfHandler } from './iopf.ts';
import { Stage2Domain, type Stage2Owner } from './stage2-domain.ts';

/** A PCIe function behind a physical IOMMU, as the host driver knows it. */
export class PhysicalDevice implements IommuDevice {
  readonly group = {};
  readonly dirtyTracking = false;
  readonly reservedRegions: readonly AddressRange[] = [];

  constructor(
    readonly ops: IommuOps & { readonly iommu: Iommu },
    readonly streamId: number,
    readonly pasidLog2: number,
  ) {}

  get instance(): object {
    return this.ops.iommu;
  }
}

export abstract class HostIommuDriver {
  /** No direct-access guest queues (on an SMMU, that is the Tegra CMDQV extension). */
  readonly hwQueueType = 0;
  /** Host-only memory for every stage-2 table of this IOMMU. */
  protected readonly pool: TablePool;

  constructor(
    readonly iommu: Iommu,
    tablePages: number,
    /** How messages name the flavour ("SMMUv3 paging domains") and its hardware ("this SMMU"). */
    private readonly names: { flavour: string; unit: string },
  ) {
    this.pool = new TablePool(tablePages);
  }

  /** A stage-2 paging domain: the default format only, no dirty tracking. */
  allocPaging(
    this: HostIommuDriver & Stage2Owner,
    _device: IommuDevice,
    flags: PagingFlags,
    dataType: number,
    data: Uint8Array,
  ): PagingDomain {
    if (dataType !== 0 || data.length !== 0)
      throw new ErrnoError('EOPNOTSUPP', `${this.names.flavour} paging domains take no data`);
    if (flags.dirtyTracking)
      throw new ErrnoError('EOPNOTSUPP', `no dirty tracking on this ${this.names.unit}`);
    return new Stage2Domain(this, flags, this.pool);
  }

  checkHwQueue(): Errno | undefined {
    return 'EOPNOTSUPP';
  }

  setIopfHandler(device: IommuDevice, pasid: number | undefined, handler: IopfHandler | undefined): void {
    this.iommu.setFaultHandler(device.streamId, pasid, handler);
  }

  flushFaults(device: IommuDevice, pasid: number | undefined): void {
    this.iommu.flushFaults(device.streamId, pasid);
  }

  disablePri(device: IommuDevice): void {
    this.iommu.disablePri(device.streamId);
  }
}
