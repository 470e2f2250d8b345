/**
 * A paging domain as a driver builds it for a VM: the VM's stage 2 (its IOAS), as real IO page
 * tables in the driver's host-only table pool, kept in step with the IOAS by the registry's map and
 * unmap calls. Shared by the SMMUv3 and VT-d drivers; the walker translates every guest physical
 * address through it.
 */
import { IoPageTable, S2AP_READ, S2AP_WRITE, type TablePool } from './io-pagetable.ts';
import type { AddressRange, IommuOps, PagingDomain, PagingFlags } from './iommu-ops.ts';

export const VA_APERTURE: AddressRange = { start: 0n, last: (1n << 48n) - 1n };

/** The driver behind a stage 2: it invalidates what translates through one when a mapping goes. */
export interface Stage2Owner extends IommuOps {
  invalidateStage2(domain: PagingDomain): void;
}

export class Stage2Domain implements PagingDomain {
  readonly kind = 'paging';
  readonly pageSize = 4096n;
  readonly aperture = VA_APERTURE;
  readonly table: IoPageTable;
  mappedBytes = 0n;

  constructor(
    readonly ops: Stage2Owner,
    readonly flags: PagingFlags,
    pool: TablePool,
  ) {
    this.table = new IoPageTable(pool);
  }

  /** Map user page frames (host-physical page numbers for memory a VMM mapped from its RAM). */
  map(iova: bigint, length: bigint, frames: readonly number[], offset: bigint, writable: boolean): void {
    const first = Number(offset / 4096n);
    this.table.map(
      Number(iova),
      Number(length),
      (i) => frames[first + i] * 4096,
      S2AP_READ | (writable ? S2AP_WRITE : 0),
    );
    this.mappedBytes += length;
  }

  /** Unmap: every stream translating through this stage 2 is invalidated before this returns. */
  unmap(iova: bigint, length: bigint): void {
    this.table.unmap(Number(iova), Number(length));
    this.mappedBytes -= length;
    this.ops.invalidateStage2(this);
  }
}
