/**
 * Conformance suite for object ids, DESTROY, the IOAS ioctls, OPTION and pin accounting, ported
 * case by case from the kernel's iommufd selftest (tools/testing/selftests/iommu/iommufd.c, fixtures
 * `iommufd`, `iommufd_ioas` and `iommufd_mock_domain`), plus one test per errno row of
 * docs/registry.md (object model, IOAS) and the invariants those operations touch.
 *
 * Kernel fixtures become helper functions: `openIoas(n)` is FIXTURE_SETUP(iommufd_ioas) with n mock
 * domains, `teardown()` is teardown_iommufd() (close, then every page of the process unpinned).
 * `checkRefs` is IOMMU_TEST_OP_MD_CHECK_REFS and `checkMockIova` is IOMMU_TEST_OP_MD_CHECK_MAP.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { IommufdError } from '../../../host/iommufd/errors.ts';
import { FaultInjector } from '../../../host/iommufd/fault-injector.ts';
import {
  HwptPaging,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../../../host/iommufd/hwpt.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  Ioas,
} from '../../../host/iommufd/ioas.ts';
import {
  IOMMU_OPTION_HUGE_PAGES,
  IOMMU_OPTION_OP_GET,
  IOMMU_OPTION_OP_SET,
  IOMMU_OPTION_RLIMIT_MODE,
  Iommufd,
} from '../../../host/iommufd/iommufd.ts';
import { U64_MAX } from '../../../host/iommufd/iova.ts';
import { ObjectTable } from '../../../host/iommufd/object-table.ts';
import {
  IOMMU_VIOMMU_TYPE_SELFTEST,
  MOCK_APERTURE_LAST,
  MOCK_APERTURE_START,
  MOCK_PAGE_SIZE,
  type MockPagingDomain,
} from '../../../host/iommufd/selftest.ts';
import { PAGE_SIZE } from '../../../host/iommufd/user-memory.ts';
import { errnoOf, errorOf } from '../../support/iommufd-errors.ts';

const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
const FIXED = IOMMU_IOAS_MAP_FIXED_IOVA;
/** The selftest's global buffer: 16 pages, huge-page aligned. */
const BUFFER_SIZE = PAGE_SIZE * 16n;
/** Transparent huge page size: the cap on automatic IOVA alignment. */
const HUGEPAGE_SIZE = 2n * 1024n * 1024n;

// --- helpers -------------------------------------------------------------------------------------

function mapFixed(
  fd: Iommufd,
  ioasId: number,
  userVa: bigint,
  length: bigint,
  iova: bigint,
  flags = RW,
): bigint {
  return fd.ioasMap({ flags: flags | FIXED, ioasId, userVa, length, iova }).iova;
}

function mapAuto(fd: Iommufd, ioasId: number, userVa: bigint, length: bigint, flags = RW): bigint {
  return fd.ioasMap({ flags, ioasId, userVa, length }).iova;
}

function unmap(fd: Iommufd, ioasId: number, iova: bigint, length: bigint): bigint {
  return fd.ioasUnmap({ ioasId, iova, length }).length;
}

function ioasOf(fd: Iommufd, ioasId: number): Ioas {
  return fd.lookup<Ioas>(ioasId, 'IOAS');
}

function mockDomainOf(fd: Iommufd, hwptId: number): MockPagingDomain {
  return fd.lookup<HwptPaging>(hwptId, 'HWPT_PAGING').domain as MockPagingDomain;
}

/** The page frame behind user address `va` (pin and release it again: no net effect). */
function frameOf(fd: Iommufd, va: bigint): number {
  const frames = fd.memory.pin(va, 1n);
  fd.memory.unpin(frames);
  return frames[0];
}

/** IOMMU_TEST_OP_MD_CHECK_REFS: every page of [va, va + length) is pinned exactly `refs` times. */
function checkRefs(fd: Iommufd, va: bigint, length: bigint, refs: number): void {
  const counts: number[] = [];
  for (let at = 0n; at < length; at += PAGE_SIZE) counts.push(fd.memory.pinCount(va + at));
  expect(counts).toEqual(counts.map(() => refs));
}

/** IOMMU_TEST_OP_MD_CHECK_MAP: each mock page of [iova, iova + length) maps the frame of user_va + offset. */
function checkMockIova(fd: Iommufd, hwptIds: number[], userVa: bigint, iova: bigint, length: bigint): void {
  const want: number[] = [];
  for (let at = 0n; at < length; at += MOCK_PAGE_SIZE) want.push(frameOf(fd, userVa + at));
  for (const hwptId of new Set(hwptIds)) {
    const domain = mockDomainOf(fd, hwptId);
    const got: (number | undefined)[] = [];
    for (let at = 0n; at < length; at += MOCK_PAGE_SIZE)
      got.push(domain.pages.get((iova + at) / MOCK_PAGE_SIZE));
    expect(got).toEqual(want);
  }
}

/** Everything a failed ioctl must leave untouched (docs/registry.md, invariants). */
function snapshot(fd: Iommufd) {
  const objects = fd.objects();
  return {
    objects: objects.map((o) => `${o.type}#${o.id} users=${o.users}`),
    reservedIds: fd.reservedIds,
    pinnedPages: fd.memory.pinnedPages,
    ioas: objects
      .filter((o): o is Ioas => o instanceof Ioas)
      .map((ioas) => ({
        id: ioas.id,
        areas: ioas.areas.map((a) => [a.start, a.last, a.readable, a.writable]),
        reserved: ioas.reserved.map((r) => [r.start, r.last]),
        allowed: ioas.allowed.map((r) => [r.start, r.last]),
        alignment: ioas.iovaAlignment,
        hugePages: ioas.disableLargePages,
      })),
    domains: objects
      .filter((o): o is HwptPaging => o instanceof HwptPaging)
      .map((h) => [
        h.id,
        [...(h.domain as MockPagingDomain).pages.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)),
      ]),
  };
}

/**
 * Section 12 invariants that hold between any two ioctls: the alignment is the max over the domains
 * (or PAGE_SIZE with huge pages off) and no area violates it; every area is mirrored, page for
 * page, in every paging domain of its IOAS and nothing else is.
 */
function checkInvariants(fd: Iommufd): void {
  for (const object of fd.objects()) {
    if (!(object instanceof Ioas)) continue;
    const hugePages = fd.option({
      optionId: IOMMU_OPTION_HUGE_PAGES,
      op: IOMMU_OPTION_OP_GET,
      objectId: object.id,
    });
    let align = hugePages.val64 === 1n ? 1n : PAGE_SIZE;
    for (const d of object.domains) if (d.pageSize > align) align = d.pageSize;
    const { iovaAlignment } = fd.ioasIovaRanges({ ioasId: object.id, numIovas: 64 });
    expect(iovaAlignment).toBe(align);
    let bytes = 0n;
    for (const area of object.areas) {
      const length = area.last - area.start + 1n;
      bytes += length;
      expect([area.start % align, length % align]).toEqual([0n, 0n]);
    }
    for (const hwpt of fd.objects()) {
      if (!(hwpt instanceof HwptPaging) || hwpt.ioas !== object) continue;
      const domain = hwpt.domain as MockPagingDomain;
      expect(domain.mappedBytes).toBe(bytes);
      expect(BigInt(domain.pages.size) * MOCK_PAGE_SIZE).toBe(bytes);
      for (const area of object.areas) {
        for (let at = area.start; at <= area.last; at += MOCK_PAGE_SIZE) {
          expect(domain.pages.has(at / MOCK_PAGE_SIZE)).toBe(true);
        }
      }
    }
  }
}

/** teardown_iommufd(): close the fd; nothing may stay alive or pinned. */
function teardown(fd: Iommufd): void {
  fd.close();
  expect(fd.objects()).toEqual([]);
  expect(fd.reservedIds).toBe(0);
  expect(fd.memory.pinnedPages).toBe(0);
}

interface IoasFixture {
  fd: Iommufd;
  ioasId: number;
  /** 0 when there is no mock domain, like the kernel fixture. */
  stdevId: number;
  hwptId: number;
  deviceId: number;
  /** MOCK_APERTURE_START with a mock domain, else 0. */
  baseIova: bigint;
  /** The selftest's `buffer`: the first mmap of the process, so it is 2 MiB aligned. */
  buffer: bigint;
  stdevIds: number[];
  hwptIds: number[];
  deviceIds: number[];
}

/** FIXTURE_SETUP(iommufd_ioas) / FIXTURE_SETUP(iommufd_mock_domain). */
function openIoas(mockDomains: number): IoasFixture {
  const fd = new Iommufd();
  const buffer = fd.mmap(BUFFER_SIZE);
  const { ioasId } = fd.ioasAlloc();
  const f: IoasFixture = {
    fd,
    ioasId,
    stdevId: 0,
    hwptId: 0,
    deviceId: 0,
    baseIova: 0n,
    buffer,
    stdevIds: [],
    hwptIds: [],
    deviceIds: [],
  };
  for (let i = 0; i < mockDomains; i++) {
    const { stdevId, hwptId, idevId } = fd.testMockDomain({ id: ioasId });
    f.stdevIds.push(stdevId);
    f.hwptIds.push(hwptId);
    f.deviceIds.push(idevId);
    Object.assign(f, { stdevId, hwptId, deviceId: idevId, baseIova: MOCK_APERTURE_START });
  }
  return f;
}

// --- FIXTURE(iommufd) ------------------------------------------------------------------------------

