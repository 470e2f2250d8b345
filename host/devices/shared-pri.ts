/**
 * The PRI capability of a function shared between VMs (each VM drives its own interface on it,
 * with its own PASIDs and work queue, as with assignable device interfaces). The function has one
 * Outstanding Page Request Allocation and one PRG index space, so its interfaces share them; a PRG
 * response reaches the interface whose request took that index. The IOMMU sees one endpoint.
 */
import { PRG_INDICES } from '../../shared/records/page-request.ts';
import { PRG_FAILURE, type PriEndpoint } from '../iommu/page-request.ts';
import { PriCapability } from './pri-capability.ts';

export class SharedPri implements PriEndpoint {
  readonly capability: PriCapability;
  private readonly owners: (PriEndpoint | undefined)[] = new Array(PRG_INDICES).fill(undefined);

  constructor(credits: number) {
    this.capability = new PriCapability(credits);
  }

  /** Interface `endpoint` sent the group of `prgIndex`: its response goes there. */
  claim(prgIndex: number, endpoint: PriEndpoint): void {
    this.owners[prgIndex] = endpoint;
  }

  prgResponse(pasid: number, ssv: boolean, prgIndex: number, code: number): void {
    const owner = prgIndex >= 0 && prgIndex < PRG_INDICES ? this.owners[prgIndex] : undefined;
    if (!owner) {
      // No interface sent it: the capability latches UPRGI.
      this.capability.complete(prgIndex, code === PRG_FAILURE);
      return;
    }
    this.owners[prgIndex] = undefined;
    owner.prgResponse(pasid, ssv, prgIndex, code);
  }
}
