/**
 * Fail-nth sweep of the iommufd registry (the kernel's iommufd_fail_nth selftest; iommufd-model.md
 * sections 2 and 12). Each scenario is a fixed sequence of registry calls. For N = 1, 2, ... it runs
 * on a fresh Iommufd with the injector armed to fail its N-th consulted point, until a whole run
 * no longer reaches N points. At the call that fails, the error must be the injected ENOMEM and the
 * call must have left no visible change. The run is then either torn down at once (close() must
 * leave no object, reserved id, pinned page or pending fault group) or resumed: the failed call is
 * retried disarmed and the rest of the scenario must end exactly like an unfailed run.
 */
import { describe, expect, test } from 'vitest';
import { DeviceObject } from '../host/iommufd/device.ts';
import { IommufdError } from '../host/iommufd/errors.ts';
import {
  decodePgfault,
  decodeVeventHeader,
  encodePageResponse,
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_SUCCESS,
  PAGE_RESPONSE_BYTES,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  VEVENT_HEADER_BYTES,
} from '../host/iommufd/eventq-records.ts';
import { type FaultFd, FaultObject } from '../host/iommufd/fault.ts';
import type { FailPoint } from '../host/iommufd/fault-injector.ts';
import {
  HwptPaging,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_ALLOC_PASID,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../host/iommufd/hwpt.ts';
import {
  type Area,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  Ioas,
} from '../host/iommufd/ioas.ts';
import { Iommufd } from '../host/iommufd/iommufd.ts';
import { U64_MAX } from '../host/iommufd/iova.ts';
import {
  IOMMU_HWPT_DATA_SELFTEST,
  IOMMU_VEVENTQ_TYPE_SELFTEST,
  IOMMU_VIOMMU_TYPE_SELFTEST,
  MOCK_APERTURE_START,
  MOCK_FLAGS_DEVICE_PASID,
} from '../host/iommufd/selftest.ts';
import { type VeventqFd, VeventqObject } from '../host/iommufd/veventq.ts';
import { ViommuObject } from '../host/iommufd/viommu.ts';

const AP = MOCK_APERTURE_START;
const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
const FIXED = IOMMU_IOAS_MAP_FIXED_IOVA;
/** The kernel selftest helpers' page request: pasid 0x1, grpid 0x2, perm R|W, addr 0xdeadbeaf. */
const IOPF = { pasid: 1, grpid: 2, perm: PERM_READ | PERM_WRITE, addr: 0xdeadbeafn };
const VIRT_ID = 0x99n;
/** Give up on a scenario that never stops reaching new fail points. */
const MAX_N = 1000;

// --- one scenario run -----------------------------------------------------------------------------

/** State a scenario builds up: the registry, ids by name, open fds. */
class Run {
  readonly fd = new Iommufd();
  readonly openFds = new Set<FaultFd | VeventqFd>();
  buffer = 0n;
  faultFd: FaultFd | undefined;
  veventqFd: VeventqFd | undefined;
  private readonly ids = new Map<string, number>();

  set(name: string, id: number): void {
    this.ids.set(name, id);
  }

  id(name: string): number {
    const id = this.ids.get(name);
    if (id === undefined) throw new Error(`the scenario has no ${name} yet`);
    return id;
  }

  openFault(fd: FaultFd): void {
    this.faultFd = fd;
    this.openFds.add(fd);
  }

  openVeventq(fd: VeventqFd): void {
    this.veventqFd = fd;
    this.openFds.add(fd);
  }

  close(fd: FaultFd | VeventqFd | undefined): void {
    if (!fd) throw new Error('no such fd');
    fd.close();
    this.openFds.delete(fd);
  }
}

interface Step {
  readonly name: string;
  run(r: Run): void;
}

interface Scenario {
  readonly name: string;
  readonly steps: readonly Step[];
  /** Fail points the sweep must have failed at least once (the scenario exercises them). */
  readonly points: readonly FailPoint[];
}

const step = (name: string, run: (r: Run) => void): Step => ({ name, run });

/** User address an area starts at (its offset counts from the page holding the map's user_va). */
const areaVa = (a: Area) => a.pages.base + a.offset;

const hex = (v: bigint) => `0x${v.toString(16)}`;

/** Everything a userspace caller (or the selftest's checks) could tell apart. */
function snapshot(fd: Iommufd): Record<string, unknown> {
  const objects: Record<number, unknown> = {};
  for (const o of fd.objects()) {
    const s: Record<string, unknown> = { type: o.type, users: o.users };
    if (o instanceof Ioas) {
      s.areas = o.areas.map((a) => `${hex(a.start)}-${hex(a.last)}@${hex(areaVa(a))}`);
      s.reserved = o.reserved.map((x) => `${hex(x.start)}-${hex(x.last)}`).sort();
      s.allowed = o.allowed.map((x) => `${hex(x.start)}-${hex(x.last)}`);
      s.alignment = o.iovaAlignment;
      s.domains = o.domains.length;
    }
    if (o instanceof HwptPaging) s.mappedBytes = o.domain.mappedBytes;
    if (o instanceof DeviceObject) {
      s.attachments = [...o.attachments].map(([pasid, a]) => `${pasid}->${a.hwpt.id}`);
      s.vdevice = o.vdevice?.id;
    }
    if (o instanceof FaultObject) s.groups = `${o.undeliveredCount}/${o.awaitingCount}`;
    if (o instanceof ViommuObject) s.vdevices = [...o.vdevices.keys()].map(String);
    if (o instanceof VeventqObject) s.events = `${o.length}${o.hasLostMarker ? '+lost' : ''}`;
    objects[o.id] = s;
  }
  return {
    objects,
    reservedIds: fd.reservedIds,
    pinnedPages: fd.memory.pinnedPages,
    pendingFaultGroups: fd.pendingFaultGroups,
    iopfPending: fd.mock.iopf.pending,
  };
}

/** close() with every fd closed first: nothing may be left (section 2 teardown, section 12). */
function closeAndCheck(r: Run, label: string): void {
  for (const fd of [...r.openFds]) r.close(fd);
  r.fd.close();
  expect(
    r.fd.objects().map((o) => `${o.id}:${o.type}`),
    `${label}: objects after close`,
  ).toEqual([]);
  expect(r.fd.reservedIds, `${label}: reserved ids after close`).toBe(0);
  expect(r.fd.memory.pinnedPages, `${label}: pinned pages after close`).toBe(0);
  expect(r.fd.pendingFaultGroups, `${label}: pending fault groups after close`).toBe(0);
  expect(r.fd.mock.iopf.pending, `${label}: unanswered page requests after close`).toBe(0);
}

/**
 * Run `steps` from `from` on; with an armed injector, stop at the first call the injector fails
 * after checking that it failed cleanly. Returns the index of the failed step, or -1.
 */
function runSteps(r: Run, steps: readonly Step[], from: number, label: string): number {
  const { injector } = r.fd;
  for (let i = from; i < steps.length; i++) {
    const s = steps[i];
    const before = snapshot(r.fd);
    const armedBefore = injector.failedAt === undefined;
    try {
      s.run(r);
    } catch (error) {
      const injected = armedBefore && injector.failedAt !== undefined;
      if (!injected || !(error instanceof IommufdError)) {
        throw new Error(`${label}: step "${s.name}" failed without an injected failure: ${error}`);
      }
      expect(error.errno, `${label}: "${s.name}" failed at ${injector.failedAt}: ${error.message}`).toBe(
        'ENOMEM',
      );
      expect(
        snapshot(r.fd),
        `${label}: "${s.name}" failed at ${injector.failedAt} and changed state`,
      ).toEqual(before);
      return i;
    }
    if (armedBefore && injector.failedAt !== undefined) {
      // A failure the call absorbed: only a vEVENT allocation may be lost this way (section 8).
      expect(`${s.name} @ ${injector.failedAt}`, label).toBe('trigger vevent @ object-alloc');
    }
  }
  return -1;
}

interface Sweep {
  /** Fail points a complete run consults. */
  points: number;
  failedAt: Set<FailPoint>;
}

function sweep(scenario: Scenario): Sweep {
  const { steps } = scenario;
  // The unfailed run: what every resumed run must end as.
  const base = new Run();
  expect(runSteps(base, steps, 0, 'baseline')).toBe(-1);
  const final = snapshot(base.fd);
  const points = base.fd.injector.reached;
  closeAndCheck(base, 'baseline');

  const failedAt = new Set<FailPoint>();
  for (let n = 1; n <= MAX_N; n++) {
    // Fail, then tear down at once.
    const torn = new Run();
    torn.fd.injector.arm(n);
    const stopped = runSteps(torn, steps, 0, `N=${n}`);
    const reached = torn.fd.injector.reached;
    const at = torn.fd.injector.failedAt;
    torn.fd.injector.disarm();
    closeAndCheck(torn, `N=${n} (failed at ${at} in "${steps[stopped]?.name}")`);
    if (reached < n) {
      expect(stopped).toBe(-1);
      expect(n - 1).toBe(points);
      return { points, failedAt };
    }
    if (at) failedAt.add(at);

    // Fail, then retry the failed call and finish: the end state must be the unfailed one.
    const resumed = new Run();
    resumed.fd.injector.arm(n);
    const failed = runSteps(resumed, steps, 0, `N=${n}`);
    resumed.fd.injector.disarm();
    if (failed >= 0) expect(runSteps(resumed, steps, failed, `N=${n} resumed`)).toBe(-1);
    expect(snapshot(resumed.fd), `N=${n}: resumed after "${steps[failed]?.name}"`).toEqual(final);
    closeAndCheck(resumed, `N=${n} resumed`);
  }
  throw new Error(`${scenario.name}: still reaching fail points at N=${MAX_N}`);
}

// --- scenario building blocks ---------------------------------------------------------------------

function mmap(length: bigint): Step {
  return step('mmap', (r) => {
    r.buffer = r.fd.mmap(length);
  });
}

function map(ioas: string, offset: bigint, length: bigint, iova?: bigint, name = 'map'): Step {
  return step(`${name} ${ioas} +${hex(offset)} ${iova === undefined ? 'auto' : hex(iova)}`, (r) => {
    const out = r.fd.ioasMap({
      flags: RW | (iova === undefined ? 0 : FIXED),
      ioasId: r.id(ioas),
      userVa: r.buffer + offset,
      length,
      iova,
    });
    if (iova !== undefined) expect(out.iova).toBe(iova);
  });
}

function alloc(name: string): Step {
  return step(`alloc ${name}`, (r) => r.set(name, r.fd.ioasAlloc().ioasId));
}

function mockDomain(name: string, target: string, flags = 0): Step {
  return step(`mock domain ${name} on ${target}`, (r) => {
    const out = r.fd.testMockDomain({ id: r.id(target), flags });
    r.set(`${name}.stdev`, out.stdevId);
    r.set(`${name}.dev`, out.idevId);
    r.set(`${name}.hwpt`, out.hwptId);
  });
}

function hwptAlloc(
  name: string,
  dev: string,
  pt: string,
  opts: { flags?: number; nested?: boolean; fault?: string } = {},
): Step {
  return step(`hwpt ${name}`, (r) => {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, 0xbadbeef, true);
    const out = r.fd.hwptAlloc({
      flags: (opts.flags ?? 0) | (opts.fault ? IOMMU_HWPT_FAULT_ID_VALID : 0),
      devId: r.id(dev),
      ptId: r.id(pt),
      dataType: opts.nested ? IOMMU_HWPT_DATA_SELFTEST : 0,
      data: opts.nested ? data : undefined,
      faultId: opts.fault ? r.id(opts.fault) : undefined,
    });
    r.set(name, out.hwptId);
  });
}