describe('iommufd (an open /dev/iommu with no objects)', () => {
  let fd: Iommufd;
  beforeEach(() => {
    fd = new Iommufd();
  });
  afterEach(() => teardown(fd));

  test('simple_close: closing an empty iommufd leaves nothing behind; later ioctls see a closed fd', () => {
    fd.close();
    expect(fd.objects()).toEqual([]);
    expect(errnoOf(() => fd.ioasAlloc())).toBe('EBADF');
    fd.close();
  });

  test('cmd_fail: DESTROY of an id that was never allocated is ENOENT', () => {
    for (const id of [0, 1, 2, 0x7fff_ffff, 0xffff_ffff])
      expect(errnoOf(() => fd.destroy({ id }))).toBe('ENOENT');
  });

  test('global_options: RLIMIT_MODE reads 0, takes 1 then 0, refuses 2 (EINVAL); HUGE_PAGES on id 0 is ENOENT', () => {
    const rlimit = { optionId: IOMMU_OPTION_RLIMIT_MODE };
    expect(fd.option({ ...rlimit, op: IOMMU_OPTION_OP_GET, val64: 1n }).val64).toBe(0n);
    fd.option({ ...rlimit, op: IOMMU_OPTION_OP_SET, val64: 1n });
    expect(errnoOf(() => fd.option({ ...rlimit, op: IOMMU_OPTION_OP_SET, val64: 2n }))).toBe('EINVAL');
    expect(fd.option({ ...rlimit, op: IOMMU_OPTION_OP_GET }).val64).toBe(1n);
    fd.option({ ...rlimit, op: IOMMU_OPTION_OP_SET, val64: 0n });
    expect(fd.option({ ...rlimit, op: IOMMU_OPTION_OP_GET }).val64).toBe(0n);
    for (const op of [IOMMU_OPTION_OP_GET, IOMMU_OPTION_OP_SET]) {
      expect(
        errnoOf(() => fd.option({ optionId: IOMMU_OPTION_HUGE_PAGES, op, objectId: 0, val64: 1n })),
      ).toBe('ENOENT');
    }
  });

  test('RLIMIT_MODE is global: a non-zero object_id is EOPNOTSUPP for GET and SET', () => {
    const { ioasId } = fd.ioasAlloc();
    for (const op of [IOMMU_OPTION_OP_GET, IOMMU_OPTION_OP_SET]) {
      expect(errnoOf(() => fd.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op, objectId: ioasId }))).toBe(
        'EOPNOTSUPP',
      );
    }
  });

  test('RLIMIT_MODE SET needs CAP_SYS_RESOURCE (EPERM), checked before the table must be empty', () => {
    const unprivileged = new Iommufd({ capSysResource: false });
    const set = (val64: bigint) =>
      unprivileged.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: IOMMU_OPTION_OP_SET, val64 });
    expect(errnoOf(() => set(1n))).toBe('EPERM');
    unprivileged.ioasAlloc();
    expect(errnoOf(() => set(1n))).toBe('EPERM');
    expect(unprivileged.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: IOMMU_OPTION_OP_GET }).val64).toBe(
      0n,
    );
    teardown(unprivileged);
  });

  test('RLIMIT_MODE SET needs an empty object table (EBUSY), checked before the value', () => {
    const set = (val64: bigint) =>
      fd.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: IOMMU_OPTION_OP_SET, val64 });
    const { ioasId } = fd.ioasAlloc();
    expect(errnoOf(() => set(1n))).toBe('EBUSY');
    expect(errnoOf(() => set(2n))).toBe('EBUSY');
    expect(fd.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: IOMMU_OPTION_OP_GET }).val64).toBe(0n);
    fd.destroy({ id: ioasId });
    set(1n);
    expect(fd.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: IOMMU_OPTION_OP_GET }).val64).toBe(1n);
  });

  test('OPTION: an unknown option_id or op is EOPNOTSUPP', () => {
    const { ioasId } = fd.ioasAlloc();
    expect(errnoOf(() => fd.option({ optionId: 2, op: IOMMU_OPTION_OP_GET, objectId: ioasId }))).toBe(
      'EOPNOTSUPP',
    );
    expect(errnoOf(() => fd.option({ optionId: IOMMU_OPTION_RLIMIT_MODE, op: 2 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => fd.option({ optionId: IOMMU_OPTION_HUGE_PAGES, op: 2, objectId: ioasId }))).toBe(
      'EOPNOTSUPP',
    );
  });
});

// --- FIXTURE(iommufd_ioas): variants no_domain, mock_domain, two_mock_domain --------------------------

const IOAS_VARIANTS: [string, number][] = [
  ['no_domain', 0],
  ['mock_domain', 1],
  ['two_mock_domain', 2],
];

