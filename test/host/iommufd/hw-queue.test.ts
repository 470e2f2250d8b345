// HW_QUEUE_ALLOC (docs/registry.md; Linux viommu.c), after the kernel selftest iommufd_viommu.hw_queue.
import { beforeEach, describe, expect, test } from 'vitest';
import { IOMMU_HWPT_ALLOC_NEST_PARENT } from '../../../host/iommufd/hwpt.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../../../host/iommufd/ioas.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { IOMMU_HW_QUEUE_TYPE_SELFTEST, IOMMU_VIOMMU_TYPE_SELFTEST } from '../../../host/iommufd/selftest.ts';
import { errnoOf } from '../../support/iommufd-errors.ts';

const PAGE = 4096n;
const IOVA = 0x100_0000n;

describe('HW_QUEUE_ALLOC', () => {
  let fd: Iommufd;
  let ioasId: number;
  let viommuId: number;
  let buffer: bigint;
  const alloc = (
    index: number,
    iova = IOVA,
    length = PAGE,
    extra: { type?: number; flags?: number; viommu?: number } = {},
  ) =>
    fd.hwQueueAlloc({
      viommuId: extra.viommu ?? viommuId,
      type: extra.type ?? IOMMU_HW_QUEUE_TYPE_SELFTEST,
      flags: extra.flags,
      index,
      nestingParentIova: iova,
      length,
    }).hwQueueId;

  beforeEach(() => {
    fd = new Iommufd();
    ioasId = fd.ioasAlloc().ioasId;
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const parent = fd.hwptAlloc({ flags: IOMMU_HWPT_ALLOC_NEST_PARENT, devId: idevId, ptId: ioasId }).hwptId;
    viommuId = fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_SELFTEST, devId: idevId, hwptId: parent }).viommuId;
    buffer = fd.mmap(4n * PAGE);
    const flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
    fd.ioasMap({ flags, ioasId, userVa: buffer, length: 4n * PAGE, iova: IOVA });
  });

  test('argument checks come first, in the kernel order', () => {
    expect(errnoOf(() => alloc(0, IOVA, PAGE, { flags: 1 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => alloc(0, IOVA, PAGE, { type: 0 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => alloc(0, IOVA, 0n))).toBe('EINVAL');
    expect(errnoOf(() => alloc(0, (1n << 64n) - PAGE, 2n * PAGE))).toBe('EOVERFLOW');
    expect(errnoOf(() => alloc(0, IOVA, PAGE, { viommu: 999 }))).toBe('ENOENT');
    expect(errnoOf(() => alloc(0, IOVA, PAGE, { type: IOMMU_HW_QUEUE_TYPE_SELFTEST + 1 }))).toBe(
      'EOPNOTSUPP',
    );
    expect(errnoOf(() => alloc(0, 0x9000_0000n))).toBe('ENOENT'); // not mapped in the parent's IOAS
  });

  test('the mock takes two queues, each index once, and index k needs k-1 first', () => {
    expect(errnoOf(() => alloc(2))).toBe('EINVAL');
    expect(errnoOf(() => alloc(1))).toBe('EIO');
    alloc(0);
    expect(errnoOf(() => alloc(0, IOVA + PAGE))).toBe('EEXIST');
    alloc(1, IOVA + PAGE);
    expect(fd.reservedIds).toBe(0);
  });

  test('the queue pins and locks its range: IOAS_UNMAP over it is EBUSY until the queue is destroyed', () => {
    const id = alloc(0, IOVA, 2n * PAGE);
    // The queue shares the page's single pin with the mock domain (check_refs stays 1).
    expect(fd.memory.pinCount(buffer)).toBe(1);
    expect(errnoOf(() => fd.ioasUnmap({ ioasId, iova: IOVA, length: 4n * PAGE }))).toBe('EBUSY');
    expect(errnoOf(() => fd.ioasUnmap({ ioasId, iova: 0n, length: (1n << 64n) - 1n }))).toBe('EBUSY');
    fd.destroy({ id });
    expect(fd.memory.pinCount(buffer)).toBe(1);
    fd.ioasUnmap({ ioasId, iova: IOVA, length: 4n * PAGE });
    expect(fd.memory.pinCount(buffer)).toBe(0);
  });

  test('queues are destroyed in descending order; the vIOMMU stays while any queue does', () => {
    const q0 = alloc(0);
    const q1 = alloc(1, IOVA + PAGE);
    expect(errnoOf(() => fd.destroy({ id: q0 }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: viommuId }))).toBe('EBUSY');
    fd.destroy({ id: q1 });
    fd.destroy({ id: q0 });
    fd.destroy({ id: viommuId });
    fd.close();
    expect(fd.objects()).toHaveLength(0);
    expect(fd.memory.pinnedPages).toBe(0);
  });

  test('a range whose pages are not physically contiguous is EFAULT and pins nothing', () => {
    const a = fd.mmap(PAGE);
    fd.mmap(PAGE); // a page in between, so a's and c's frames are not neighbours
    const c = fd.mmap(PAGE);
    const flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE;
    fd.ioasMap({ flags, ioasId, userVa: a, length: PAGE, iova: 0x200_0000n });
    fd.ioasMap({ flags, ioasId, userVa: c, length: PAGE, iova: 0x200_0000n + PAGE });
    const before = fd.memory.pinnedPages;
    expect(errnoOf(() => alloc(0, 0x200_0000n, 2n * PAGE))).toBe('EFAULT');
    expect(fd.memory.pinnedPages).toBe(before);
    expect(fd.reservedIds).toBe(0);
  });

  test('close() takes queues down leaf first with everything else', () => {
    alloc(0);
    alloc(1, IOVA + PAGE);
    fd.close();
    expect(fd.objects()).toHaveLength(0);
    expect(fd.reservedIds).toBe(0);
    expect(fd.memory.pinnedPages).toBe(0);
  });
});
