/**
 * Conformance of the registry's device side with the Linux iommufd selftests
 * (tools/testing/selftests/iommu/iommufd.c and iommufd_fail_nth.c, 6.17/6.18 trees) and with
 * docs/registry.md: mock domains and devices, attach/replace/detach by RID and
 * PASID, HWPT_ALLOC, GET_HW_INFO, FAULT queues and the IOPF round trip, vIOMMU, vDEVICE, vEVENTQ,
 * HWPT_INVALIDATE and DESTROY. Each test is named after the kernel test it ports (or the model row
 * it checks) and the rule it holds the registry to.
 *
 * Not ported, because the TypeScript API has no way to say them: ioctl size framing
 * (cmd_length, cmd_ex_fail, E2BIG, `__reserved` fields), NULL user pointers (EFAULT), VFIO
 * compatibility ioctls, dirty tracking (set_dirty_tracking, get_dirty_bitmap*), mmap of the
 * vIOMMU page (viommu_alloc_with_data's ENXIO/EBUSY half), HW_QUEUE_ALLOC (hw_queue), fork and
 * memfd tests, and the IOAS-only tests (area, copy, access_*), which belong to the IOAS suite.
 */
import { describe, expect, test } from 'vitest';
import type { DeviceObject } from '../../../host/iommufd/device.ts';
import { IommufdError } from '../../../host/iommufd/errors.ts';
import {
  decodePgfault,
  decodeVeventHeader,
  encodePageResponse,
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  PAGE_RESPONSE_BYTES,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  type PgfaultRecord,
  VEVENT_HEADER_BYTES,
} from '../../../host/iommufd/eventq-records.ts';
import type { FaultFd } from '../../../host/iommufd/fault.ts';
import {
  type HwptNested,
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_ALLOC_PASID,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../../../host/iommufd/hwpt.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../../../host/iommufd/ioas.ts';
import {
  IOMMU_HW_INFO_FLAG_INPUT_TYPE,
  IOMMU_HWPT_DATA_NONE,
  Iommufd,
  VEVENTQ_MAX_DEPTH,
} from '../../../host/iommufd/iommufd.ts';
import { U64_MAX } from '../../../host/iommufd/iova.ts';
import {
  IOMMU_HW_CAP_DIRTY_TRACKING,
  IOMMU_HW_INFO_SELFTEST_REGVAL,
  IOMMU_HW_INFO_TYPE_SELFTEST,
  IOMMU_HWPT_DATA_SELFTEST,
  IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
  IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
  IOMMU_TEST_DEV_CACHE_DEFAULT,
  IOMMU_TEST_INVALIDATE_FLAG_ALL,
  IOMMU_TEST_IOTLB_DEFAULT,
  IOMMU_VEVENTQ_TYPE_SELFTEST,
  IOMMU_VIOMMU_TYPE_SELFTEST,
  MOCK_APERTURE_LAST,
  MOCK_APERTURE_START,
  MOCK_DEV_CACHE_ID_MAX,
  MOCK_DEV_CACHE_NUM,
  MOCK_FLAGS_DEVICE_NO_DIRTY,
  MOCK_FLAGS_DEVICE_PASID,
  MOCK_NESTED_DOMAIN_IOTLB_ID_MAX,
  MOCK_NESTED_DOMAIN_IOTLB_NUM,
  MOCK_PAGE_SIZE,
  MOCK_PASID_WIDTH,
  type MockDevice,
  MockIommu,
  type MockNestedDomain,
} from '../../../host/iommufd/selftest.ts';
import { PAGE_SIZE } from '../../../host/iommufd/user-memory.ts';
import type { VeventqFd } from '../../../host/iommufd/veventq.ts';
import { errnoOf, errorOf } from '../../support/iommufd-errors.ts';

const UINT32_MAX = 0xffff_ffff;
const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
const IOMMU_VIOMMU_TYPE_DEFAULT = 0;
const IOMMU_VEVENTQ_TYPE_DEFAULT = 0;
/** struct iommu_hwpt_invalidate_selftest {u32 flags; u32 iotlb_id} */
const HWPT_INV_BYTES = 8;
/** struct iommu_viommu_invalidate_selftest {u32 flags; u32 vdev_id; u32 cache_id} */
const VIOMMU_INV_BYTES = 12;
/** struct iommu_viommu_selftest {u32 in_data; u32 out_data; u64 out_mmap_offset; u64 out_mmap_length} */
const VIOMMU_DATA_BYTES = 24;
/** iommufd_vevent_header + struct iommu_viommu_event_selftest {u32 virt_id} */
const SELFTEST_VEVENT_BYTES = VEVENT_HEADER_BYTES + 4;
/** The trigger the kernel helpers use: grpid 2, read|write, this address. */
const IOPF_GRPID = 0x2;
const IOPF_ADDR = 0xdeadbeafn;
const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

// --- helpers -----------------------------------------------------------------------------------------

/** Little-endian u32s, the way the selftest structs are laid out. */
function u32s(...values: number[]): Uint8Array {
  const buf = new Uint8Array(values.length * 4);
  const view = new DataView(buf.buffer);
  values.forEach((v, i) => {
    view.setUint32(i * 4, v >>> 0, true);
  });
  return buf;
}

const le32 = (buf: Uint8Array, offset: number) =>
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(offset, true);

/** struct iommu_hwpt_selftest: the nested HWPT's iotlb seed. */
const selftestData = (iotlb = IOMMU_TEST_IOTLB_DEFAULT) => u32s(iotlb);

/** An array of struct iommu_hwpt_invalidate_selftest. */
const hwptInv = (...entries: [flags: number, iotlbId: number][]) => u32s(...entries.flat());

/** An array of struct iommu_viommu_invalidate_selftest. */
const viommuInv = (...entries: [flags: number, vdevId: number, cacheId: number][]) => u32s(...entries.flat());

function responses(...entries: [cookie: number, code: number][]): Uint8Array {
  const buf = new Uint8Array(entries.length * PAGE_RESPONSE_BYTES);
  entries.forEach(([cookie, code], i) => {
    encodePageResponse(buf, i * PAGE_RESPONSE_BYTES, { cookie, code });
  });
  return buf;
}

function readFaults(faultFd: FaultFd, records: number): PgfaultRecord[] {
  const buf = new Uint8Array(records * PGFAULT_BYTES);
  const n = faultFd.read(buf);
  return Array.from({ length: n / PGFAULT_BYTES }, (_, i) => decodePgfault(buf, i * PGFAULT_BYTES));
}

interface Vevent {
  flags: number;
  sequence: number;
  virtId?: number;
}

/** Read up to `events` selftest events (the lost-events marker is a bare header). */
function readVevents(veventqFd: VeventqFd, events: number): Vevent[] {
  const buf = new Uint8Array(events * SELFTEST_VEVENT_BYTES);
  const n = veventqFd.read(buf);
  const out: Vevent[] = [];
  for (let at = 0; at < n; ) {
    const header = decodeVeventHeader(buf, at);
    if ((header.flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS) !== 0) {
      out.push(header);
      at += VEVENT_HEADER_BYTES;
    } else {
      out.push({ ...header, virtId: le32(buf, at + VEVENT_HEADER_BYTES) });
      at += SELFTEST_VEVENT_BYTES;
    }
  }
  return out;
}

function device(fd: Iommufd, devId: number): DeviceObject {
  return fd.lookup<DeviceObject>(devId, 'DEVICE');
}

function mockDevice(fd: Iommufd, devId: number): MockDevice {
  return device(fd, devId).hw as MockDevice;
}

/** IOMMU_TEST_OP_PASID_CHECK_HWPT: the HWPT id the RID (no pasid) or PASID is attached to, 0 if none. */
function attachedHwpt(fd: Iommufd, devId: number, pasid?: number): number {
  return device(fd, devId).attachment(pasid)?.hwpt.id ?? 0;
}

/** IOMMU_TEST_OP_MD_CHECK_IOTLB over all slots. */
function iotlb(fd: Iommufd, hwptId: number): number[] {
  return [...(fd.lookup<HwptNested>(hwptId, 'HWPT_NESTED').domain as MockNestedDomain).iotlb];
}

const D = IOMMU_TEST_IOTLB_DEFAULT;
const C = IOMMU_TEST_DEV_CACHE_DEFAULT;

function ids(fd: Iommufd): number[] {
  return fd.objects().map((o) => o.id);
}

function nested(
  fd: Iommufd,
  devId: number,
  ptId: number,
  flags = 0,
  faultId?: number,
  data = selftestData(),
): number {
  return fd.hwptAlloc({ devId, ptId, flags, faultId, dataType: IOMMU_HWPT_DATA_SELFTEST, data }).hwptId;
}

/**
 * The kernel's _test_cmd_trigger_iopf: raise one page request, read its record, answer SUCCESS.
 * Returns the record for the caller's checks.
 */
function iopfRoundTrip(fd: Iommufd, devId: number, pasid: number, faultFd: FaultFd): PgfaultRecord {
  fd.testTriggerIopf({ devId, pasid, grpid: IOPF_GRPID, perm: PERM_READ | PERM_WRITE, addr: IOPF_ADDR });
  const [record, ...more] = readFaults(faultFd, 2);
  expect(more).toEqual([]);
  expect(record).toBeDefined();
  expect(faultFd.write(responses([record.cookie, IOMMUFD_PAGE_RESP_SUCCESS]))).toBe(PAGE_RESPONSE_BYTES);
  return record;
}

/** What a single-request group raised by iopfRoundTrip must look like. */
function expectIopfRecord(record: PgfaultRecord, devId: number, pasid: number): void {
  expect(record).toMatchObject({
    flags: pasid !== 0 ? PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE : PGFAULT_FLAGS_LAST_PAGE,
    devId,
    pasid,
    grpid: IOPF_GRPID,
    perm: PERM_READ | PERM_WRITE,
    addr: IOPF_ADDR,
    length: 0,
  });
  expect(record.cookie).toBeGreaterThan(0);
}

/**
 * teardown_iommufd: close the iommufd, then the FAULT/vEVENTQ fds still open; an open fd keeps what
 * its object holds alive until it closes. In the end nothing is left and nothing stays pinned.
 */
function teardown(fd: Iommufd, ...openFds: { close(): void }[]): void {
  fd.close();
  if (openFds.length > 0) expect(fd.objects().length).toBeGreaterThan(0);
  for (const open of openFds) open.close();
  expect(fd.objects()).toEqual([]);
  expect(fd.memory.pinnedPages).toBe(0);
}

// --- FIXTURE(iommufd) ----------------------------------------------------------------------------------

describe('iommufd', () => {
  test('cmd_fail: IOMMU_DESTROY of id 0 or of an unused id is ENOENT', () => {
    const fd = new Iommufd();
    expect(errnoOf(() => fd.destroy({ id: 0 }))).toBe('ENOENT');
    expect(errnoOf(() => fd.destroy({ id: 12345 }))).toBe('ENOENT');
    teardown(fd);
  });
});

// --- FIXTURE(iommufd_ioas) -------------------------------------------------------------------------------

type IoasVariant = 'no_domain' | 'mock_domain' | 'two_mock_domain';

interface IoasFixture {
  fd: Iommufd;
  ioasId: number;
  /** Of the last mock domain created; 0 without one. */
  stdevId: number;
  hwptId: number;
  deviceId: number;
  /** The PASID-capable device of the mock_domain variant; 0 otherwise. */
  devicePasidId: number;
  baseIova: bigint;
}

function iommufdIoas(variant: IoasVariant): IoasFixture {
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const f: IoasFixture = { fd, ioasId, stdevId: 0, hwptId: 0, deviceId: 0, devicePasidId: 0, baseIova: 0n };
  const domains = variant === 'no_domain' ? 0 : variant === 'mock_domain' ? 1 : 2;
  for (let i = 0; i < domains; i++) {
    const md = fd.testMockDomain({ id: ioasId });
    f.stdevId = md.stdevId;
    f.hwptId = md.hwptId;
    f.deviceId = md.idevId;
    expect(mockDevice(fd, md.idevId).cache).toEqual(new Array(MOCK_DEV_CACHE_NUM).fill(C));
    f.baseIova = MOCK_APERTURE_START;
  }
  if (variant === 'mock_domain') {
    f.devicePasidId = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_PASID }).idevId;
  }
  return f;
}