for (const [variant, mockDomains] of IOAS_VARIANTS) {
  describe(`iommufd_ioas (${variant})`, () => {
    let f: IoasFixture;
    beforeEach(() => {
      f = openIoas(mockDomains);
    });
    afterEach(() => {
      checkInvariants(f.fd);
      teardown(f.fd);
    });

    test('ioas_auto_destroy: an IOAS (and its domains) left to close() go with the iommufd', () => {
      expect(f.fd.objects().map((o) => o.type)).toContain('IOAS');
      expect(f.fd.objects().filter((o) => o.type === 'HWPT_PAGING').length).toBe(mockDomains > 0 ? 1 : 0);
    });

    test('ioas_destroy: an IOAS is destroyed on request unless a HWPT holds it (EBUSY)', () => {
      if (f.stdevId) {
        expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('EBUSY');
        expect(f.fd.ioasIovaRanges({ ioasId: f.ioasId, numIovas: 4 }).numIovas).toBe(1);
      } else {
        f.fd.destroy({ id: f.ioasId });
        expect(errnoOf(() => f.fd.ioasIovaRanges({ ioasId: f.ioasId, numIovas: 4 }))).toBe('ENOENT');
        expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('ENOENT');
      }
    });

    test('hwpt_attach: a device attaches directly to an existing HWPT; a missing HWPT is ENOENT', () => {
      const before = snapshot(f.fd);
      if (f.stdevId) {
        const { hwptId } = f.fd.testMockDomain({ id: f.hwptId });
        expect(hwptId).toBe(f.hwptId);
        expect(errnoOf(() => f.fd.destroy({ id: f.hwptId }))).toBe('EBUSY');
      } else {
        expect(errnoOf(() => f.fd.testMockDomain({ id: f.hwptId }))).toBe('ENOENT');
        expect(snapshot(f.fd)).toEqual(before);
      }
    });

    test('ioas_area_destroy: mapping an area does not change whether the IOAS can be destroyed', () => {
      mapFixed(f.fd, f.ioasId, f.buffer, PAGE_SIZE, f.baseIova);
      if (f.stdevId) {
        expect(errnoOf(() => f.fd.destroy({ id: f.ioasId }))).toBe('EBUSY');
        expect(ioasOf(f.fd, f.ioasId).areas.length).toBe(1);
      } else {
        f.fd.destroy({ id: f.ioasId });
        expect(errnoOf(() => unmap(f.fd, f.ioasId, 0n, U64_MAX))).toBe('ENOENT');
      }
    });

    test('ioas_area_auto_destroy: an IOAS with many areas is torn down by close(); each MAP pins on its own', () => {
      for (let i = 0n; i < 10n; i++)
        mapFixed(f.fd, f.ioasId, f.buffer, PAGE_SIZE, f.baseIova + i * PAGE_SIZE);
      expect(ioasOf(f.fd, f.ioasId).areas.length).toBe(10);
      // check_refs: one pin per MAP while a domain holds it, none without a domain.
      checkRefs(f.fd, f.buffer, PAGE_SIZE, mockDomains > 0 ? 10 : 0);
      checkRefs(f.fd, f.buffer + PAGE_SIZE, BUFFER_SIZE - PAGE_SIZE, 0);
    });

    test('area: unmap of nothing is ENOENT, unmap never splits an area (ENOENT), over-map is EEXIST', () => {
      const { fd, ioasId, buffer } = f;
      const base = f.baseIova;
      for (let i = 0n; i < 10n; i++)
        expect(errnoOf(() => unmap(fd, ioasId, i * PAGE_SIZE, PAGE_SIZE))).toBe('ENOENT');

      for (let i = 0n; i < 10n; i++) mapFixed(fd, ioasId, buffer, PAGE_SIZE, base + i * PAGE_SIZE);
      for (let i = 0n; i < 10n; i++)
        expect(unmap(fd, ioasId, base + i * PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);

      // Split fails
      mapFixed(fd, ioasId, buffer, PAGE_SIZE * 2n, base + 16n * PAGE_SIZE);
      expect(errnoOf(() => unmap(fd, ioasId, base + 16n * PAGE_SIZE, PAGE_SIZE))).toBe('ENOENT');
      expect(errnoOf(() => unmap(fd, ioasId, base + 17n * PAGE_SIZE, PAGE_SIZE))).toBe('ENOENT');

      // Over map fails, whichever way the new range overlaps
      for (const [pages, at] of [
        [2n, 16n],
        [1n, 16n],
        [1n, 17n],
        [2n, 15n],
        [3n, 15n],
      ]) {
        expect(errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE * pages, base + at * PAGE_SIZE))).toBe(
          'EEXIST',
        );
      }
      expect(ioasOf(fd, ioasId).areas.map((a) => [a.start, a.last])).toEqual([
        [base + 16n * PAGE_SIZE, base + 18n * PAGE_SIZE - 1n],
      ]);

      // unmap all works, and succeeds again on the now empty IOAS
      expect(unmap(fd, ioasId, 0n, U64_MAX)).toBe(2n * PAGE_SIZE);
      expect(unmap(fd, ioasId, 0n, U64_MAX)).toBe(0n);
    });

    test('unmap_fully_contained_areas: a range covering whole areas with holes between unmaps them all', () => {
      const { fd, ioasId, buffer } = f;
      const base = f.baseIova + 4n * PAGE_SIZE;
      for (let i = 0n; i < 4n; i++) mapFixed(fd, ioasId, buffer, 8n * PAGE_SIZE, base + i * 16n * PAGE_SIZE);

      expect(errnoOf(() => unmap(fd, ioasId, base - 4n * PAGE_SIZE, 8n * PAGE_SIZE))).toBe('ENOENT');
      expect(
        errnoOf(() => unmap(fd, ioasId, base + 3n * 16n * PAGE_SIZE + 4n * PAGE_SIZE, 8n * PAGE_SIZE)),
      ).toBe('ENOENT');
      expect(ioasOf(fd, ioasId).areas.length).toBe(4);

      const length = 3n * 16n * PAGE_SIZE + 8n * PAGE_SIZE + 4n * PAGE_SIZE;
      expect(unmap(fd, ioasId, base - 4n * PAGE_SIZE, length)).toBe(32n * PAGE_SIZE);
      expect(ioasOf(fd, ioasId).areas).toEqual([]);
    });

    test('area_auto_iova: automatic IOVAs are naturally aligned, avoid reserved ranges and stay in the allowed list', () => {
      const { fd, ioasId, buffer } = f;
      const reserved = { start: PAGE_SIZE * 4n, length: PAGE_SIZE * 100n };
      const iovas: bigint[] = [];
      const lowestBit = (v: bigint) => v & -v;

      for (let i = 0; i < 10; i++) iovas[i] = mapAuto(fd, ioasId, buffer, PAGE_SIZE);
      expect(new Set(iovas).size).toBe(10);
      for (let i = 0; i < 10; i++) unmap(fd, ioasId, iovas[i], PAGE_SIZE);

      for (let i = 0n; i < 10n; i++) {
        const length = PAGE_SIZE * (i + 1n);
        // Without a domain the kernel test maps an unpinned address: only its alignment matters.
        iovas[Number(i)] = mapAuto(fd, ioasId, f.stdevId ? buffer : 1n << 31n, length);
        expect(iovas[Number(i)] % lowestBit(length)).toBe(0n);
      }
      for (let i = 0n; i < 10n; i++) unmap(fd, ioasId, iovas[Number(i)], PAGE_SIZE * (i + 1n));

      fd.testAddReserved({ ioasId, ...reserved });
      for (let i = 0n; i < 10n; i++) {
        const length = PAGE_SIZE * (i + 1n);
        const iova = mapAuto(fd, ioasId, buffer, length);
        iovas[Number(i)] = iova;
        expect(iova % lowestBit(length)).toBe(0n);
        expect(iova > reserved.start && iova < reserved.start + reserved.length).toBe(false);
        expect(iova + length <= reserved.start || iova >= reserved.start + reserved.length).toBe(true);
      }
      for (let i = 0n; i < 10n; i++) unmap(fd, ioasId, iovas[Number(i)], PAGE_SIZE * (i + 1n));

      // An allowed range may not intersect a reserved one
      expect(
        errnoOf(() =>
          fd.ioasAllowIovas({ ioasId, allowedIovas: [{ start: PAGE_SIZE, last: PAGE_SIZE * 600n }] }),
        ),
      ).toBe('EADDRINUSE');

      const range = f.stdevId
        ? { start: MOCK_APERTURE_START + PAGE_SIZE, last: MOCK_APERTURE_START + PAGE_SIZE * 600n - 1n }
        : { start: PAGE_SIZE * 200n, last: PAGE_SIZE * 600n - 1n };
      fd.ioasAllowIovas({ ioasId, allowedIovas: [range] });
      for (let i = 0n; i < 10n; i++) {
        const length = PAGE_SIZE * (i + 1n);
        const iova = mapAuto(fd, ioasId, buffer, length);
        iovas[Number(i)] = iova;
        expect(iova % lowestBit(length)).toBe(0n);
        expect(iova >= range.start && iova + length - 1n <= range.last).toBe(true);
      }
      for (let i = 0n; i < 10n; i++) unmap(fd, ioasId, iovas[Number(i)], PAGE_SIZE * (i + 1n));
    });

    test('reserved_overflow: a reservation ending just below the top leaves no room (ENOSPC, no wrap-around)', () => {
      const { fd, ioasId, buffer } = f;
      fd.testAddReserved({ ioasId, start: 6n, length: 0xffff_ffff_ffff_8001n });
      const before = snapshot(fd);
      expect(errnoOf(() => mapAuto(fd, ioasId, buffer, 0x5000n))).toBe('ENOSPC');
      expect(snapshot(fd)).toEqual(before);
    });

    test('area_allowed: a reservation may not intersect an allowed range, nor an allowed range a reservation (EADDRINUSE)', () => {
      const { fd, ioasId } = f;
      const allowed = { start: f.baseIova, last: f.baseIova + PAGE_SIZE * 600n };
      const reserved = { start: allowed.start + PAGE_SIZE, length: PAGE_SIZE };

      fd.ioasAllowIovas({ ioasId, allowedIovas: [allowed] });
      expect(errnoOf(() => fd.testAddReserved({ ioasId, ...reserved }))).toBe('EADDRINUSE');
      fd.ioasAllowIovas({ ioasId, allowedIovas: [] });

      fd.testAddReserved({ ioasId, ...reserved });
      expect(errnoOf(() => fd.ioasAllowIovas({ ioasId, allowedIovas: [allowed] }))).toBe('EADDRINUSE');
      expect(ioasOf(fd, ioasId).allowed).toEqual([]);
    });

    test('copy_area: IOAS_COPY works inside one IOAS and into another one', () => {
      const { fd, ioasId, buffer } = f;
      mapFixed(fd, ioasId, buffer, PAGE_SIZE, f.baseIova);
      const copy = {
        flags: FIXED | IOMMU_IOAS_MAP_WRITEABLE,
        srcIoasId: ioasId,
        srcIova: f.baseIova,
        length: PAGE_SIZE,
      };

      expect(fd.ioasCopy({ ...copy, dstIoasId: ioasId, dstIova: f.baseIova + PAGE_SIZE }).dstIova).toBe(
        f.baseIova + PAGE_SIZE,
      );
      const { ioasId: dstIoasId } = fd.ioasAlloc();
      expect(fd.ioasCopy({ ...copy, dstIoasId, dstIova: 0n }).dstIova).toBe(0n);
      expect(ioasOf(fd, ioasId).areas.length).toBe(2);
      expect(ioasOf(fd, dstIoasId).areas.map((a) => [a.start, a.last])).toEqual([[0n, PAGE_SIZE - 1n]]);
      if (f.stdevId) checkMockIova(fd, f.hwptIds, buffer, f.baseIova + PAGE_SIZE, PAGE_SIZE);
    });

    test('iova_ranges: the holes of the reserved set; EMSGSIZE still reports the true count', () => {
      const { fd, ioasId } = f;
      let out = fd.ioasIovaRanges({ ioasId, numIovas: 64 });
      expect(out.numIovas).toBe(1);
      if (!f.stdevId) {
        expect(out.allowedIovas).toEqual([{ start: 0n, last: U64_MAX }]);
        expect(out.iovaAlignment).toBe(1n);
      } else {
        expect(out.allowedIovas).toEqual([{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
        expect(out.iovaAlignment).toBe(MOCK_PAGE_SIZE);
      }

      // Buffer too small
      let error = errorOf(() => fd.ioasIovaRanges({ ioasId, numIovas: 0 }));
      expect(error.errno).toBe('EMSGSIZE');
      expect(error.output.numIovas).toBe(1);
      expect(error.output.allowedIovas).toEqual([]);

      // 2 ranges (a reservation inside the mock aperture's complement changes nothing)
      fd.testAddReserved({ ioasId, start: PAGE_SIZE, length: PAGE_SIZE });
      out = fd.ioasIovaRanges({ ioasId, numIovas: 64 });
      if (!f.stdevId) {
        expect(out.allowedIovas).toEqual([
          { start: 0n, last: PAGE_SIZE - 1n },
          { start: PAGE_SIZE * 2n, last: U64_MAX },
        ]);
        error = errorOf(() => fd.ioasIovaRanges({ ioasId, numIovas: 1 }));
        expect(error.errno).toBe('EMSGSIZE');
        expect(error.output.numIovas).toBe(2);
        expect(error.output.allowedIovas).toEqual([{ start: 0n, last: PAGE_SIZE - 1n }]);
      } else {
        expect(out.allowedIovas).toEqual([{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
        out = fd.ioasIovaRanges({ ioasId, numIovas: 1 });
        expect(out.numIovas).toBe(1);
        expect(out.allowedIovas).toEqual([{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
      }
      expect(out.numIovas).toBe(out.allowedIovas.length);
    });

    test('fork_gone (munmap stands in for the exited child): domains pin at MAP; without one, a later attach fails EFAULT', () => {
      const { fd, ioasId } = f;
      const buf = fd.mmap(BUFFER_SIZE);
      mapFixed(fd, ioasId, buf, BUFFER_SIZE, MOCK_APERTURE_START);
      checkRefs(fd, buf, BUFFER_SIZE, mockDomains > 0 ? 1 : 0);
      fd.munmap(buf, BUFFER_SIZE);
      if (f.stdevId) {
        // Everything was pinned while the memory existed: a new domain copies from what is pinned.
        const { hwptId } = fd.hwptAlloc({ devId: f.deviceId, ptId: ioasId });
        expect(mockDomainOf(fd, hwptId).pages).toEqual(mockDomainOf(fd, f.hwptId).pages);
        fd.destroy({ id: hwptId });
      } else {
        const before = snapshot(fd);
        expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EFAULT');
        expect(snapshot(fd)).toEqual(before);
      }
    });

    test('ioas_option_huge_pages: GET is 1 by default; SET takes 0 and 1, refuses 2 (EINVAL)', () => {
      const option = { optionId: IOMMU_OPTION_HUGE_PAGES, objectId: f.ioasId };
      expect(f.fd.option({ ...option, op: IOMMU_OPTION_OP_GET, val64: 3n }).val64).toBe(1n);
      f.fd.option({ ...option, op: IOMMU_OPTION_OP_SET, val64: 0n });
      expect(f.fd.option({ ...option, op: IOMMU_OPTION_OP_GET, val64: 3n }).val64).toBe(0n);
      expect(f.fd.ioasIovaRanges({ ioasId: f.ioasId, numIovas: 4 }).iovaAlignment).toBe(PAGE_SIZE);
      expect(errnoOf(() => f.fd.option({ ...option, op: IOMMU_OPTION_OP_SET, val64: 2n }))).toBe('EINVAL');
      f.fd.option({ ...option, op: IOMMU_OPTION_OP_SET, val64: 1n });
      expect(f.fd.option({ ...option, op: IOMMU_OPTION_OP_GET }).val64).toBe(1n);
      expect(f.fd.ioasIovaRanges({ ioasId: f.ioasId, numIovas: 4 }).iovaAlignment).toBe(
        mockDomains > 0 ? MOCK_PAGE_SIZE : 1n,
      );
    });

    test('ioas_iova_alloc: every length maps automatically unless a domain needs MOCK_PAGE_SIZE multiples (EINVAL)', () => {
      const { fd, ioasId, buffer } = f;
      let refused = 0;
      for (let length = 1n; length !== PAGE_SIZE * 2n; length++) {
        if (mockDomains > 0 && length % MOCK_PAGE_SIZE !== 0n) {
          expect(errnoOf(() => mapAuto(fd, ioasId, buffer, length))).toBe('EINVAL');
          refused++;
        } else {
          const iova = mapAuto(fd, ioasId, buffer, length);
          expect(unmap(fd, ioasId, iova, length)).toBe(length);
        }
      }
      expect(refused).toBe(mockDomains > 0 ? 8191 - 3 : 0);
      expect(ioasOf(fd, ioasId).areas).toEqual([]);
    });

    test('copy_sweep: IOAS_COPY takes any byte sub-range of a mapping and ENOENT for any byte outside it', () => {
      const { fd, ioasId, buffer } = f;
      const { ioasId: dstIoasId } = fd.ioasAlloc();
      const lastIova = MOCK_APERTURE_START + BUFFER_SIZE - (mockDomains > 0 ? 1n : 2n);
      mapFixed(fd, ioasId, buffer, lastIova - MOCK_APERTURE_START + 1n, MOCK_APERTURE_START);
      const copy = {
        flags: FIXED | IOMMU_IOAS_MAP_WRITEABLE,
        srcIoasId: ioasId,
        dstIoasId,
        dstIova: MOCK_APERTURE_START,
        length: MOCK_PAGE_SIZE,
      };
      let copied = 0;
      let refused = 0;
      for (let iova = MOCK_APERTURE_START - PAGE_SIZE; iova <= lastIova; iova += 511n) {
        if (iova < MOCK_APERTURE_START || iova + copy.length - 1n > lastIova) {
          expect(errnoOf(() => fd.ioasCopy({ ...copy, srcIova: iova }))).toBe('ENOENT');
          refused++;
        } else {
          fd.ioasCopy({ ...copy, srcIova: iova });
          expect(unmap(fd, dstIoasId, copy.dstIova, copy.length)).toBe(copy.length);
          copied++;
        }
      }
      expect([copied > 100, refused > 8]).toEqual([true, true]);
      fd.destroy({ id: dstIoasId });
    });
  });
}

// --- iommufd_ioas tests that only apply without a domain ----------------------------------------------

describe('iommufd_ioas (no_domain only)', () => {
  let f: IoasFixture;
  beforeEach(() => {
    f = openIoas(0);
  });
  afterEach(() => {
    checkInvariants(f.fd);
    teardown(f.fd);
  });

  test('ioas_align_change: HUGE_PAGES=0 raises the alignment to PAGE_SIZE, refused (EADDRINUSE) over a misaligned area', () => {
    const { fd, ioasId, buffer } = f;
    const setHugePages = (val64: bigint) =>
      fd.option({ optionId: IOMMU_OPTION_HUGE_PAGES, op: IOMMU_OPTION_OP_SET, objectId: ioasId, val64 });

    mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START);
    setHugePages(0n);

    // Misalignment is rejected at map time
    expect(
      errnoOf(() =>
        mapFixed(fd, ioasId, buffer + MOCK_PAGE_SIZE, PAGE_SIZE, MOCK_APERTURE_START + PAGE_SIZE),
      ),
    ).toBe('EINVAL');
    setHugePages(0n);

    // Reduce alignment, map something only 2048-aligned, then the upgrade is refused
    setHugePages(1n);
    mapFixed(fd, ioasId, buffer + MOCK_PAGE_SIZE, PAGE_SIZE, MOCK_APERTURE_START + PAGE_SIZE);
    expect(errnoOf(() => setHugePages(0n))).toBe('EADDRINUSE');
    expect(
      fd.option({ optionId: IOMMU_OPTION_HUGE_PAGES, op: IOMMU_OPTION_OP_GET, objectId: ioasId }).val64,
    ).toBe(1n);
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 1 }).iovaAlignment).toBe(1n);

    unmap(fd, ioasId, MOCK_APERTURE_START + PAGE_SIZE, PAGE_SIZE);
    unmap(fd, ioasId, MOCK_APERTURE_START, PAGE_SIZE);
  });
});

// --- FIXTURE(iommufd_mock_domain): variants one_domain, two_domains ----------------------------------

for (const [variant, mockDomains] of [
  ['one_domain', 1],
  ['two_domains', 2],
] as [string, number][]) {
  describe(`iommufd_mock_domain (${variant})`, () => {
    let f: IoasFixture;
    beforeEach(() => {
      f = openIoas(mockDomains);
    });
    afterEach(() => {
      checkInvariants(f.fd);
      teardown(f.fd);
    });

    test('basic: a map reaches every domain; unmapped user memory anywhere in the range fails the whole map (EFAULT)', () => {
      const { fd, ioasId, buffer } = f;
      const iova = mapAuto(fd, ioasId, buffer, PAGE_SIZE);
      checkMockIova(fd, f.hwptIds, buffer, iova, PAGE_SIZE);

      const bufSize = PAGE_SIZE * 8n;
      const buf = fd.mmap(bufSize);
      const before = snapshot(fd);
      fd.munmap(buf + bufSize / 2n, bufSize / 2n);
      expect(errnoOf(() => mapAuto(fd, ioasId, buf, bufSize))).toBe('EFAULT');
      expect(snapshot(fd)).toEqual(before);
      fd.munmap(buf, bufSize / 2n);
      expect(errnoOf(() => mapAuto(fd, ioasId, buf, bufSize))).toBe('EFAULT');
      expect(snapshot(fd)).toEqual(before);
    });

    test('ro_unshare: a READABLE-only map is mirrored into every domain like any other', () => {
      const { fd, ioasId } = f;
      const buf = fd.mmap(PAGE_SIZE);
      const iova = mapAuto(fd, ioasId, buf, PAGE_SIZE, IOMMU_IOAS_MAP_READABLE);
      checkMockIova(fd, f.hwptIds, buf, iova, PAGE_SIZE);
      expect(ioasOf(fd, ioasId).areas.map((a) => [a.readable, a.writable])).toEqual([[true, false]]);
      checkRefs(fd, buf, PAGE_SIZE, 1);
      fd.munmap(buf, PAGE_SIZE);
    });

    test('all_aligns: every MOCK_PAGE_SIZE start and length maps the right frames and pins each touched page once', () => {
      const { fd, ioasId } = f;
      const bufSize = PAGE_SIZE * 8n;
      const buf = fd.mmap(bufSize);
      checkRefs(fd, buf, bufSize, 0);
      for (let start = 0n; start < bufSize; start += MOCK_PAGE_SIZE) {
        for (let end = start + MOCK_PAGE_SIZE; end < bufSize; end += MOCK_PAGE_SIZE) {
          const length = end - start;
          const iova = mapAuto(fd, ioasId, buf + start, length);
          checkMockIova(fd, f.hwptIds, buf + start, iova, length);
          const first = (start / PAGE_SIZE) * PAGE_SIZE;
          const last = ((end - 1n) / PAGE_SIZE) * PAGE_SIZE;
          checkRefs(fd, buf, first, 0);
          checkRefs(fd, buf + first, last - first + PAGE_SIZE, 1);
          checkRefs(fd, buf + last + PAGE_SIZE, bufSize - last - PAGE_SIZE, 0);
          unmap(fd, ioasId, iova, length);
        }
      }
      checkRefs(fd, buf, bufSize, 0);
      fd.munmap(buf, bufSize);
    });

    test('all_aligns_copy: adding and removing a domain while an area exists keeps it mapped and pinned once', () => {
      const { fd, ioasId } = f;
      const bufSize = PAGE_SIZE * 8n;
      const buf = fd.mmap(bufSize);
      for (let start = 0n; start < bufSize; start += MOCK_PAGE_SIZE) {
        for (let end = start + MOCK_PAGE_SIZE; end < bufSize; end += MOCK_PAGE_SIZE) {
          const length = end - start;
          const iova = mapAuto(fd, ioasId, buf + start, length);
          const { stdevId, hwptId } = fd.testMockDomain({ id: ioasId });
          checkMockIova(fd, [...f.hwptIds, hwptId], buf + start, iova, length);
          const first = (start / PAGE_SIZE) * PAGE_SIZE;
          const last = ((end - 1n) / PAGE_SIZE) * PAGE_SIZE;
          checkRefs(fd, buf + first, last - first + PAGE_SIZE, 1);
          fd.destroy({ id: stdevId });
          unmap(fd, ioasId, iova, length);
        }
      }
      checkRefs(fd, buf, bufSize, 0);
      fd.munmap(buf, bufSize);
    });

    test('user_copy (no in-kernel access): pages mapped in an IOAS without domains are pinned when copied into one with domains', () => {
      const { fd, ioasId, buffer } = f;
      const copy = {
        flags: FIXED | IOMMU_IOAS_MAP_WRITEABLE,
        dstIoasId: ioasId,
        dstIova: MOCK_APERTURE_START,
      };
      const { ioasId: srcIoasId } = fd.ioasAlloc();
      const srcIova = mapAuto(fd, srcIoasId, buffer, BUFFER_SIZE);
      checkRefs(fd, buffer, BUFFER_SIZE, 0);
      fd.ioasCopy({ ...copy, srcIoasId, srcIova, length: BUFFER_SIZE });
      checkMockIova(fd, f.hwptIds, buffer, MOCK_APERTURE_START, BUFFER_SIZE);
      checkRefs(fd, buffer, BUFFER_SIZE, 1);

      // Destroy the source IOAS: the copy keeps the pages
      fd.destroy({ id: srcIoasId });
      checkRefs(fd, buffer, BUFFER_SIZE, 1);
      expect(unmap(fd, ioasId, MOCK_APERTURE_START, BUFFER_SIZE)).toBe(BUFFER_SIZE);
      checkRefs(fd, buffer, BUFFER_SIZE, 0);

      // Then again with a new source IOAS
      const { ioasId: newIoasId } = fd.ioasAlloc();
      const newIova = mapAuto(fd, newIoasId, buffer, BUFFER_SIZE);
      fd.ioasCopy({ ...copy, srcIoasId: newIoasId, srcIova: newIova, length: BUFFER_SIZE });
      checkMockIova(fd, f.hwptIds, buffer, MOCK_APERTURE_START, BUFFER_SIZE);
      fd.destroy({ id: newIoasId });
    });

    test('replace: replacing away from an automatic domain frees it (ENOENT); replace to the same target is a no-op', () => {
      const { fd } = f;
      const [stdev0] = f.stdevIds;
      const { ioasId } = fd.ioasAlloc();
      fd.testMockDomainReplace({ stdevId: stdev0, ptId: ioasId });
      if (mockDomains === 1) {
        expect(errnoOf(() => fd.testMockDomainReplace({ stdevId: stdev0, ptId: f.hwptIds[0] }))).toBe(
          'ENOENT',
        );
        expect(errnoOf(() => fd.destroy({ id: f.hwptIds[0] }))).toBe('ENOENT');
      }
      const again = fd.testMockDomainReplace({ stdevId: stdev0, ptId: ioasId }).ptId;
      expect(fd.testMockDomainReplace({ stdevId: stdev0, ptId: ioasId }).ptId).toBe(again);
      if (mockDomains >= 2) {
        fd.testMockDomainReplace({ stdevId: stdev0, ptId: f.hwptIds[1] });
        fd.testMockDomainReplace({ stdevId: stdev0, ptId: f.hwptIds[1] });
        fd.testMockDomainReplace({ stdevId: stdev0, ptId: f.hwptIds[0] });
        expect(errnoOf(() => fd.destroy({ id: again }))).toBe('ENOENT');
      }
      fd.testMockDomainReplace({ stdevId: stdev0, ptId: f.ioasId });
      fd.destroy({ id: ioasId });
    });

    test('alloc_hwpt: a HWPT in use by a device cannot be destroyed (EBUSY) until the device moves away', () => {
      const { fd, ioasId } = f;
      for (let i = 0; i < mockDomains; i++) {
        const devId = f.deviceIds[i];
        const stdevId = f.stdevIds[i];
        expect(
          errnoOf(() => fd.hwptAlloc({ devId, ptId: ioasId, flags: ~IOMMU_HWPT_ALLOC_NEST_PARENT >>> 0 })),
        ).toBe('EOPNOTSUPP');
        const h0 = fd.hwptAlloc({ devId, ptId: ioasId }).hwptId;
        const h1 = fd.hwptAlloc({ devId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT }).hwptId;

        fd.testMockDomainReplace({ stdevId, ptId: h0 });
        expect(errnoOf(() => fd.destroy({ id: h0 }))).toBe('EBUSY');
        fd.testMockDomainReplace({ stdevId, ptId: h1 });
        expect(errnoOf(() => fd.destroy({ id: h1 }))).toBe('EBUSY');
        fd.testMockDomainReplace({ stdevId, ptId: ioasId });
        fd.destroy({ id: h1 });

        const { stdevId: other } = fd.testMockDomain({ id: h0 });
        expect(errnoOf(() => fd.destroy({ id: h0 }))).toBe('EBUSY');
        fd.destroy({ id: other });
        fd.destroy({ id: h0 });
        expect(errnoOf(() => fd.destroy({ id: h0 }))).toBe('ENOENT');
      }
    });
  });
}

// --- docs/registry.md, object model: object ids, DESTROY, close() ------------------------------------------

describe('object model (docs/registry.md)', () => {
  let fd: Iommufd;
  let buffer: bigint;
  beforeEach(() => {
    fd = new Iommufd();
    buffer = fd.mmap(BUFFER_SIZE);
  });
  afterEach(() => {
    checkInvariants(fd);
    teardown(fd);
  });

  test('ids start at 1 and each new object takes the lowest free id', () => {
    expect(fd.ioasAlloc().ioasId).toBe(1);
    const { stdevId, idevId, hwptId } = fd.testMockDomain({ id: 1 });
    expect([stdevId, idevId, hwptId]).toEqual([2, 3, 4]);
    expect(fd.ioasAlloc().ioasId).toBe(5);
    fd.destroy({ id: stdevId });
    expect(fd.objects().map((o) => o.id)).toEqual([1, 5]);
    expect(fd.ioasAlloc().ioasId).toBe(2);
    fd.destroy({ id: 1 });
    expect(fd.ioasAlloc().ioasId).toBe(1);
    expect(fd.ioasAlloc().ioasId).toBe(3);
  });

  test('a reserved id is invisible to lookups and DESTROY (ENOENT) and is released when building fails', () => {
    const table = new ObjectTable(new FaultInjector());
    const id = table.reserve();
    expect(id).toBe(1);
    expect(errnoOf(() => table.get(id))).toBe('ENOENT');
    expect(errnoOf(() => table.destroy(id))).toBe('ENOENT');
    expect(table.reservedIds()).toBe(1);
    expect(table.reserve()).toBe(2);
    table.abort(id);
    expect(table.reserve()).toBe(1);

    // Through the registry: a mock domain whose attach fails reserves ids and gives them back.
    const { ioasId } = fd.ioasAlloc();
    const before = snapshot(fd);
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId + 100 }))).toBe('ENOENT');
    expect(snapshot(fd)).toEqual(before);
    expect(fd.ioasAlloc().ioasId).toBe(ioasId + 1);
  });

  test('IOAS_ALLOC with flags is EOPNOTSUPP and consumes no id', () => {
    expect(errnoOf(() => fd.ioasAlloc({ flags: 1 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => fd.ioasAlloc({ flags: 0x8000_0000 }))).toBe('EOPNOTSUPP');
    expect(fd.reservedIds).toBe(0);
    expect(fd.ioasAlloc().ioasId).toBe(1);
  });

  test('DESTROY is EBUSY while any holder exists: a HWPT holds its IOAS, an attachment its HWPT, the bind its DEVICE', () => {
    const { ioasId } = fd.ioasAlloc();
    const { stdevId, idevId, hwptId } = fd.testMockDomain({ id: ioasId });
    const { hwptId: unattached } = fd.hwptAlloc({ devId: idevId, ptId: ioasId });
    expect(errnoOf(() => fd.destroy({ id: idevId }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: hwptId }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: ioasId }))).toBe('EBUSY');

    fd.destroy({ id: stdevId });
    // The unattached HWPT still holds the IOAS; the automatic one went with its last attachment.
    expect(errnoOf(() => fd.destroy({ id: hwptId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.destroy({ id: idevId }))).toBe('ENOENT');
    expect(errnoOf(() => fd.destroy({ id: ioasId }))).toBe('EBUSY');
    fd.destroy({ id: unattached });
    fd.destroy({ id: ioasId });
    expect(fd.objects()).toEqual([]);
  });

  test('DESTROY of a FAULT is EBUSY while its fd is open or a HWPT routes faults to it', () => {
    const { ioasId } = fd.ioasAlloc();
    const { stdevId, idevId } = fd.testMockDomain({ id: ioasId });
    const { faultId, faultFd } = fd.faultQueueAlloc();
    const { hwptId } = fd.hwptAlloc({
      devId: idevId,
      ptId: ioasId,
      flags: IOMMU_HWPT_FAULT_ID_VALID,
      faultId,
    });
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('EBUSY');
    faultFd.close();
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('EBUSY');
    fd.destroy({ id: hwptId });
    fd.destroy({ id: faultId });
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('ENOENT');
    fd.destroy({ id: stdevId });
  });

  test('an IOAS with areas but no holders is destroyed and its areas unmapped', () => {
    const { ioasId } = fd.ioasAlloc();
    const { ioasId: other } = fd.ioasAlloc();
    const { stdevId } = fd.testMockDomain({ id: other });
    const iova = mapAuto(fd, ioasId, buffer, BUFFER_SIZE);
    // A copy in a domain-backed IOAS pins the shared pages; the original area does not add to it.
    fd.ioasCopy({ flags: RW, srcIoasId: ioasId, srcIova: iova, dstIoasId: other, length: BUFFER_SIZE });
    checkRefs(fd, buffer, BUFFER_SIZE, 1);
    fd.destroy({ id: ioasId });
    expect(errnoOf(() => fd.ioasUnmap({ ioasId, iova: 0n, length: U64_MAX }))).toBe('ENOENT');
    checkRefs(fd, buffer, BUFFER_SIZE, 1);
    expect(unmap(fd, other, 0n, U64_MAX)).toBe(BUFFER_SIZE);
    checkRefs(fd, buffer, BUFFER_SIZE, 0);
    fd.destroy({ id: stdevId });
  });

  test('an automatic HWPT is EBUSY while attached and is destroyed (ENOENT) when its last attachment leaves', () => {
    const { ioasId } = fd.ioasAlloc();
    const a = fd.testMockDomain({ id: ioasId });
    const b = fd.testMockDomain({ id: ioasId });
    expect(b.hwptId).toBe(a.hwptId);
    expect(errnoOf(() => fd.destroy({ id: a.hwptId }))).toBe('EBUSY');
    fd.destroy({ id: a.stdevId });
    expect(errnoOf(() => fd.destroy({ id: a.hwptId }))).toBe('EBUSY');
    fd.destroy({ id: b.stdevId });
    expect(errnoOf(() => fd.destroy({ id: a.hwptId }))).toBe('ENOENT');
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 }).allowedIovas).toEqual([{ start: 0n, last: U64_MAX }]);
    fd.destroy({ id: ioasId });
  });

  test('a tombstone id is ENOENT for DESTROY and is not reused until close()', () => {
    const { ioasId } = fd.ioasAlloc();
    const { stdevId, idevId } = fd.testMockDomain({ id: ioasId });
    const { hwptId } = fd.hwptAlloc({ devId: idevId, ptId: ioasId, flags: IOMMU_HWPT_ALLOC_NEST_PARENT });
    const { viommuId } = fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_SELFTEST, devId: idevId, hwptId });
    const { vdeviceId } = fd.vdeviceAlloc({ viommuId, devId: idevId, virtId: 0x99n });
    // A vIOMMU holds its nesting parent, a vDEVICE its vIOMMU.
    expect(errnoOf(() => fd.destroy({ id: hwptId }))).toBe('EBUSY');
    expect(errnoOf(() => fd.destroy({ id: viommuId }))).toBe('EBUSY');
    fd.destroy({ id: stdevId });
    expect(errnoOf(() => fd.destroy({ id: vdeviceId }))).toBe('ENOENT');
    expect(fd.reservedIds).toBe(1);
    const fresh = [
      fd.ioasAlloc().ioasId,
      fd.ioasAlloc().ioasId,
      fd.ioasAlloc().ioasId,
      fd.ioasAlloc().ioasId,
    ];
    expect(fresh).not.toContain(vdeviceId);
    expect(fresh).toContain(stdevId);
  });

  test('a FAULT object is EBUSY until its fd is closed, and its fd keeps the context alive past close()', () => {
    const { faultId, faultFd } = fd.faultQueueAlloc();
    expect(errnoOf(() => fd.destroy({ id: faultId }))).toBe('EBUSY');
    const { ioasId } = fd.ioasAlloc();
    mapFixed(fd, ioasId, buffer, PAGE_SIZE, PAGE_SIZE);
    fd.close();
    expect(fd.objects().map((o) => o.type)).toEqual(['FAULT']);
    faultFd.close();
    expect(fd.objects()).toEqual([]);
  });

  test('close() destroys leaf first until nothing is left, unpinning everything', () => {
    const { ioasId } = fd.ioasAlloc();
    const { ioasId: second } = fd.ioasAlloc();
    const { idevId } = fd.testMockDomain({ id: ioasId });
    fd.testMockDomain({ id: second });
    fd.hwptAlloc({ devId: idevId, ptId: ioasId });
    const iova = mapAuto(fd, ioasId, buffer, BUFFER_SIZE);
    fd.ioasCopy({ flags: RW, srcIoasId: ioasId, srcIova: iova, dstIoasId: second, length: BUFFER_SIZE });
    mapFixed(fd, second, buffer, PAGE_SIZE, MOCK_APERTURE_LAST + 1n - PAGE_SIZE);
    checkRefs(fd, buffer, PAGE_SIZE, 2);
    checkRefs(fd, buffer + PAGE_SIZE, BUFFER_SIZE - PAGE_SIZE, 1);
    expect(fd.objects().length).toBe(9);
    // afterEach: close(), then no objects, no reserved ids, no pins.
  });
});

