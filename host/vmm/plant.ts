import type { FaultRouter, IopfRoutes } from '../iommu/fault-router.ts';
import type { Iommu } from '../iommu/iommu.ts';
import type { IopfHandler } from '../iommu/iopf.ts';
import type { PriEndpoint } from '../iommu/page-request.ts';

/**
 * Test-only bug planting: the checker must be shown to catch what it claims, so a test (or the CLI,
 * through the IOASID_SANDBOX_PLANT environment variable) can make the host misbehave on purpose
 * at the n-th occurrence of an event. Never set in normal runs.
 *
 *   drop-response=n      the n-th page response to a device is lost on its way (the group is
 *                        marked answered, the device never hears): `group-unanswered`
 *   misroute-fault=n     the n-th page-request group goes to another stream's handler, i.e. to a
 *                        VM that does not own it: `fault-delivered-to-non-owner`
 *   stale-translation=n  from the n-th ranged IOTLB invalidation on, none takes effect, so DMA keeps
 *                        using translations the guest invalidated: `dma-data-mismatch`
 *   rid-fallback=n       from the n-th page-request group of a PASID without a route on, the group
 *                        goes to the RID's handler (issue 14's leak: on a shared function, another
 *                        VM's; on a PASID nobody owns, the RID holder's): `fault-delivered-to-non-owner`
 *
 * The routing bugs are a stand-in for the IOMMU's fault router (PlantedRoutes), installed in front
 * of the IOPF layer: the router itself has no test-only branch.
 */
export interface PlantedBugs {
  dropResponse?: number;
  misrouteFault?: number;
  staleTranslation?: number;
  ridFallback?: number;
}

const KEYS: Record<string, keyof PlantedBugs> = {
  'drop-response': 'dropResponse',
  'misroute-fault': 'misrouteFault',
  'stale-translation': 'staleTranslation',
  'rid-fallback': 'ridFallback',
};

/** Parse `drop-response=3,misroute-fault=1`; throws on an unknown name or a bad count. */
export function parsePlantedBugs(text: string | undefined): PlantedBugs {
  const bugs: PlantedBugs = {};
  if (!text) return bugs;
  for (const item of text.split(',')) {
    const [name, count] = item.split('=');
    const key = KEYS[name.trim()];
    const n = Number(count);
    if (!key || !Number.isInteger(n) || n < 1) {
      throw new Error(
        `IOASID_SANDBOX_PLANT: "${item}" is not one of ${Object.keys(KEYS).join(', ')}=<n >= 1>`,
      );
    }
    bugs[key] = n;
  }
  return bugs;
}

/** The fault router as the planted bugs bend it; every other answer is the real router's. */
export class PlantedRoutes implements IopfRoutes {
  private groups = 0;
  private unrouted = 0;
  private responses = 0;

  constructor(
    private readonly router: FaultRouter,
    private readonly bugs: PlantedBugs,
  ) {}

  handlerOf(streamId: number, pasid: number): IopfHandler | undefined {
    if (this.bugs.misrouteFault === ++this.groups) return this.router.otherStreamsHandler(streamId);
    const handler = this.router.handlerOf(streamId, pasid);
    const from = this.bugs.ridFallback;
    if (handler || pasid === 0 || from === undefined || ++this.unrouted < from) return handler;
    return this.router.ridHandlerOf(streamId);
  }

  endpointOf(streamId: number): PriEndpoint | undefined {
    return this.bugs.dropResponse === ++this.responses ? undefined : this.router.endpointOf(streamId);
  }
}

/** Plant `bugs` in `iommu`: the routing ones in front of its IOPF layer, a stale IOTLB in it. */
export function plantBugs(iommu: Iommu, bugs: PlantedBugs): void {
  if (bugs.misrouteFault !== undefined || bugs.ridFallback !== undefined || bugs.dropResponse !== undefined)
    iommu.iopf.routes = new PlantedRoutes(iommu.router, bugs);
  if (bugs.staleTranslation !== undefined) iommu.plantStaleTranslations(bugs.staleTranslation);
}
