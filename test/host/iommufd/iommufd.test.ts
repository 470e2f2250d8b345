/**
 * Model-based property test of the iommufd registry (docs/registry.md: objects, IOAS, FAULT, invariants).
 *
 * Random sequences of registry calls run against the real `Iommufd` and against a small reference
 * model written here from docs/registry.md: which objects exist and their ids (lowest free from
 * 1), per IOAS its areas, reserved ranges and allowed list, which HWPT_PAGING domains mirror it,
 * the FAULT queues and their groups. Each step compares the outcome (result or errno) with the
 * model's prediction, and then asserts the invariants of docs/registry.md against the registry.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { DeviceObject } from '../../../host/iommufd/device.ts';
import { type Errno, IommufdError } from '../../../host/iommufd/errors.ts';
import {
  decodePgfault,
  encodePageResponse,
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  PAGE_RESPONSE_BYTES,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
} from '../../../host/iommufd/eventq-records.ts';
import { type FaultFd, FaultObject } from '../../../host/iommufd/fault.ts';
import {
  HwptPaging,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../../../host/iommufd/hwpt.ts';
import {
  type Area,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  Ioas,
} from '../../../host/iommufd/ioas.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { type IovaRange, U64_MAX } from '../../../host/iommufd/iova.ts';
import {
  MOCK_APERTURE_LAST,
  MOCK_APERTURE_START,
  MOCK_PAGE_SIZE,
  type MockDevice,
  type MockPagingDomain,
} from '../../../host/iommufd/selftest.ts';
import { PAGE_SIZE } from '../../../host/iommufd/user-memory.ts';

/** Fixed so CI replays the same sequences; fast-check prints seed and path on failure. */
const SEED = 0x10a5_1d;
const NUM_RUNS = 200;
const MAX_COMMANDS = 30;

const AP = MOCK_APERTURE_START;
const THP_SIZE = 2n * 1024n * 1024n;
const R = IOMMU_IOAS_MAP_READABLE;
const W = IOMMU_IOAS_MAP_WRITEABLE;
const FIXED = IOMMU_IOAS_MAP_FIXED_IOVA;

// --- the reference model --------------------------------------------------------------------------

interface Backing {
  readonly id: number;
  readonly userVa: bigint;
  readonly length: bigint;
  readonly writable: boolean;
}

interface MArea extends IovaRange {
  readonly backing: Backing;
  /** Byte offset of `start` inside the backing. */
  readonly offset: bigint;
  readonly writable: boolean;
}

interface MReserved extends IovaRange {
  /** The HWPT whose aperture complement this is, or a selftest reservation. */
  readonly owner: number | 'test';
}

interface MIoas {
  readonly kind: 'IOAS';
  readonly id: number;
  areas: MArea[];
  reserved: MReserved[];
  allowed: IovaRange[];
}

interface MHwpt {
  readonly kind: 'HWPT_PAGING';
  readonly id: number;
  readonly ioasId: number;
  readonly auto: boolean;
  readonly nestParent: boolean;
  readonly faultId: number | undefined;
  /** DEVICE ids attached (RID) to it. */
  readonly attached: Set<number>;
}

interface MDevice {
  readonly kind: 'DEVICE';
  readonly id: number;
  readonly stdevId: number;
  readonly hwptId: number;
  /** Identity of the device's one attachment (ids are reused, serials are not). */
  readonly serial: number;
  /** Page responses the mock device received, by code. */
  readonly responses: { success: number; invalid: number };
}

interface MSelftest {
  readonly kind: 'SELFTEST';
  readonly id: number;
  readonly devId: number;
}

interface MGroup {
  readonly serial: number;
  readonly devId: number;
  readonly grpid: number;
  readonly perm: number;
  readonly addr: bigint;
}

interface MFault {
  readonly kind: 'FAULT';
  readonly id: number;
  fdOpen: boolean;
  undelivered: MGroup[];
  readonly awaiting: Map<number, MGroup>;
}

type MObject = MIoas | MHwpt | MDevice | MSelftest | MFault;

interface UserBuffer {
  readonly va: bigint;
  readonly length: bigint;
}

const pageOf = (va: bigint) => va / PAGE_SIZE;
const sizeOf = (r: IovaRange) => r.last - r.start + 1n;
const overlaps = (a: IovaRange, start: bigint, last: bigint) => a.start <= last && start <= a.last;
const byStart = (a: IovaRange, b: IovaRange) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0);
const max = (a: bigint, b: bigint) => (a > b ? a : b);
const min = (a: bigint, b: bigint) => (a < b ? a : b);
const hex = (v: bigint) => `0x${v.toString(16)}`;

function roundupPow2(v: bigint): bigint {
  let p = 1n;
  while (p < v) p <<= 1n;
  return p;
}

/** The holes of the union of `busy` inside [lo, hi], ascending. */
function holes(lo: bigint, hi: bigint, busy: readonly IovaRange[]): IovaRange[] {
  const out: IovaRange[] = [];
  let next = lo;
  for (const b of [...busy].sort(byStart)) {
    if (next > hi) break;
    if (b.last < next) continue;
    if (b.start > next) out.push({ start: next, last: min(b.start - 1n, hi) });
    if (b.last >= hi) return out;
    next = b.last + 1n;
  }
  if (next <= hi) out.push({ start: next, last: hi });
  return out;
}

/** Pages of user memory covered by [va, va + length). */
function pagesOf(va: bigint, length: bigint): bigint[] {
  const out: bigint[] = [];
  for (let p = pageOf(va); p <= pageOf(va + length - 1n); p++) out.push(p);
  return out;
}

class Model {
  readonly objects = new Map<number, MObject>();
  readonly buffers: UserBuffer[] = [];
  /** Page numbers of user memory currently mapped. */
  readonly mapped = new Set<bigint>();
  private nextBacking = 1;
  private nextSerial = 1;

  /** Section 2: each new object takes the lowest free id. */
  lowestFree(taken: readonly number[] = []): number {
    let id = 1;
    while (this.objects.has(id) || taken.includes(id)) id++;
    return id;
  }

  list<K extends MObject['kind']>(kind: K): Extract<MObject, { kind: K }>[] {
    return [...this.objects.values()]
      .filter((o): o is Extract<MObject, { kind: K }> => o.kind === kind)
      .sort((a, b) => a.id - b.id);
  }

  get<K extends MObject['kind']>(id: number, kind: K): Extract<MObject, { kind: K }> | undefined {
    const o = this.objects.get(id);
    return o?.kind === kind ? (o as Extract<MObject, { kind: K }>) : undefined;
  }

  newBacking(userVa: bigint, length: bigint, writable: boolean): Backing {
    return { id: this.nextBacking++, userVa, length, writable };
  }

  newSerial(): number {
    return this.nextSerial++;
  }

  domainsOf(ioasId: number): MHwpt[] {
    return this.list('HWPT_PAGING').filter((h) => h.ioasId === ioasId);
  }

  /** Section 3: max over the domains' smallest page sizes (the mock's is 2048), else 1. */
  alignment(ioasId: number): bigint {
    return this.domainsOf(ioasId).length > 0 ? MOCK_PAGE_SIZE : 1n;
  }

  /** Section 2 holders: who holds a `users` reference on `o`, plus the table's own. */
  users(o: MObject): number {
    switch (o.kind) {
      case 'IOAS':
        return 1 + this.domainsOf(o.id).length;
      case 'HWPT_PAGING':
        return 1 + o.attached.size;
      case 'DEVICE':
        // table + bind + the RID attachment (a mock device is always attached here)
        return 3;
      case 'SELFTEST':
        return 1;
      case 'FAULT':
        return 1 + (o.fdOpen ? 1 : 0) + this.list('HWPT_PAGING').filter((h) => h.faultId === o.id).length;
    }
  }