// --- docs/registry.md: IOAS and the IOVA space ------------------------------------------------------------

describe('IOAS_MAP checks, in order (docs/registry.md)', () => {
  let f: IoasFixture;
  beforeEach(() => {
    f = openIoas(1);
  });
  afterEach(() => {
    checkInvariants(f.fd);
    teardown(f.fd);
  });

  const map = (ioasId: number, flags: number, userVa: bigint, length: bigint, iova = 0n) =>
    f.fd.ioasMap({ flags, ioasId, userVa, length, iova });

  test('1. unknown flag bits are EOPNOTSUPP before anything else', () => {
    expect(errnoOf(() => map(999, 8, 0n, U64_MAX, U64_MAX))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => map(f.ioasId, (RW | 0x8000_0000) >>> 0, f.buffer, PAGE_SIZE))).toBe('EOPNOTSUPP');
  });

  test('2. iova or length of U64_MAX is EOVERFLOW, before the R/W and IOAS checks', () => {
    expect(errnoOf(() => map(999, 0, f.buffer, PAGE_SIZE, U64_MAX))).toBe('EOVERFLOW');
    expect(errnoOf(() => map(999, 0, f.buffer, U64_MAX))).toBe('EOVERFLOW');
  });

  test('3. a mapping neither READABLE nor WRITEABLE is EINVAL, before the IOAS lookup', () => {
    expect(errnoOf(() => map(999, FIXED, f.buffer, PAGE_SIZE))).toBe('EINVAL');
  });

  test('4. an id that is not an IOAS is ENOENT, before the length checks', () => {
    expect(errnoOf(() => map(999, RW, f.buffer, 0n))).toBe('ENOENT');
    expect(errnoOf(() => map(f.hwptId, RW, f.buffer, PAGE_SIZE))).toBe('ENOENT');
    expect(errnoOf(() => map(f.deviceId, RW, f.buffer, PAGE_SIZE))).toBe('ENOENT');
  });

  test('5. user_va + length overflowing is EOVERFLOW; length 0 or above SIZE_MAX - PAGE_SIZE is EINVAL', () => {
    expect(errnoOf(() => map(f.ioasId, RW, U64_MAX - PAGE_SIZE, PAGE_SIZE * 2n))).toBe('EOVERFLOW');
    expect(errnoOf(() => map(f.ioasId, RW, 2n, U64_MAX - 1n))).toBe('EOVERFLOW');
    expect(errnoOf(() => map(f.ioasId, RW, f.buffer, 0n))).toBe('EINVAL');
    const { ioasId: bare } = f.fd.ioasAlloc();
    expect(errnoOf(() => map(bare, RW | FIXED, 0n, U64_MAX - 1n, PAGE_SIZE))).toBe('EINVAL');
    expect(errnoOf(() => map(bare, RW | FIXED, 0n, U64_MAX - PAGE_SIZE + 1n, 0n))).toBe('EINVAL');
    expect(ioasOf(f.fd, bare).areas).toEqual([]);
    f.fd.destroy({ id: bare });
  });

  test('6. a length that is not a multiple of the IOVA alignment is EINVAL, before the fixed-IOVA checks', () => {
    mapFixed(f.fd, f.ioasId, f.buffer, PAGE_SIZE, MOCK_APERTURE_START);
    expect(errnoOf(() => map(f.ioasId, RW | FIXED, f.buffer, PAGE_SIZE + 1n, MOCK_APERTURE_START))).toBe(
      'EINVAL',
    );
    expect(errnoOf(() => map(f.ioasId, RW | FIXED, f.buffer, MOCK_PAGE_SIZE / 2n, 0n))).toBe('EINVAL');
  });

  test('7. FIXED: unaligned iova EINVAL, end overflow EOVERFLOW, reserved EINVAL (not EADDRINUSE), existing area EEXIST', () => {
    const { fd, ioasId, buffer } = f;
    mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START);
    expect(errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START + 1024n))).toBe(
      'EINVAL',
    );
    expect(errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START - PAGE_SIZE))).toBe(
      'EINVAL',
    );
    expect(
      errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_LAST + 1n - MOCK_PAGE_SIZE)),
    ).toBe('EINVAL');
    expect(errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE * 2n, MOCK_APERTURE_START - PAGE_SIZE))).toBe(
      'EINVAL',
    );
    expect(
      errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE * 2n, MOCK_APERTURE_START + MOCK_PAGE_SIZE)),
    ).toBe('EEXIST');
    fd.testAddReserved({ ioasId, start: MOCK_APERTURE_START + 0x10000n, length: PAGE_SIZE });
    expect(errnoOf(() => mapFixed(fd, ioasId, buffer, PAGE_SIZE * 4n, MOCK_APERTURE_START + 0xe000n))).toBe(
      'EINVAL',
    );

    const { ioasId: bare } = fd.ioasAlloc();
    expect(errnoOf(() => mapFixed(fd, bare, 0n, PAGE_SIZE * 2n, U64_MAX - PAGE_SIZE))).toBe('EOVERFLOW');
    mapFixed(fd, bare, 0n, PAGE_SIZE, U64_MAX - PAGE_SIZE);
    fd.destroy({ id: bare });
  });

  test('8. automatic: the input iova is ignored; ENOSPC when nothing fits; EINVAL when the natural alignment is too small', () => {
    const { fd, ioasId, buffer } = f;
    fd.testAddReserved({ ioasId, start: MOCK_APERTURE_START, length: PAGE_SIZE });
    expect(
      fd.ioasMap({ flags: RW, ioasId, userVa: buffer, length: PAGE_SIZE, iova: MOCK_APERTURE_START }).iova,
    ).toBe(MOCK_APERTURE_START + PAGE_SIZE);
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer, 1n << 31n))).toBe('ENOSPC');
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer + 1024n, MOCK_PAGE_SIZE))).toBe('EINVAL');
  });

  test('9. a user_va whose offset in its page breaks the IOVA alignment is EINVAL, after the IOVA checks', () => {
    const { fd, ioasId, buffer } = f;
    mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START);
    expect(
      errnoOf(() => mapFixed(fd, ioasId, buffer + 1024n, MOCK_PAGE_SIZE, MOCK_APERTURE_START + PAGE_SIZE)),
    ).toBe('EINVAL');
    expect(errnoOf(() => mapFixed(fd, ioasId, buffer + 1024n, MOCK_PAGE_SIZE, MOCK_APERTURE_START))).toBe(
      'EEXIST',
    );
    expect(ioasOf(fd, ioasId).areas.length).toBe(1);
  });

  test('10. on success the iova is written back and each MAP is one area (the unit of unmap)', () => {
    const { fd, ioasId, buffer } = f;
    const a = mapAuto(fd, ioasId, buffer, PAGE_SIZE * 2n);
    const b = mapFixed(fd, ioasId, buffer, PAGE_SIZE, a + PAGE_SIZE * 2n);
    expect(b).toBe(a + PAGE_SIZE * 2n);
    expect(errnoOf(() => unmap(fd, ioasId, a, PAGE_SIZE))).toBe('ENOENT');
    expect(unmap(fd, ioasId, a, PAGE_SIZE * 3n)).toBe(PAGE_SIZE * 3n);
  });
});

