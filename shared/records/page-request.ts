/**
 * What every record of a PCIe page request carries, whichever queue it travels on (PCIe PRI): the
 * SMMUv3 PRI queue entry (priq-entry.ts), the host's page request (host/iommu/page-request.ts),
 * the VT-d page request descriptor (vtd-prq-entry.ts) each encode these fields their own way.
 *   PRG index   9 bits: a device has at most 512 page-request groups open.
 *   Stop Marker Last set, neither Read nor Write, and a PASID: the device says it has stopped using
 *               the PASID. It opens no group and wants no response.
 */

/** Page-request group indices per device (the 9-bit PRG index). */
export const PRG_INDICES = 512;
export const PRG_INDEX_MASK = PRG_INDICES - 1;

/**
 * The PASID a request without one translates in: the RID's own address space (SMMUv3 SSV=0 reads
 * CD 0; VT-d scalable mode's RID_PASID).
 */
export const RID_PASID = 0;

/** The fields of a page request the Stop Marker rule reads (a PriqEntry or a PageRequest). */
export interface StopMarkerFields {
  last: boolean;
  read: boolean;
  write: boolean;
  /** A PASID came with the request. */
  ssv: boolean;
}

/** A Stop PASID marker: Last with neither Read nor Write, and a PASID (SMMU spec 8.1). */
export function isStopMarker(r: Readonly<StopMarkerFields>): boolean {
  return r.last && !r.read && !r.write && r.ssv;
}