  /**
   * Section 12: which (backing, page) pairs are pinned. A page of a backing is pinned while some
   * area over it sits in an IOAS that has a domain; copies share the backing, so never twice.
   */
  pinnedPairs(): Map<string, bigint> {
    const out = new Map<string, bigint>();
    for (const ioas of this.list('IOAS')) {
      if (this.domainsOf(ioas.id).length === 0) continue;
      for (const area of ioas.areas) {
        for (const p of pagesOf(area.backing.userVa + area.offset, sizeOf(area))) {
          out.set(`${area.backing.id}:${p}`, p);
        }
      }
    }
    return out;
  }

  /** Per page: how many distinct backings pin it. */
  pinCounts(): Map<bigint, number> {
    const counts = new Map<bigint, number>();
    for (const p of this.pinnedPairs().values()) counts.set(p, (counts.get(p) ?? 0) + 1);
    return counts;
  }

  /**
   * Would pinning these areas for a domain fault? Pages already pinned for their backing need no
   * user memory (a pinned page stays pinned after munmap); the others must be mapped (3.1 step 10).
   */
  pinFaults(areas: readonly MArea[]): boolean {
    const pinned = this.pinnedPairs();
    for (const area of areas) {
      for (const p of pagesOf(area.backing.userVa + area.offset, sizeOf(area))) {
        if (!pinned.has(`${area.backing.id}:${p}`) && !this.mapped.has(p)) return true;
      }
    }
    return false;
  }

  /**
   * What adding a mock domain to `ioas` does (section 3, 10): EADDRINUSE if an area or allowed
   * range meets the aperture complement or an area breaks the 2048 alignment, EFAULT if pinning
   * the areas meets unmapped memory.
   */
  addDomainErrno(ioas: MIoas): Errno | undefined {
    const outside = [
      { start: 0n, last: AP - 1n },
      { start: MOCK_APERTURE_LAST + 1n, last: U64_MAX },
    ];
    for (const area of ioas.areas) {
      const inPage = (area.backing.userVa + area.offset) % PAGE_SIZE;
      if (area.start % MOCK_PAGE_SIZE !== 0n || sizeOf(area) % MOCK_PAGE_SIZE !== 0n) return 'EADDRINUSE';
      if (inPage % MOCK_PAGE_SIZE !== 0n) return 'EADDRINUSE';
    }
    for (const r of [...ioas.areas, ...ioas.allowed]) {
      if (outside.some((o) => overlaps(o, r.start, r.last))) return 'EADDRINUSE';
    }
    if (this.domainsOf(ioas.id).length === 0 && this.pinFaults(ioas.areas)) return 'EFAULT';
    return undefined;
  }

  addDomain(ioas: MIoas, hwpt: MHwpt): void {
    this.objects.set(hwpt.id, hwpt);
    ioas.reserved.push(
      { start: 0n, last: AP - 1n, owner: hwpt.id },
      { start: MOCK_APERTURE_LAST + 1n, last: U64_MAX, owner: hwpt.id },
    );
  }

  removeHwpt(hwpt: MHwpt): void {
    this.objects.delete(hwpt.id);
    const ioas = this.get(hwpt.ioasId, 'IOAS');
    if (ioas) ioas.reserved = ioas.reserved.filter((r) => r.owner !== hwpt.id);
  }

  /** 3.2: first fit at the lowest address inside the allowed ranges, avoiding reserved and areas. */
  autoIova(ioas: MIoas, userVa: bigint, length: bigint): bigint | Errno {
    let align = userVa === 0n ? roundupPow2(length) : min(roundupPow2(length), userVa & -userVa);
    if (align > THP_SIZE) align = THP_SIZE;
    if (align < this.alignment(ioas.id)) return 'EINVAL';
    const spans = ioas.allowed.length > 0 ? [...ioas.allowed].sort(byStart) : [{ start: 0n, last: U64_MAX }];
    const busy = [...ioas.reserved, ...ioas.areas];
    for (const span of spans) {
      const lo = max(span.start, PAGE_SIZE);
      const hi = min(span.last, U64_MAX - PAGE_SIZE);
      if (lo > hi) continue;
      for (const hole of holes(lo, hi, busy)) {
        const start = (((hole.start + align - 1n) / align) * align) | (userVa % PAGE_SIZE);
        if (start >= hole.start && start + length - 1n <= hole.last) return start;
      }
    }
    return 'ENOSPC';
  }

  /**
   * 3.1 steps 6-9 for `length` bytes of user memory at `userVa` going into `ioas`: the IOVA it
   * gets, or the errno.
   */
  placeErrno(ioas: MIoas, userVa: bigint, length: bigint, fixed: boolean, iova: bigint): bigint | Errno {
    const align = this.alignment(ioas.id);
    if (length % align !== 0n) return 'EINVAL';
    let start: bigint;
    if (fixed) {
      if (iova % align !== 0n) return 'EINVAL';
      const last = iova + length - 1n;
      if (ioas.reserved.some((r) => overlaps(r, iova, last))) return 'EINVAL';
      if (ioas.areas.some((a) => overlaps(a, iova, last))) return 'EEXIST';
      start = iova;
    } else {
      const got = this.autoIova(ioas, userVa, length);
      if (typeof got === 'string') return got;
      start = got;
    }
    if ((userVa % PAGE_SIZE) % align !== 0n) return 'EINVAL';
    return start;
  }

  /** 3.3/3.4: the gap-free run of areas covering [start, last], or undefined. */
  coveringRun(ioas: MIoas, start: bigint, last: bigint): MArea[] | undefined {
    const run: MArea[] = [];
    let next = start;
    for (const area of [...ioas.areas].sort(byStart)) {
      if (area.last < next) continue;
      if (area.start > next) return undefined;
      run.push(area);
      if (area.last >= last) return run;
      next = area.last + 1n;
    }
    return undefined;
  }

  /** Section 6.4: every group of a device whose attachment ends is answered INVALID. */
  autoRespond(fault: MFault | undefined, serial: number): void {
    if (!fault) return;
    fault.undelivered = fault.undelivered.filter((g) => g.serial !== serial);
    for (const [cookie, g] of fault.awaiting) if (g.serial === serial) fault.awaiting.delete(cookie);
  }

  deviceBySerial(serial: number): MDevice | undefined {
    return this.list('DEVICE').find((d) => d.serial === serial);
  }

  /** Answer every group of a FAULT that goes away INVALID (6.4). */
  answerAll(fault: MFault): void {
    for (const g of [...fault.undelivered, ...fault.awaiting.values()]) {
      const dev = this.deviceBySerial(g.serial);
      if (dev) dev.responses.invalid++;
    }
    fault.undelivered = [];
    fault.awaiting.clear();
  }
}

interface Real {
  readonly fd: Iommufd;
  readonly faultFds: Map<number, FaultFd>;
}

// --- snapshots and invariants ---------------------------------------------------------------------

interface IoasSnapshot {
  areas: string[];
  reserved: string[];
  allowed: string[];
  alignment: string;
}

interface Snapshot {
  objects: string[];
  reservedIds: number;
  ioas: Record<number, IoasSnapshot>;
  mappedBytes: Record<number, string>;
  pinnedPages: number;
  pendingFaultGroups: number;
  faults: Record<number, string>;
}

const rangeKey = (r: IovaRange) => `${hex(r.start)}-${hex(r.last)}`;

/** User address an area starts at (its offset counts from the page holding the map's user_va). */
const areaVa = (a: Area) => a.pages.base + a.offset;