describe('automatic IOVA choice (docs/registry.md)', () => {
  let fd: Iommufd;
  let ioasId: number;
  let buffer: bigint;
  beforeEach(() => {
    fd = new Iommufd();
    buffer = fd.mmap(BUFFER_SIZE);
    ioasId = fd.ioasAlloc().ioasId;
  });
  afterEach(() => {
    checkInvariants(fd);
    teardown(fd);
  });

  test('first fit from the lowest address, never IOVA 0', () => {
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(PAGE_SIZE * 2n);
    unmap(fd, ioasId, PAGE_SIZE, PAGE_SIZE);
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(PAGE_SIZE);
  });

  test('the top page is never handed out either', () => {
    fd.testAddReserved({ ioasId, start: PAGE_SIZE, length: U64_MAX - 3n * PAGE_SIZE + 1n });
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(U64_MAX - 2n * PAGE_SIZE + 1n);
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer, PAGE_SIZE))).toBe('ENOSPC');
  });

  test('alignment is roundup_pow_of_two(length) for user_va 0, else also limited by the lowest set bit of user_va', () => {
    expect(mapAuto(fd, ioasId, 0n, PAGE_SIZE * 3n)).toBe(PAGE_SIZE * 4n);
    expect(mapAuto(fd, ioasId, buffer + PAGE_SIZE, PAGE_SIZE * 4n)).toBe(PAGE_SIZE * 8n - PAGE_SIZE);
  });

  test('the offset of user_va in its page is kept in the IOVA', () => {
    const iova = mapAuto(fd, ioasId, buffer + 0x123n, 0x100n);
    expect(iova % PAGE_SIZE).toBe(0x123n);
    expect(iova).toBe(PAGE_SIZE + 0x123n);
  });

  test('alignment is capped at the huge page size', () => {
    expect(mapAuto(fd, ioasId, 0n, HUGEPAGE_SIZE * 32n)).toBe(HUGEPAGE_SIZE);
  });

  test('lengths of U64_MAX / 2 and more are EOVERFLOW (roundup_pow_of_two would overflow)', () => {
    const before = snapshot(fd);
    expect(errnoOf(() => mapAuto(fd, ioasId, 0n, 1n << 63n))).toBe('EOVERFLOW');
    expect(errnoOf(() => mapAuto(fd, ioasId, 0n, U64_MAX / 2n))).toBe('EOVERFLOW');
    expect(snapshot(fd)).toEqual(before);
    expect(mapAuto(fd, ioasId, 0n, U64_MAX / 2n - 1n)).toBe(HUGEPAGE_SIZE);
  });

  test('only allowed ranges are used, and allowed ranges that touch form one span', () => {
    const base = 0x100_0000n;
    fd.ioasAllowIovas({
      ioasId,
      allowedIovas: [
        { start: base + 0x2000n, last: base + 0x3fffn },
        { start: base, last: base + 0x1fffn },
      ],
    });
    expect(mapAuto(fd, ioasId, buffer, 0x4000n)).toBe(base);
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer, PAGE_SIZE))).toBe('ENOSPC');
  });

  test('a candidate must start strictly below the last byte of its span', () => {
    fd.ioasAllowIovas({ ioasId, allowedIovas: [{ start: 0x10000n, last: 0x10001n }] });
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer + 1n, 1n))).toBe('ENOSPC');
    expect(mapAuto(fd, ioasId, buffer, 1n)).toBe(0x10000n);
    fd.ioasAllowIovas({ ioasId, allowedIovas: [{ start: 0x10000n, last: 0x10002n }] });
    expect(mapAuto(fd, ioasId, buffer + 1n, 1n)).toBe(0x10001n);
  });
});

