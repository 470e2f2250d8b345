/**
 * SMMU_IDR0 fields (SMMU spec 6.3.1) the project uses: what the host's SMMUv3 driver reports in
 * IOMMU_GET_HW_INFO (struct iommu_hw_info_arm_smmuv3, idr[0]) and what a vSMMU advertises to its
 * guest. Fields not listed read as 0.
 */

export const IDR0_S2P = 1 << 0;
export const IDR0_S1P = 1 << 1;
/** TTF [3:2] = 0b10: AArch64 translation tables. */
export const IDR0_TTF_AARCH64 = 2 << 2;
export const IDR0_ATS = 1 << 10;
export const IDR0_PRI = 1 << 16;
/** STALL_MODEL [25:24]: 0b00 stall and terminate supported, 0b01 no stall, 0b10 stall forced. */
export const IDR0_STALL_MODEL_SHIFT = 24;
export const IDR0_STALL_MODEL_MASK = 3 << IDR0_STALL_MODEL_SHIFT;
/**
 * TERM_MODEL [26]: 0, a terminated transaction aborts or completes RAZ/WI as its CD.A (or
 * CMD_RESUME's Ab) says; 1, it always aborts (RAZ/WI is not supported).
 */
export const IDR0_TERM_MODEL = 1 << 26;

/** IDR0.TERM_MODEL of `idr0`. */
export function termModelOf(idr0: number): 0 | 1 {
  return (idr0 & IDR0_TERM_MODEL) !== 0 ? 1 : 0;
}
