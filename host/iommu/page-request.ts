/**
 * Page requests and page-request groups as the IOMMU sees them (PCIe PRI; docs/queues.md),
 * and the codes of a PRG response.
 */

/** PCIe PRG Response codes (Linux IOMMU_PAGE_RESP_* map 1:1 onto these). */
export const PRG_SUCCESS = 0x0;
export const PRG_INVALID = 0x1;
export const PRG_FAILURE = 0xf;

export const MAX_GROUP_REQUESTS = 64;

/** One Page Request Message as a device emits it. Reused by the sender; copy what you keep. */
export interface PageRequest {
  streamId: number;
  pasid: number;
  /** A PASID prefix was present (SSV). */
  ssv: boolean;
  address: number;
  prgIndex: number;
  read: boolean;
  write: boolean;
  exec: boolean;
  privileged: boolean;
  last: boolean;
}

export function newPageRequest(): PageRequest {
  return {
    streamId: 0,
    pasid: 0,
    ssv: false,
    address: 0,
    prgIndex: 0,
    read: false,
    write: false,
    exec: false,
    privileged: false,
    last: false,
  };
}

/** The side of a device that takes PRG responses (its PRI capability). */
export interface PriEndpoint {
  prgResponse(pasid: number, ssv: boolean, prgIndex: number, code: number): void;
  /** PRI Enable cleared: no more page requests; a response arriving later is ignored and counted. */
  disablePri?(): void;
}