describe('IOAS_UNMAP (docs/registry.md)', () => {
  let f: IoasFixture;
  beforeEach(() => {
    f = openIoas(1);
  });
  afterEach(() => {
    checkInvariants(f.fd);
    teardown(f.fd);
  });

  test('unmap-all (iova 0, length U64_MAX) returns the bytes removed, and 0 on an empty IOAS', () => {
    const { fd, ioasId, buffer } = f;
    expect(unmap(fd, ioasId, 0n, U64_MAX)).toBe(0n);
    mapAuto(fd, ioasId, buffer, PAGE_SIZE);
    mapAuto(fd, ioasId, buffer, PAGE_SIZE * 3n);
    expect(unmap(fd, ioasId, 0n, U64_MAX)).toBe(PAGE_SIZE * 4n);
    checkRefs(fd, buffer, BUFFER_SIZE, 0);
  });

  test('argument errors: U64_MAX iova or length is EOVERFLOW, length 0 is EINVAL, a wrapping end is EOVERFLOW', () => {
    const { fd, ioasId, buffer } = f;
    mapAuto(fd, ioasId, buffer, PAGE_SIZE);
    expect(errnoOf(() => unmap(fd, ioasId, U64_MAX, 1n))).toBe('EOVERFLOW');
    expect(errnoOf(() => unmap(fd, ioasId, 1n, U64_MAX))).toBe('EOVERFLOW');
    expect(errnoOf(() => unmap(fd, ioasId, MOCK_APERTURE_START, 0n))).toBe('EINVAL');
    expect(errnoOf(() => unmap(fd, ioasId, U64_MAX - 1n, 3n))).toBe('EOVERFLOW');
    expect(errnoOf(() => unmap(fd, 999, 0n, PAGE_SIZE))).toBe('ENOENT');
    expect(errnoOf(() => unmap(fd, f.hwptId, 0n, U64_MAX))).toBe('ENOENT');
    expect(ioasOf(fd, ioasId).areas.length).toBe(1);
  });

  test('not atomic: areas before the one that sticks out are already gone, and no length is written back', () => {
    const { fd, ioasId, buffer } = f;
    const base = MOCK_APERTURE_START;
    mapFixed(fd, ioasId, buffer, PAGE_SIZE, base);
    mapFixed(fd, ioasId, buffer + PAGE_SIZE, PAGE_SIZE * 2n, base + PAGE_SIZE * 2n);
    checkRefs(fd, buffer, PAGE_SIZE * 3n, 1);
    const error = errorOf(() => unmap(fd, ioasId, base, PAGE_SIZE * 3n));
    expect(error.errno).toBe('ENOENT');
    expect(error.output.length).toBeUndefined();
    expect(ioasOf(fd, ioasId).areas.map((a) => a.start)).toEqual([base + PAGE_SIZE * 2n]);
    checkRefs(fd, buffer, PAGE_SIZE, 0);
    checkRefs(fd, buffer + PAGE_SIZE, PAGE_SIZE * 2n, 1);
    expect(unmap(fd, ioasId, base, PAGE_SIZE * 4n)).toBe(PAGE_SIZE * 2n);
  });
});

