/**
 * The fail-nth scenarios (fail-nth.ts sweeps them): fixed sequences of registry calls, built from
 * steps that mirror the kernel selftest's helpers, each listing the fail point kinds it exists to
 * exercise.
 */
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
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import {
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_ALLOC_PASID,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../iommufd/hwpt.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../iommufd/ioas.ts';
import { U64_MAX } from '../iommufd/iova.ts';
import {
  IOMMU_HWPT_DATA_SELFTEST,
  IOMMU_VEVENTQ_TYPE_SELFTEST,
  IOMMU_VIOMMU_TYPE_SELFTEST,
  MOCK_APERTURE_START,
  MOCK_FLAGS_DEVICE_PASID,
} from '../iommufd/selftest.ts';
import type { VeventqFd } from '../iommufd/veventq.ts';
import { check, difference, hex, type Scenario, type Step, step } from './fail-nth-run.ts';

const AP = MOCK_APERTURE_START;
const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
const FIXED = IOMMU_IOAS_MAP_FIXED_IOVA;
/** The kernel selftest helpers' page request: pasid 0x1, grpid 0x2, perm R|W, addr 0xdeadbeaf. */
const IOPF = { pasid: 1, grpid: 2, perm: PERM_READ | PERM_WRITE, addr: 0xdeadbeafn };
const VIRT_ID = 0x99n;

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
    if (iova !== undefined) check(out.iova === iova, `mapped at ${hex(out.iova)}, not at ${hex(iova)}`);
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
      const n = (r.faultFd as FaultFd).read(buf);
      check(n === PGFAULT_BYTES, `read() returned ${n} bytes, not one ${PGFAULT_BYTES}-byte record`);
      const record = decodePgfault(buf, 0);
      const wrong = difference(
        {
          flags: PGFAULT_FLAGS_LAST_PAGE | (pasid !== 0 ? PGFAULT_FLAGS_PASID_VALID : 0),
          devId: r.id(dev),
          pasid,
          grpid: IOPF.grpid,
          perm: IOPF.perm,
          addr: IOPF.addr,
          length: 0,
        },
        { ...record, cookie: undefined },
        'record',
      );
      check(wrong === undefined, `fault record: ${wrong}`);
      cookie = record.cookie;
    }),
    step(`respond to ${dev}`, (r) => {
      const buf = new Uint8Array(PAGE_RESPONSE_BYTES);
      encodePageResponse(buf, 0, { cookie, code: IOMMUFD_PAGE_RESP_SUCCESS });
      const n = (r.faultFd as FaultFd).write(buf);
      check(n === PAGE_RESPONSE_BYTES, `write() took ${n} bytes, not ${PAGE_RESPONSE_BYTES}`);
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

/** A vEVENT whose allocation fails is lost, not reported (section 8): the queue marks the loss. */
function triggerVevent(): Step {
  return step('trigger vevent', (r) => r.fd.testTriggerVevent({ devId: r.id('m1.dev') }), 'object-alloc');
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
      const wrong = difference({ flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 0 }, header, 'header');
      check(wrong === undefined, `lost-events marker: ${wrong}`);
      return;
    }
    check(n === VEVENT_HEADER_BYTES + 4, `read() returned ${n} bytes, not a header and a virt_id`);
    const wrong = difference({ flags: 0, sequence: 0 }, header, 'header');
    check(wrong === undefined, `vEVENT: ${wrong}`);
    const virtId = BigInt(new DataView(buf.buffer).getUint32(VEVENT_HEADER_BYTES, true));
    check(virtId === VIRT_ID, `vEVENT virt_id is ${hex(virtId)}, not ${hex(VIRT_ID)}`);
  });
}

// --- the scenarios --------------------------------------------------------------------------------

const plainIoas: Scenario = {
  name: 'plain-ioas',
  description: 'IOAS work without any domain: allocation, maps, copies, allowed IOVAs, reserved, unmaps',
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
      check(
        out.dstIova >= AP && out.dstIova <= AP + 0xfffffn,
        `copied to ${hex(out.dstIova)}, outside the allowed IOVAs`,
      );
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
      const { length } = r.fd.ioasUnmap({ ioasId: r.id('ioas'), iova: AP, length: 0x4000n });
      check(length === 0x4000n, `unmapped ${hex(length)} bytes, not 0x4000`);
    }),
    step('unmap all ioas2', (r) => {
      const { length } = r.fd.ioasUnmap({ ioasId: r.id('ioas2'), iova: 0n, length: U64_MAX });
      check(length === 0x6000n, `unmapped ${hex(length)} bytes, not 0x6000`);
    }),
    step('destroy ioas2', (r) => r.fd.destroy({ id: r.id('ioas2') })),
    map('ioas', 0x8000n, 0x1000n, undefined, 'map again'),
  ],
};

const mockDevice: Scenario = {
  name: 'mock-device',
  description: 'a mock device: maps before and after it attaches, a second HWPT_PAGING, a replace',
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

const nestedFault: Scenario = {
  name: 'nested-fault',
  description: 'nested HWPTs with a fault queue: an IOPF round trip through the RID and through a PASID',
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

const viommuVeventq: Scenario = {
  name: 'viommu-veventq',
  description: 'a vIOMMU with a vDEVICE and a vEVENTQ; the queue is destroyed and allocated again',
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
    triggerVevent(),
    readVevent(),
    step('close and destroy veventq', (r) => {
      r.close(r.veventqFd);
      r.fd.destroy({ id: r.id('veventq') });
    }),
    veventqAlloc(),
    triggerVevent(),
    readVevent(),
  ],
};

export const SCENARIOS: readonly Scenario[] = [plainIoas, mockDevice, nestedFault, viommuVeventq];

/** Scenario names, in the order a full sweep runs them. */
export const FAIL_NTH_SCENARIOS: readonly string[] = SCENARIOS.map((s) => s.name);