/** Everything a failed call must leave as it was (section 12), read from the registry. */
function snapshot(fd: Iommufd): Snapshot {
  const s: Snapshot = {
    objects: [],
    reservedIds: fd.reservedIds,
    ioas: {},
    mappedBytes: {},
    pinnedPages: fd.memory.pinnedPages,
    pendingFaultGroups: fd.pendingFaultGroups,
    faults: {},
  };
  for (const o of fd.objects()) {
    s.objects.push(`${o.id}:${o.type}:${o.users}`);
    if (o instanceof Ioas) {
      s.ioas[o.id] = {
        areas: o.areas.map((a) => `${rangeKey(a)}@${hex(areaVa(a))}`),
        reserved: o.reserved.map(rangeKey).sort(),
        allowed: o.allowed.map(rangeKey),
        alignment: hex(o.iovaAlignment),
      };
    }
    if (o instanceof HwptPaging) s.mappedBytes[o.id] = hex(o.domain.mappedBytes);
    if (o instanceof FaultObject) s.faults[o.id] = `${o.undeliveredCount}/${o.awaitingCount}`;
  }
  return s;
}

function checkInvariants(m: Model, r: Real): void {
  const { fd } = r;
  const real = fd.objects();

  // Section 2: the same objects, ids and holders; nothing left reserved between calls.
  expect(real.map((o) => `${o.id}:${o.type}:${o.users}`)).toEqual(
    [...m.objects.values()].sort((a, b) => a.id - b.id).map((o) => `${o.id}:${o.kind}:${m.users(o)}`),
  );
  expect(fd.reservedIds).toBe(0);

  for (const o of real) {
    if (o instanceof Ioas) {
      const mi = m.get(o.id, 'IOAS') as MIoas;
      const domains = m.domainsOf(o.id);
      expect(o.areas.map((a) => `${rangeKey(a)}@${hex(areaVa(a))}${a.writable ? 'w' : ''}`)).toEqual(
        [...mi.areas]
          .sort(byStart)
          .map((a) => `${rangeKey(a)}@${hex(a.backing.userVa + a.offset)}${a.writable ? 'w' : ''}`),
      );
      expect(o.allowed.map(rangeKey)).toEqual([...mi.allowed].sort(byStart).map(rangeKey));
      expect(o.reserved.map(rangeKey).sort()).toEqual(mi.reserved.map(rangeKey).sort());
      // iova_alignment is the max over the IOAS's domains, and no area violates it.
      const align = o.iovaAlignment;
      expect(align).toBe(o.domains.reduce((acc, d) => max(acc, d.pageSize), 1n));
      expect(align).toBe(m.alignment(o.id));
      expect(o.domains.length).toBe(domains.length);
      const misaligned = o.areas.filter(
        (a) => a.start % align !== 0n || sizeOf(a) % align !== 0n || (areaVa(a) % PAGE_SIZE) % align !== 0n,
      );
      expect(misaligned.map(rangeKey), `areas of IOAS ${o.id} breaking alignment ${align}`).toEqual([]);
      // IOAS_IOVA_RANGES reports the holes of the reserved set.
      const ranges = fd.ioasIovaRanges({ ioasId: o.id, numIovas: 64 });
      expect(ranges.allowedIovas.map(rangeKey)).toEqual(holes(0n, U64_MAX, mi.reserved).map(rangeKey));
      expect(ranges.iovaAlignment).toBe(align);
    }
    if (o instanceof HwptPaging) {
      const mh = m.get(o.id, 'HWPT_PAGING') as MHwpt;
      const mi = m.get(mh.ioasId, 'IOAS') as MIoas;
      expect(o.ioas.id).toBe(mh.ioasId);
      expect(o.autoDomain).toBe(mh.auto);
      expect(o.fault?.id).toBe(mh.faultId);
      expect(o.ioas.domains).toContain(o);
      // Every area of the IOAS is mirrored in this domain, and nothing else.
      const total = mi.areas.reduce((acc, a) => acc + sizeOf(a), 0n);
      expect(o.domain.mappedBytes, `HWPT ${o.id} mirrors IOAS ${mh.ioasId}`).toBe(total);
      const pages = (o.domain as MockPagingDomain).pages;
      expect(BigInt(pages.size)).toBe(total / MOCK_PAGE_SIZE);
      const unmapped: string[] = [];
      for (const a of mi.areas)
        for (let at = a.start; at <= a.last; at += MOCK_PAGE_SIZE)
          if (!pages.has(at / MOCK_PAGE_SIZE)) unmapped.push(hex(at));
      expect(unmapped, `IOVAs of IOAS ${mh.ioasId} missing from HWPT ${o.id}`).toEqual([]);
    }
    if (o instanceof DeviceObject) {
      const md = m.get(o.id, 'DEVICE') as MDevice;
      expect(o.attachment(undefined)?.hwpt.id).toBe(md.hwptId);
      const got = (o.hw as MockDevice).responses;
      expect({
        success: got.filter((x) => x.code === IOMMUFD_PAGE_RESP_SUCCESS).length,
        invalid: got.filter((x) => x.code === IOMMUFD_PAGE_RESP_INVALID).length,
      }).toEqual(md.responses);
    }
    if (o instanceof FaultObject) {
      const mf = m.get(o.id, 'FAULT') as MFault;
      expect(`${o.undeliveredCount}/${o.awaitingCount}`).toBe(`${mf.undelivered.length}/${mf.awaiting.size}`);
      // Every group it ever got is in exactly one state.
      const st = o.stats;
      expect(st.reported).toBe(o.undeliveredCount + o.awaitingCount + st.responded + st.autoResponded);
    }
  }

  // Each page pinned once per backing that a domain holds, and nothing else pinned.
  const counts = m.pinCounts();
  const wrongPins: string[] = [];
  for (const b of m.buffers) {
    for (const p of pagesOf(b.va, b.length)) {
      const want = m.mapped.has(p) ? (counts.get(p) ?? 0) : 0;
      const got = fd.memory.pinCount(p * PAGE_SIZE);
      if (got !== want) wrongPins.push(`page ${hex(p * PAGE_SIZE)} pinned ${got}x, model ${want}x`);
    }
  }
  expect(wrongPins).toEqual([]);
  expect(fd.memory.pinnedPages).toBe(counts.size);

  // Every complete group is in exactly one place: in a FAULT, or answered.
  const pending = m.list('FAULT').reduce((acc, f) => acc + f.undelivered.length + f.awaiting.size, 0);
  expect(fd.pendingFaultGroups).toBe(pending);
  expect(fd.mock.iopf.pending).toBe(pending);
  expect(fd.mock.iopf.stats.duplicateAnswers).toBe(0);
}

type Expected<T> = { ok: (result: T) => void } | { errnos: readonly Errno[]; partial?: () => void };

/**
 * One registry call against the model's prediction. A failure must carry a predicted errno and
 * leave the registry's visible state as it was (section 12), except for a documented partial
 * effect, which `partial` applies to the model and the invariants then check.
 */
function exercise<T>(m: Model, r: Real, what: string, expected: Expected<T>, call: () => T): void {
  const before = snapshot(r.fd);
  let result: T;
  try {
    result = call();
  } catch (error) {
    if (!(error instanceof IommufdError)) throw error;
    if ('ok' in expected) {
      throw new Error(`${what}: the model expected success, the registry failed ${error.message}`);
    }
    expect(expected.errnos, `${what}: ${error.message}`).toContain(error.errno);
    if (expected.partial) expected.partial();
    else expect(snapshot(r.fd), `${what} failed (${error.errno}) but changed visible state`).toEqual(before);
    checkInvariants(m, r);
    return;
  }
  if (!('ok' in expected)) {
    throw new Error(`${what}: the model expected ${expected.errnos.join(' or ')}, the registry succeeded`);
  }
  expected.ok(result);
  checkInvariants(m, r);
}

const fail = (...errnos: Errno[]) => ({ errnos });

// --- argument selection ---------------------------------------------------------------------------

/** A live object of the wanted kinds (by position), or a raw id that may name anything or nothing. */
type Sel = { k: number } | { raw: number };

const selArb: fc.Arbitrary<Sel> = fc.oneof(
  { weight: 9, arbitrary: fc.nat(1000).map((k) => ({ k })) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 12 }).map((raw) => ({ raw })) },
);