describe('IOAS_COPY (docs/registry.md)', () => {
  let f: IoasFixture;
  let src: number;
  let srcIova: bigint;
  beforeEach(() => {
    f = openIoas(1);
    src = f.fd.ioasAlloc().ioasId;
    srcIova = mapFixed(f.fd, src, f.buffer, BUFFER_SIZE, PAGE_SIZE * 16n);
  });
  afterEach(() => {
    checkInvariants(f.fd);
    teardown(f.fd);
  });

  const copy = (args: Partial<Parameters<Iommufd['ioasCopy']>[0]>) =>
    f.fd.ioasCopy({
      flags: RW,
      srcIoasId: src,
      srcIova,
      dstIoasId: f.ioasId,
      length: PAGE_SIZE,
      ...args,
    }).dstIova;

  test('checks in order: flags, U64_MAX arguments, R/W, source IOAS, length, source overflow, coverage, destination IOAS', () => {
    expect(errnoOf(() => copy({ flags: 8, length: U64_MAX, srcIoasId: 999 }))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => copy({ flags: 0, length: U64_MAX, srcIoasId: 999 }))).toBe('EOVERFLOW');
    expect(errnoOf(() => copy({ flags: 0, srcIova: U64_MAX, srcIoasId: 999 }))).toBe('EOVERFLOW');
    expect(errnoOf(() => copy({ flags: 0, dstIova: U64_MAX, srcIoasId: 999 }))).toBe('EOVERFLOW');
    expect(errnoOf(() => copy({ flags: 0, srcIoasId: 999 }))).toBe('EINVAL');
    expect(errnoOf(() => copy({ srcIoasId: 999, length: 0n }))).toBe('ENOENT');
    expect(errnoOf(() => copy({ srcIoasId: f.hwptId }))).toBe('ENOENT');
    expect(errnoOf(() => copy({ length: 0n, dstIoasId: 999 }))).toBe('EINVAL');
    expect(errnoOf(() => copy({ srcIova: U64_MAX - 1n, length: 3n, dstIoasId: 999 }))).toBe('EOVERFLOW');
    expect(errnoOf(() => copy({ srcIova: srcIova - 1n, dstIoasId: 999 }))).toBe('ENOENT');
    expect(errnoOf(() => copy({ dstIoasId: 999 }))).toBe('ENOENT');
  });

  test('the source must be covered without gaps (ENOENT), and may be any byte sub-range of one mapping', () => {
    mapFixed(f.fd, src, f.buffer, PAGE_SIZE, srcIova + BUFFER_SIZE + PAGE_SIZE);
    expect(errnoOf(() => copy({ srcIova: srcIova + BUFFER_SIZE - PAGE_SIZE, length: PAGE_SIZE * 3n }))).toBe(
      'ENOENT',
    );
    expect(errnoOf(() => copy({ srcIova: srcIova + BUFFER_SIZE, length: PAGE_SIZE }))).toBe('ENOENT');
    const dst = f.fd.ioasAlloc().ioasId;
    const iova = copy({ dstIoasId: dst, srcIova: srcIova + 0x123n, length: 0x1001n });
    expect(iova % PAGE_SIZE).toBe(0x123n);
    f.fd.destroy({ id: dst });
  });

  test('the destination follows the MAP rules: alignment EINVAL, reserved EINVAL, occupied EEXIST, no room ENOSPC', () => {
    const { fd, ioasId } = f;
    const before = snapshot(fd);
    expect(errnoOf(() => copy({ length: MOCK_PAGE_SIZE + 1n }))).toBe('EINVAL');
    expect(errnoOf(() => copy({ flags: RW | FIXED, dstIova: 0n }))).toBe('EINVAL');
    expect(errnoOf(() => copy({ srcIova: srcIova + 1024n, length: MOCK_PAGE_SIZE }))).toBe('EINVAL');
    expect(snapshot(fd)).toEqual(before);
    copy({ flags: RW | FIXED, dstIova: MOCK_APERTURE_START });
    expect(errnoOf(() => copy({ flags: RW | FIXED, dstIova: MOCK_APERTURE_START }))).toBe('EEXIST');
    fd.ioasAllowIovas({
      ioasId,
      allowedIovas: [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_START + PAGE_SIZE - 1n }],
    });
    expect(errnoOf(() => copy({}))).toBe('ENOSPC');
  });

  test('backing pages are shared: copies pin each page once, and only the pages they cover', () => {
    const { fd, ioasId, buffer } = f;
    checkRefs(fd, buffer, BUFFER_SIZE, 0);
    const a = copy({ srcIova: srcIova + PAGE_SIZE * 2n });
    checkMockIova(fd, f.hwptIds, buffer + PAGE_SIZE * 2n, a, PAGE_SIZE);
    checkRefs(fd, buffer, PAGE_SIZE * 2n, 0);
    checkRefs(fd, buffer + PAGE_SIZE * 2n, PAGE_SIZE, 1);
    checkRefs(fd, buffer + PAGE_SIZE * 3n, BUFFER_SIZE - PAGE_SIZE * 3n, 0);
    const b = copy({ srcIova: srcIova + PAGE_SIZE * 2n, length: PAGE_SIZE * 2n });
    checkRefs(fd, buffer + PAGE_SIZE * 2n, PAGE_SIZE * 2n, 1);
    unmap(fd, ioasId, a, PAGE_SIZE);
    checkRefs(fd, buffer + PAGE_SIZE * 2n, PAGE_SIZE * 2n, 1);
    unmap(fd, ioasId, b, PAGE_SIZE * 2n);
    checkRefs(fd, buffer, BUFFER_SIZE, 0);
  });

  test('a copy needs only the pages it covers to exist: the rest of the source may be gone', () => {
    const { fd, buffer } = f;
    fd.munmap(buffer + PAGE_SIZE * 8n, PAGE_SIZE * 8n);
    const iova = copy({ length: PAGE_SIZE * 8n });
    checkRefs(fd, buffer, PAGE_SIZE * 8n, 1);
    const before = snapshot(fd);
    expect(errnoOf(() => copy({ length: PAGE_SIZE * 9n }))).toBe('EFAULT');
    expect(snapshot(fd)).toEqual(before);
    unmap(fd, f.ioasId, iova, PAGE_SIZE * 8n);
  });

  test('WRITEABLE from pages mapped without WRITEABLE is EPERM; READABLE is fine', () => {
    const { fd, buffer } = f;
    const ro = mapAuto(fd, src, buffer, PAGE_SIZE, IOMMU_IOAS_MAP_READABLE);
    expect(errnoOf(() => copy({ srcIova: ro, flags: IOMMU_IOAS_MAP_WRITEABLE }))).toBe('EPERM');
    const iova = copy({ srcIova: ro, flags: IOMMU_IOAS_MAP_READABLE });
    expect(ioasOf(fd, f.ioasId).areas.find((a) => a.start === iova)?.writable).toBe(false);
  });
});

describe('reserved ranges, allowed list and IOVA alignment (docs/registry.md)', () => {
  let fd: Iommufd;
  let ioasId: number;
  let buffer: bigint;
  beforeEach(() => {
    fd = new Iommufd();
    buffer = fd.mmap(BUFFER_SIZE);
    ioasId = fd.ioasAlloc().ioasId;
  });
  afterEach(() => {
    checkInvariants(fd);
    teardown(fd);
  });

  test('IOVA_RANGES and ALLOW_IOVAS on an id that is not an IOAS are ENOENT', () => {
    expect(errnoOf(() => fd.ioasIovaRanges({ ioasId: 999, numIovas: 1 }))).toBe('ENOENT');
    expect(errnoOf(() => fd.ioasAllowIovas({ ioasId: 999, allowedIovas: [] }))).toBe('ENOENT');
    const { faultId, faultFd } = fd.faultQueueAlloc();
    expect(errnoOf(() => fd.ioasIovaRanges({ ioasId: faultId, numIovas: 1 }))).toBe('ENOENT');
    faultFd.close();
  });

  test('IOVA_RANGES reports holes of the reserved set only: the allowed list is not reflected', () => {
    fd.ioasAllowIovas({ ioasId, allowedIovas: [{ start: 0x10000n, last: 0x1ffffn }] });
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 }).allowedIovas).toEqual([{ start: 0n, last: U64_MAX }]);
    fd.testAddReserved({ ioasId, start: 0n, length: PAGE_SIZE });
    fd.testAddReserved({ ioasId, start: PAGE_SIZE * 2n, length: PAGE_SIZE });
    fd.testAddReserved({ ioasId, start: PAGE_SIZE * 2n, length: PAGE_SIZE * 2n });
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 }).allowedIovas).toEqual([
      { start: PAGE_SIZE, last: PAGE_SIZE * 2n - 1n },
      { start: PAGE_SIZE * 4n, last: U64_MAX },
    ]);
  });

  test('ALLOW_IOVAS: start >= last is EINVAL (a one-byte range too), and so are overlapping ranges', () => {
    const allow = (allowedIovas: { start: bigint; last: bigint }[]) =>
      fd.ioasAllowIovas({ ioasId, allowedIovas });
    allow([{ start: 0x10000n, last: 0x1ffffn }]);
    expect(errnoOf(() => allow([{ start: 0x5000n, last: 0x5000n }]))).toBe('EINVAL');
    expect(errnoOf(() => allow([{ start: 0x6000n, last: 0x5000n }]))).toBe('EINVAL');
    expect(
      errnoOf(() =>
        allow([
          { start: 0x1000n, last: 0x2000n },
          { start: 0x2000n, last: 0x3000n },
        ]),
      ),
    ).toBe('EINVAL');
    expect(
      errnoOf(() =>
        allow([
          { start: 0x1000n, last: 0x8fffn },
          { start: 0x2000n, last: 0x3000n },
        ]),
      ),
    ).toBe('EINVAL');
    expect(ioasOf(fd, ioasId).allowed).toEqual([{ start: 0x10000n, last: 0x1ffffn }]);
    allow([
      { start: 0x1000n, last: 0x1fffn },
      { start: 0x2000n, last: 0x3000n },
    ]);
    expect(ioasOf(fd, ioasId).allowed.length).toBe(2);
  });

  test('ALLOW_IOVAS meeting a reservation is EADDRINUSE and keeps the old list; an empty list clears it', () => {
    const old = { start: 0x10000n, last: 0x1ffffn };
    fd.ioasAllowIovas({ ioasId, allowedIovas: [old] });
    fd.testAddReserved({ ioasId, start: 0x40000n, length: PAGE_SIZE });
    expect(
      errnoOf(() =>
        fd.ioasAllowIovas({
          ioasId,
          allowedIovas: [
            { start: 0x20000n, last: 0x2ffffn },
            { start: 0x3f000n, last: 0x40000n },
          ],
        }),
      ),
    ).toBe('EADDRINUSE');
    // The old list still steers allocation and still refuses reservations inside it.
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(0x10000n);
    expect(errnoOf(() => fd.testAddReserved({ ioasId, start: 0x18000n, length: PAGE_SIZE }))).toBe(
      'EADDRINUSE',
    );
    fd.ioasAllowIovas({ ioasId, allowedIovas: [] });
    fd.testAddReserved({ ioasId, start: 0x18000n, length: PAGE_SIZE });
    expect(mapAuto(fd, ioasId, buffer, PAGE_SIZE)).toBe(PAGE_SIZE);
  });

  test('a FIXED map is not checked against the allowed list', () => {
    fd.ioasAllowIovas({ ioasId, allowedIovas: [{ start: 0x10000n, last: 0x1ffffn }] });
    expect(mapFixed(fd, ioasId, buffer, PAGE_SIZE, 0x80000n)).toBe(0x80000n);
  });

  test('a reservation meeting an area is EADDRINUSE', () => {
    mapFixed(fd, ioasId, buffer, PAGE_SIZE * 2n, 0x10000n);
    expect(errnoOf(() => fd.testAddReserved({ ioasId, start: 0x11000n, length: 1n }))).toBe('EADDRINUSE');
    expect(errnoOf(() => fd.testAddReserved({ ioasId, start: 0n, length: 0x10001n }))).toBe('EADDRINUSE');
    fd.testAddReserved({ ioasId, start: 0x12000n, length: PAGE_SIZE });
    expect(ioasOf(fd, ioasId).reserved.length).toBe(1);
  });

  test('a domain whose aperture excludes an area or an allowed range cannot attach (EADDRINUSE), leaving no trace', () => {
    mapFixed(fd, ioasId, buffer, PAGE_SIZE, PAGE_SIZE);
    let before = snapshot(fd);
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EADDRINUSE');
    expect(snapshot(fd)).toEqual(before);
    unmap(fd, ioasId, 0n, U64_MAX);

    fd.ioasAllowIovas({
      ioasId,
      allowedIovas: [{ start: MOCK_APERTURE_LAST, last: MOCK_APERTURE_LAST + 1n }],
    });
    before = snapshot(fd);
    expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EADDRINUSE');
    expect(snapshot(fd)).toEqual(before);
    fd.ioasAllowIovas({ ioasId, allowedIovas: [] });
    const { stdevId } = fd.testMockDomain({ id: ioasId });
    fd.destroy({ id: stdevId });
  });

  test('raising the alignment over a misaligned area is EADDRINUSE: its iova, its length or its page offset', () => {
    const cases: [bigint, bigint, bigint][] = [
      [buffer, PAGE_SIZE, MOCK_APERTURE_START + 1024n],
      [buffer, PAGE_SIZE + 1024n, MOCK_APERTURE_START],
      [buffer + 1024n, PAGE_SIZE, MOCK_APERTURE_START],
    ];
    for (const [userVa, length, iova] of cases) {
      mapFixed(fd, ioasId, userVa, length, iova);
      const before = snapshot(fd);
      expect(errnoOf(() => fd.testMockDomain({ id: ioasId }))).toBe('EADDRINUSE');
      expect(snapshot(fd)).toEqual(before);
      unmap(fd, ioasId, 0n, U64_MAX);
    }
    mapFixed(fd, ioasId, buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE * 3n, MOCK_APERTURE_START + MOCK_PAGE_SIZE);
    const { stdevId } = fd.testMockDomain({ id: ioasId });
    fd.destroy({ id: stdevId });
  });

  test('the alignment is the max over the domains and shrinks back when they leave; a domain page above PAGE_SIZE is EINVAL', () => {
    const alignment = () => fd.ioasIovaRanges({ ioasId, numIovas: 4 }).iovaAlignment;
    expect(alignment()).toBe(1n);
    const { stdevId } = fd.testMockDomain({ id: ioasId });
    expect(alignment()).toBe(MOCK_PAGE_SIZE);
    fd.destroy({ id: stdevId });
    expect(alignment()).toBe(1n);
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 4 }).allowedIovas).toEqual([{ start: 0n, last: U64_MAX }]);

    // No mock domain has pages above PAGE_SIZE: hand the IOAS a stand-in domain directly.
    const huge = {
      pageSize: PAGE_SIZE * 2n,
      aperture: { start: 0n, last: U64_MAX },
      mapArea: () => {},
      unmapArea: () => {},
    };
    const before = snapshot(fd);
    expect(errnoOf(() => ioasOf(fd, ioasId).addDomain(huge))).toBe('EINVAL');
    expect(snapshot(fd)).toEqual(before);
  });

  test('HUGE_PAGES=0 is EINVAL while a domain maps areas, fine with a domain and no area; 1 restores the domain alignment', () => {
    const option = { optionId: IOMMU_OPTION_HUGE_PAGES, op: IOMMU_OPTION_OP_SET, objectId: ioasId };
    const { stdevId } = fd.testMockDomain({ id: ioasId });
    const iova = mapAuto(fd, ioasId, buffer, PAGE_SIZE);
    expect(errnoOf(() => fd.option({ ...option, val64: 0n }))).toBe('EINVAL');
    unmap(fd, ioasId, iova, PAGE_SIZE);
    fd.option({ ...option, val64: 0n });
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 1 }).iovaAlignment).toBe(PAGE_SIZE);
    expect(errnoOf(() => mapAuto(fd, ioasId, buffer, MOCK_PAGE_SIZE))).toBe('EINVAL');
    fd.option({ ...option, val64: 1n });
    expect(fd.ioasIovaRanges({ ioasId, numIovas: 1 }).iovaAlignment).toBe(MOCK_PAGE_SIZE);
    fd.destroy({ id: stdevId });
  });

  test('HUGE_PAGES names an IOAS: a HWPT or DEVICE id is ENOENT', () => {
    const { hwptId, idevId, stdevId } = fd.testMockDomain({ id: ioasId });
    for (const objectId of [hwptId, idevId, stdevId]) {
      expect(
        errnoOf(() => fd.option({ optionId: IOMMU_OPTION_HUGE_PAGES, op: IOMMU_OPTION_OP_GET, objectId })),
      ).toBe('ENOENT');
    }
  });
});

