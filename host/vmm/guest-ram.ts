/**
 * What every VMM does first with its /dev/iommu, whatever the vIOMMU flavour: guest RAM becomes
 * host memory (its pages are the host-physical pages of the VM's region), the VMM maps it, and an
 * IOAS maps it at GPA 0: the VM's stage 2.
 */
import type { GuestMemory } from '../../shared/guest-memory.ts';
import type { HostMemory } from '../iommu/host-memory.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../iommufd/ioas.ts';
import type { Iommufd } from '../iommufd/iommufd.ts';

/** Returns the IOAS and the host-physical base of the RAM (unregister it on teardown). */
export function mapGuestRam(
  fd: Iommufd,
  host: HostMemory,
  memory: GuestMemory,
): { ioasId: number; ramBase: number } {
  const ramBase = host.register(memory);
  const userVa = fd.memory.mmap(BigInt(memory.size), { hpa: ramBase });
  const { ioasId } = fd.ioasAlloc();
  fd.ioasMap({
    flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
    ioasId,
    userVa,
    length: BigInt(memory.size),
    iova: 0n,
  });
  return { ioasId, ramBase };
}