/** The HWPTs alloc_hwpt_nested builds before its positive checks. */
function allocHwptNestedSetup(f: IoasFixture) {
  const { fd, ioasId, deviceId } = f;
  const parent = fd.hwptAlloc({ devId: deviceId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;
  const parentNotWork = fd.hwptAlloc({ devId: deviceId, ptId: ioasId, flags: 0 }).hwptId;
  const { faultId, faultFd } = fd.faultQueueAlloc();
  const nested0 = nested(fd, deviceId, parent);
  const nested1 = nested(fd, deviceId, parent);
  const iopf = nested(fd, deviceId, parent, IOMMU_HWPT_FAULT_ID_VALID, faultId);
  return { parent, parentNotWork, faultId, faultFd, nested0, nested1, iopf };
}

describe.each(['no_domain', 'mock_domain', 'two_mock_domain'] as const)('iommufd_ioas.%s', (variant) => {
  test('ioas_destroy: an IOAS behind a device attachment is EBUSY, a bare one is destroyed', () => {
    const f = iommufdIoas(variant);
    if (f.stdevId) {
      expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('EBUSY');
      expect(f.fd.lookup(f.ioasId, 'IOAS').id).toBe(f.ioasId);
    } else {
      f.fd.destroy({ id: f.ioasId });
      expect(errnoOf(() => f.fd.lookup(f.ioasId))).toBe('ENOENT');
    }
    teardown(f.fd);
  });

  test('ioas_area_destroy: mapping an area does not change whether the IOAS can be destroyed', () => {
    const f = iommufdIoas(variant);
    const userVa = f.fd.mmap(PAGE_SIZE);
    f.fd.ioasMap({
      flags: IOMMU_IOAS_MAP_FIXED_IOVA | RW,
      ioasId: f.ioasId,
      userVa,
      length: PAGE_SIZE,
      iova: f.baseIova,
    });
    if (f.stdevId) {
      expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('EBUSY');
      expect(f.fd.memory.pinCount(userVa)).toBe(1);
    } else {
      f.fd.destroy({ id: f.ioasId });
      expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('ENOENT');
    }
    teardown(f.fd);
  });

  test('hwpt_attach: a mock device attaches straight to an existing HWPT; a missing one is ENOENT', () => {
    const f = iommufdIoas(variant);
    const before = ids(f.fd);
    if (f.stdevId) {
      const md = f.fd.testMockDomain({ id: f.hwptId });
      expect(md.hwptId).toBe(f.hwptId);
      expect(attachedHwpt(f.fd, md.idevId)).toBe(f.hwptId);
    } else {
      expect(errnoOf(() => f.fd.testMockDomain({ id: f.hwptId }))).toBe('ENOENT');
      expect(ids(f.fd)).toEqual(before);
      expect(f.fd.reservedIds).toBe(0);
    }
    teardown(f.fd);
  });

  test('get_hw_info: copies min(user, kernel) bytes, zero-fills the rest, reports type, length and PASID width', () => {
    const f = iommufdIoas(variant);
    const { fd } = f;
    if (!f.deviceId) {
      expect(errnoOf(() => fd.getHwInfo({ devId: f.deviceId, dataLen: 8, data: new Uint8Array(8) }))).toBe(
        'ENOENT',
      );
      expect(errnoOf(() => fd.getHwInfo({ devId: f.deviceId, dataLen: 16, data: new Uint8Array(16) }))).toBe(
        'ENOENT',
      );
      teardown(fd);
      return;
    }
    // A zero-size user buffer is legal and still reports the kernel's length and type.
    expect(fd.getHwInfo({ devId: f.deviceId, dataLen: 0 })).toMatchObject({
      dataLen: 8,
      dataType: IOMMU_HW_INFO_TYPE_SELFTEST,
    });
    // Exactly sized: flags 0, test_reg the selftest value.
    const exact = new Uint8Array(8).fill(0xff);
    fd.getHwInfo({ devId: f.deviceId, dataLen: 8, data: exact });
    expect(le32(exact, 0)).toBe(0);
    expect(le32(exact, 4)).toBe(IOMMU_HW_INFO_SELFTEST_REGVAL);
    // A wrong requested type is EOPNOTSUPP; the selftest type itself is fine.
    const typed = (inDataType: number) => () =>
      fd.getHwInfo({
        devId: f.deviceId,
        dataLen: 8,
        data: exact,
        flags: IOMMU_HW_INFO_FLAG_INPUT_TYPE,
        inDataType,
      });
    expect(errnoOf(typed(IOMMU_HW_INFO_TYPE_SELFTEST + 1))).toBe('EOPNOTSUPP');
    expect(typed(IOMMU_HW_INFO_TYPE_SELFTEST)().dataType).toBe(IOMMU_HW_INFO_TYPE_SELFTEST);
    // A larger buffer gets its trailing bytes zeroed.
    const larger = new Uint8Array(16).fill(0xaa);
    expect(fd.getHwInfo({ devId: f.deviceId, dataLen: 16, data: larger }).dataLen).toBe(8);
    expect(le32(larger, 4)).toBe(IOMMU_HW_INFO_SELFTEST_REGVAL);
    expect([...larger.subarray(8)]).toEqual(new Array(8).fill(0));
    // A smaller buffer (up to `flags`) gets just that much; nothing past it is touched.
    const smaller = new Uint8Array(8).fill(0xaa);
    expect(fd.getHwInfo({ devId: f.deviceId, dataLen: 4, data: smaller }).dataLen).toBe(8);
    expect(le32(smaller, 0)).toBe(0);
    expect([...smaller.subarray(4)]).toEqual([0xaa, 0xaa, 0xaa, 0xaa]);
    expect(fd.getHwInfo({ devId: f.deviceId, dataLen: 0 }).maxPasidLog2).toBe(0);
    if (f.devicePasidId) {
      expect(fd.getHwInfo({ devId: f.devicePasidId, dataLen: 0 }).maxPasidLog2).toBe(MOCK_PASID_WIDTH);
    }
    teardown(fd);
  });

  if (variant === 'no_domain') {
    test('alloc_hwpt_nested: without a device every allocation and replace is ENOENT', () => {
      const f = iommufdIoas(variant);
      const { fd } = f;
      expect(errnoOf(() => fd.hwptAlloc({ devId: f.deviceId, ptId: f.ioasId }))).toBe('ENOENT');
      expect(errnoOf(() => nested(fd, f.deviceId, 0))).toBe('ENOENT');
      expect(errnoOf(() => nested(fd, f.deviceId, 0))).toBe('ENOENT');
      expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: f.stdevId, ptId: 0 }))).toBe('ENOENT');
      expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: f.stdevId, ptId: 0 }))).toBe('ENOENT');
      expect(ids(fd)).toEqual([f.ioasId]);
      teardown(fd);
    });
    return;
  }

  test('alloc_hwpt_nested: bad dev, pt, flags, data type and length are refused before anything is built', () => {
    const f = iommufdIoas(variant);
    const { fd, ioasId, deviceId } = f;
    const before = ids(fd);
    // dev_id naming an IOAS is ENOENT; pt_id naming a DEVICE is EINVAL.
    expect(errnoOf(() => fd.hwptAlloc({ devId: ioasId, ptId: deviceId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.hwptAlloc({ devId: deviceId, ptId: deviceId }))).toBe('EINVAL');
    expect(
      errnoOf(() =>
        fd.hwptAlloc({
          devId: deviceId,
          ptId: ioasId,
          flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_FAULT_ID_VALID,
        }),
      ),
    ).toBe('EOPNOTSUPP');
    expect(ids(fd)).toEqual(before);

    const parent = fd.hwptAlloc({
      devId: deviceId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
    }).hwptId;
    const parentNotWork = fd.hwptAlloc({ devId: deviceId, ptId: ioasId }).hwptId;
    const afterParents = ids(fd);
    const data = selftestData();
    const alloc = (ptId: number, flags: number, dataType: number, d: Uint8Array) => () =>
      fd.hwptAlloc({ devId: deviceId, ptId, flags, dataType, data: d });
    // DATA_NONE with data, an unknown type, a short struct, NEST_PARENT on a nested HWPT, a parent
    // that is not a nest parent.
    expect(errnoOf(alloc(parent, 0, IOMMU_HWPT_DATA_NONE, data))).toBe('EINVAL');
    expect(errnoOf(alloc(parent, 0, IOMMU_HWPT_DATA_SELFTEST + 1, data))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc(parent, 0, IOMMU_HWPT_DATA_SELFTEST, data.subarray(0, 3)))).toBe('EINVAL');
    expect(errnoOf(alloc(parent, IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_DATA_SELFTEST, data))).toBe(
      'EOPNOTSUPP',
    );
    expect(errnoOf(alloc(parentNotWork, 0, IOMMU_HWPT_DATA_SELFTEST, data))).toBe('EINVAL');
    expect(ids(fd)).toEqual(afterParents);
    expect(fd.reservedIds).toBe(0);
    teardown(fd);
  });

  test('alloc_hwpt_nested: nested HWPTs share a parent that is then EBUSY; nested on nested is EINVAL', () => {
    const f = iommufdIoas(variant);
    const { fd, deviceId } = f;
    const s = allocHwptNestedSetup(f);
    // A fault id that names nothing is ENOENT, and nothing is left behind.
    const before = ids(fd);
    expect(errnoOf(() => nested(fd, deviceId, s.parent, IOMMU_HWPT_FAULT_ID_VALID, UINT32_MAX))).toBe(
      'ENOENT',
    );
    expect(ids(fd)).toEqual(before);
    expect(iotlb(fd, s.nested0)).toEqual([D, D, D, D]);
    expect(iotlb(fd, s.nested1)).toEqual([D, D, D, D]);
    expect(errnoOf(() => nested(fd, deviceId, s.nested0))).toBe('EINVAL');
    expect(errnoOf(() => fd.destroy({ id: s.parent }))).toBe('EBUSY');
    // The parent is held by its three nested HWPTs, the FAULT by the one that names it.
    expect(fd.lookup(s.parent).users).toBe(4);
    expect(fd.lookup(s.faultId).users).toBe(3);
    teardown(fd, s.faultFd);
  });

  test('alloc_hwpt_nested: HWPT_INVALIDATE writes entry_num back and clears only the handled iotlb slots', () => {
    const f = iommufdIoas(variant);
    const { fd } = f;
    const s = allocHwptNestedSetup(f);
    const inv = (hwptId: number, data: Uint8Array | undefined, entryNum: number, more = {}) =>
      fd.hwptInvalidate({
        hwptId,
        data,
        dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entryLen: HWPT_INV_BYTES,
        entryNum,
        ...more,
      });
    const failure = (run: () => unknown) => {
      const error = errorOf(run);
      return { errno: error.errno, entryNum: error.output.entryNum };
    };
    const zeros = hwptInv([0, 0], [0, 0]);
    // A paging HWPT (even a nest parent) cannot be invalidated.
    expect(failure(() => inv(s.parent, zeros, 1))).toEqual({ errno: 'EINVAL', entryNum: 0 });
    // A zero-length array only checks the data type.
    expect(inv(s.nested0, zeros, 0)).toEqual({ entryNum: 0 });
    expect(
      failure(() => inv(s.nested0, zeros, 1, { dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID })),
    ).toEqual({ errno: 'EINVAL', entryNum: 0 });
    // entry_len outside the struct: one byte too many, or 1.
    expect(failure(() => inv(s.nested0, zeros, 1, { entryLen: HWPT_INV_BYTES + 1 }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(s.nested0, zeros, 1, { entryLen: 1 }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(s.nested0, hwptInv([UINT32_MAX, 0]), 1))).toEqual({
      errno: 'EOPNOTSUPP',
      entryNum: 0,
    });
    // No array, or entry_len 0, with entries to do.
    expect(failure(() => inv(s.nested0, undefined, 1))).toEqual({ errno: 'EINVAL', entryNum: 0 });
    expect(failure(() => inv(s.nested0, zeros, 1, { entryLen: 0 }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(s.nested0, hwptInv([0, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1]), 1))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(iotlb(fd, s.nested0)).toEqual([D, D, D, D]);
    // The first entry is done, the second refused: entry_num says 1 and slot 0 alone is cleared.
    expect(failure(() => inv(s.nested0, hwptInv([0, 0], [UINT32_MAX, 1]), 2))).toEqual({
      errno: 'EOPNOTSUPP',
      entryNum: 1,
    });
    expect(iotlb(fd, s.nested0)).toEqual([0, D, D, D]);
    expect(
      failure(() => inv(s.nested0, hwptInv([0, 0], [0, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1]), 2)),
    ).toEqual({ errno: 'EINVAL', entryNum: 1 });
    expect(iotlb(fd, s.nested0)).toEqual([0, D, D, D]);
    expect(inv(s.nested0, hwptInv([0, 1]), 1)).toEqual({ entryNum: 1 });
    expect(iotlb(fd, s.nested0)).toEqual([0, 0, D, D]);
    expect(inv(s.nested0, hwptInv([0, 2], [0, 3]), 2)).toEqual({ entryNum: 2 });
    expect(iotlb(fd, s.nested0)).toEqual([0, 0, 0, 0]);
    // FLAG_ALL on the other nested HWPT clears all of its slots and none of the first's.
    expect(iotlb(fd, s.nested1)).toEqual([D, D, D, D]);
    expect(inv(s.nested1, hwptInv([IOMMU_TEST_INVALIDATE_FLAG_ALL, 0]), 1)).toEqual({ entryNum: 1 });
    expect(iotlb(fd, s.nested1)).toEqual(new Array(MOCK_NESTED_DOMAIN_IOTLB_NUM).fill(0));
    teardown(fd, s.faultFd);
  });

  test('alloc_hwpt_nested: an attached HWPT is EBUSY until replaced away; IOPF round-trips on the fault HWPT', () => {
    const f = iommufdIoas(variant);
    const { fd, stdevId, deviceId, ioasId } = f;
    const s = allocHwptNestedSetup(f);
    fd.testMockDomainReplace({ stdevId, ptId: s.nested0 });
    expect(errnoOf(() => fd.destroy({ id: s.nested0 }))).toBe('EBUSY');
    fd.testMockDomainReplace({ stdevId, ptId: s.nested1 });
    expect(errnoOf(() => fd.destroy({ id: s.nested1 }))).toBe('EBUSY');
    fd.destroy({ id: s.nested0 });
    fd.testMockDomainReplace({ stdevId, ptId: s.iopf });
    expect(errnoOf(() => fd.destroy({ id: s.iopf }))).toBe('EBUSY');
    // PASID 1 is not attached: with the PASID table in the guest it falls back to the nested RID.
    const record = iopfRoundTrip(fd, deviceId, 0x1, s.faultFd);
    expectIopfRecord(record, deviceId, 0x1);
    expect(mockDevice(fd, deviceId).responses).toEqual([
      { pasid: 0x1, grpid: IOPF_GRPID, code: IOMMUFD_PAGE_RESP_SUCCESS },
    ]);
    fd.testMockDomainReplace({ stdevId, ptId: s.parent });
    fd.destroy({ id: s.nested1 });
    fd.destroy({ id: s.iopf });
    const back = fd.testMockDomainReplace({ stdevId, ptId: ioasId }).ptId;
    expect(fd.lookup(back, 'HWPT_PAGING').id).toBe(back);
    fd.destroy({ id: s.parent });
    fd.destroy({ id: s.parentNotWork });
    expect(errnoOf(() => fd.destroy({ id: s.faultId }))).toBe('EBUSY');
    s.faultFd.close();
    fd.destroy({ id: s.faultId });
    expect(fd.objects().map((o) => o.type)).not.toContain('HWPT_NESTED');
    teardown(fd);
  });
});

// --- FIXTURE(iommufd_mock_domain) -----------------------------------------------------------------------

function iommufdMockDomain(domains: number) {
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const stdevIds: number[] = [];
  const hwptIds: number[] = [];
  const idevIds: number[] = [];
  for (let i = 0; i < domains; i++) {
    const md = fd.testMockDomain({ id: ioasId });
    stdevIds.push(md.stdevId);
    hwptIds.push(md.hwptId);
    idevIds.push(md.idevId);
  }
  return { fd, ioasId, stdevIds, hwptIds, idevIds };
}

describe.each([
  ['one_domain', 1],
  ['two_domains', 2],
] as const)('iommufd_mock_domain.%s', (_name, domains) => {
  test('replace: moving to another IOAS frees the old auto domain; same IOAS or same HWPT is a no-op', () => {
    const { fd, ioasId, stdevIds, hwptIds } = iommufdMockDomain(domains);
    // Devices of one IOAS share its auto domain.
    expect(new Set(hwptIds).size).toBe(1);
    const { ioasId: ioas2 } = fd.ioasAlloc();
    const moved = fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: ioas2 }).ptId;
    expect(moved).not.toBe(hwptIds[0]);
    if (domains === 1) {
      expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: hwptIds[0] }))).toBe(
        'ENOENT',
      );
      expect(errnoOf(() => fd.lookup(hwptIds[0]))).toBe('ENOENT');
    }
    expect(fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: ioas2 }).ptId).toBe(moved);
    if (domains >= 2) {
      expect(fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: hwptIds[1] }).ptId).toBe(hwptIds[1]);
      // The auto domain of IOAS 2 went with the last device leaving it.
      expect(errnoOf(() => fd.lookup(moved))).toBe('ENOENT');
      expect(fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: hwptIds[1] }).ptId).toBe(hwptIds[1]);
      expect(fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: hwptIds[0] }).ptId).toBe(hwptIds[0]);
    }
    fd.testMockDomainReplace({ stdevId: stdevIds[0], ptId: ioasId });
    fd.destroy({ id: ioas2 });
    expect(errnoOf(() => fd.lookup(ioas2))).toBe('ENOENT');
    teardown(fd);
  });

  test('alloc_hwpt: unknown flags are EOPNOTSUPP; a HWPT rotation keeps the attached one EBUSY', () => {
    const { fd, ioasId, stdevIds, idevIds } = iommufdMockDomain(domains);
    for (let i = 0; i < domains; i++) {
      expect(
        errnoOf(() =>
          fd.hwptAlloc({ devId: idevIds[i], ptId: ioasId, flags: ~IOMMU_HWPT_ALLOC_NEST_PARENT >>> 0 }),
        ),
      ).toBe('EOPNOTSUPP');
      const hwpt0 = fd.hwptAlloc({ devId: idevIds[i], ptId: ioasId }).hwptId;
      const hwpt1 = fd.hwptAlloc({
        devId: idevIds[i],
        ptId: ioasId,
        flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
      }).hwptId;
      fd.testMockDomainReplace({ stdevId: stdevIds[i], ptId: hwpt0 });
      expect(errnoOf(() => fd.destroy({ id: hwpt0 }))).toBe('EBUSY');
      fd.testMockDomainReplace({ stdevId: stdevIds[i], ptId: hwpt1 });
      expect(errnoOf(() => fd.destroy({ id: hwpt1 }))).toBe('EBUSY');
      fd.testMockDomainReplace({ stdevId: stdevIds[i], ptId: ioasId });
      fd.destroy({ id: hwpt1 });
      const md = fd.testMockDomain({ id: hwpt0 });
      expect(md.hwptId).toBe(hwpt0);
      expect(errnoOf(() => fd.destroy({ id: hwpt0 }))).toBe('EBUSY');
      fd.destroy({ id: md.stdevId });
      fd.destroy({ id: hwpt0 });
      expect(errnoOf(() => fd.lookup(hwpt0))).toBe('ENOENT');
    }
    teardown(fd);
  });
});

