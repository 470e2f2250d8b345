/**
 * HW_QUEUE objects (iommufd viommu.c): a queue the guest's vIOMMU hardware reads directly from
 * guest memory, at a range of the nesting parent's IOAS. The range is pinned and locked while the
 * queue lives (IOAS_UNMAP over it is EBUSY). A queue holds its vIOMMU, and queue k holds queue
 * k-1, so they are destroyed in descending order.
 */
import type { Ioas, RangeLock } from './ioas.ts';
import { IommufdObject } from './object.ts';
import type { ViommuObject } from './viommu.ts';

export class HwQueueObject extends IommufdObject {
  readonly type = 'HW_QUEUE';

  constructor(
    readonly viommu: ViommuObject,
    readonly index: number,
    readonly previous: HwQueueObject | undefined,
    private readonly ioas: Ioas,
    private readonly lock: RangeLock,
  ) {
    super();
    viommu.hold();
    previous?.hold();
    viommu.hwQueues[index] = this;
  }

  override destroy(): void {
    this.ioas.unlockRange(this.lock);
    if (this.viommu.hwQueues[this.index] === this) this.viommu.hwQueues[this.index] = undefined;
    this.previous?.put();
    this.viommu.put();
  }
}