function faultAlloc(name: string): Step {
  return step(`fault ${name}`, (r) => {
    const out = r.fd.faultQueueAlloc();
    r.set(name, out.faultId);
    r.openFault(out.faultFd);
  });
}

function triggerIopf(dev: string, pasid: number): Step {
  return step(`trigger iopf ${dev} pasid ${pasid}`, (r) => {
    r.fd.testTriggerIopf({ devId: r.id(dev), pasid, grpid: IOPF.grpid, perm: IOPF.perm, addr: IOPF.addr });
  });
}

/** read() one 40-byte record, check it, and answer it with an 8-byte response. */
function iopfRoundTrip(dev: string, pasid: number): Step[] {
  let cookie = 0;
  return [
    step(`read fault record of ${dev}`, (r) => {
      const buf = new Uint8Array(PGFAULT_BYTES);
      expect((r.faultFd as FaultFd).read(buf)).toBe(PGFAULT_BYTES);
      const record = decodePgfault(buf, 0);
      expect(record).toEqual({
        flags: PGFAULT_FLAGS_LAST_PAGE | (pasid !== 0 ? PGFAULT_FLAGS_PASID_VALID : 0),
        devId: r.id(dev),
        pasid,
        grpid: IOPF.grpid,
        perm: IOPF.perm,
        addr: IOPF.addr,
        length: 0,
        cookie: record.cookie,
      });
      cookie = record.cookie;
    }),
    step(`respond to ${dev}`, (r) => {
      const buf = new Uint8Array(PAGE_RESPONSE_BYTES);
      encodePageResponse(buf, 0, { cookie, code: IOMMUFD_PAGE_RESP_SUCCESS });
      expect((r.faultFd as FaultFd).write(buf)).toBe(PAGE_RESPONSE_BYTES);
    }),
  ];
}