// --- FIXTURE(iommufd_dirty_tracking), device parts ----------------------------------------------------

describe('iommufd_dirty_tracking', () => {
  test('enforce_dirty: a NO_DIRTY device cannot attach to a dirty-tracking HWPT nor allocate one', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const hwptId = fd.hwptAlloc({
      devId: idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    }).hwptId;
    const ok = fd.testMockDomain({ id: hwptId });
    const before = ids(fd);
    expect(errnoOf(() => fd.testMockDomain({ id: hwptId, flags: MOCK_FLAGS_DEVICE_NO_DIRTY }))).toBe(
      'EINVAL',
    );
    expect(ids(fd)).toEqual(before);
    fd.destroy({ id: ok.stdevId });
    fd.destroy({ id: hwptId });

    const { ioasId: ioas2 } = fd.ioasAlloc();
    const noDirty = fd.testMockDomain({ id: ioas2, flags: MOCK_FLAGS_DEVICE_NO_DIRTY });
    expect(
      errnoOf(() =>
        fd.hwptAlloc({ devId: noDirty.idevId, ptId: ioas2, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING }),
      ),
    ).toBe('EOPNOTSUPP');
    fd.destroy({ id: noDirty.stdevId });
    teardown(fd);
  });

  test('pasid_set_dirty_tracking: PASID attach to a PASID+dirty HWPT works, and is EINVAL for a NO_DIRTY device', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const pasid = 100;
    const hwptId = fd.hwptAlloc({
      devId: idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    }).hwptId;
    const dev = fd.testMockDomain({ id: hwptId, flags: MOCK_FLAGS_DEVICE_PASID });
    fd.testPasidAttach({ stdevId: dev.stdevId, pasid, ptId: hwptId });
    expect(attachedHwpt(fd, dev.idevId, pasid)).toBe(hwptId);
    fd.testPasidDetach({ stdevId: dev.stdevId, pasid });
    expect(attachedHwpt(fd, dev.idevId, pasid)).toBe(0);
    fd.destroy({ id: dev.stdevId });

    const { ioasId: ioas2 } = fd.ioasAlloc();
    const noDirty = fd.testMockDomain({
      id: ioas2,
      flags: MOCK_FLAGS_DEVICE_PASID | MOCK_FLAGS_DEVICE_NO_DIRTY,
    });
    expect(errnoOf(() => fd.testPasidAttach({ stdevId: noDirty.stdevId, pasid, ptId: hwptId }))).toBe(
      'EINVAL',
    );
    expect(attachedHwpt(fd, noDirty.idevId, pasid)).toBe(0);
    fd.destroy({ id: noDirty.stdevId });
    fd.destroy({ id: hwptId });
    teardown(fd);
  });

  test('device_dirty_capability: GET_HW_INFO reports IOMMU_HW_CAP_DIRTY_TRACKING only for dirty-capable devices', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const hwptId = fd.hwptAlloc({ devId: idevId, ptId: ioasId }).hwptId;
    fd.testMockDomain({ id: hwptId });
    const caps = fd.getHwInfo({ devId: idevId, dataLen: 0 }).capabilities;
    expect(caps & IOMMU_HW_CAP_DIRTY_TRACKING).toBe(IOMMU_HW_CAP_DIRTY_TRACKING);
    const noDirty = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_NO_DIRTY });
    expect(
      fd.getHwInfo({ devId: noDirty.idevId, dataLen: 0 }).capabilities & IOMMU_HW_CAP_DIRTY_TRACKING,
    ).toBe(0n);
    teardown(fd);
  });
});

// --- FIXTURE(iommufd_viommu) ----------------------------------------------------------------------------

interface ViommuFixture {
  fd: Iommufd;
  ioasId: number;
  stdevId: number;
  deviceId: number;
  /** The nest parent; 0 in the no_viommu variant. */
  hwptId: number;
  viommuId: number;
  nestedHwptId: number;
}