function resolve(
  m: Model,
  sel: Sel,
  kinds: readonly MObject['kind'][],
  prefer: (o: MObject) => boolean = () => true,
): number {
  if ('raw' in sel) return sel.raw;
  const all = [...m.objects.values()].filter((o) => kinds.includes(o.kind)).sort((a, b) => a.id - b.id);
  const preferred = all.filter(prefer);
  const live = preferred.length > 0 ? preferred : all;
  return live.length > 0 ? live[sel.k % live.length].id : m.lowestFree();
}

/** Unmap and copy sources are more telling on an IOAS that has areas. */
const hasAreas = (o: MObject) => o.kind === 'IOAS' && o.areas.length > 0;

const showSel = (s: Sel) => ('raw' in s ? `#${s.raw}` : `live[${s.k}]`);

/** IOVAs around the bottom of the mock aperture, plus some outside it. */
const iovaArb = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 31 }).map((k) => AP + BigInt(k) * 0x800n) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(0x1000n, 0x800n, AP - 0x800n, MOCK_APERTURE_LAST + 1n - 0x800n, 1n << 32n),
  },
);
const lengthArb = fc.constantFrom(0x800n, 0x1000n, 0x1000n, 0x2000n, 0x3000n, 0x4000n, 0x100n, 0xc00n);

/** Allowed-range palette: inside, outside and across the aperture, overlapping, and one invalid. */
const ALLOWED: readonly IovaRange[] = [
  { start: AP, last: AP + 0x3fffn },
  { start: AP + 0x8000n, last: AP + 0xffffn },
  { start: 0x1000n, last: 0x1fffn },
  { start: AP + 0x2000n, last: AP + 0x9fffn },
  { start: AP + 0x10000n, last: AP + 0x107ffn },
  { start: AP + 0x5000n, last: AP + 0x5000n },
  { start: MOCK_APERTURE_LAST + 1n - 0x1000n, last: MOCK_APERTURE_LAST + 0x1000n },
];

abstract class Step implements fc.Command<Model, Real> {
  check(_m: Readonly<Model>): boolean {
    return true;
  }
  abstract run(m: Model, r: Real): void;
  abstract toString(): string;
}

// --- commands -------------------------------------------------------------------------------------

class Mmap extends Step {
  constructor(readonly length: bigint) {
    super();
  }
  run(m: Model, r: Real): void {
    const va = r.fd.mmap(this.length);
    expect(va % PAGE_SIZE).toBe(0n);
    for (const b of m.buffers) expect(va >= b.va + b.length || va + this.length <= b.va).toBe(true);
    m.buffers.push({ va, length: this.length });
    for (const p of pagesOf(va, this.length)) m.mapped.add(p);
    checkInvariants(m, r);
  }
  toString() {
    return `mmap(${hex(this.length)})`;
  }
}

class Munmap extends Step {
  constructor(
    readonly buffer: number,
    readonly part: 'all' | 'first' | 'last',
  ) {
    super();
  }
  run(m: Model, r: Real): void {
    const b = m.buffers[this.buffer % m.buffers.length];
    const va = this.part === 'last' ? b.va + b.length - PAGE_SIZE : b.va;
    const length = this.part === 'all' ? b.length : PAGE_SIZE;
    r.fd.munmap(va, length);
    for (const p of pagesOf(va, length)) m.mapped.delete(p);
    // Pages pinned stay pinned: nothing in the registry changes.
    checkInvariants(m, r);
  }
  toString() {
    return `munmap(buffer ${this.buffer}, ${this.part})`;
  }
}

class IoasAlloc extends Step {
  run(m: Model, r: Real): void {
    const id = m.lowestFree();
    exercise(
      m,
      r,
      this.toString(),
      {
        ok: ({ ioasId }: { ioasId: number }) => {
          expect(ioasId).toBe(id);
          m.objects.set(id, { kind: 'IOAS', id, areas: [], reserved: [], allowed: [] });
        },
      },
      () => r.fd.ioasAlloc(),
    );
  }
  toString() {
    return 'ioasAlloc()';
  }
}

class Destroy extends Step {
  constructor(readonly sel: Sel) {
    super();
  }
  run(m: Model, r: Real): void {
    const id = resolve(m, this.sel, ['IOAS', 'HWPT_PAGING', 'DEVICE', 'SELFTEST', 'FAULT']);
    const o = m.objects.get(id);
    const expected: Expected<void> = !o
      ? fail('ENOENT')
      : m.users(o) !== 1
        ? fail('EBUSY')
        : { ok: () => destroyInModel(m, r, o) };
    exercise(m, r, `destroy(${id})`, expected, () => r.fd.destroy({ id }));
  }
  toString() {
    return `destroy(${showSel(this.sel)})`;
  }
}

function destroyInModel(m: Model, r: Real, o: MObject): void {
  m.objects.delete(o.id);
  if (o.kind === 'HWPT_PAGING') m.removeHwpt(o);
  if (o.kind === 'FAULT') {
    m.answerAll(o);
    r.faultFds.delete(o.id);
  }
  if (o.kind === 'SELFTEST') {
    // Destroying the selftest object detaches and unbinds its device.
    const dev = m.get(o.devId, 'DEVICE') as MDevice;
    const hwpt = m.get(dev.hwptId, 'HWPT_PAGING') as MHwpt;
    m.autoRespond(hwpt.faultId === undefined ? undefined : m.get(hwpt.faultId, 'FAULT'), dev.serial);
    hwpt.attached.delete(dev.id);
    if (hwpt.auto && hwpt.attached.size === 0) m.removeHwpt(hwpt);
    m.objects.delete(dev.id);
  }
}

interface MapArgs {
  ioas: Sel;
  buffer: number;
  /** Offset into the buffer, or a raw user address (0 or unmapped). */
  va: { offset: bigint } | { raw: bigint };
  length: bigint;
  fixed: boolean;
  /** A raw IOVA, or right after an existing area (so areas end up adjacent). */
  iova: bigint | { after: number };
  writable: boolean;
}

/** A raw IOVA, or the one just past area `after` of the IOAS (a raw fallback without areas). */
function iovaOf(m: Model, ioasId: number, iova: bigint | { after: number }): bigint {
  if (typeof iova === 'bigint') return iova;
  const areas = [...(m.get(ioasId, 'IOAS')?.areas ?? [])].sort(byStart);
  return areas.length > 0 ? areas[iova.after % areas.length].last + 1n : AP;
}

const showIova = (iova: bigint | { after: number }) =>
  typeof iova === 'bigint' ? hex(iova) : `after area ${iova.after}`;

class IoasMap extends Step {
  constructor(readonly a: MapArgs) {
    super();
  }
  run(m: Model, r: Real): void {
    const { a } = this;
    const ioasId = resolve(m, a.ioas, ['IOAS']);
    const b = m.buffers[a.buffer % m.buffers.length];
    const userVa = 'raw' in a.va ? a.va.raw : b.va + a.va.offset;
    const flags = R | (a.writable ? W : 0) | (a.fixed ? FIXED : 0);
    const iova = iovaOf(m, ioasId, a.iova);
    const what = `ioasMap(ioas ${ioasId}, va ${hex(userVa)}, len ${hex(a.length)}, ${a.fixed ? `FIXED ${hex(iova)}` : 'auto'})`;
    exercise(m, r, what, this.expect(m, ioasId, userVa, iova), () =>
      r.fd.ioasMap({ flags, ioasId, userVa, length: a.length, iova }),
    );
  }
  private expect(m: Model, ioasId: number, userVa: bigint, iova: bigint): Expected<{ iova: bigint }> {
    const { a } = this;
    const ioas = m.get(ioasId, 'IOAS');
    if (!ioas) return fail('ENOENT');
    const start = m.placeErrno(ioas, userVa, a.length, a.fixed, iova);
    if (typeof start === 'string') return fail(start);
    const backing = m.newBacking(userVa, a.length, a.writable);
    const area: MArea = { start, last: start + a.length - 1n, backing, offset: 0n, writable: a.writable };
    if (m.domainsOf(ioasId).length > 0 && m.pinFaults([area])) return fail('EFAULT');
    return {
      ok: ({ iova }) => {
        expect(iova).toBe(start);
        ioas.areas.push(area);
      },
    };
  }
  toString() {
    const { a } = this;
    const va = 'raw' in a.va ? hex(a.va.raw) : `buffer ${a.buffer}+${hex(a.va.offset)}`;
    return `ioasMap(${showSel(a.ioas)}, ${va}, ${hex(a.length)}, ${a.fixed ? `FIXED ${showIova(a.iova)}` : 'auto'}${a.writable ? ', W' : ''})`;
  }
}