function veventqAlloc(): Step {
  return step('veventq alloc', (r) => {
    const out = r.fd.veventqAlloc({
      viommuId: r.id('viommu'),
      type: IOMMU_VEVENTQ_TYPE_SELFTEST,
      veventqDepth: 2,
    });
    r.set('veventq', out.veventqId);
    r.openVeventq(out.veventqFd);
  });
}

/**
 * read() the vEVENT: header + virt_id. If its allocation was the injected failure, the queue holds
 * the lost-events marker instead (section 8), a bare header with the same sequence number.
 */
function readVevent(): Step {
  return step('read vevent', (r) => {
    const buf = new Uint8Array(VEVENT_HEADER_BYTES + 4);
    const n = (r.veventqFd as VeventqFd).read(buf);
    const header = decodeVeventHeader(buf, 0);
    if (n === VEVENT_HEADER_BYTES) {
      expect(header).toEqual({ flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 0 });
      return;
    }
    expect(n).toBe(VEVENT_HEADER_BYTES + 4);
    expect(header).toEqual({ flags: 0, sequence: 0 });
    expect(BigInt(new DataView(buf.buffer).getUint32(VEVENT_HEADER_BYTES, true))).toBe(VIRT_ID);
  });
}

// --- the scenarios --------------------------------------------------------------------------------