function iommufdViommu(withViommu: boolean): ViommuFixture {
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const f: ViommuFixture = { fd, ioasId, stdevId: 0, deviceId: 0, hwptId: 0, viommuId: 0, nestedHwptId: 0 };
  if (withViommu) {
    const md = fd.testMockDomain({ id: ioasId });
    f.stdevId = md.stdevId;
    f.deviceId = md.idevId;
    f.hwptId = fd.hwptAlloc({ devId: f.deviceId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;
    f.viommuId = fd.viommuAlloc({
      devId: f.deviceId,
      hwptId: f.hwptId,
      type: IOMMU_VIOMMU_TYPE_SELFTEST,
    }).viommuId;
    f.nestedHwptId = nested(fd, f.deviceId, f.viommuId);
  }
  return f;
}

describe.each([
  ['no_viommu', false],
  ['mock_viommu', true],
] as const)('iommufd_viommu.%s', (_name, withViommu) => {
  test('viommu_auto_destroy: close() tears the vIOMMU graph down leaf first', () => {
    const f = iommufdViommu(withViommu);
    expect(f.fd.objects().length).toBe(withViommu ? 7 : 1);
    teardown(f.fd);
  });

  test('viommu_negative_tests: no HWPT is ENOENT, a non-parent EINVAL, an unknown type EOPNOTSUPP; holders are EBUSY', () => {
    const f = iommufdViommu(withViommu);
    const { fd, deviceId } = f;
    const alloc =
      (hwptId: number, type = IOMMU_VIOMMU_TYPE_SELFTEST) =>
      () =>
        fd.viommuAlloc({ devId: deviceId, hwptId, type });
    if (!withViommu) {
      expect(errnoOf(alloc(f.hwptId))).toBe('ENOENT');
      teardown(fd);
      return;
    }
    const before = ids(fd);
    expect(errnoOf(alloc(0))).toBe('ENOENT');
    const plain = fd.hwptAlloc({ devId: deviceId, ptId: f.ioasId }).hwptId;
    expect(errnoOf(alloc(plain))).toBe('EINVAL');
    fd.destroy({ id: plain });
    expect(errnoOf(alloc(f.hwptId, 0xdead))).toBe('EOPNOTSUPP');
    expect(ids(fd)).toEqual(before);
    expect(errnoOf(() => fd.destroy({ id: f.hwptId }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: f.viommuId }))).toBe('EBUSY');
    teardown(fd);
  });

  if (!withViommu) {
    test('vdevice_alloc: without a vIOMMU it is ENOENT', () => {
      const f = iommufdViommu(false);
      expect(
        errnoOf(() => f.fd.vdeviceAlloc({ viommuId: f.viommuId, devId: f.deviceId, virtId: 0x99n })),
      ).toBe('ENOENT');
      teardown(f.fd);
    });
    return;
  }

  test('viommu_alloc_nested_iopf: a vIOMMU nested fault HWPT needs a vDEVICE to attach, then IOPF round-trips', () => {
    const f = iommufdViommu(true);
    const { fd, deviceId, viommuId, stdevId } = f;
    const { faultId, faultFd } = fd.faultQueueAlloc();
    expect(errnoOf(() => nested(fd, deviceId, viommuId, IOMMU_HWPT_FAULT_ID_VALID, UINT32_MAX))).toBe(
      'ENOENT',
    );
    expect(
      errnoOf(() => nested(fd, deviceId, viommuId, (IOMMU_HWPT_FAULT_ID_VALID | 0x8000_0000) >>> 0, faultId)),
    ).toBe('EOPNOTSUPP');
    const iopf = nested(fd, deviceId, viommuId, IOMMU_HWPT_FAULT_ID_VALID, faultId);
    expect(errnoOf(() => fd.testMockDomainReplace({ stdevId, ptId: iopf }))).toBe('ENOENT');
    expect(attachedHwpt(fd, deviceId)).not.toBe(iopf);
    fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n });
    fd.testMockDomainReplace({ stdevId, ptId: iopf });
    expect(errnoOf(() => fd.destroy({ id: iopf }))).toBe('EBUSY');
    expectIopfRecord(iopfRoundTrip(fd, deviceId, 0x1, faultFd), deviceId, 0x1);
    expect(mockDevice(fd, deviceId).responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_SUCCESS]);
    fd.testMockDomainReplace({ stdevId, ptId: f.ioasId });
    fd.destroy({ id: iopf });
    faultFd.close();
    fd.destroy({ id: faultId });
    teardown(fd);
  });

  test('viommu_alloc_with_data: in_data is echoed to out_data; the driver struct is 8..24 bytes', () => {
    const f = iommufdViommu(true);
    const { fd, deviceId, hwptId } = f;
    const data = new Uint8Array(VIOMMU_DATA_BYTES);
    new DataView(data.buffer).setUint32(0, 0xbeef, true);
    fd.viommuAlloc({ devId: deviceId, hwptId, type: IOMMU_VIOMMU_TYPE_SELFTEST, data });
    expect(le32(data, 4)).toBe(le32(data, 0));
    expect(le32(data, 4)).toBe(0xbeef);
    // Shorter than out_data, or longer than the struct, is EINVAL.
    const before = ids(fd);
    for (const len of [4, 7, VIOMMU_DATA_BYTES + 1]) {
      expect(
        errnoOf(() =>
          fd.viommuAlloc({
            devId: deviceId,
            hwptId,
            type: IOMMU_VIOMMU_TYPE_SELFTEST,
            data: new Uint8Array(len),
          }),
        ),
      ).toBe('EINVAL');
    }
    expect(ids(fd)).toEqual(before);
    fd.viommuAlloc({ devId: deviceId, hwptId, type: IOMMU_VIOMMU_TYPE_SELFTEST, data: new Uint8Array(8) });
    teardown(fd);
  });

  test('vdevice_alloc: a vDEVICE routes vEVENTs; one vEVENTQ per type; depth 2 overflows into a lost-events marker', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId, stdevId, nestedHwptId, ioasId } = f;
    expect(errnoOf(() => fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId }))).toBe('ENOENT');
    const q = fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 2 });
    expect(
      errnoOf(() => fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 2 })),
    ).toBe('EEXIST');
    let vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n }).vdeviceId;
    fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId });
    fd.testTriggerVevent({ devId: deviceId });
    expect(readVevents(q.veventqFd, 1)).toEqual([{ flags: 0, sequence: 0, virtId: 0x99 }]);
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n }))).toBe('EEXIST');
    fd.testMockDomainReplace({ stdevId, ptId: ioasId });
    fd.destroy({ id: vdev });

    vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x88n }).vdeviceId;
    fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId });
    for (let i = 0; i < 3; i++) fd.testTriggerVevent({ devId: deviceId });
    // Two fit; the third becomes the marker carrying its sequence number.
    expect(readVevents(q.veventqFd, 3)).toEqual([
      { flags: 0, sequence: 1, virtId: 0x88 },
      { flags: 0, sequence: 2, virtId: 0x88 },
      { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 3 },
    ]);
    // Once read, the overflow is gone: the next event follows the marker's number.
    fd.testTriggerVevent({ devId: deviceId });
    expect(readVevents(q.veventqFd, 1)).toEqual([{ flags: 0, sequence: 4, virtId: 0x88 }]);
    q.veventqFd.close();
    fd.testMockDomainReplace({ stdevId, ptId: ioasId });
    fd.destroy({ id: vdev });
    fd.destroy({ id: q.veventqId });
    teardown(fd);
  });

  test('vdevice_cache: vIOMMU invalidation by vdev_id writes entry_num back and clears only handled cache slots', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId } = f;
    const vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n }).vdeviceId;
    const cache = () => [...mockDevice(fd, deviceId).cache];
    expect(cache()).toEqual([C, C, C, C]);
    const inv = (data: Uint8Array | undefined, entryNum: number, more = {}) =>
      fd.hwptInvalidate({
        hwptId: viommuId,
        data,
        dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entryLen: VIOMMU_INV_BYTES,
        entryNum,
        ...more,
      });
    const failure = (run: () => unknown) => {
      const error = errorOf(run);
      return { errno: error.errno, entryNum: error.output.entryNum };
    };
    const zeros = viommuInv([0, 0, 0], [0, 0, 0]);
    expect(inv(zeros, 0)).toEqual({ entryNum: 0 });
    expect(failure(() => inv(zeros, 1, { dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(zeros, 1, { entryLen: VIOMMU_INV_BYTES + 1 }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(zeros, 1, { entryLen: 1 }))).toEqual({ errno: 'EINVAL', entryNum: 0 });
    expect(failure(() => inv(viommuInv([UINT32_MAX, 0x99, 0]), 1))).toEqual({
      errno: 'EOPNOTSUPP',
      entryNum: 0,
    });
    expect(failure(() => inv(undefined, 1))).toEqual({ errno: 'EINVAL', entryNum: 0 });
    expect(failure(() => inv(viommuInv([0, 0x99, 0]), 1, { entryLen: 0 }))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(viommuInv([0, 0x99, MOCK_DEV_CACHE_ID_MAX + 1]), 1))).toEqual({
      errno: 'EINVAL',
      entryNum: 0,
    });
    expect(failure(() => inv(viommuInv([0, 0x9, 0]), 1))).toEqual({ errno: 'EINVAL', entryNum: 0 });
    expect(cache()).toEqual([C, C, C, C]);
    expect(failure(() => inv(viommuInv([0, 0x99, 0], [UINT32_MAX, 0x99, 1]), 2))).toEqual({
      errno: 'EOPNOTSUPP',
      entryNum: 1,
    });
    expect(cache()).toEqual([0, C, C, C]);
    expect(failure(() => inv(viommuInv([0, 0x99, 0], [0, 0x99, MOCK_DEV_CACHE_ID_MAX + 1]), 2))).toEqual({
      errno: 'EINVAL',
      entryNum: 1,
    });
    expect(cache()).toEqual([0, C, C, C]);
    expect(inv(viommuInv([0, 0x99, 1]), 1)).toEqual({ entryNum: 1 });
    expect(cache()).toEqual([0, 0, C, C]);
    expect(inv(viommuInv([0, 0x99, 2], [0, 0x99, 3]), 2)).toEqual({ entryNum: 2 });
    expect(cache()).toEqual([0, 0, 0, 0]);
    expect(inv(viommuInv([IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0]), 1)).toEqual({ entryNum: 1 });
    expect(cache()).toEqual([0, 0, 0, 0]);
    fd.destroy({ id: vdev });
    teardown(fd);
  });

  test('vdevice_tombstone: unbinding the device leaves the vDEVICE id reserved and ENOENT until close', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId } = f;
    const vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n }).vdeviceId;
    expect(fd.lookup(viommuId).users).toBe(3);
    fd.destroy({ id: f.stdevId });
    expect(errnoOf(() => fd.destroy({ id: vdev }))).toBe('ENOENT');
    expect(fd.reservedIds).toBe(1);
    // The tombstone let go of the vIOMMU, and its id is not handed out again.
    expect(fd.lookup(viommuId).users).toBe(2);
    const { ioasId } = fd.ioasAlloc();
    expect(ioasId).not.toBe(vdev);
    teardown(fd);
    expect(fd.reservedIds).toBe(0);
  });
});

// --- FIXTURE(iommufd_device_pasid) -----------------------------------------------------------------------

function iommufdDevicePasid(pasidCapable: boolean) {
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const dev = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_PASID });
  const noPasid = pasidCapable ? undefined : fd.testMockDomain({ id: ioasId });
  const devId = dev.idevId;
  const parent = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;
  const nested0 = nested(fd, devId, parent, IOMMU_HWPT_ALLOC_PASID);
  const nested1 = nested(fd, devId, parent, IOMMU_HWPT_ALLOC_PASID);
  const { faultId, faultFd } = fd.faultQueueAlloc();
  const iopf = nested(fd, devId, parent, IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID, faultId);
  const viommuId = fd.viommuAlloc({ devId, hwptId: parent, type: IOMMU_VIOMMU_TYPE_SELFTEST }).viommuId;
  const nested2 = nested(fd, devId, viommuId, IOMMU_HWPT_ALLOC_PASID);
  const s2 = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
  const stdevId = dev.stdevId;
  return {
    fd,
    ioasId,
    stdevId,
    devId,
    noPasid,
    parent,
    nested0,
    nested1,
    nested2,
    faultId,
    faultFd,
    iopf,
    viommuId,
    s2,
    attach: (pasid: number, ptId: number) => fd.testPasidAttach({ stdevId, pasid, ptId }),
    replace: (pasid: number, ptId: number) => fd.testPasidReplace({ stdevId, pasid, ptId }),
    detach: (pasid: number) => fd.testPasidDetach({ stdevId, pasid }),
    check: (pasid: number) => attachedHwpt(fd, devId, pasid),
  };
}

describe.each([
  ['no_pasid', false],
  ['has_pasid', true],
] as const)('iommufd_device_pasid.%s', (_name, pasidCapable) => {
  test('pasid_attach: detaching a PASID that is not attached is a silent no-op', () => {
    const p = iommufdDevicePasid(pasidCapable);
    const users = p.fd.lookup(p.devId).users;
    expect(() => p.detach(100)).not.toThrow();
    expect(p.check(100)).toBe(0);
    expect(p.fd.lookup(p.devId).users).toBe(users);
    teardown(p.fd, p.faultFd);
  });

  test('pasid_attach: a PASID needs a PASID-compatible HWPT and RID; attach never overwrites (EBUSY)', () => {
    const p = iommufdDevicePasid(pasidCapable);
    const { fd } = p;
    const pasid = 100;
    fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.parent });
    expect(errnoOf(() => p.attach(pasid, p.s2))).toBe('EINVAL');
    fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.s2 });
    p.attach(pasid, p.nested0);
    // With a PASID attached the RID cannot move to a HWPT that is not PASID-compatible.
    expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.parent }))).toBe('EINVAL');
    expect(attachedHwpt(fd, p.devId)).toBe(p.s2);
    p.detach(pasid);
    expect(p.check(pasid)).toBe(0);

    if (p.noPasid) {
      const np = p.noPasid;
      // A PASID-compatible HWPT still serves the RID of a device without PASID support.
      fd.testMockDomainReplace({ stdevId: np.stdevId, ptId: p.nested0 });
      expect(attachedHwpt(fd, np.idevId)).toBe(p.nested0);
      fd.testMockDomainReplace({ stdevId: np.stdevId, ptId: p.ioasId });
      for (const ptId of [p.parent, p.s2]) {
        expect(errnoOf(() => fd.testPasidAttach({ stdevId: np.stdevId, pasid, ptId }))).toBe('EINVAL');
      }
      expect(attachedHwpt(fd, np.idevId, pasid)).toBe(0);
    }

    expect(errnoOf(() => p.attach(pasid, p.parent))).toBe('EINVAL');
    expect(p.check(pasid)).toBe(0);
    expect(errnoOf(() => p.attach(pasid, p.ioasId))).toBe('EINVAL');
    expect(p.check(pasid)).toBe(0);
    p.attach(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    expect(errnoOf(() => p.attach(pasid, p.nested0))).toBe('EBUSY');
    // Busy wins over compatibility: the slot is taken whatever the new HWPT is.
    expect(errnoOf(() => p.attach(pasid, p.parent))).toBe('EBUSY');
    expect(p.check(pasid)).toBe(p.s2);
    p.detach(pasid);
    expect(p.check(pasid)).toBe(0);
    p.attach(pasid, p.nested0);
    expect(p.check(pasid)).toBe(p.nested0);
    expect(errnoOf(() => p.attach(pasid, p.nested0))).toBe('EBUSY');
    p.detach(pasid);
    expect(p.check(pasid)).toBe(0);
    teardown(fd, p.faultFd);
  });

  test('pasid_attach: replace needs an attached PASID and a PASID-compatible HWPT, and keeps the old one on failure', () => {
    const p = iommufdDevicePasid(pasidCapable);
    const pasid = 200;
    p.fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.s2 });
    expect(errnoOf(() => p.replace(pasid, p.s2))).toBe('EINVAL');
    expect(p.check(pasid)).toBe(0);
    p.attach(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    p.replace(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    expect(errnoOf(() => p.replace(pasid, p.ioasId))).toBe('EINVAL');
    expect(p.check(pasid)).toBe(p.s2);
    p.replace(pasid, p.nested0);
    expect(p.check(pasid)).toBe(p.nested0);
    p.replace(pasid, p.nested1);
    expect(p.check(pasid)).toBe(p.nested1);
    // The HWPT replaced away is free again; the current one is held.
    p.fd.destroy({ id: p.nested0 });
    expect(errnoOf(() => p.fd.destroy({ id: p.nested1 }))).toBe('EBUSY');
    p.detach(pasid);
    expect(p.check(pasid)).toBe(0);
    p.fd.destroy({ id: p.nested1 });
    teardown(p.fd, p.faultFd);
  });

  test('pasid_attach: PASID 1024 fails the set after a good one (ENOMEM, per device, reset by detach) and the replace rolls back', () => {
    const p = iommufdDevicePasid(pasidCapable);
    const pasid = 1024;
    p.fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.s2 });
    p.attach(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    const users = p.fd.lookup(p.nested0).users;
    expect(errnoOf(() => p.replace(pasid, p.nested0))).toBe('ENOMEM');
    expect(p.check(pasid)).toBe(p.s2);
    expect(p.fd.lookup(p.nested0).users).toBe(users);
    p.detach(pasid);
    expect(p.check(pasid)).toBe(0);
    // The rig is per device, and the blocking domain (detach) clears it: a good attach, detach and
    // attach again all succeed, and another device's good attach does not arm this one.
    p.attach(pasid, p.s2);
    p.detach(pasid);
    p.attach(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    const other = p.fd.testMockDomain({ id: p.s2, flags: MOCK_FLAGS_DEVICE_PASID });
    p.fd.testPasidAttach({ stdevId: other.stdevId, pasid, ptId: p.s2 });
    expect(attachedHwpt(p.fd, other.idevId, pasid)).toBe(p.s2);
    expect(errnoOf(() => p.replace(pasid, p.nested1))).toBe('ENOMEM');
    teardown(p.fd, p.faultFd);
  });

  test('pasid_attach: an IOPF on a PASID reaches the fault queue of the HWPT attached to that PASID', () => {
    const p = iommufdDevicePasid(pasidCapable);
    const { fd } = p;
    const pasid = 2048;
    fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.s2 });
    p.attach(pasid, p.iopf);
    expect(p.check(pasid)).toBe(p.iopf);
    expectIopfRecord(iopfRoundTrip(fd, p.devId, pasid, p.faultFd), p.devId, pasid);
    expect(mockDevice(fd, p.devId).responses).toEqual([
      { pasid, grpid: IOPF_GRPID, code: IOMMUFD_PAGE_RESP_SUCCESS },
    ]);
    p.replace(pasid, p.s2);
    expect(p.check(pasid)).toBe(p.s2);
    p.detach(pasid);
    fd.destroy({ id: p.iopf });
    p.faultFd.close();
    fd.destroy({ id: p.faultId });
    fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.ioasId });
    expect(attachedHwpt(fd, p.devId)).not.toBe(p.s2);
    teardown(fd);
  });

  test('pasid_attach: a PASID may attach to a nested HWPT allocated through the vIOMMU', () => {
    const p = iommufdDevicePasid(pasidCapable);
    p.fd.testMockDomainReplace({ stdevId: p.stdevId, ptId: p.s2 });
    p.attach(300, p.nested2);
    expect(p.check(300)).toBe(p.nested2);
    expect(errnoOf(() => p.fd.destroy({ id: p.nested2 }))).toBe('EBUSY');
    p.detach(300);
    p.fd.destroy({ id: p.nested2 });
    teardown(p.fd, p.faultFd);
  });
});