// --- docs/registry.md, invariants: failed ioctls leave no trace ------------------------------------------

describe('failed ioctls leave no trace (docs/registry.md invariants, fail-nth sweep)', () => {
  type Scenario = {
    name: string;
    setup: (fd: Iommufd, buffer: bigint) => () => unknown;
  };
  const scenarios: Scenario[] = [
    {
      name: 'IOAS_MAP into an IOAS with two domains',
      setup: (fd, buffer) => {
        const { ioasId } = fd.ioasAlloc();
        const { idevId } = fd.testMockDomain({ id: ioasId });
        fd.hwptAlloc({ devId: idevId, ptId: ioasId });
        mapAuto(fd, ioasId, buffer, PAGE_SIZE);
        return () => mapAuto(fd, ioasId, buffer + PAGE_SIZE, PAGE_SIZE * 4n);
      },
    },
    {
      name: 'IOAS_COPY from an IOAS without domains into one with a domain',
      setup: (fd, buffer) => {
        const { ioasId: src } = fd.ioasAlloc();
        const { ioasId: dst } = fd.ioasAlloc();
        fd.testMockDomain({ id: dst });
        const srcIova = mapAuto(fd, src, buffer, BUFFER_SIZE);
        return () => fd.ioasCopy({ flags: RW, srcIoasId: src, srcIova, dstIoasId: dst, length: BUFFER_SIZE });
      },
    },
    {
      name: 'MOCK_DOMAIN attach to an IOAS with areas',
      setup: (fd, buffer) => {
        const { ioasId } = fd.ioasAlloc();
        mapFixed(fd, ioasId, buffer, BUFFER_SIZE, MOCK_APERTURE_START);
        mapFixed(fd, ioasId, buffer, PAGE_SIZE, MOCK_APERTURE_START + BUFFER_SIZE);
        return () => fd.testMockDomain({ id: ioasId });
      },
    },
    {
      name: 'HWPT_ALLOC on an IOAS with areas and a domain',
      setup: (fd, buffer) => {
        const { ioasId } = fd.ioasAlloc();
        const { idevId } = fd.testMockDomain({ id: ioasId });
        mapAuto(fd, ioasId, buffer, BUFFER_SIZE);
        return () => fd.hwptAlloc({ devId: idevId, ptId: ioasId });
      },
    },
  ];

  for (const { name, setup } of scenarios) {
    test(`${name}: every injected failure leaves objects, ids, areas, reservations, domains and pins as they were`, () => {
      let failures = 0;
      for (let nth = 1; nth < 100; nth++) {
        const fd = new Iommufd();
        const run = setup(fd, fd.mmap(BUFFER_SIZE));
        const before = snapshot(fd);
        fd.injector.arm(nth);
        let failed: IommufdError | undefined;
        try {
          run();
        } catch (error) {
          if (!(error instanceof IommufdError)) throw error;
          failed = error;
        } finally {
          fd.injector.disarm();
        }
        if (failed) {
          failures++;
          expect(failed.errno).toBe('ENOMEM');
          expect(snapshot(fd)).toEqual(before);
        }
        checkInvariants(fd);
        teardown(fd);
        if (!failed) break;
      }
      expect(failures).toBeGreaterThan(0);
    });
  }
});

describe('kernel order where the model doc differs (iommufd ioas.c)', () => {
  test('IOAS_UNMAP looks the IOAS up first: a bad id is ENOENT whatever the range', () => {
    const fd = new Iommufd();
    expect(errnoOf(() => fd.ioasUnmap({ ioasId: 999, iova: 0n, length: 0n }))).toBe('ENOENT');
    expect(errnoOf(() => fd.ioasUnmap({ ioasId: 999, iova: U64_MAX, length: 1n }))).toBe('ENOENT');
    fd.close();
  });

  test('OPTION HUGE_PAGES judges the IOAS before the op: a bad id with a bad op is ENOENT', () => {
    const fd = new Iommufd();
    expect(errnoOf(() => fd.option({ optionId: 1, op: 7, objectId: 999 }))).toBe('ENOENT');
    const { ioasId } = fd.ioasAlloc();
    expect(errnoOf(() => fd.option({ optionId: 1, op: 7, objectId: ioasId }))).toBe('EOPNOTSUPP');
    fd.close();
  });

  test('disabling huge pages twice is a no-op, even with a domain and areas', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    fd.testMockDomain({ id: ioasId });
    fd.option({ optionId: 1, op: 0, objectId: ioasId, val64: 0n });
    mapAuto(fd, ioasId, fd.mmap(BUFFER_SIZE), BUFFER_SIZE);
    expect(fd.option({ optionId: 1, op: 0, objectId: ioasId, val64: 0n })).toEqual({ val64: 0n });
    // Re-enabled, disabling again meets the domain and its areas.
    expect(fd.option({ optionId: 1, op: 0, objectId: ioasId, val64: 1n })).toEqual({ val64: 1n });
    expect(errnoOf(() => fd.option({ optionId: 1, op: 0, objectId: ioasId, val64: 0n }))).toBe('EINVAL');
    teardown(fd);
  });

  test('IOAS_COPY of a range spanning two contiguous areas makes two destination areas', () => {
    const fd = new Iommufd();
    const { ioasId: src } = fd.ioasAlloc();
    const { ioasId: dst } = fd.ioasAlloc();
    const buf = fd.mmap(BUFFER_SIZE * 2n);
    mapFixed(fd, src, buf, BUFFER_SIZE, 0x100000n);
    mapFixed(fd, src, buf + BUFFER_SIZE, BUFFER_SIZE, 0x100000n + BUFFER_SIZE);
    const { dstIova } = fd.ioasCopy({
      flags: RW,
      srcIoasId: src,
      dstIoasId: dst,
      srcIova: 0x100000n,
      length: BUFFER_SIZE * 2n,
    });
    expect(ioasOf(fd, dst).areas.map((a) => a.last - a.start + 1n)).toEqual([BUFFER_SIZE, BUFFER_SIZE]);
    expect(ioasOf(fd, dst).areas[0].start).toBe(dstIova);
    teardown(fd);
  });

  test('IOAS_COPY to an occupied fixed destination is EEXIST before the WRITEABLE check (EPERM)', () => {
    const fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    const buf = fd.mmap(BUFFER_SIZE);
    mapFixed(fd, ioasId, buf, BUFFER_SIZE, 0x100000n, IOMMU_IOAS_MAP_READABLE);
    const copy = (dstIova: bigint) => () =>
      fd.ioasCopy({
        flags: RW | FIXED,
        srcIoasId: ioasId,
        dstIoasId: ioasId,
        srcIova: 0x100000n,
        dstIova,
        length: BUFFER_SIZE,
      });
    expect(errnoOf(copy(0x100000n))).toBe('EEXIST');
    expect(errnoOf(copy(0x400000n))).toBe('EPERM');
    teardown(fd);
  });
});