interface UnmapArgs {
  ioas: Sel;
  /** all: (0, U64_MAX); area: an existing area, grown or shifted by `delta`; range: raw values. */
  mode: 'all' | 'area' | 'range';
  area: number;
  delta: 'exact' | 'grow' | 'shift';
  iova: bigint;
  length: bigint;
}

class IoasUnmap extends Step {
  constructor(readonly a: UnmapArgs) {
    super();
  }
  run(m: Model, r: Real): void {
    const { a } = this;
    const ioasId = resolve(m, a.ioas, ['IOAS'], hasAreas);
    const ioas = m.get(ioasId, 'IOAS');
    let iova = a.iova;
    let length = a.length;
    if (a.mode === 'all') {
      iova = 0n;
      length = U64_MAX;
    } else if (a.mode === 'area' && ioas && ioas.areas.length > 0) {
      const area = [...ioas.areas].sort(byStart)[a.area % ioas.areas.length];
      iova = area.start + (a.delta === 'shift' ? 0x800n : 0n);
      length = sizeOf(area) + (a.delta === 'grow' ? 0x4000n : 0n);
    }
    exercise(
      m,
      r,
      `ioasUnmap(ioas ${ioasId}, ${hex(iova)}, ${hex(length)})`,
      this.expect(ioas, iova, length),
      () => r.fd.ioasUnmap({ ioasId, iova, length }),
    );
  }
  /** 3.3: whole areas only, ascending; an area sticking out fails ENOENT after removing the earlier ones. */
  private expect(ioas: MIoas | undefined, iova: bigint, length: bigint): Expected<{ length: bigint }> {
    if (!ioas) return fail('ENOENT');
    const all = iova === 0n && length === U64_MAX;
    const last = iova + length - 1n;
    const hit = all ? [...ioas.areas] : ioas.areas.filter((a) => overlaps(a, iova, last)).sort(byStart);
    const remove = (areas: MArea[]) => {
      ioas.areas = ioas.areas.filter((a) => !areas.includes(a));
    };
    if (hit.length === 0 && !all) return fail('ENOENT');
    const bad = all ? -1 : hit.findIndex((a) => a.start < iova || a.last > last);
    if (bad >= 0) return { errnos: ['ENOENT'], partial: () => remove(hit.slice(0, bad)) };
    return {
      ok: (out) => {
        expect(out.length).toBe(hit.reduce((acc, a) => acc + sizeOf(a), 0n));
        remove(hit);
      },
    };
  }
  toString() {
    const { a } = this;
    const what =
      a.mode === 'all'
        ? 'ALL'
        : a.mode === 'area'
          ? `area ${a.area} ${a.delta}`
          : `${hex(a.iova)}+${hex(a.length)}`;
    return `ioasUnmap(${showSel(a.ioas)}, ${what})`;
  }
}

interface CopyArgs {
  src: Sel;
  dst: Sel;
  /** whole: one whole area; sub: part of an area; span: an area and what follows; raw: raw values. */
  mode: 'whole' | 'sub' | 'span' | 'raw';
  area: number;
  /** sub: where the part starts and how long it is, in `unit`s inside the area. */
  skip: number;
  units: number;
  unit: bigint;
  /** span and raw: the length. */
  length: bigint;
  iova: bigint;
  fixed: boolean;
  dstIova: bigint;
  writable: boolean;
}

class IoasCopy extends Step {
  constructor(readonly a: CopyArgs) {
    super();
  }
  private source(m: Readonly<Model>): { srcId: number; dstId: number; srcIova: bigint; length: bigint } {
    const { a } = this;
    const srcId = resolve(m as Model, a.src, ['IOAS'], hasAreas);
    const dstId = resolve(m as Model, a.dst, ['IOAS']);
    const ioas = (m as Model).get(srcId, 'IOAS');
    if (a.mode === 'raw' || !ioas || ioas.areas.length === 0)
      return { srcId, dstId, srcIova: a.iova, length: a.length };
    const area = [...ioas.areas].sort(byStart)[a.area % ioas.areas.length];
    if (a.mode === 'whole') return { srcId, dstId, srcIova: area.start, length: sizeOf(area) };
    if (a.mode === 'sub') {
      const n = sizeOf(area) / a.unit;
      if (n === 0n) return { srcId, dstId, srcIova: area.start, length: sizeOf(area) };
      const skip = BigInt(a.skip) % n;
      const units = 1n + (BigInt(a.units) % (n - skip));
      return { srcId, dstId, srcIova: area.start + skip * a.unit, length: units * a.unit };
    }
    return { srcId, dstId, srcIova: area.start, length: sizeOf(area) + a.length };
  }
  run(m: Model, r: Real): void {
    const { a } = this;
    const { srcId, dstId, srcIova, length } = this.source(m);
    const flags = R | (a.writable ? W : 0) | (a.fixed ? FIXED : 0);
    const what = `ioasCopy(${srcId}:${hex(srcIova)}+${hex(length)} -> ${dstId}:${a.fixed ? hex(a.dstIova) : 'auto'})`;
    exercise(m, r, what, this.expect(m, srcId, dstId, srcIova, length), () =>
      r.fd.ioasCopy({ flags, srcIoasId: srcId, dstIoasId: dstId, srcIova, length, dstIova: a.dstIova }),
    );
  }
  /** 3.4, with the destination following the MAP rules; one destination area per source area. */
  private expect(
    m: Model,
    srcId: number,
    dstId: number,
    srcIova: bigint,
    length: bigint,
  ): Expected<{ dstIova: bigint }> {
    const { a } = this;
    const src = m.get(srcId, 'IOAS');
    if (!src) return fail('ENOENT');
    const srcLast = srcIova + length - 1n;
    const run = m.coveringRun(src, srcIova, srcLast);
    if (!run) return fail('ENOENT');
    // The model document does not place EPERM among the destination checks: the kernel raises it
    // per area after choosing the IOVA, the registry before looking the destination up.
    const eperm = a.writable && run.some((area) => !area.backing.writable);
    const dst = m.get(dstId, 'IOAS');
    if (!dst) return fail('ENOENT', ...(eperm ? (['EPERM'] as const) : []));
    const first = run[0];
    const userVa = first.backing.userVa + first.offset + (srcIova - first.start);
    const start = m.placeErrno(dst, userVa, length, a.fixed, a.dstIova);
    if (typeof start === 'string') return fail(start, ...(eperm ? (['EPERM'] as const) : []));
    if (eperm) return fail('EPERM');
    const areas: MArea[] = [];
    let at = start;
    for (const area of run) {
      const from = max(area.start, srcIova);
      const to = min(area.last, srcLast);
      areas.push({
        start: at,
        last: at + (to - from),
        backing: area.backing,
        offset: area.offset + (from - area.start),
        writable: a.writable,
      });
      at += to - from + 1n;
    }
    if (m.domainsOf(dstId).length > 0 && m.pinFaults(areas)) return fail('EFAULT');
    return {
      ok: ({ dstIova }) => {
        expect(dstIova).toBe(start);
        dst.areas.push(...areas);
      },
    };
  }
  toString() {
    const { a } = this;
    const what =
      a.mode === 'raw'
        ? `${hex(a.iova)}+${hex(a.length)}`
        : a.mode === 'sub'
          ? `area ${a.area} units ${a.skip}+${a.units} of ${hex(a.unit)}`
          : a.mode === 'span'
            ? `area ${a.area} + ${hex(a.length)}`
            : `area ${a.area}`;
    return `ioasCopy(${showSel(a.src)} -> ${showSel(a.dst)}, ${a.mode} ${what}, ${a.fixed ? `FIXED ${hex(a.dstIova)}` : 'auto'}${a.writable ? ', W' : ''})`;
  }
}