// --- iommufd_fail_nth.c: TEST_FAIL_NTH(basic_fail_nth, device) ------------------------------------------

describe('basic_fail_nth', () => {
  test('device: every injected failure along the device path leaves objects, refcounts, ids and pins unchanged', () => {
    let completed = false;
    let failures = 0;
    for (let nth = 1; nth < 400 && !completed; nth++) {
      const fd = new Iommufd();
      const { ioasId } = fd.ioasAlloc();
      const { ioasId: ioasId2 } = fd.ioasAlloc();
      const userVa = fd.mmap(PAGE_SIZE);
      for (const id of [ioasId, ioasId2]) {
        fd.ioasMap({
          flags: IOMMU_IOAS_MAP_FIXED_IOVA | RW,
          ioasId: id,
          userVa,
          length: PAGE_SIZE,
          iova: MOCK_APERTURE_START,
        });
      }
      const state = () => ({
        objects: fd.objects().map((o) => `${o.id}:${o.type}:${o.users}`),
        reserved: fd.reservedIds,
        pinned: fd.memory.pinnedPages,
      });
      const v: Record<string, number> = {};
      const steps: [string, () => void][] = [
        [
          'mock domain',
          () => {
            const md = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_PASID });
            v.stdev = md.stdevId;
            v.idev = md.idevId;
          },
        ],
        ['hw info', () => void fd.getHwInfo({ devId: v.idev, dataLen: 8, data: new Uint8Array(8) })],
        [
          'pasid hwpt',
          () => {
            v.hwpt = fd.hwptAlloc({ devId: v.idev, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
          },
        ],
        ['replace to ioas2', () => void fd.testMockDomainReplace({ stdevId: v.stdev, ptId: ioasId2 })],
        ['replace to hwpt', () => void fd.testMockDomainReplace({ stdevId: v.stdev, ptId: v.hwpt })],
        [
          'parent',
          () => {
            v.parent = fd.hwptAlloc({
              devId: v.idev,
              ptId: ioasId,
              flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID,
            }).hwptId;
          },
        ],
        [
          'viommu',
          () => {
            v.viommu = fd.viommuAlloc({
              devId: v.idev,
              hwptId: v.parent,
              type: IOMMU_VIOMMU_TYPE_SELFTEST,
            }).viommuId;
          },
        ],
        ['vdevice', () => void fd.vdeviceAlloc({ viommuId: v.viommu, devId: v.idev, virtId: 0n })],
        [
          'fault',
          () => {
            const q = fd.faultQueueAlloc();
            q.faultFd.close();
            v.fault = q.faultId;
          },
        ],
        ['fault hwpt', () => void nested(fd, v.idev, v.parent, IOMMU_HWPT_FAULT_ID_VALID, v.fault)],
        [
          'veventq',
          () => {
            fd.veventqAlloc({
              viommuId: v.viommu,
              type: IOMMU_VEVENTQ_TYPE_SELFTEST,
              veventqDepth: 2,
            }).veventqFd.close();
          },
        ],
        [
          'test hwpt',
          () => {
            v.test = fd.hwptAlloc({ devId: v.idev, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
          },
        ],
        ['pasid attach', () => fd.testPasidAttach({ stdevId: v.stdev, pasid: 200, ptId: v.parent })],
        ['pasid replace', () => fd.testPasidReplace({ stdevId: v.stdev, pasid: 200, ptId: v.test })],
        ['pasid detach', () => fd.testPasidDetach({ stdevId: v.stdev, pasid: 200 })],
      ];
      fd.injector.arm(nth);
      let failedStep: string | undefined;
      for (const [name, step] of steps) {
        const before = state();
        try {
          step();
        } catch (error) {
          if (!(error instanceof IommufdError) || fd.injector.failedAt === undefined) throw error;
          expect({ step: name, ...state() }).toEqual({ step: name, ...before });
          failedStep = name;
          break;
        }
      }
      fd.injector.disarm();
      if (failedStep) failures++;
      else completed = true;
      teardown(fd);
    }
    expect(completed).toBe(true);
    expect(failures).toBeGreaterThan(5);
  });
});

// --- docs/registry.md rules the selftests leave out --------------------------------------------------------

/** A mock device bound through the VFIO-style API (not MOCK_DOMAIN), so attach can be driven directly. */
function bindMock(fd: Iommufd, flags = 0, driver: MockIommu = fd.mock) {
  const hw = driver.createDevice(flags);
  return { hw, devId: fd.bindDevice({ device: hw }).devId };
}

function setReservedRegions(hw: MockDevice, regions: { start: bigint; last: bigint }[]): void {
  (hw as unknown as { reservedRegions: { start: bigint; last: bigint }[] }).reservedRegions = regions;
}

function ranges(fd: Iommufd, ioasId: number) {
  return fd.ioasIovaRanges({ ioasId, numIovas: 8 }).allowedIovas;
}

function mapFixed(fd: Iommufd, ioasId: number, iova: bigint, length = PAGE_SIZE): bigint {
  const userVa = fd.mmap(length);
  fd.ioasMap({ flags: IOMMU_IOAS_MAP_FIXED_IOVA | RW, ioasId, userVa, length, iova });
  return userVa;
}

/** A device on a nested HWPT whose page faults go to a FAULT queue (the IOPF setup of the selftests). */
function faultSetup(flags = MOCK_FLAGS_DEVICE_PASID) {
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const md = fd.testMockDomain({ id: ioasId, flags });
  const devId = md.idevId;
  const parent = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;
  const { faultId, faultFd } = fd.faultQueueAlloc();
  const iopf = nested(fd, devId, parent, IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID, faultId);
  fd.testMockDomainReplace({ stdevId: md.stdevId, ptId: iopf });
  const trigger = (grpid: number, pasid = 0, id = devId) =>
    fd.testTriggerIopf({ devId: id, pasid, grpid, perm: PERM_READ, addr: 0x1000n * BigInt(grpid) });
  return {
    fd,
    ioasId,
    stdevId: md.stdevId,
    devId,
    hw: mockDevice(fd, devId),
    parent,
    faultId,
    faultFd,
    iopf,
    trigger,
  };
}

describe('docs/registry.md: devices and attachment', () => {
  test('DESTROY: a DEVICE is always EBUSY; an auto domain is EBUSY while attached and gone after the last detach', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const md = fd.testMockDomain({ id: ioasId });
    expect(errnoOf(() => fd.destroy({ id: md.idevId }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: md.hwptId }))).toBe('EBUSY');
    fd.detachDevice({ devId: md.idevId });
    expect(errnoOf(() => fd.destroy({ id: md.hwptId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.destroy({ id: md.idevId }))).toBe('EBUSY');
    fd.destroy({ id: md.stdevId });
    expect(errnoOf(() => fd.lookup(md.idevId))).toBe('ENOENT');
    fd.destroy({ id: ioasId });
    teardown(fd);
  });

  test('attach: an unknown pt_id is ENOENT; an object that is not an IOAS or HWPT is EINVAL', () => {
    const f = faultSetup();
    const { fd, faultId, ioasId } = f;
    const viommuId = fd.viommuAlloc({
      devId: f.devId,
      hwptId: f.parent,
      type: IOMMU_VIOMMU_TYPE_SELFTEST,
    }).viommuId;
    const { devId } = bindMock(fd);
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: 9999 }))).toBe('ENOENT');
    for (const ptId of [faultId, viommuId, f.devId, f.stdevId, devId]) {
      expect(errnoOf(() => fd.attachDevice({ devId, ptId }))).toBe('EINVAL');
    }
    expect(attachedHwpt(fd, devId)).toBe(0);
    expect(fd.attachDevice({ devId, ptId: ioasId }).ptId).toBeGreaterThan(0);
    teardown(fd, f.faultFd);
  });

  test('attach: an IOAS reuses its existing auto domain and returns its id; the same RID twice is EBUSY', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const md = fd.testMockDomain({ id: ioasId });
    const { devId } = bindMock(fd);
    expect(fd.attachDevice({ devId, ptId: ioasId }).ptId).toBe(md.hwptId);
    expect(fd.lookup(md.hwptId).users).toBe(3);
    const manual = fd.hwptAlloc({ devId, ptId: ioasId }).hwptId;
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: manual }))).toBe('EBUSY');
    expect(errnoOf(() => fd.attachDevice({ devId: md.idevId, ptId: ioasId }))).toBe('EBUSY');
    expect(attachedHwpt(fd, devId)).toBe(md.hwptId);
    // Attach does not overwrite; replace does.
    expect(fd.replaceDevice({ devId, ptId: manual }).ptId).toBe(manual);
    teardown(fd);
  });

  test('attach: devices of one IOMMU group must share the HWPT (EINVAL otherwise)', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { ioasId: ioas2 } = fd.ioasAlloc();
    const a = bindMock(fd);
    const b = bindMock(fd);
    const c = bindMock(fd);
    for (const other of [b, c]) (other.hw as unknown as { group: object }).group = a.hw.group;
    const shared = fd.attachDevice({ devId: a.devId, ptId: ioasId }).ptId;
    expect(errnoOf(() => fd.attachDevice({ devId: b.devId, ptId: ioas2 }))).toBe('EINVAL');
    const manual = fd.hwptAlloc({ devId: c.devId, ptId: ioasId }).hwptId;
    expect(errnoOf(() => fd.attachDevice({ devId: c.devId, ptId: manual }))).toBe('EINVAL');
    expect(attachedHwpt(fd, b.devId)).toBe(0);
    expect(fd.attachDevice({ devId: b.devId, ptId: ioasId }).ptId).toBe(shared);
    expect(fd.attachDevice({ devId: c.devId, ptId: shared }).ptId).toBe(shared);
    teardown(fd);
  });

  test('attach: a RID brings its reserved regions into the IOAS until detach; an area over them is EADDRINUSE', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const region = { start: MOCK_APERTURE_START + 0x10000n, last: MOCK_APERTURE_START + 0x1ffffn };
    const { hw, devId } = bindMock(fd);
    setReservedRegions(hw, [region]);
    fd.attachDevice({ devId, ptId: ioasId });
    expect(ranges(fd, ioasId)).toEqual([
      { start: MOCK_APERTURE_START, last: region.start - 1n },
      { start: region.last + 1n, last: MOCK_APERTURE_LAST },
    ]);
    fd.detachDevice({ devId });
    expect(ranges(fd, ioasId)).toEqual([{ start: 0n, last: U64_MAX }]);

    mapFixed(fd, ioasId, region.start);
    const before = ids(fd);
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: ioasId }))).toBe('EADDRINUSE');
    expect(ids(fd)).toEqual(before);
    expect(ranges(fd, ioasId)).toEqual([{ start: 0n, last: U64_MAX }]);
    expect(fd.memory.pinnedPages).toBe(0);
    teardown(fd);
  });

  test('replace: reserved regions move to the new IOAS; a refused replace keeps the old attachment and builds nothing', () => {
    const fd = new Iommufd();
    const [ioas1, ioas2, ioas3] = [0, 1, 2].map(() => fd.ioasAlloc().ioasId);
    const region = { start: MOCK_APERTURE_START + 0x10000n, last: MOCK_APERTURE_START + 0x1ffffn };
    const { hw, devId } = bindMock(fd);
    setReservedRegions(hw, [region]);
    const old = fd.attachDevice({ devId, ptId: ioas1 }).ptId;
    mapFixed(fd, ioas2, region.start);
    const before = ids(fd);
    expect(errnoOf(() => fd.replaceDevice({ devId, ptId: ioas2 }))).toBe('EADDRINUSE');
    expect(ids(fd)).toEqual(before);
    expect(attachedHwpt(fd, devId)).toBe(old);
    expect(ranges(fd, ioas2)).toEqual([{ start: 0n, last: U64_MAX }]);
    expect(ranges(fd, ioas1)).toHaveLength(2);

    const moved = fd.replaceDevice({ devId, ptId: ioas3 }).ptId;
    expect(errnoOf(() => fd.lookup(old))).toBe('ENOENT');
    expect(ranges(fd, ioas1)).toEqual([{ start: 0n, last: U64_MAX }]);
    expect(ranges(fd, ioas3)).toEqual([
      { start: MOCK_APERTURE_START, last: region.start - 1n },
      { start: region.last + 1n, last: MOCK_APERTURE_LAST },
    ]);
    // Replacing with a HWPT of the same IOAS keeps the regions where they are.
    const manual = fd.hwptAlloc({ devId, ptId: ioas3 }).hwptId;
    fd.replaceDevice({ devId, ptId: manual });
    expect(errnoOf(() => fd.lookup(moved))).toBe('ENOENT');
    expect(ranges(fd, ioas3)).toHaveLength(2);
    teardown(fd);
  });

  test('replace: an unattached RID is EINVAL; a driver refusal (dirty HWPT, NO_DIRTY device) leaves the old HWPT', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const dirtyCapable = fd.testMockDomain({ id: ioasId });
    const dirty = fd.hwptAlloc({
      devId: dirtyCapable.idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    }).hwptId;
    const unbound = bindMock(fd);
    expect(errnoOf(() => fd.replaceDevice({ devId: unbound.devId, ptId: ioasId }))).toBe('EINVAL');
    expect(errnoOf(() => fd.replaceDevice({ devId: unbound.devId, ptId: 9999 }))).toBe('ENOENT');
    const noDirty = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_NO_DIRTY });
    expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: noDirty.stdevId, ptId: dirty }))).toBe('EINVAL');
    expect(attachedHwpt(fd, noDirty.idevId)).toBe(noDirty.hwptId);
    expect(fd.lookup(dirty).users).toBe(1);
    // Replacing with what is already attached is a successful no-op.
    expect(fd.testMockDomainReplace({ stdevId: noDirty.stdevId, ptId: noDirty.hwptId }).ptId).toBe(
      noDirty.hwptId,
    );
    expect(fd.testMockDomainReplace({ stdevId: noDirty.stdevId, ptId: ioasId }).ptId).toBe(noDirty.hwptId);
    teardown(fd);
  });

  test('detach: nothing attached is a silent no-op; the device ends blocked and the auto domain goes with it', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { hw, devId } = bindMock(fd);
    expect(() => fd.detachDevice({ devId })).not.toThrow();
    const users = fd.lookup(devId).users;
    const hwptId = fd.attachDevice({ devId, ptId: ioasId }).ptId;
    expect(fd.lookup(devId).users).toBe(users + 1);
    expect(hw.attachedKinds.get(-1)).toBe('paging');
    fd.detachDevice({ devId });
    expect(hw.attachedKinds.has(-1)).toBe(false);
    expect(fd.lookup(devId).users).toBe(users);
    expect(errnoOf(() => fd.lookup(hwptId))).toBe('ENOENT');
    fd.destroy({ id: ioasId });
    teardown(fd);
  });

  test('PASID: a device without PASID support, or a PASID beyond its width, is EINVAL', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const dev = fd.testMockDomain({ id: ioasId, flags: MOCK_FLAGS_DEVICE_PASID });
    const plain = fd.testMockDomain({ id: ioasId });
    const s2 = fd.hwptAlloc({ devId: dev.idevId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
    fd.testMockDomainReplace({ stdevId: dev.stdevId, ptId: s2 });
    fd.testMockDomainReplace({ stdevId: plain.stdevId, ptId: s2 });
    expect(errnoOf(() => fd.testPasidAttach({ stdevId: plain.stdevId, pasid: 1, ptId: s2 }))).toBe('EINVAL');
    expect(
      errnoOf(() => fd.testPasidAttach({ stdevId: dev.stdevId, pasid: 1 << MOCK_PASID_WIDTH, ptId: s2 })),
    ).toBe('EINVAL');
    fd.testPasidAttach({ stdevId: dev.stdevId, pasid: (1 << MOCK_PASID_WIDTH) - 1, ptId: s2 });
    expect(attachedHwpt(fd, dev.idevId, (1 << MOCK_PASID_WIDTH) - 1)).toBe(s2);
    expect(fd.lookup(s2).users).toBe(4);
    teardown(fd);
  });

  test('PASID: with no RID attached a PASID may attach; the RID then needs a compatible HWPT; no regions are imported', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { hw, devId } = bindMock(fd, MOCK_FLAGS_DEVICE_PASID);
    setReservedRegions(hw, [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_START + 0xfffn }]);
    const s2 = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
    const plain = fd.hwptAlloc({ devId, ptId: ioasId }).hwptId;
    expect(fd.attachDevice({ devId, pasid: 3, ptId: s2 }).ptId).toBe(s2);
    expect(ranges(fd, ioasId)).toEqual([{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: plain }))).toBe('EINVAL');
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: ioasId }))).toBe('EINVAL');
    expect(fd.attachDevice({ devId, ptId: s2 }).ptId).toBe(s2);
    expect(ranges(fd, ioasId)).toHaveLength(1);
    expect(ranges(fd, ioasId)[0].start).toBe(MOCK_APERTURE_START + 0x1000n);
    teardown(fd);
  });

  test('attach: a nested HWPT of a vIOMMU needs a vDEVICE for the RID (ENOENT), and a failed MOCK_DOMAIN leaves nothing', () => {
    const f = iommufdViommu(true);
    const { fd } = f;
    const before = ids(fd);
    expect(errnoOf(() => fd.testMockDomain({ id: f.nestedHwptId }))).toBe('ENOENT');
    expect(ids(fd)).toEqual(before);
    expect(fd.reservedIds).toBe(0);
    const { devId } = bindMock(fd);
    expect(errnoOf(() => fd.attachDevice({ devId, ptId: f.nestedHwptId }))).toBe('ENOENT');
    fd.vdeviceAlloc({ viommuId: f.viommuId, devId, virtId: 3n });
    expect(fd.attachDevice({ devId, ptId: f.nestedHwptId }).ptId).toBe(f.nestedHwptId);
    teardown(fd);
  });

  test('GET_HW_INFO: unknown flags are EOPNOTSUPP; INPUT_TYPE with DEFAULT means the driver type; no device is ENOENT', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    expect(errnoOf(() => fd.getHwInfo({ devId: idevId, dataLen: 0, flags: 2 }))).toBe('EOPNOTSUPP');
    expect(
      fd.getHwInfo({
        devId: idevId,
        dataLen: 0,
        flags: IOMMU_HW_INFO_FLAG_INPUT_TYPE,
        inDataType: IOMMU_HW_INFO_TYPE_DEFAULT,
      }).dataType,
    ).toBe(IOMMU_HW_INFO_TYPE_SELFTEST);
    expect(errnoOf(() => fd.getHwInfo({ devId: ioasId, dataLen: 0 }))).toBe('ENOENT');
    teardown(fd);
  });
});

