/** SMMUv3 event record types and classes (SMMU spec 7.3; docs/queues.md). */
export const F_TRANSLATION = 0x10;
export const F_ADDR_SIZE = 0x11;
export const F_ACCESS = 0x12;
export const F_PERMISSION = 0x13;
export const C_BAD_CD = 0x0a;
export const C_BAD_SUBSTREAMID = 0x08;
export const F_CD_FETCH = 0x09;
export const F_WALK_EABT = 0x0b;
export const C_BAD_STREAMID = 0x02;
export const F_STREAM_DISABLED = 0x06;

/** Event record CLASS field: what the SMMU was doing when it faulted. */
export const CLASS_CD = 0;
export const CLASS_TTD = 1;
export const CLASS_IN = 2;

/** Stream table entry fetch aborted; like F_CD_FETCH and F_WALK_EABT it records FetchAddr[51:3]. */
export const F_STE_FETCH = 0x03;