class AllowIovas extends Step {
  constructor(
    readonly ioas: Sel,
    readonly ranges: readonly number[],
  ) {
    super();
  }
  run(m: Model, r: Real): void {
    const ioasId = resolve(m, this.ioas, ['IOAS']);
    const ranges = this.ranges.map((i) => ALLOWED[i]);
    exercise(
      m,
      r,
      `ioasAllowIovas(${ioasId}, [${ranges.map(rangeKey)}])`,
      this.expect(m, ioasId, ranges),
      () => r.fd.ioasAllowIovas({ ioasId, allowedIovas: ranges.map((x) => ({ ...x })) }),
    );
  }
  /** 3: start >= last or overlapping ranges EINVAL; a range meeting a reserved one EADDRINUSE. */
  private expect(m: Model, ioasId: number, ranges: IovaRange[]): Expected<void> {
    const ioas = m.get(ioasId, 'IOAS');
    if (!ioas) return fail('ENOENT');
    const sorted = [...ranges].sort(byStart);
    if (sorted.some((x) => x.start >= x.last)) return fail('EINVAL');
    if (sorted.some((x, i) => i > 0 && x.start <= sorted[i - 1].last)) return fail('EINVAL');
    if (sorted.some((x) => ioas.reserved.some((res) => overlaps(res, x.start, x.last))))
      return fail('EADDRINUSE');
    return {
      ok: () => {
        ioas.allowed = sorted;
      },
    };
  }
  toString() {
    return `ioasAllowIovas(${showSel(this.ioas)}, [${this.ranges}])`;
  }
}

class AddReserved extends Step {
  constructor(
    readonly ioas: Sel,
    readonly start: bigint,
    readonly length: bigint,
  ) {
    super();
  }
  run(m: Model, r: Real): void {
    const ioasId = resolve(m, this.ioas, ['IOAS']);
    const ioas = m.get(ioasId, 'IOAS');
    const last = this.start + this.length - 1n;
    const expected: Expected<void> = !ioas
      ? fail('ENOENT')
      : [...ioas.areas, ...ioas.allowed].some((x) => overlaps(x, this.start, last))
        ? fail('EADDRINUSE')
        : { ok: () => ioas.reserved.push({ start: this.start, last, owner: 'test' }) };
    exercise(m, r, `testAddReserved(${ioasId}, ${hex(this.start)}+${hex(this.length)})`, expected, () =>
      r.fd.testAddReserved({ ioasId, start: this.start, length: this.length }),
    );
  }
  toString() {
    return `testAddReserved(${showSel(this.ioas)}, ${hex(this.start)}, ${hex(this.length)})`;
  }
}

class MockDomain extends Step {
  constructor(readonly target: Sel) {
    super();
  }
  run(m: Model, r: Real): void {
    const id = resolve(m, this.target, ['IOAS', 'HWPT_PAGING']);
    exercise(m, r, `testMockDomain(${id})`, this.expect(m, id), () => r.fd.testMockDomain({ id }));
  }
  /** Section 4 and 10: ids in creation order (selftest object, DEVICE, then an automatic HWPT). */
  private expect(m: Model, id: number): Expected<{ stdevId: number; idevId: number; hwptId: number }> {
    const stdevId = m.lowestFree();
    const devId = m.lowestFree([stdevId]);
    // Bind publishes the DEVICE before the attach looks `id` up (the selftest object is still
    // only reserved), so naming the device's own future id is "not an IOAS or HWPT".
    if (id === devId) return fail('EINVAL');
    const target = m.objects.get(id);
    if (!target) return fail('ENOENT');
    if (target.kind !== 'IOAS' && target.kind !== 'HWPT_PAGING') return fail('EINVAL');
    let hwpt: MHwpt | undefined =
      target.kind === 'HWPT_PAGING' ? target : m.domainsOf(id).find((h) => h.auto);
    let created = false;
    if (target.kind === 'IOAS' && !hwpt) {
      const errno = m.addDomainErrno(target);
      if (errno) return fail(errno);
      created = true;
    }
    const hwptId = hwpt?.id ?? m.lowestFree([stdevId, devId]);
    return {
      ok: (out) => {
        expect(out).toEqual({ stdevId, idevId: devId, hwptId });
        if (created && target.kind === 'IOAS') {
          hwpt = {
            kind: 'HWPT_PAGING',
            id: hwptId,
            ioasId: id,
            auto: true,
            nestParent: false,
            faultId: undefined,
            attached: new Set(),
          };
          m.addDomain(target, hwpt);
        }
        (hwpt as MHwpt).attached.add(devId);
        m.objects.set(stdevId, { kind: 'SELFTEST', id: stdevId, devId });
        m.objects.set(devId, {
          kind: 'DEVICE',
          id: devId,
          stdevId,
          hwptId,
          serial: m.newSerial(),
          responses: { success: 0, invalid: 0 },
        });
      },
    };
  }
  toString() {
    return `testMockDomain(${showSel(this.target)})`;
  }
}

interface HwptArgs {
  dev: Sel;
  pt: Sel;
  /** Which kinds the pt selector picks from. */
  ptKind: 'IOAS' | 'HWPT_PAGING' | 'other';
  /** Prefer an IOAS without a domain yet (its areas then get pinned and mapped). */
  fresh: boolean;
  nestParent: boolean;
  faultIdValid: boolean;
  fault: Sel;
}

class HwptAlloc extends Step {
  constructor(readonly a: HwptArgs) {
    super();
  }
  private ids(m: Model) {
    const { a } = this;
    const kinds: MObject['kind'][] =
      a.ptKind === 'other'
        ? ['DEVICE', 'SELFTEST', 'FAULT']
        : a.ptKind === 'IOAS'
          ? ['IOAS']
          : ['HWPT_PAGING'];
    const fresh = (o: MObject) => !a.fresh || m.domainsOf(o.id).length === 0;
    return {
      devId: resolve(m, a.dev, ['DEVICE']),
      ptId: resolve(m, a.pt, kinds, fresh),
      faultId: resolve(m, a.fault, ['FAULT']),
    };
  }
  run(m: Model, r: Real): void {
    const { a } = this;
    const { devId, ptId, faultId } = this.ids(m);
    const flags =
      (a.nestParent ? IOMMU_HWPT_ALLOC_NEST_PARENT : 0) | (a.faultIdValid ? IOMMU_HWPT_FAULT_ID_VALID : 0);
    exercise(
      m,
      r,
      `hwptAlloc(dev ${devId}, pt ${ptId}, flags ${flags}, fault ${faultId})`,
      this.expect(m, devId, ptId, faultId),
      () => r.fd.hwptAlloc({ flags, devId, ptId, faultId: a.faultIdValid ? faultId : undefined }),
    );
  }
  /** Section 5 in order: device, pt_id (EINVAL), flags, domain population, then fault_id. */
  private expect(m: Model, devId: number, ptId: number, faultId: number): Expected<{ hwptId: number }> {
    const { a } = this;
    if (!m.get(devId, 'DEVICE')) return fail('ENOENT');
    const pt = m.objects.get(ptId);
    if (!pt) return fail('EINVAL');
    if (pt.kind === 'HWPT_PAGING') {
      // A nested HWPT: NEST_PARENT is not a nested flag, and without driver data the kernel answers
      // EOPNOTSUPP before it looks at the parent (hw_pagetable.c iommufd_hwpt_nested_alloc).
      return fail('EOPNOTSUPP');
    }
    if (pt.kind !== 'IOAS') return fail('EINVAL');
    if (a.nestParent && a.faultIdValid) return fail('EOPNOTSUPP');
    const errno = m.addDomainErrno(pt);
    if (errno) return fail(errno);
    if (a.faultIdValid && !m.get(faultId, 'FAULT')) return fail('ENOENT');
    const id = m.lowestFree();
    return {
      ok: ({ hwptId }) => {
        expect(hwptId).toBe(id);
        m.addDomain(pt, {
          kind: 'HWPT_PAGING',
          id,
          ioasId: pt.id,
          auto: false,
          nestParent: a.nestParent,
          faultId: a.faultIdValid ? faultId : undefined,
          attached: new Set(),
        });
      },
    };
  }
  toString() {
    const { a } = this;
    return `hwptAlloc(dev ${showSel(a.dev)}, pt ${a.ptKind} ${showSel(a.pt)}${a.nestParent ? ', NEST_PARENT' : ''}${a.faultIdValid ? `, fault ${showSel(a.fault)}` : ''})`;
  }
}