describe('docs/registry.md: HWPT_ALLOC', () => {
  test('check order: data/type mismatch (EINVAL), then dev_id (ENOENT), then pt_id lookup (EINVAL)', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    expect(errnoOf(() => fd.hwptAlloc({ devId: 9999, ptId: 9999, dataType: IOMMU_HWPT_DATA_SELFTEST }))).toBe(
      'EINVAL',
    );
    expect(
      errnoOf(() => fd.hwptAlloc({ devId: 9999, ptId: 9999, dataType: IOMMU_HWPT_DATA_NONE, data: u32s(1) })),
    ).toBe('EINVAL');
    expect(errnoOf(() => fd.hwptAlloc({ devId: 9999, ptId: 9999 }))).toBe('ENOENT');
    expect(errnoOf(() => fd.hwptAlloc({ devId: idevId, ptId: 9999 }))).toBe('EINVAL');
    teardown(fd);
  });

  test('IOAS: the mock takes no paging-domain data (EOPNOTSUPP); DIRTY_TRACKING needs a capable device', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const before = ids(fd);
    expect(
      errnoOf(() =>
        fd.hwptAlloc({ devId: idevId, ptId: ioasId, dataType: IOMMU_HWPT_DATA_SELFTEST, data: u32s(0) }),
      ),
    ).toBe('EOPNOTSUPP');
    const noDirty = bindMock(fd, MOCK_FLAGS_DEVICE_NO_DIRTY);
    const afterBind = ids(fd);
    expect(
      errnoOf(() =>
        fd.hwptAlloc({ devId: noDirty.devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING }),
      ),
    ).toBe('EOPNOTSUPP');
    expect(ids(fd)).toEqual(afterBind);
    expect(afterBind.length).toBe(before.length + 1);
    teardown(fd);
  });

  test('IOAS: an area outside the aperture is EADDRINUSE, unpinnable pages EFAULT, and neither leaves a HWPT', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { devId } = bindMock(fd);
    mapFixed(fd, ioasId, 0n);
    const before = ids(fd);
    expect(errnoOf(() => fd.hwptAlloc({ devId, ptId: ioasId }))).toBe('EADDRINUSE');
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EADDRINUSE');
    expect(ids(fd)).toEqual(before);
    fd.ioasUnmap({ ioasId, iova: 0n, length: U64_MAX });

    // fork_gone, no-domain half: pages that went away before any domain needed them.
    const userVa = mapFixed(fd, ioasId, MOCK_APERTURE_START);
    fd.munmap(userVa, PAGE_SIZE);
    expect(errnoOf(() => fd.hwptAlloc({ devId, ptId: ioasId }))).toBe('EFAULT');
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EFAULT');
    expect(ids(fd)).toEqual(before);
    expect(fd.reservedIds).toBe(0);
    expect(ranges(fd, ioasId)).toEqual([{ start: 0n, last: U64_MAX }]);
    teardown(fd);
  });

  test('IOAS: a manual HWPT is not attached, not an auto domain, holds its IOAS, and mirrors its areas', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { devId } = bindMock(fd);
    const userVa = mapFixed(fd, ioasId, MOCK_APERTURE_START);
    expect(fd.memory.pinCount(userVa)).toBe(0);
    const hwptId = fd.hwptAlloc({ devId, ptId: ioasId }).hwptId;
    expect(fd.memory.pinCount(userVa)).toBe(1);
    expect(attachedHwpt(fd, devId)).toBe(0);
    expect(fd.lookup(hwptId).users).toBe(1);
    expect(errnoOf(() => fd.destroy({ id: ioasId }))).toBe('EBUSY');
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 1 }).iovaAlignment).toBe(MOCK_PAGE_SIZE);
    fd.destroy({ id: hwptId });
    expect(fd.memory.pinCount(userVa)).toBe(0);
    fd.destroy({ id: ioasId });
    teardown(fd);
  });

  test('nested: no driver data is EOPNOTSUPP before the parent is judged; an auto domain parent is EINVAL', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const md = fd.testMockDomain({ id: ioasId });
    expect(errnoOf(() => fd.hwptAlloc({ devId: md.idevId, ptId: md.hwptId }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => nested(fd, md.idevId, md.hwptId))).toBe('EINVAL');
    const parent = fd.hwptAlloc({
      devId: md.idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
    }).hwptId;
    expect(errnoOf(() => fd.hwptAlloc({ devId: md.idevId, ptId: parent }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => nested(fd, md.idevId, parent, IOMMU_HWPT_ALLOC_DIRTY_TRACKING))).toBe('EOPNOTSUPP');
    // The struct is exactly one u32: one byte more is EINVAL too.
    expect(errnoOf(() => nested(fd, md.idevId, parent, 0, undefined, new Uint8Array(5)))).toBe('EINVAL');
    const n = nested(fd, md.idevId, parent, 0, undefined, selftestData(0x1234));
    expect(iotlb(fd, n)).toEqual([0x1234, 0x1234, 0x1234, 0x1234]);
    expect(fd.lookup(parent).users).toBe(2);
    teardown(fd);
  });

  test('nested: a parent of another IOMMU driver is EINVAL; through a vIOMMU another IOMMU is EINVAL before flags', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const md = fd.testMockDomain({ id: ioasId });
    const parent = fd.hwptAlloc({
      devId: md.idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
    }).hwptId;
    const viommuId = fd.viommuAlloc({
      devId: md.idevId,
      hwptId: parent,
      type: IOMMU_VIOMMU_TYPE_SELFTEST,
    }).viommuId;
    const stranger = bindMock(fd, 0, new MockIommu());
    const before = ids(fd);
    expect(errnoOf(() => nested(fd, stranger.devId, parent))).toBe('EINVAL');
    expect(errnoOf(() => nested(fd, stranger.devId, viommuId))).toBe('EINVAL');
    expect(errnoOf(() => nested(fd, stranger.devId, viommuId, IOMMU_HWPT_ALLOC_NEST_PARENT))).toBe('EINVAL');
    expect(errnoOf(() => nested(fd, md.idevId, viommuId, IOMMU_HWPT_ALLOC_NEST_PARENT))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => fd.hwptAlloc({ devId: md.idevId, ptId: viommuId }))).toBe('EOPNOTSUPP');
    // The driver data rules are the same through a vIOMMU.
    expect(
      errnoOf(() =>
        fd.hwptAlloc({
          devId: md.idevId,
          ptId: viommuId,
          dataType: IOMMU_HWPT_DATA_SELFTEST + 1,
          data: selftestData(),
        }),
      ),
    ).toBe('EOPNOTSUPP');
    expect(errnoOf(() => nested(fd, md.idevId, viommuId, 0, undefined, new Uint8Array(3)))).toBe('EINVAL');
    expect(ids(fd)).toEqual(before);
    // A nested HWPT made through a vIOMMU holds the vIOMMU, not the parent.
    const users = { parent: fd.lookup(parent).users, viommu: fd.lookup(viommuId).users };
    nested(fd, md.idevId, viommuId);
    expect(fd.lookup(parent).users).toBe(users.parent);
    expect(fd.lookup(viommuId).users).toBe(users.viommu + 1);
    teardown(fd);
  });

  test('pt_id of any other object type (FAULT, VDEVICE, VEVENTQ, SELFTEST, HWPT_NESTED) is EINVAL', () => {
    const f = iommufdViommu(true);
    const { fd, deviceId, viommuId } = f;
    const { faultId, faultFd } = fd.faultQueueAlloc();
    const vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 1n }).vdeviceId;
    const q = fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 1 });
    for (const ptId of [faultId, vdev, q.veventqId, f.stdevId, f.nestedHwptId]) {
      expect(errnoOf(() => nested(fd, deviceId, ptId))).toBe('EINVAL');
      expect(errnoOf(() => fd.hwptAlloc({ devId: deviceId, ptId }))).toBe('EINVAL');
    }
    teardown(fd, faultFd, q.veventqFd);
  });

  test('FAULT_ID_VALID: a fault_id that is not a FAULT is ENOENT; the HWPT holds its FAULT; without the flag it is ignored', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    const { faultId, faultFd } = fd.faultQueueAlloc();
    const before = ids(fd);
    expect(
      errnoOf(() =>
        fd.hwptAlloc({ devId: idevId, ptId: ioasId, flags: IOMMU_HWPT_FAULT_ID_VALID, faultId: ioasId }),
      ),
    ).toBe('ENOENT');
    expect(ids(fd)).toEqual(before);
    const plain = fd.hwptAlloc({ devId: idevId, ptId: ioasId, faultId: 9999 }).hwptId;
    const withFault = fd.hwptAlloc({
      devId: idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_FAULT_ID_VALID,
      faultId,
    }).hwptId;
    faultFd.close();
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('EBUSY');
    fd.destroy({ id: withFault });
    fd.destroy({ id: faultId });
    fd.destroy({ id: plain });
    teardown(fd);
  });
});

