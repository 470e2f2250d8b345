/**
 * The state of one open /dev/iommu (the kernel's struct iommufd_ctx), which every ioctl body gets:
 * the object table, the process it pins from, the fail-nth injector, the selftest mock IOMMU and
 * the RLIMIT_MODE option. The commands on the context itself are here too, as in main.c: DESTROY
 * and OPTION. Closing is a graph walk: selftest objects, then every device's unbind, then every
 * object only the table holds; what an open fd holds goes when that fd closes.
 */
import { type AttachContext, DeviceObject, unbind } from './device.ts';
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import { allocPaging, type HwptPaging } from './hwpt.ts';
import type { Ioas } from './ioas.ts';
import { ObjectTable } from './object-table.ts';
import { type MockIommu, SelftestObject } from './selftest.ts';
import type { UserMemory } from './user-memory.ts';

export const IOMMU_OPTION_RLIMIT_MODE = 0;
export const IOMMU_OPTION_HUGE_PAGES = 1;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;

const NO_DATA = new Uint8Array(0);

export class IommufdCtx implements AttachContext {
  readonly table: ObjectTable;
  /** IOMMU_OPTION_RLIMIT_MODE: 0 charges pinned pages to the user, 1 to the mm. */
  rlimitMode = 0n;
  /** close() ran: every ioctl is EBADF, and the last open fd to close finishes the teardown. */
  closed = false;

  constructor(
    readonly memory: UserMemory,
    readonly injector: FaultInjector,
    /** The selftest mock IOMMU behind every TEST_MOCK_DOMAIN device. */
    readonly mock: MockIommu,
    /** CAP_SYS_RESOURCE, needed to SET the RLIMIT_MODE option. */
    readonly capSysResource: boolean,
  ) {
    this.table = new ObjectTable(injector);
  }

  /** The automatic paging HWPT through which a device attaches to an IOAS (not attached yet). */
  autoDomain(device: DeviceObject, ioas: Ioas): HwptPaging {
    return allocPaging(this, device, ioas, 0, 0, NO_DATA, undefined, true);
  }

  /** Tie an fd to the context: closing the last one after close() finishes the teardown. */
  wrapFd<T extends { close(): void }>(fd: T): T {
    const close = fd.close.bind(fd);
    fd.close = () => {
      close();
      if (this.closed) this.finishClose();
    };
    return fd;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.finishClose();
  }

  private finishClose(): void {
    for (const object of this.table.objects()) {
      if (object instanceof SelftestObject) this.table.remove(object);
    }
    for (const object of this.table.objects()) {
      if (object instanceof DeviceObject) unbind(this, object);
    }
    this.table.closeAll();
  }
}

/** IOMMU_DESTROY: ENOENT for no such id, EBUSY while another object or an fd holds it. */
export function destroyIoctl(ctx: IommufdCtx, cmd: { id: number }): void {
  ctx.table.destroy(cmd.id);
}

/** IOMMU_OPTION's checked arguments. */
export interface OptionCmd {
  optionId: number;
  op: number;
  objectId: number;
  val64: bigint;
}

/**
 * IOMMU_OPTION: RLIMIT_MODE of the whole context, or HUGE_PAGES of one IOAS. Each option judges
 * its object before the op, as iommufd_option_rlimit_mode and iommufd_ioas_option do.
 */
export function optionIoctl(ctx: IommufdCtx, cmd: OptionCmd): { val64: bigint } {
  const { optionId, op, objectId, val64 } = cmd;
  if (optionId === IOMMU_OPTION_RLIMIT_MODE) {
    if (objectId !== 0) throw new IommufdError('EOPNOTSUPP', 'RLIMIT_MODE is global: object_id must be 0');
    if (op === IOMMU_OPTION_OP_GET) return { val64: ctx.rlimitMode };
    if (op !== IOMMU_OPTION_OP_SET) throw unknownOp(op);
    if (!ctx.capSysResource) throw new IommufdError('EPERM', 'setting RLIMIT_MODE needs CAP_SYS_RESOURCE');
    if (ctx.table.objects().length > 0) {
      throw new IommufdError('EBUSY', 'RLIMIT_MODE can only change on an empty iommufd');
    }
    if (val64 > 1n) throw new IommufdError('EINVAL', 'RLIMIT_MODE is 0 (user) or 1 (mm)');
    ctx.rlimitMode = val64;
    return { val64 };
  }
  if (optionId === IOMMU_OPTION_HUGE_PAGES) {
    const ioas = ctx.table.get<Ioas>(objectId, 'IOAS');
    if (op === IOMMU_OPTION_OP_GET) return { val64: ioas.disableLargePages ? 0n : 1n };
    if (op !== IOMMU_OPTION_OP_SET) throw unknownOp(op);
    ioas.setHugePages(val64);
    return { val64 };
  }
  throw new IommufdError('EOPNOTSUPP', `unknown option ${optionId}`);
}

function unknownOp(op: number): IommufdError {
  return new IommufdError('EOPNOTSUPP', `unknown option op ${op}`);
}