class FaultAlloc extends Step {
  run(m: Model, r: Real): void {
    const id = m.lowestFree();
    exercise(
      m,
      r,
      this.toString(),
      {
        ok: ({ faultId, faultFd }: { faultId: number; faultFd: FaultFd }) => {
          expect(faultId).toBe(id);
          r.faultFds.set(id, faultFd);
          m.objects.set(id, { kind: 'FAULT', id, fdOpen: true, undelivered: [], awaiting: new Map() });
        },
      },
      () => r.fd.faultQueueAlloc(),
    );
  }
  toString() {
    return 'faultQueueAlloc()';
  }
}

/** Faults whose fd is still open, for read/write/close. */
const openFaults = (m: Readonly<Model>) => (m as Model).list('FAULT').filter((f) => f.fdOpen);

class FaultClose extends Step {
  constructor(readonly fault: number) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return openFaults(m).length > 0;
  }
  run(m: Model, r: Real): void {
    const f = openFaults(m)[this.fault % openFaults(m).length];
    (r.faultFds.get(f.id) as FaultFd).close();
    f.fdOpen = false;
    checkInvariants(m, r);
  }
  toString() {
    return `close(fault fd ${this.fault})`;
  }
}

class TriggerIopf extends Step {
  constructor(
    readonly dev: Sel,
    readonly pasid: number,
    readonly grpid: number,
    readonly perm: number,
    readonly addr: bigint,
  ) {
    super();
  }
  run(m: Model, r: Real): void {
    const devId = resolve(m, this.dev, ['DEVICE']);
    const dev = m.get(devId, 'DEVICE');
    const expected: Expected<void> = !dev
      ? fail('ENOENT')
      : {
          ok: () => {
            // 6.3: a RID fault goes to the fault queue of the RID's HWPT, else INVALID at once. A
            // PASID fault has no handler here (no PASID attached, the RID's domain is not nested).
            const hwpt = m.get(dev.hwptId, 'HWPT_PAGING') as MHwpt;
            const fault =
              hwpt.faultId === undefined || this.pasid !== 0 ? undefined : m.get(hwpt.faultId, 'FAULT');
            if (!fault) dev.responses.invalid++;
            else
              fault.undelivered.push({
                serial: dev.serial,
                devId,
                grpid: this.grpid,
                perm: this.perm,
                addr: this.addr,
              });
          },
        };
    exercise(m, r, `testTriggerIopf(dev ${devId}, pasid ${this.pasid}, grpid ${this.grpid})`, expected, () =>
      r.fd.testTriggerIopf({ devId, pasid: this.pasid, grpid: this.grpid, perm: this.perm, addr: this.addr }),
    );
  }
  toString() {
    return `testTriggerIopf(${showSel(this.dev)}, pasid ${this.pasid}, grpid ${this.grpid}, perm ${this.perm}, ${hex(this.addr)})`;
  }
}

class FaultRead extends Step {
  constructor(
    readonly fault: number,
    readonly count: number,
  ) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return openFaults(m).length > 0;
  }
  run(m: Model, r: Real): void {
    const f = openFaults(m)[this.fault % openFaults(m).length];
    const fd = r.faultFds.get(f.id) as FaultFd;
    const buf = new Uint8Array(this.count);
    exercise(m, r, `read(fault ${f.id}, ${this.count})`, this.expect(f, buf), () => fd.read(buf));
  }
  /** 6.4: whole groups FIFO; cookies handed out at read time, lowest free from 1. */
  private expect(f: MFault, buf: Uint8Array): Expected<number> {
    if (this.count % PGFAULT_BYTES !== 0) return fail('ESPIPE');
    if (f.undelivered.length === 0) return { ok: (n) => expect(n).toBe(0) };
    if (this.count < PGFAULT_BYTES) return fail('EINVAL');
    const n = Math.min(this.count / PGFAULT_BYTES, f.undelivered.length);
    return {
      ok: (bytes) => {
        expect(bytes).toBe(n * PGFAULT_BYTES);
        for (let i = 0; i < n; i++) {
          const g = f.undelivered[i];
          let cookie = 1;
          while (f.awaiting.has(cookie)) cookie++;
          f.awaiting.set(cookie, g);
          expect(decodePgfault(buf, i * PGFAULT_BYTES)).toEqual({
            flags: PGFAULT_FLAGS_LAST_PAGE,
            devId: g.devId,
            pasid: 0,
            grpid: g.grpid,
            perm: g.perm,
            addr: g.addr,
            length: 0,
            cookie,
          });
        }
        f.undelivered = f.undelivered.slice(n);
      },
    };
  }
  toString() {
    return `read(fault fd ${this.fault}, ${this.count})`;
  }
}

class FaultWrite extends Step {
  constructor(
    readonly fault: number,
    readonly responses: readonly { cookie: Sel; code: number }[],
    readonly tail: number,
  ) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return openFaults(m).length > 0;
  }
  run(m: Model, r: Real): void {
    const f = openFaults(m)[this.fault % openFaults(m).length];
    const fd = r.faultFds.get(f.id) as FaultFd;
    const cookies = [...f.awaiting.keys()].sort((x, y) => x - y);
    const entries = this.responses.map((x) => ({
      cookie:
        'raw' in x.cookie ? x.cookie.raw : cookies.length > 0 ? cookies[x.cookie.k % cookies.length] : 1,
      code: x.code,
    }));
    const buf = new Uint8Array(entries.length * PAGE_RESPONSE_BYTES + this.tail);
    entries.forEach((e, i) => {
      encodePageResponse(buf, i * PAGE_RESPONSE_BYTES, e);
    });
    const what = `write(fault ${f.id}, ${JSON.stringify(entries)}${this.tail ? ` +${this.tail}` : ''})`;
    exercise(m, r, what, this.expect(m, f, entries), () => fd.write(buf));
  }
  /** 6.4: responses in order, stopping at the first bad one; EINVAL only if none was consumed. */
  private expect(m: Model, f: MFault, entries: { cookie: number; code: number }[]): Expected<number> {
    if (this.tail !== 0) return fail('ESPIPE');
    const seen = new Set<number>();
    let done = 0;
    for (const e of entries) {
      if (e.code !== IOMMUFD_PAGE_RESP_SUCCESS && e.code !== IOMMUFD_PAGE_RESP_INVALID) break;
      if (!f.awaiting.has(e.cookie) || seen.has(e.cookie)) break;
      seen.add(e.cookie);
      done++;
    }
    if (done === 0 && entries.length > 0) return fail('EINVAL');
    return {
      ok: (bytes) => {
        expect(bytes).toBe(done * PAGE_RESPONSE_BYTES);
        for (const e of entries.slice(0, done)) {
          const g = f.awaiting.get(e.cookie) as MGroup;
          f.awaiting.delete(e.cookie);
          const dev = m.deviceBySerial(g.serial);
          if (dev) dev.responses[e.code === IOMMUFD_PAGE_RESP_SUCCESS ? 'success' : 'invalid']++;
        }
      },
    };
  }
  toString() {
    return `write(fault fd ${this.fault}, ${JSON.stringify(this.responses)}, tail ${this.tail})`;
  }
}