describe('docs/registry.md: FAULT queue and IOPF', () => {
  test('FAULT_QUEUE_ALLOC: flags are EOPNOTSUPP; destroy is EBUSY while its fd is open', () => {
    const fd = new Iommufd();
    expect(errnoOf(() => fd.faultQueueAlloc({ flags: 1 }))).toBe('EOPNOTSUPP');
    expect(fd.objects()).toHaveLength(0);
    const { faultId, faultFd } = fd.faultQueueAlloc();
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('EBUSY');
    faultFd.close();
    fd.destroy({ id: faultId });
    teardown(fd);
  });

  test('records: dev_id is the DEVICE id, LAST_PAGE always, PASID_VALID only with a PASID; cookies from 1, lowest free', () => {
    const s = faultSetup();
    s.trigger(1);
    s.trigger(2);
    const first = readFaults(s.faultFd, 3);
    expect(first.map((r) => [r.cookie, r.grpid, r.flags, r.devId, r.pasid, r.perm, r.length])).toEqual([
      [1, 1, PGFAULT_FLAGS_LAST_PAGE, s.devId, 0, PERM_READ, 0],
      [2, 2, PGFAULT_FLAGS_LAST_PAGE, s.devId, 0, PERM_READ, 0],
    ]);
    expect(first.map((r) => r.addr)).toEqual([0x1000n, 0x2000n]);
    expect(s.faultFd.write(responses([1, IOMMUFD_PAGE_RESP_SUCCESS]))).toBe(PAGE_RESPONSE_BYTES);
    s.trigger(3, 7);
    const [third] = readFaults(s.faultFd, 1);
    expect(third).toMatchObject({ cookie: 1, grpid: 3, pasid: 7 });
    expect(third.flags).toBe(PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE);
    expect(s.faultFd.write(responses([2, IOMMUFD_PAGE_RESP_INVALID], [1, IOMMUFD_PAGE_RESP_SUCCESS]))).toBe(
      2 * PAGE_RESPONSE_BYTES,
    );
    expect(s.hw.responses).toEqual([
      { pasid: 0, grpid: 1, code: IOMMUFD_PAGE_RESP_SUCCESS },
      { pasid: 0, grpid: 2, code: IOMMUFD_PAGE_RESP_INVALID },
      { pasid: 7, grpid: 3, code: IOMMUFD_PAGE_RESP_SUCCESS },
    ]);
    expect(s.fd.pendingFaultGroups).toBe(0);
    teardown(s.fd, s.faultFd);
  });

  test('routing: a HWPT without a fault queue never reaches userspace; the core answers INVALID', () => {
    const s = faultSetup();
    const plain = nested(s.fd, s.devId, s.parent);
    s.fd.testMockDomainReplace({ stdevId: s.stdevId, ptId: plain });
    s.trigger(4);
    s.trigger(5, 9);
    expect(s.faultFd.read(new Uint8Array(PGFAULT_BYTES))).toBe(0);
    expect(s.hw.responses.map((r) => [r.grpid, r.code])).toEqual([
      [4, IOMMUFD_PAGE_RESP_INVALID],
      [5, IOMMUFD_PAGE_RESP_INVALID],
    ]);
    teardown(s.fd, s.faultFd);
  });

  test('routing: an attached PASID goes to its own HWPT only; an unattached PASID falls back to the nested RID', () => {
    const s = faultSetup();
    const s2 = s.fd.hwptAlloc({ devId: s.devId, ptId: s.ioasId, flags: IOMMU_HWPT_ALLOC_PASID }).hwptId;
    s.fd.testPasidAttach({ stdevId: s.stdevId, pasid: 100, ptId: s2 });
    s.trigger(1, 100);
    expect(s.faultFd.readable).toBe(false);
    expect(s.hw.responses).toEqual([{ pasid: 100, grpid: 1, code: IOMMUFD_PAGE_RESP_INVALID }]);
    s.trigger(2, 101);
    expect(readFaults(s.faultFd, 1)).toMatchObject([{ pasid: 101, grpid: 2, devId: s.devId }]);
    teardown(s.fd, s.faultFd);
  });

  test('routing: a paging HWPT with a fault queue takes RID faults; PASIDs do not fall back to a paging RID', () => {
    const s = faultSetup();
    const paging = s.fd.hwptAlloc({
      devId: s.devId,
      ptId: s.ioasId,
      flags: IOMMU_HWPT_FAULT_ID_VALID,
      faultId: s.faultId,
    }).hwptId;
    s.fd.testMockDomainReplace({ stdevId: s.stdevId, ptId: paging });
    s.trigger(1);
    s.trigger(2, 5);
    expect(readFaults(s.faultFd, 2)).toMatchObject([{ grpid: 1, pasid: 0, devId: s.devId }]);
    expect(s.hw.responses).toEqual([{ pasid: 5, grpid: 2, code: IOMMUFD_PAGE_RESP_INVALID }]);
    teardown(s.fd, s.faultFd);
  });

  test('close: the iommufd going away answers every pending group INVALID; the FAULT lives until its fd closes', () => {
    const s = faultSetup();
    s.trigger(1);
    readFaults(s.faultFd, 1);
    s.trigger(2);
    s.fd.close();
    expect(s.hw.responses.map((r) => [r.grpid, r.code]).sort()).toEqual([
      [1, IOMMUFD_PAGE_RESP_INVALID],
      [2, IOMMUFD_PAGE_RESP_INVALID],
    ]);
    expect(s.fd.objects().map((o) => o.type)).toEqual(['FAULT']);
    expect(s.faultFd.read(new Uint8Array(PGFAULT_BYTES))).toBe(0);
    s.faultFd.close();
    expect(s.fd.objects()).toEqual([]);
    expect(errnoOf(() => s.fd.ioasAlloc())).toBe('EBADF');
  });

  test('read: counts not a multiple of 40 are ESPIPE; empty reads 0; a buffer below the first group is EINVAL', () => {
    const s = faultSetup();
    expect(errnoOf(() => s.faultFd.read(new Uint8Array(PGFAULT_BYTES - 1)))).toBe('ESPIPE');
    expect(s.faultFd.read(new Uint8Array(PGFAULT_BYTES))).toBe(0);
    s.trigger(1);
    expect(errnoOf(() => s.faultFd.read(new Uint8Array(0)))).toBe('EINVAL');
    expect(s.faultFd.readable).toBe(true);
    expect(readFaults(s.faultFd, 1)).toHaveLength(1);
    teardown(s.fd, s.faultFd);
  });

  test('write: ESPIPE on partial records; bad code or unknown cookie is EINVAL; stops at the first bad entry', () => {
    const s = faultSetup();
    s.trigger(1);
    const [record] = readFaults(s.faultFd, 1);
    expect(errnoOf(() => s.faultFd.write(new Uint8Array(PAGE_RESPONSE_BYTES - 1)))).toBe('ESPIPE');
    expect(errnoOf(() => s.faultFd.write(responses([record.cookie, 2])))).toBe('EINVAL');
    expect(errnoOf(() => s.faultFd.write(responses([99, IOMMUFD_PAGE_RESP_SUCCESS])))).toBe('EINVAL');
    expect(s.hw.responses).toEqual([]);
    expect(s.faultFd.write(responses([record.cookie, IOMMUFD_PAGE_RESP_SUCCESS], [99, 0]))).toBe(
      PAGE_RESPONSE_BYTES,
    );
    expect(s.hw.responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_SUCCESS]);
    expect(errnoOf(() => s.faultFd.write(responses([record.cookie, IOMMUFD_PAGE_RESP_SUCCESS])))).toBe(
      'EINVAL',
    );
    teardown(s.fd, s.faultFd);
  });

  test('poll: always writable; readable exactly while undelivered groups wait', () => {
    const s = faultSetup();
    expect([s.faultFd.readable, s.faultFd.writable]).toEqual([false, true]);
    s.trigger(1);
    expect([s.faultFd.readable, s.faultFd.writable]).toEqual([true, true]);
    readFaults(s.faultFd, 1);
    expect([s.faultFd.readable, s.faultFd.writable]).toEqual([false, true]);
    teardown(s.fd, s.faultFd);
  });

  test('auto-response: detach answers undelivered and read-but-unanswered groups INVALID and voids their cookies', () => {
    const s = faultSetup();
    s.trigger(1);
    s.trigger(2);
    const [read] = readFaults(s.faultFd, 1);
    expect(s.fd.pendingFaultGroups).toBe(2);
    s.fd.detachDevice({ devId: s.devId });
    expect(s.hw.responses.map((r) => [r.grpid, r.code]).sort()).toEqual([
      [1, IOMMUFD_PAGE_RESP_INVALID],
      [2, IOMMUFD_PAGE_RESP_INVALID],
    ]);
    expect(s.fd.pendingFaultGroups).toBe(0);
    expect(s.faultFd.read(new Uint8Array(PGFAULT_BYTES))).toBe(0);
    expect(errnoOf(() => s.faultFd.write(responses([read.cookie, IOMMUFD_PAGE_RESP_SUCCESS])))).toBe(
      'EINVAL',
    );
    teardown(s.fd, s.faultFd);
  });

  test('auto-response: replace to a HWPT without a fault queue answers the old attachment INVALID', () => {
    const s = faultSetup();
    s.trigger(1);
    readFaults(s.faultFd, 1);
    s.trigger(2);
    s.fd.testMockDomainReplace({ stdevId: s.stdevId, ptId: s.parent });
    expect(s.hw.responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_INVALID, IOMMUFD_PAGE_RESP_INVALID]);
    expect(s.fd.pendingFaultGroups).toBe(0);
    // Back on the fault HWPT, new groups flow again and cookies start over.
    s.fd.testMockDomainReplace({ stdevId: s.stdevId, ptId: s.iopf });
    s.trigger(3);
    expect(readFaults(s.faultFd, 1)).toMatchObject([{ grpid: 3, cookie: 1 }]);
    teardown(s.fd, s.faultFd);
  });

  test('auto-response: unbinding the device (destroying its selftest object) answers its groups INVALID', () => {
    const s = faultSetup();
    s.trigger(1);
    const [read] = readFaults(s.faultFd, 1);
    s.trigger(2);
    s.fd.destroy({ id: s.stdevId });
    expect(s.hw.responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_INVALID, IOMMUFD_PAGE_RESP_INVALID]);
    expect(errnoOf(() => s.faultFd.write(responses([read.cookie, IOMMUFD_PAGE_RESP_SUCCESS])))).toBe(
      'EINVAL',
    );
    expect(s.fd.lookup(s.iopf).users).toBe(1);
    teardown(s.fd, s.faultFd);
  });

  test('auto-response: only the ended attachment is answered; another device on the same queue keeps its groups', () => {
    const s = faultSetup();
    const other = s.fd.testMockDomain({ id: s.ioasId });
    s.fd.testMockDomainReplace({ stdevId: other.stdevId, ptId: s.iopf });
    s.trigger(1);
    s.trigger(2, 0, other.idevId);
    s.fd.detachDevice({ devId: s.devId });
    expect(s.hw.responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_INVALID]);
    const [kept] = readFaults(s.faultFd, 2);
    expect(kept).toMatchObject({ grpid: 2, devId: other.idevId });
    s.faultFd.write(responses([kept.cookie, IOMMUFD_PAGE_RESP_SUCCESS]));
    expect(mockDevice(s.fd, other.idevId).responses.map((r) => r.code)).toEqual([IOMMUFD_PAGE_RESP_SUCCESS]);
    teardown(s.fd, s.faultFd);
  });
});

