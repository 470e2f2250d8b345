/**
 * The selftest commands (IOMMU_TEST_CMD, the ops of the kernel's selftest.c): mock devices bound
 * and attached in one step, their PASID attachments, test reservations, and page faults and
 * vIOMMU events triggered from userspace. The mock IOMMU itself is selftest.ts. iommufd.ts's table
 * has already checked the arguments.
 */
import type { IommufdCtx } from './context.ts';
import { attachDevice, DeviceObject, detachDevice, replaceDevice, unbind } from './device.ts';
import { IommufdError } from './errors.ts';
import type { Ioas } from './ioas.ts';
import { driverCall } from './ioctl.ts';
import { SelftestObject } from './selftest.ts';
import { reportVevent } from './viommu.ts';

/** The DEVICE of a selftest object's mock device, or ENOENT. */
function mockDevice(ctx: IommufdCtx, stdevId: number): DeviceObject {
  const stdev = ctx.table.get<SelftestObject>(stdevId, 'SELFTEST');
  const device = ctx.table
    .objects()
    .find((o): o is DeviceObject => o instanceof DeviceObject && o.hw === stdev.device);
  if (!device) throw new IommufdError('ENOENT', `selftest device ${stdevId} has no DEVICE`);
  return device;
}

/**
 * IOMMU_TEST_OP_MOCK_DOMAIN: a mock device, bound and attached to `id` (an IOAS or HWPT); the
 * SELFTEST object unbinds it when destroyed. All or nothing.
 */
export function testMockDomainIoctl(
  ctx: IommufdCtx,
  cmd: { id: number; flags: number },
): { stdevId: number; hwptId: number; idevId: number } {
  const mock = driverCall(() => ctx.mock.createDevice(cmd.flags));
  let device: DeviceObject | undefined;
  try {
    const stdevId = ctx.table.reserve();
    try {
      device = ctx.table.create(() => new DeviceObject(mock));
      const hwptId = driverCall(() => attachDevice(ctx, device as DeviceObject, undefined, cmd.id));
      const owned = device;
      const stdev = ctx.table.finalize(stdevId, new SelftestObject(mock, () => unbind(ctx, owned)));
      return { stdevId: stdev.id, hwptId, idevId: owned.id };
    } catch (error) {
      ctx.table.abort(stdevId);
      throw error;
    }
  } catch (error) {
    if (device && ctx.table.find(device.id) === device) unbind(ctx, device);
    ctx.mock.removeDevice(mock);
    throw error;
  }
}

/** IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: move the mock device's RID to `ptId`. */
export function testMockDomainReplaceIoctl(
  ctx: IommufdCtx,
  cmd: { stdevId: number; ptId: number },
): { ptId: number } {
  const device = mockDevice(ctx, cmd.stdevId);
  return { ptId: driverCall(() => replaceDevice(ctx, device, undefined, cmd.ptId)) };
}

/** IOMMU_TEST_OP_ADD_RESERVED: reserve [start, start + length) in an IOAS. */
export function testAddReservedIoctl(
  ctx: IommufdCtx,
  cmd: { ioasId: number; start: bigint; length: bigint },
): void {
  const ioas = ctx.table.get<Ioas>(cmd.ioasId, 'IOAS');
  // Judged after the lookup, as iopt_reserve_iova refuses start > last.
  if (cmd.length === 0n) throw new IommufdError('EINVAL', 'length is 0');
  ioas.addReserved(cmd.start, cmd.start + cmd.length - 1n, undefined);
}

/** A mock device's PASID and the IOAS or HWPT it goes to. */
export interface TestPasidCmd {
  stdevId: number;
  pasid: number;
  ptId: number;
}

/** IOMMU_TEST_OP_PASID_ATTACH. */
export function testPasidAttachIoctl(ctx: IommufdCtx, cmd: TestPasidCmd): void {
  const device = mockDevice(ctx, cmd.stdevId);
  driverCall(() => attachDevice(ctx, device, cmd.pasid, cmd.ptId));
}

/** IOMMU_TEST_OP_PASID_REPLACE. */
export function testPasidReplaceIoctl(ctx: IommufdCtx, cmd: TestPasidCmd): void {
  const device = mockDevice(ctx, cmd.stdevId);
  driverCall(() => replaceDevice(ctx, device, cmd.pasid, cmd.ptId));
}

/** IOMMU_TEST_OP_PASID_DETACH. */
export function testPasidDetachIoctl(ctx: IommufdCtx, cmd: { stdevId: number; pasid: number }): void {
  detachDevice(ctx, mockDevice(ctx, cmd.stdevId), cmd.pasid);
}

export interface TestTriggerIopfCmd {
  devId: number;
  pasid: number;
  grpid: number;
  perm: number;
  addr: bigint;
}

/** IOMMU_TEST_OP_TRIGGER_IOPF: always succeeds; the group goes where the attachment routes it. */
export function testTriggerIopfIoctl(ctx: IommufdCtx, cmd: TestTriggerIopfCmd): void {
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  if (device.hw.ops !== ctx.mock) throw new IommufdError('EINVAL', 'not a mock device');
  ctx.mock.triggerIopf(device.hw as never, cmd.pasid, cmd.grpid & 0x1ff, cmd.perm, Number(cmd.addr));
}

/**
 * IOMMU_TEST_OP_TRIGGER_VEVENT: ENOENT unless attached to a vIOMMU's nested HWPT through a vDEVICE
 * with virt_id != 0; EOPNOTSUPP when the vIOMMU has no selftest vEVENTQ.
 */
export function testTriggerVeventIoctl(ctx: IommufdCtx, cmd: { devId: number }): void {
  const device = ctx.table.get<DeviceObject>(cmd.devId, 'DEVICE');
  const hwpt = device.attachment(undefined)?.hwpt;
  const viommu = hwpt?.type === 'HWPT_NESTED' ? hwpt.viommu : undefined;
  const vdevice = device.vdevice;
  if (!viommu || !vdevice || vdevice.virtId === 0n) {
    throw new IommufdError('ENOENT', 'the device is not attached to a vIOMMU through a vDEVICE');
  }
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, Number(vdevice.virtId & 0xffff_ffffn), true);
  reportVevent(viommu, ctx.mock.veventqType, data);
}
