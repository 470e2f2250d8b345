/**
 * HW_QUEUE objects (iommufd viommu.c): a queue the guest's vIOMMU hardware reads directly from
 * guest memory, at a range of the nesting parent's IOAS. The range is pinned and locked while the
 * queue lives (IOAS_UNMAP over it is EBUSY). A queue holds its vIOMMU, and queue k holds queue
 * k-1, so they are destroyed in descending order.
 */
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import type { Ioas, RangeLock } from './ioas.ts';
import { U64_MAX } from './iova.ts';
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

export interface HwQueueAllocCmd {
  flags: number;
  viommuId: number;
  type: number;
  index: number;
  nestingParentIova: bigint;
  length: bigint;
}

/**
 * IOMMU_HW_QUEUE_ALLOC (viommu.c): a guest queue at `nestingParentIova` of the vIOMMU's
 * nesting-parent IOAS, pinned and locked (IOAS_UNMAP over it is EBUSY) until the queue is destroyed.
 * iommufd.ts's table has already checked the arguments.
 */
export function hwQueueAllocIoctl(ctx: IommufdCtx, cmd: HwQueueAllocCmd): { hwQueueId: number } {
  const { type, index, nestingParentIova: iova, length } = cmd;
  if (iova + length - 1n > U64_MAX)
    throw new IommufdError('EOVERFLOW', 'nesting_parent_iova + length - 1 overflows');
  const viommu = ctx.table.get<ViommuObject>(cmd.viommuId, 'VIOMMU');
  const ops = viommu.parent.domain.ops;
  if (ops.hwQueueType === 0 || type !== ops.hwQueueType) {
    throw new IommufdError('EOPNOTSUPP', `the driver has no HW queue of type 0x${type.toString(16)}`);
  }
  const ioas = viommu.parent.ioas;
  const queue = ctx.table.create(() => {
    ctx.injector.check('pin');
    const lock = ioas.lockRange(iova, length);
    const errno = ops.checkHwQueue(viommu.state, index, (i) => viommu.hwQueues[i] !== undefined);
    if (errno) {
      ioas.unlockRange(lock);
      throw new IommufdError(errno, `the driver refused HW queue index ${index}`);
    }
    return new HwQueueObject(viommu, index, index > 0 ? viommu.hwQueues[index - 1] : undefined, ioas, lock);
  });
  return { hwQueueId: queue.id };
}