/** (a) IOAS work without any domain: allocation, maps, copies, allowed IOVAs, reserved, unmaps. */
const plainIoas: Scenario = {
  name: 'plain IOAS',
  points: ['id-reserve', 'interval-alloc'],
  steps: [
    alloc('ioas'),
    alloc('ioas2'),
    mmap(0x10000n),
    map('ioas', 0n, 0x4000n, AP),
    map('ioas', 0x4000n, 0x2000n),
    step('allow iovas ioas2', (r) =>
      r.fd.ioasAllowIovas({ ioasId: r.id('ioas2'), allowedIovas: [{ start: AP, last: AP + 0xfffffn }] }),
    ),
    map('ioas2', 0x6000n, 0x2000n),
    step('copy ioas -> ioas2 auto', (r) => {
      const out = r.fd.ioasCopy({
        flags: RW,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas2'),
        srcIova: AP,
        length: 0x4000n,
      });
      expect(out.dstIova >= AP && out.dstIova <= AP + 0xfffffn).toBe(true);
    }),
    step('copy ioas -> ioas fixed', (r) =>
      r.fd.ioasCopy({
        flags: RW | FIXED,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas'),
        srcIova: AP,
        length: 0x4000n,
        dstIova: AP + 0x100000n,
      }),
    ),
    step('add reserved ioas2', (r) =>
      r.fd.testAddReserved({ ioasId: r.id('ioas2'), start: AP + 0x200000n, length: 0x1000n }),
    ),
    step('unmap one area', (r) => {
      expect(r.fd.ioasUnmap({ ioasId: r.id('ioas'), iova: AP, length: 0x4000n }).length).toBe(0x4000n);
    }),
    step('unmap all ioas2', (r) => {
      expect(r.fd.ioasUnmap({ ioasId: r.id('ioas2'), iova: 0n, length: U64_MAX }).length).toBe(0x6000n);
    }),
    step('destroy ioas2', (r) => r.fd.destroy({ id: r.id('ioas2') })),
    map('ioas', 0x8000n, 0x1000n, undefined, 'map again'),
  ],
};

/** (b) A mock device: maps before and after it attaches, a second HWPT_PAGING, a replace. */
const mockDevice: Scenario = {
  name: 'mock device with maps',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill'],
  steps: [
    alloc('ioas'),
    mmap(0x20000n),
    map('ioas', 0n, 0x4000n, AP, 'map before'),
    step('allow iovas', (r) =>
      r.fd.ioasAllowIovas({ ioasId: r.id('ioas'), allowedIovas: [{ start: AP, last: AP + 0xfffffn }] }),
    ),
    map('ioas', 0x4000n, 0x2000n, undefined, 'map before'),
    mockDomain('m1', 'ioas'),
    map('ioas', 0x8000n, 0x4000n, AP + 0x80000n, 'map after'),
    map('ioas', 0xc000n, 0x2000n, undefined, 'map after'),
    hwptAlloc('hwpt2', 'm1.dev', 'ioas'),
    map('ioas', 0x10000n, 0x2000n, undefined, 'map after second hwpt'),
    step('copy within ioas', (r) =>
      r.fd.ioasCopy({
        flags: RW,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas'),
        srcIova: AP,
        length: 0x4000n,
      }),
    ),
    step('unmap one area', (r) => r.fd.ioasUnmap({ ioasId: r.id('ioas'), iova: AP, length: 0x4000n })),
    mockDomain('m2', 'hwpt2'),
    alloc('ioas2'),
    step('replace m1 onto ioas2', (r) => {
      r.set('m1.hwpt', r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('ioas2') }).ptId);
    }),
    map('ioas2', 0x12000n, 0x2000n, AP, 'map into ioas2'),
    step('destroy m2', (r) => r.fd.destroy({ id: r.id('m2.stdev') })),
    step('destroy hwpt2', (r) => r.fd.destroy({ id: r.id('hwpt2') })),
  ],
};