// --- generators -----------------------------------------------------------------------------------

const mapArb = fc
  .record({
    ioas: selArb,
    buffer: fc.nat(7),
    va: fc.oneof(
      {
        weight: 9,
        arbitrary: fc.constantFrom(0n, 0n, 0x800n, 0x1000n, 0x100n).map((offset) => ({ offset })),
      },
      { weight: 1, arbitrary: fc.constantFrom(0n, 0x5000n).map((raw) => ({ raw })) },
    ),
    length: lengthArb,
    fixed: fc.boolean(),
    iova: fc.oneof(
      iovaArb,
      fc.nat(7).map((after) => ({ after })),
    ),
    writable: fc.boolean(),
  })
  .map((a) => new IoasMap(a));

const unmapArb = fc
  .record({
    ioas: selArb,
    mode: fc.constantFrom('all', 'area', 'area', 'area', 'range') as fc.Arbitrary<UnmapArgs['mode']>,
    area: fc.nat(7),
    delta: fc.constantFrom('exact', 'exact', 'grow', 'shift') as fc.Arbitrary<UnmapArgs['delta']>,
    iova: iovaArb,
    length: fc.constantFrom(0x800n, 0x1000n, 0x4000n, 0x10000n),
  })
  .map((a) => new IoasUnmap(a));

const copyArb = fc
  .record({
    src: selArb,
    dst: selArb,
    mode: fc.constantFrom('whole', 'whole', 'sub', 'sub', 'span', 'raw') as fc.Arbitrary<CopyArgs['mode']>,
    area: fc.nat(7),
    skip: fc.nat(7),
    units: fc.nat(7),
    unit: fc.constantFrom(0x800n, 0x800n, 0x100n),
    length: lengthArb,
    iova: iovaArb,
    fixed: fc.boolean(),
    dstIova: iovaArb,
    writable: fc.boolean(),
  })
  .map((a) => new IoasCopy(a));

const hwptArb = fc
  .record({
    dev: selArb,
    pt: selArb,
    ptKind: fc.constantFrom('IOAS', 'IOAS', 'IOAS', 'HWPT_PAGING', 'other') as fc.Arbitrary<
      HwptArgs['ptKind']
    >,
    fresh: fc.boolean(),
    nestParent: fc.boolean(),
    faultIdValid: fc.boolean(),
    fault: selArb,
  })
  .map((a) => new HwptAlloc(a));

/** Mostly RID faults (pasid 0); a PASID fault has nowhere to go in this model and is answered INVALID. */
const iopfArb = fc
  .tuple(
    selArb,
    fc.constantFrom(0, 0, 0, 1),
    fc.nat(511),
    fc.integer({ min: 1, max: 3 }),
    fc.constantFrom(0xdeadbeafn, 0x1000n),
  )
  .map(([s, pasid, grpid, perm, addr]) => new TriggerIopf(s, pasid, grpid, perm, addr));

const commandArbs: fc.Arbitrary<Step>[] = [
  fc.constant(new IoasAlloc()),
  fc.constantFrom(0x2000n, 0x4000n).map((len) => new Mmap(len)),
  fc
    .tuple(fc.nat(7), fc.constantFrom('all', 'first', 'last') as fc.Arbitrary<'all' | 'first' | 'last'>)
    .map(([b, part]) => new Munmap(b, part)),
  selArb.map((s) => new Destroy(s)),
  mapArb,
  mapArb,
  mapArb,
  unmapArb,
  unmapArb,
  copyArb,
  copyArb,
  copyArb,
  fc
    .tuple(selArb, fc.uniqueArray(fc.nat(ALLOWED.length - 1), { maxLength: 2 }))
    .map(([s, ranges]) => new AllowIovas(s, ranges)),
  fc
    .tuple(selArb, iovaArb, fc.constantFrom(0x800n, 0x1000n, 0x2000n))
    .map(([s, start, len]) => new AddReserved(s, start, len)),
  selArb.map((s) => new MockDomain(s)),
  selArb.map((s) => new MockDomain(s)),
  hwptArb,
  hwptArb,
  fc.constant(new FaultAlloc()),
  fc.nat(3).map((k) => new FaultClose(k)),
  iopfArb,
  iopfArb,
  fc.tuple(fc.nat(3), fc.constantFrom(0, 40, 40, 80, 120, 41)).map(([f, count]) => new FaultRead(f, count)),
  fc
    .tuple(
      fc.nat(3),
      fc.array(
        fc.record({
          cookie: fc.oneof(
            { weight: 4, arbitrary: fc.nat(10).map((k) => ({ k }) as Sel) },
            { weight: 1, arbitrary: fc.constantFrom(0, 7, 99).map((raw) => ({ raw }) as Sel) },
          ),
          code: fc.constantFrom(
            IOMMUFD_PAGE_RESP_SUCCESS,
            IOMMUFD_PAGE_RESP_INVALID,
            IOMMUFD_PAGE_RESP_SUCCESS,
            5,
          ),
        }),
        { maxLength: 3 },
      ),
      fc.constantFrom(0, 0, 0, 3),
    )
    .map(([f, responses, tail]) => new FaultWrite(f, responses, tail)),
];

/**
 * Starts that the random steps then build on: nothing; two IOASes; or an IOAS with a mock device,
 * a FAULT, a fault-enabled HWPT_PAGING on that IOAS, a second mock device attached to it, and a
 * second IOAS.
 */
function prefix(kind: 'none' | 'ioas' | 'fault'): Step[] {
  const live = (k: number): Sel => ({ k });
  if (kind === 'none') return [];
  if (kind === 'ioas') return [new IoasAlloc(), new IoasAlloc()];
  return [
    new IoasAlloc(),
    new MockDomain(live(0)),
    new FaultAlloc(),
    new HwptAlloc({
      dev: live(0),
      pt: live(0),
      ptKind: 'IOAS',
      fresh: false,
      nestParent: false,
      faultIdValid: true,
      fault: live(0),
    }),
    new MockDomain(live(1)),
    new IoasAlloc(),
  ];
}

describe('iommufd registry against a reference model (docs/registry.md, invariants)', () => {
  test('random call sequences keep ids, areas, domains, pins and fault groups as the model says', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('none', 'ioas', 'fault' as const),
        fc.commands(commandArbs, { maxCommands: MAX_COMMANDS, size: 'max' }),
        (start, cmds) => {
          const fd = new Iommufd();
          const real: Real = { fd, faultFds: new Map() };
          const model = new Model();
          for (const length of [0x4000n, 0x4000n]) new Mmap(length).run(model, real);
          const steps: Iterable<fc.Command<Model, Real>> = [...prefix(start), ...cmds];
          fc.modelRun(() => ({ model, real }), steps);

          // close() leaves nothing behind: no object, no reserved id, no pin, no pending group.
          for (const [id, faultFd] of real.faultFds) if (model.get(id, 'FAULT')?.fdOpen) faultFd.close();
          fd.close();
          expect(fd.objects()).toEqual([]);
          expect(fd.reservedIds).toBe(0);
          expect(fd.memory.pinnedPages).toBe(0);
          expect(fd.pendingFaultGroups).toBe(0);
          expect(fd.mock.iopf.pending).toBe(0);
        },
      ),
      { seed: SEED, numRuns: NUM_RUNS },
    );
  });
});