describe('docs/registry.md: VIOMMU and VDEVICE', () => {
  test('VIOMMU_ALLOC order: flags/DEFAULT type, then dev (ENOENT), then driver type, then HWPT_PAGING (ENOENT), then NEST_PARENT', () => {
    const f = iommufdViommu(true);
    const { fd, deviceId, hwptId } = f;
    const alloc = (a: { flags?: number; devId?: number; type?: number; hwptId?: number }) => () =>
      fd.viommuAlloc({ devId: deviceId, hwptId, type: IOMMU_VIOMMU_TYPE_SELFTEST, ...a });
    const before = ids(fd);
    expect(errnoOf(alloc({ flags: 1, devId: 9999 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc({ type: IOMMU_VIOMMU_TYPE_DEFAULT, devId: 9999 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc({ devId: 9999, type: 0xdead }))).toBe('ENOENT');
    expect(errnoOf(alloc({ type: 0xdead, hwptId: 9999 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc({ hwptId: f.nestedHwptId }))).toBe('ENOENT');
    expect(errnoOf(alloc({ hwptId: f.ioasId }))).toBe('ENOENT');
    expect(ids(fd)).toEqual(before);
    const users = fd.lookup(hwptId).users;
    const second = alloc({})().viommuId;
    expect(fd.lookup(hwptId).users).toBe(users + 1);
    fd.destroy({ id: second });
    expect(fd.lookup(hwptId).users).toBe(users);
    teardown(fd);
  });

  test('VDEVICE_ALLOC: ENOENT for vIOMMU/device, EINVAL across IOMMUs, EEXIST per device and per virt_id; virt_id 0 is legal', () => {
    const f = iommufdViommu(true);
    const { fd, deviceId, viommuId, hwptId } = f;
    const other = fd.testMockDomain({ id: f.ioasId });
    const stranger = bindMock(fd, 0, new MockIommu());
    const before = ids(fd);
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId: 9999, devId: deviceId, virtId: 1n }))).toBe('ENOENT');
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId: hwptId, devId: deviceId, virtId: 1n }))).toBe('ENOENT');
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId, devId: 9999, virtId: 1n }))).toBe('ENOENT');
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId, devId: stranger.devId, virtId: 1n }))).toBe('EINVAL');
    expect(ids(fd)).toEqual(before);
    const users = fd.lookup(viommuId).users;
    const vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0n }).vdeviceId;
    expect(fd.lookup(viommuId).users).toBe(users + 1);
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId, devId: other.idevId, virtId: 0n }))).toBe('EEXIST');
    const viommu2 = fd.viommuAlloc({ devId: deviceId, hwptId, type: IOMMU_VIOMMU_TYPE_SELFTEST }).viommuId;
    expect(errnoOf(() => fd.vdeviceAlloc({ viommuId: viommu2, devId: deviceId, virtId: 5n }))).toBe('EEXIST');
    // The other device may take virt_id 0 on the second vIOMMU: virt_ids are per vIOMMU.
    fd.vdeviceAlloc({ viommuId: viommu2, devId: other.idevId, virtId: 0n });
    expect(errnoOf(() => fd.destroy({ id: viommu2 }))).toBe('EBUSY');
    fd.destroy({ id: vdev });
    expect(fd.lookup(viommuId).users).toBe(users);
    teardown(fd);
  });
});

describe('docs/registry.md: VEVENTQ', () => {
  test('VEVENTQ_ALLOC: flags and DEFAULT type EOPNOTSUPP, depth 0 or over 2^19 EINVAL, no vIOMMU ENOENT, one per type', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId } = f;
    const alloc = (a: { flags?: number; viommuId?: number; type?: number; veventqDepth?: number }) => () =>
      fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 2, ...a });
    const before = ids(fd);
    expect(errnoOf(alloc({ flags: 1 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc({ type: IOMMU_VEVENTQ_TYPE_DEFAULT }))).toBe('EOPNOTSUPP');
    expect(errnoOf(alloc({ veventqDepth: 0 }))).toBe('EINVAL');
    expect(errnoOf(alloc({ veventqDepth: VEVENTQ_MAX_DEPTH + 1 }))).toBe('EINVAL');
    expect(errnoOf(alloc({ viommuId: 9999 }))).toBe('ENOENT');
    expect(errnoOf(alloc({ viommuId: f.hwptId }))).toBe('ENOENT');
    expect(ids(fd)).toEqual(before);
    const q = alloc({ veventqDepth: VEVENTQ_MAX_DEPTH })();
    expect(errnoOf(alloc({}))).toBe('EEXIST');
    // The fd holds the queue; the queue holds the vIOMMU. A destroyed queue frees its type.
    expect(errnoOf(() => fd.destroy({ id: q.veventqId }))).toBe('EBUSY');
    q.veventqFd.close();
    const users = fd.lookup(viommuId).users;
    fd.destroy({ id: q.veventqId });
    expect(fd.lookup(viommuId).users).toBe(users - 1);
    const again = alloc({})();
    expect(again.veventqId).toBe(q.veventqId);
    teardown(fd, again.veventqFd);
  });

  test('TRIGGER_VEVENT: EOPNOTSUPP without a queue; ENOENT unless attached through a vDEVICE with a non-zero virt_id', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId, stdevId, nestedHwptId } = f;
    const trigger = () => fd.testTriggerVevent({ devId: deviceId });
    expect(errnoOf(trigger)).toBe('ENOENT');
    let vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0n }).vdeviceId;
    fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId });
    expect(errnoOf(trigger)).toBe('ENOENT');
    fd.testMockDomainReplace({ stdevId, ptId: f.ioasId });
    fd.destroy({ id: vdev });
    vdev = fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x77n }).vdeviceId;
    expect(errnoOf(trigger)).toBe('ENOENT');
    fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId });
    expect(errnoOf(trigger)).toBe('EOPNOTSUPP');
    const q = fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 4 });
    trigger();
    expect(readVevents(q.veventqFd, 1)).toEqual([{ flags: 0, sequence: 0, virtId: 0x77 }]);
    teardown(fd, q.veventqFd);
  });

  test('read: below a header is EINVAL, below the first event EINVAL (event kept), empty reads 0; no write; poll', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId, stdevId, nestedHwptId } = f;
    fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x11n });
    fd.testMockDomainReplace({ stdevId, ptId: nestedHwptId });
    const { veventqFd } = fd.veventqAlloc({ viommuId, type: IOMMU_VEVENTQ_TYPE_SELFTEST, veventqDepth: 4 });
    expect(errnoOf(() => veventqFd.read(new Uint8Array(VEVENT_HEADER_BYTES - 1)))).toBe('EINVAL');
    expect(veventqFd.read(new Uint8Array(SELFTEST_VEVENT_BYTES))).toBe(0);
    expect([veventqFd.readable, veventqFd.writable]).toEqual([false, false]);
    fd.testTriggerVevent({ devId: deviceId });
    expect(veventqFd.readable).toBe(true);
    expect(errnoOf(() => veventqFd.read(new Uint8Array(VEVENT_HEADER_BYTES)))).toBe('EINVAL');
    expect(errnoOf(() => veventqFd.write(new Uint8Array(8)))).toBe('EINVAL');
    expect(readVevents(veventqFd, 2)).toEqual([{ flags: 0, sequence: 0, virtId: 0x11 }]);
    expect(veventqFd.readable).toBe(false);
    teardown(fd, veventqFd);
  });
});

describe('docs/registry.md: HWPT_INVALIDATE', () => {
  test('target: unknown id ENOENT, IOAS or paging HWPT EINVAL, entries without data or entry_len EINVAL, entry_num 0 written back', () => {
    const f = iommufdViommu(true);
    const { fd } = f;
    const inv =
      (hwptId: number, a: { entryNum?: number; entryLen?: number; data?: Uint8Array } = {}) =>
      () =>
        fd.hwptInvalidate({
          hwptId,
          dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
          entryLen: HWPT_INV_BYTES,
          entryNum: 1,
          data: hwptInv([0, 0]),
          ...a,
        });
    for (const [hwptId, errno] of [
      [9999, 'ENOENT'],
      [f.ioasId, 'EINVAL'],
      [f.hwptId, 'EINVAL'],
      [f.deviceId, 'EINVAL'],
    ] as const) {
      const error = errorOf(inv(hwptId));
      expect([error.errno, error.output.entryNum]).toEqual([errno, 0]);
    }
    // The argument checks come before the lookup.
    expect(errnoOf(inv(9999, { data: undefined }))).toBe('EINVAL');
    expect(errnoOf(inv(9999, { entryLen: 0 }))).toBe('EINVAL');
    expect(errnoOf(inv(9999, { entryNum: 0, data: undefined }))).toBe('ENOENT');
    teardown(fd);
  });

  test('an empty array still checks data_type (EINVAL for another type) on nested HWPTs and vIOMMUs', () => {
    const f = iommufdViommu(true);
    const { fd } = f;
    for (const hwptId of [f.nestedHwptId, f.viommuId]) {
      const probe = (dataType: number) => fd.hwptInvalidate({ hwptId, dataType, entryLen: 0, entryNum: 0 });
      expect(probe(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST)).toEqual({ entryNum: 0 });
      const error = errorOf(() => probe(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID));
      expect([error.errno, error.output.entryNum]).toEqual(['EINVAL', 0]);
    }
    teardown(fd);
  });

  test('FLAG_ALL does not excuse an out-of-range iotlb_id or cache_id (EINVAL, nothing cleared)', () => {
    const f = iommufdViommu(true);
    const { fd, viommuId, deviceId } = f;
    fd.vdeviceAlloc({ viommuId, devId: deviceId, virtId: 0x99n });
    const nestedErr = errorOf(() =>
      fd.hwptInvalidate({
        hwptId: f.nestedHwptId,
        dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entryLen: HWPT_INV_BYTES,
        entryNum: 1,
        data: hwptInv([IOMMU_TEST_INVALIDATE_FLAG_ALL, MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1]),
      }),
    );
    expect([nestedErr.errno, nestedErr.output.entryNum]).toEqual(['EINVAL', 0]);
    expect(iotlb(fd, f.nestedHwptId)).toEqual([D, D, D, D]);
    const viommuErr = errorOf(() =>
      fd.hwptInvalidate({
        hwptId: viommuId,
        dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entryLen: VIOMMU_INV_BYTES,
        entryNum: 1,
        data: viommuInv([IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, MOCK_DEV_CACHE_ID_MAX + 1]),
      }),
    );
    expect([viommuErr.errno, viommuErr.output.entryNum]).toEqual(['EINVAL', 0]);
    expect(mockDevice(fd, deviceId).cache).toEqual([C, C, C, C]);
    teardown(fd);
  });

  test('a driver without cache invalidation is EOPNOTSUPP', () => {
    class NoInvalidation extends MockIommu {
      override invalidationFormat() {
        return undefined;
      }
    }
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const { devId } = bindMock(fd, 0, new NoInvalidation());
    const parent = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;
    const hwptId = nested(fd, devId, parent);
    const error = errorOf(() =>
      fd.hwptInvalidate({
        hwptId,
        dataType: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entryLen: HWPT_INV_BYTES,
        entryNum: 1,
        data: hwptInv([0, 0]),
      }),
    );
    expect([error.errno, error.output.entryNum]).toEqual(['EOPNOTSUPP', 0]);
    teardown(fd);
  });
});

describe('docs/registry.md: selftest mock facts', () => {
  test('MOCK_DOMAIN: ids come out selftest < device < auto HWPT; the IOAS reports the mock aperture and page size', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 })).toEqual({
      numIovas: 1,
      allowedIovas: [{ start: 0n, last: U64_MAX }],
      iovaAlignment: 1n,
    });
    const md = fd.testMockDomain({ id: ioasId });
    expect([md.stdevId, md.idevId, md.hwptId]).toEqual([ioasId + 1, ioasId + 2, ioasId + 3]);
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 })).toEqual({
      numIovas: 1,
      allowedIovas: [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }],
      iovaAlignment: MOCK_PAGE_SIZE,
    });
    expect(MOCK_PAGE_SIZE).toBe(PAGE_SIZE / 2n);
    teardown(fd);
  });

  test('MOCK_DOMAIN: unknown device flags are EINVAL and leave nothing behind', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId, flags: 8 }))).toBe('EINVAL');
    expect(ids(fd)).toEqual([ioasId]);
    expect(fd.reservedIds).toBe(0);
    teardown(fd);
  });

  test('selftest ops on ids that are not selftest devices are ENOENT; TRIGGER_IOPF needs a DEVICE', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const md = fd.testMockDomain({ id: ioasId });
    expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: md.idevId, ptId: ioasId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.testPasidAttach({ stdevId: ioasId, pasid: 1, ptId: md.hwptId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.testPasidDetach({ stdevId: 9999, pasid: 1 }))).toBe('ENOENT');
    expect(
      errnoOf(() => fd.testTriggerIopf({ devId: md.stdevId, pasid: 0, grpid: 1, perm: PERM_READ, addr: 0n })),
    ).toBe('ENOENT');
    // With nothing to route to, the trigger itself still succeeds.
    expect(() =>
      fd.testTriggerIopf({ devId: md.idevId, pasid: 0, grpid: 1, perm: PERM_READ, addr: 0n }),
    ).not.toThrow();
    expect(mockDevice(fd, md.idevId).responses).toEqual([
      { pasid: 0, grpid: 1, code: IOMMUFD_PAGE_RESP_INVALID },
    ]);
    teardown(fd);
  });
});

describe('HWPT_ALLOC order (hw_pagetable.c)', () => {
  test('the domain is populated before fault_id is looked up: EADDRINUSE wins over a bad fault_id', () => {
    const fd = new Iommufd();
    const { ioasId: ioas1 } = fd.ioasAlloc();
    const { ioasId: ioas2 } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioas2 });
    // An allowed range across the mock aperture's end: the domain's reservation meets it.
    fd.ioasAllowIovas({ ioasId: ioas1, allowedIovas: [{ start: 0x7fff_f000n, last: 0x8000_0fffn }] });
    const before = fd.objects().length;
    expect(() =>
      fd.hwptAlloc({ flags: IOMMU_HWPT_FAULT_ID_VALID, devId: idevId, ptId: ioas1, faultId: 99 }),
    ).toThrow(/EADDRINUSE/);
    // With a populatable IOAS, the bad fault_id is ENOENT and the half-built HWPT is gone.
    const { ioasId: ioas3 } = fd.ioasAlloc();
    expect(() =>
      fd.hwptAlloc({ flags: IOMMU_HWPT_FAULT_ID_VALID, devId: idevId, ptId: ioas3, faultId: 99 }),
    ).toThrow(/ENOENT/);
    expect(fd.objects().length).toBe(before + 1);
    expect(fd.reservedIds).toBe(0);
    fd.close();
  });
});