/** (c) Nested HWPTs with a fault queue: an IOPF round trip through the RID and through a PASID. */
const nestedFault: Scenario = {
  name: 'nested HWPT with fault queue',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill', 'fd-create', 'cookie-insert'],
  steps: [
    alloc('ioas'),
    mmap(0x4000n),
    map('ioas', 0n, 0x4000n, AP),
    mockDomain('m1', 'ioas'),
    hwptAlloc('parent', 'm1.dev', 'ioas', { flags: IOMMU_HWPT_ALLOC_NEST_PARENT }),
    faultAlloc('fault'),
    hwptAlloc('nested', 'm1.dev', 'parent', { nested: true, fault: 'fault' }),
    step('replace m1 onto nested', (r) =>
      r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('nested') }),
    ),
    triggerIopf('m1.dev', IOPF.pasid),
    ...iopfRoundTrip('m1.dev', IOPF.pasid),
    // The PASID route: a PASID-capable device on PASID-compatible HWPTs.
    hwptAlloc('parent.pasid', 'm1.dev', 'ioas', {
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID,
    }),
    mockDomain('m2', 'parent.pasid', MOCK_FLAGS_DEVICE_PASID),
    hwptAlloc('nested.pasid', 'm2.dev', 'parent.pasid', {
      flags: IOMMU_HWPT_ALLOC_PASID,
      nested: true,
      fault: 'fault',
    }),
    step('attach pasid of m2', (r) =>
      r.fd.testPasidAttach({ stdevId: r.id('m2.stdev'), pasid: IOPF.pasid, ptId: r.id('nested.pasid') }),
    ),
    triggerIopf('m2.dev', IOPF.pasid),
    ...iopfRoundTrip('m2.dev', IOPF.pasid),
    // Left pending: teardown must answer it.
    triggerIopf('m1.dev', IOPF.pasid),
  ],
};

/** (d) A vIOMMU with a vDEVICE and a vEVENTQ; the queue is also destroyed and allocated again. */
const viommuVeventq: Scenario = {
  name: 'vIOMMU with vDEVICE and vEVENTQ',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill', 'fd-create', 'object-alloc'],
  steps: [
    alloc('ioas'),
    mmap(0x4000n),
    map('ioas', 0n, 0x4000n, AP),
    mockDomain('m1', 'ioas'),
    hwptAlloc('parent', 'm1.dev', 'ioas', { flags: IOMMU_HWPT_ALLOC_NEST_PARENT }),
    step('viommu alloc', (r) =>
      r.set(
        'viommu',
        r.fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_SELFTEST, devId: r.id('m1.dev'), hwptId: r.id('parent') })
          .viommuId,
      ),
    ),
    step('vdevice alloc', (r) =>
      r.set(
        'vdevice',
        r.fd.vdeviceAlloc({ viommuId: r.id('viommu'), devId: r.id('m1.dev'), virtId: VIRT_ID }).vdeviceId,
      ),
    ),
    hwptAlloc('nested', 'm1.dev', 'viommu', { nested: true }),
    step('replace m1 onto nested', (r) =>
      r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('nested') }),
    ),
    veventqAlloc(),
    step('trigger vevent', (r) => r.fd.testTriggerVevent({ devId: r.id('m1.dev') })),
    readVevent(),
    step('close and destroy veventq', (r) => {
      r.close(r.veventqFd);
      r.fd.destroy({ id: r.id('veventq') });
    }),
    veventqAlloc(),
    step('trigger vevent', (r) => r.fd.testTriggerVevent({ devId: r.id('m1.dev') })),
    readVevent(),
  ],
};

describe('fail-nth: every injected failure is clean, and close() leaves nothing (iommufd-model.md 12)', () => {
  for (const scenario of [plainIoas, mockDevice, nestedFault, viommuVeventq]) {
    test(`${scenario.name}: each fail point fails with ENOMEM and changes nothing`, () => {
      const { points, failedAt } = sweep(scenario);
      for (const point of scenario.points)
        expect([...failedAt], `${scenario.name} fails at ${point}`).toContain(point);
      console.log(`fail-nth ${scenario.name}: ${points} fail points, N = 1..${points}`);
    });
  }
});
