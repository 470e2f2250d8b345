// The host's VT-d model between a VM's iommufd and the guest's queues, over the real channel
// layout in a SharedArrayBuffer: fault fd -> page request queue, invalidation queue -> fault fd,
// HWPT_INVALIDATE and wait status writes. The test plays the guest with the real driver code.
import { describe, expect, test } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { DemandPager } from '../../../guest/mm/demand-pager.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { VtdDriver } from '../../../guest/vtd-driver.ts';
import { VtdPrqDriver } from '../../../guest/vtd-prq.ts';
import { type DmaObserver, PciFunction } from '../../../host/devices/pci-function.ts';
import { Iommu } from '../../../host/iommu/iommu.ts';
import { ACCESS_READ, newWalkResult } from '../../../host/iommu/stage1-walker.ts';
import { VtdOps } from '../../../host/iommu/vtd-ops.ts';
import { InvariantChecker } from '../../../host/vmm/invariants.ts';
import { VtdPageRequestQueue } from '../../../host/vmm/vtd-prq-model.ts';
import { VtdVmIommu } from '../../../host/vmm/vtd-vm-iommu.ts';
import { Vvtd } from '../../../host/vmm/vvtd.ts';
import { GuestMemory, PAGE_SIZE } from '../../../shared/guest-memory.ts';
import { verifyWords } from '../../../shared/pattern.ts';
import {
  encodeVtdInvWait,
  encodeVtdPasidIotlb,
  PIOTLB_GRAN_PAGES,
  PIOTLB_GRAN_PASID,
  VTD_IQ_ENTRY_WORDS,
} from '../../../shared/records/vtd-iq-entry.ts';
import {
  encodeVtdPageGroupResponse,
  QI_RESP_FAILURE,
  QI_RESP_INVALID,
  QI_RESP_SUCCESS,
  type VtdPageRequest,
} from '../../../shared/records/vtd-prq-entry.ts';
import { RingConsumer, RingProducer } from '../../../shared/ring.ts';
import { channelBells, channelLayout } from '../../../shared/vm-channel.ts';
import { PRS_PPR, PRS_PRO } from '../../../shared/vtd-prq-registers.ts';

const SIDS = [0x100, 0x200];
const VA = 0x7e00_0000_0000;
const SEED = 42;

const noObserver: DmaObserver = {
  dmaRead() {},
  faultResolved() {},
  unrecoverableFault() {},
  hostViolation() {},
};

interface VmOptions {
  name?: string;
  prqLog2?: number;
  iqLog2?: number;
  /** PASID table of each of the VM's devices (device i is at SIDS[i] unless `streamIds`). */
  pasids?: number[][];
  streamIds?: number[];
  ownsRid?: boolean;
  routing?: 'ioasid-owner' | 'device-owner';
  ownerOf?: (streamId: number, pasid: number) => string | undefined;
  ops?: VtdOps;
  invariants?: InvariantChecker;
  /** Bind a PRI function per device (false for a VM that shares another VM's function). */
  functions?: boolean;
}

/** One VM: its registry, its channel, the host model, its devices and the guest's pieces. */
function vtdVm(options: VmOptions = {}) {
  const name = options.name ?? 'vm';
  const pasids = options.pasids ?? [[0, 1]];
  const streamIds = options.streamIds ?? SIDS.slice(0, pasids.length);
  const ops =
    options.ops ??
    new VtdOps(new Iommu({ iotlbEntries: 64, routePasidsToRid: options.routing === 'device-owner' }));
  const iommu = ops.iommu;
  const invariants = options.invariants ?? new InvariantChecker();
  const memory = GuestMemory.allocate(1);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  const pager = new DemandPager(memory, pages, spaces);
  const registry = new VtdVmIommu(
    ops,
    memory,
    streamIds.map((streamId) => ({ streamId, ownsRid: options.ownsRid ?? true })),
    options.routing ?? 'ioasid-owner',
  );
  registry.installContexts(pasids.map((list, i) => spaces.installDevice(streamIds[i], list)));
  const layout = channelLayout({
    flavour: 'vtd',
    priqLog2: options.prqLog2 ?? 3,
    evtqLog2: 1,
    cmdqLog2: options.iqLog2 ?? 4,
    dmaQueueLog2: 1,
    devices: pasids.length,
  });
  const prqPlace = layout.prq;
  if (!prqPlace) throw new Error('a vtd channel has a page request queue');
  const channel = new SharedArrayBuffer(layout.bytes);
  const bells = channelBells(channel, layout);
  const prq = new VtdPageRequestQueue(channel, prqPlace.offset, prqPlace.log2Size, bells.guest);
  const vvtd = new Vvtd(
    name,
    prq,
    new RingConsumer(channel, layout.cmdq.offset, layout.cmdq.geometry),
    registry,
    registry.faultFd,
    invariants,
    options.ownerOf ?? (() => name),
    memory,
  );
  const devices =
    options.functions === false
      ? []
      : streamIds.map((streamId, i) => {
          const device = new PciFunction(
            { name: `${name}/d${i}`, streamId, pri: true, priCredits: 16 },
            iommu,
            new RingConsumer(channel, layout.dma[i].submit.offset, layout.dma[i].submit.geometry),
            new RingProducer(channel, layout.dma[i].complete.offset, layout.dma[i].complete.geometry),
            noObserver,
            { interrupt() {} },
          );
          iommu.bindEndpoint(streamId, device);
          return device;
        });
  const iq = new RingProducer(channel, layout.cmdq.offset, layout.cmdq.geometry, bells.host);
  const statusGpa = pages.allocZeroed();
  /** The guest's whole VT-d driver (made on demand: the PRQ has one consumer at a time). */
  const driver = (stats = emptyStats()) =>
    new VtdDriver(channel, prqPlace, iq, pager, stats, memory, statusGpa);
  /** Just the guest's PRQ handler, for tests that look at each descriptor. */
  const prqDriver = () => new VtdPrqDriver(channel, prqPlace.offset, prqPlace.log2Size);
  /** Descriptors the guest's PRQ handler sees in one pass, copied out. */
  const guestReads = (handler: VtdPrqDriver): VtdPageRequest[] => {
    const seen: VtdPageRequest[] = [];
    handler.service((r) => {
      seen.push({ ...r });
    });
    return seen;
  };
  /** The guest writes one IQ descriptor with `encode` and publishes it. */
  const submit = (encode: (words: Int32Array, at: number) => void) => {
    const at = iq.claim();
    if (at < 0) throw new Error('invalidation queue full');
    for (let i = 0; i < VTD_IQ_ENTRY_WORDS; i++) iq.words[at + i] = 0;
    encode(iq.words, at);
    iq.push();
  };
  const respond = (rid: number, pasid: number, prgIndex: number, code: number) =>
    submit((words, at) =>
      encodeVtdPageGroupResponse(words, at, { rid, pasidPresent: true, pasid, code, lpig: true, prgIndex }),
    );
  /** Groups the FAULT object still holds: undelivered or awaiting a response. */
  const pendingGroups = () => registry.fault.undeliveredCount + registry.fault.awaitingCount;
  return {
    ops,
    iommu,
    memory,
    spaces,
    pager,
    registry,
    prq,
    vvtd,
    devices,
    invariants,
    bells,
    statusGpa,
    driver,
    prqDriver,
    guestReads,
    submit,
    respond,
    pendingGroups,
  };
}

describe('vVT-d: page requests to the guest and page group responses back', () => {
  test('a group travels fault fd -> PRQ as the guest decodes it; its response reaches the device', () => {
    const vm = vtdVm({
      pasids: [
        [0, 1],
        [0, 2],
      ],
    });
    const [dev0, dev1] = vm.devices;
    // Both functions use PRG index 0: only the RID tells the two groups apart.
    expect(dev0.injectPageRequest(1, VA + 0x123, false)).toBe(true);
    expect(dev1.injectPageRequest(2, VA + 0x5000, true, 2)).toBe(true);
    expect(vm.vvtd.faultsPending).toBe(true);
    expect(vm.vvtd.drainFaults()).toBe(3);
    expect(vm.vvtd.faultsPending).toBe(false);
    expect(vm.prq.status.read() & PRS_PPR).toBe(PRS_PPR);
    expect(vm.prq.stats.interrupts).toBe(1);
    const seen = vm.guestReads(vm.prqDriver());
    const common = { pasidPresent: true, execRequested: false, privilegedRequested: false, prgIndex: 0 };
    expect(seen).toEqual([
      { ...common, rid: 0, pasid: 1, read: true, write: false, lpig: true, address: VA },
      { ...common, rid: 1, pasid: 2, read: false, write: true, lpig: false, address: VA + 0x5000 },
      { ...common, rid: 1, pasid: 2, read: false, write: true, lpig: true, address: VA + 0x6000 },
    ]);
    expect(vm.vvtd.stats.delivered).toBe(2);
    expect(dev1.pri.outstanding).toBe(2);
    // Answer RID 1's group only: its two credits come back, RID 0's stays out.
    vm.respond(1, 2, 0, QI_RESP_SUCCESS);
    expect(vm.vvtd.serviceCommands()).toBe(1);
    expect(dev1.pri.outstanding).toBe(0);
    expect(dev0.pri.outstanding).toBe(1);
    expect(vm.registry.fault.stats.responded).toBe(1);
    vm.respond(0, 1, 0, QI_RESP_INVALID);
    vm.vvtd.serviceCommands();
    expect(dev0.pri.outstanding).toBe(0);
    expect(vm.vvtd.stats).toMatchObject({
      guestAnswered: 2,
      responses: { success: 1, invalid: 1, failure: 0 },
      unknownResponses: 0,
      illegalCommands: 0,
    });
    expect(vm.registry.fault.stats).toMatchObject({ read: 2, responded: 2, autoResponded: 0 });
    expect(vm.pendingGroups()).toBe(0);
    expect(vm.iommu.iopf.pending).toBe(0);
  });

  test('a request without a PASID, and exec/privileged requests, keep those bits', () => {
    const vm = vtdVm();
    const [dev] = vm.devices;
    expect(dev.injectPageRequest(0, VA, false)).toBe(true);
    vm.iommu.pageRequest({
      streamId: SIDS[0],
      pasid: 1,
      ssv: true,
      address: VA + 0x9000,
      prgIndex: 7,
      read: true,
      write: false,
      exec: true,
      privileged: true,
      last: true,
    });
    vm.vvtd.drainFaults();
    const [rid, exec] = vm.guestReads(vm.prqDriver());
    expect(rid).toMatchObject({ rid: 0, pasidPresent: false, pasid: 0, lpig: true });
    expect(exec).toMatchObject({
      pasidPresent: true,
      pasid: 1,
      execRequested: true,
      privilegedRequested: true,
      prgIndex: 7,
      address: VA + 0x9000,
    });
  });

  test("a guest's Response Failure reaches the device as INVALID: PRI is not stopped", () => {
    const vm = vtdVm();
    const [dev] = vm.devices;
    dev.injectPageRequest(1, VA, false);
    vm.vvtd.drainFaults();
    const [r] = vm.guestReads(vm.prqDriver());
    vm.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_FAILURE);
    vm.vvtd.serviceCommands();
    expect(vm.vvtd.stats.responses).toEqual({ success: 0, invalid: 0, failure: 1 });
    expect(dev.pri.outstanding).toBe(0);
    expect(dev.pri.responseFailure).toBe(false);
    expect(dev.pri.usable).toBe(true);
  });

  test('the guest driver pages in, answers Success, and the retried translation reads its data', () => {
    const vm = vtdVm();
    const [dev] = vm.devices;
    vm.pager.back(1, VA, 4, SEED);
    const stats = emptyStats();
    const driver = vm.driver(stats);
    dev.injectPageRequest(1, VA + PAGE_SIZE, false);
    vm.vvtd.drainFaults();
    expect(driver.poll()).toBe(1);
    expect(vm.vvtd.serviceCommands()).toBe(1);
    expect(stats).toMatchObject({ pageRequests: 1, groupsAnswered: 1, responses: { success: 1 } });
    expect(dev.pri.outstanding).toBe(0);
    const out = newWalkResult();
    expect(vm.iommu.translate(SIDS[0], 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(vm.memory);
    const words = vm.memory.words;
    expect(verifyWords(words, out.offset >>> 2, PAGE_SIZE / 4, SEED, VA + PAGE_SIZE, 0)).toBe(-1);
  });
  test("a full invalidation queue keeps the guest's next request in the PRQ until the host consumes", () => {
    const vm = vtdVm({ iqLog2: 1 });
    const [dev] = vm.devices;
    vm.pager.back(1, VA, 4, SEED);
    const stats = emptyStats();
    const driver = vm.driver(stats);
    for (let page = 0; page < 3; page++) dev.injectPageRequest(1, VA + page * PAGE_SIZE, false);
    vm.vvtd.drainFaults();
    expect(driver.poll()).toBe(2);
    expect(driver.blockedOnCommandQueue).toBe(true);
    expect(driver.pending).toBe(true);
    expect(vm.vvtd.serviceCommands()).toBe(2);
    expect(driver.poll()).toBe(1);
    expect(driver.blockedOnCommandQueue).toBe(false);
    expect(vm.vvtd.serviceCommands()).toBe(1);
    expect(stats.groupsAnswered).toBe(3);
    expect(vm.vvtd.stats.guestAnswered).toBe(3);
    expect(dev.pri.outstanding).toBe(0);
  });

  test('after teardown answered a delivered group, a late guest response is unknown, not a second answer', () => {
    const vm = vtdVm();
    const [dev] = vm.devices;
    dev.injectPageRequest(1, VA, false);
    vm.vvtd.drainFaults();
    const [r] = vm.guestReads(vm.prqDriver());
    vm.registry.teardown();
    vm.vvtd.forgetDelivered();
    expect(dev.pri.outstanding).toBe(0);
    expect(vm.registry.fault.stats.autoResponded).toBe(1);
    vm.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_SUCCESS);
    expect(() => vm.vvtd.serviceCommands()).not.toThrow();
    expect(vm.vvtd.stats).toMatchObject({ guestAnswered: 0, unknownResponses: 1 });
    expect(dev.pri.unexpectedResponses).toBe(0);
    expect(vm.iommu.iopf.stats.duplicateAnswers).toBe(0);
  });
});

describe('vVT-d: the invalidation queue is untrusted', () => {
  test('malformed descriptors are counted and never throw', () => {
    const vm = vtdVm({ iqLog2: 4 });
    const [dev] = vm.devices;
    dev.injectPageRequest(1, VA, false);
    vm.vvtd.drainFaults();
    const [r] = vm.guestReads(vm.prqDriver());
    // An unknown descriptor type, and a page request descriptor (0x1) where it does not belong.
    vm.submit((words, at) => {
      words[at] = 0x3;
    });
    vm.submit((words, at) => {
      words[at] = 0x1;
    });
    // A reserved response code for a real group: refused, and the group is still answerable.
    vm.respond(r.rid, r.pasid, r.prgIndex, 0x5);
    // Responses naming no delivered group: another PRG index, a RID with no device.
    vm.respond(0, 1, r.prgIndex + 1, QI_RESP_SUCCESS);
    vm.respond(9, 1, r.prgIndex, QI_RESP_SUCCESS);
    // PASID-based IOTLB invalidations: no HWPT has PASID 7, granularity 0 is reserved, AM 21 too big.
    const piotlb = (pasid: number, granularity: number, addressMask = 0) =>
      vm.submit((words, at) =>
        encodeVtdPasidIotlb(words, at, { granularity, domainId: 1, pasid, addressMask, address: VA }),
      );
    piotlb(7, PIOTLB_GRAN_PASID);
    piotlb(1, 0);
    piotlb(1, PIOTLB_GRAN_PAGES, 21);
    // Waits whose status address is just past guest RAM, or far beyond it.
    vm.submit((words, at) => encodeVtdInvWait(words, at, vm.memory.size, 1));
    vm.submit((words, at) => encodeVtdInvWait(words, at, 2 ** 40, 2));
    let consumed = 0;
    expect(() => {
      consumed = vm.vvtd.serviceCommands();
    }).not.toThrow();
    expect(consumed).toBe(10);
    expect(vm.vvtd.stats).toMatchObject({
      illegalCommands: 8,
      unknownResponses: 2,
      guestAnswered: 0,
      invalidations: 0,
      syncs: 2,
      syncsSignalled: 0,
    });
    expect(dev.pri.outstanding).toBe(1);
    // The group is answered once; a second answer to it is an unknown response, not a second one.
    vm.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_SUCCESS);
    vm.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_SUCCESS);
    vm.vvtd.serviceCommands();
    expect(vm.vvtd.stats).toMatchObject({ guestAnswered: 1, unknownResponses: 3 });
    expect(vm.registry.fault.stats.responded).toBe(1);
    expect(dev.pri.outstanding).toBe(0);
    expect(dev.pri.unexpectedResponses).toBe(0);
  });

  test('valid invalidations become HWPT_INVALIDATE; a valid wait writes its status data into guest RAM', () => {
    const vm = vtdVm();
    const out = newWalkResult();
    vm.spaces.table(1).map(VA, 0x8000);
    vm.spaces.table(1).map(VA + PAGE_SIZE, 0x9000);
    expect(vm.iommu.translate(SIDS[0], 1, VA, ACCESS_READ, out)).toBe(true);
    expect(vm.iommu.translate(SIDS[0], 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(true);
    vm.spaces.table(1).unmap(VA);
    vm.spaces.table(1).unmap(VA + PAGE_SIZE);
    // Page-selective for VA only, then the wait.
    vm.submit((words, at) =>
      encodeVtdPasidIotlb(words, at, {
        granularity: PIOTLB_GRAN_PAGES,
        domainId: 2,
        pasid: 1,
        addressMask: 0,
        address: VA,
      }),
    );
    vm.submit((words, at) => encodeVtdInvWait(words, at, vm.statusGpa, 0x1234_5678));
    expect(vm.vvtd.serviceCommands()).toBe(2);
    expect(vm.memory.words[vm.statusGpa >>> 2]).toBe(0x1234_5678);
    expect(vm.iommu.translate(SIDS[0], 1, VA, ACCESS_READ, out)).toBe(false);
    expect(vm.iommu.translate(SIDS[0], 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(true);
    // The whole PASID.
    vm.submit((words, at) =>
      encodeVtdPasidIotlb(words, at, {
        granularity: PIOTLB_GRAN_PASID,
        domainId: 2,
        pasid: 1,
        addressMask: 0,
        address: 0,
      }),
    );
    vm.vvtd.serviceCommands();
    expect(vm.iommu.translate(SIDS[0], 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(false);
    expect(vm.vvtd.stats).toMatchObject({
      invalidations: 2,
      syncs: 1,
      syncsSignalled: 1,
      illegalCommands: 0,
    });
  });

  test("the guest driver's invalidateVa completes through the wait's status write", () => {
    const vm = vtdVm();
    const driver = vm.driver();
    const sequence = driver.invalidateVa(1, VA);
    expect(sequence).toBeGreaterThan(0);
    expect(driver.syncCompleted()).toBe(0);
    expect(vm.vvtd.serviceCommands()).toBe(2);
    expect(driver.syncCompleted()).toBe(sequence);
    expect(vm.vvtd.stats).toMatchObject({ invalidations: 1, syncsSignalled: 1, illegalCommands: 0 });
  });
});

describe('vVT-d: page request queue overflow', () => {
  test('groups that do not fit are dropped and answered Success; after PRO is cleared delivery resumes', () => {
    // 2^2 slots, 3 usable (one always empty).
    const vm = vtdVm({ prqLog2: 2 });
    const [dev] = vm.devices;
    vm.pager.back(1, VA, 16, SEED);
    const stats = emptyStats();
    const driver = vm.driver(stats);
    for (let page = 0; page < 5; page++)
      expect(dev.injectPageRequest(1, VA + page * PAGE_SIZE, false)).toBe(true);
    expect(vm.vvtd.drainFaults()).toBe(5);
    expect(vm.vvtd.stats).toMatchObject({ delivered: 3, dropped: 2, autoResponded: 2, overflows: 1 });
    expect(vm.prq.status.read() & PRS_PRO).toBe(PRS_PRO);
    // The dropped groups were answered at once: their credits are back.
    expect(dev.pri.outstanding).toBe(3);
    // While PRO is set, even a queue with room takes nothing.
    dev.injectPageRequest(1, VA + 5 * PAGE_SIZE, false);
    vm.vvtd.drainFaults();
    expect(vm.vvtd.stats).toMatchObject({ delivered: 3, dropped: 3, autoResponded: 3 });
    // The first drop found the queue full and set PRO; the others found PRO set.
    expect(vm.prq.stats.dropped).toEqual({ full: 1, overflowPending: 2 });
    // The guest drains, answers, and clears PRO once head == tail.
    expect(driver.poll()).toBe(3);
    expect(stats).toMatchObject({ overflowsAcknowledged: 1, groupsAnswered: 3, responses: { success: 3 } });
    expect(vm.prq.status.read() & PRS_PRO).toBe(0);
    expect(vm.vvtd.serviceCommands()).toBe(3);
    expect(vm.vvtd.stats.guestAnswered).toBe(3);
    expect(dev.pri.outstanding).toBe(0);
    // Later groups are delivered again.
    dev.injectPageRequest(1, VA + 6 * PAGE_SIZE, false);
    dev.injectPageRequest(1, VA + 7 * PAGE_SIZE, false);
    vm.vvtd.drainFaults();
    expect(vm.vvtd.stats).toMatchObject({ delivered: 5, dropped: 3 });
    expect(driver.poll()).toBe(2);
    vm.vvtd.serviceCommands();
    expect(vm.vvtd.stats.guestAnswered).toBe(5);
    expect(vm.pager.pagesMapped).toBe(5);
    // Every group was answered exactly once; nothing is left anywhere.
    expect(vm.registry.fault.stats).toMatchObject({ reported: 8, read: 8, responded: 8, autoResponded: 0 });
    expect(vm.pendingGroups()).toBe(0);
    expect(vm.registry.fd.pendingFaultGroups).toBe(0);
    expect(vm.iommu.iopf.pending).toBe(0);
    expect(dev.pri.outstanding).toBe(0);
    expect(vm.iommu.iopf.stats.duplicateAnswers).toBe(0);
  });

  test('a group whose Last is dropped is answered by the host; the guest discards its partial part', () => {
    // 2^1 slots: one usable.
    const vm = vtdVm({ prqLog2: 1 });
    const [dev] = vm.devices;
    vm.pager.back(1, VA, 4, SEED);
    const stats = emptyStats();
    const driver = vm.driver(stats);
    expect(dev.injectPageRequest(1, VA, false, 2)).toBe(true);
    vm.vvtd.drainFaults();
    expect(vm.vvtd.stats).toMatchObject({ delivered: 0, dropped: 1, autoResponded: 1, overflows: 1 });
    expect(dev.pri.outstanding).toBe(0);
    expect(driver.poll()).toBe(1);
    expect(stats).toMatchObject({ partialGroupsDropped: 1, overflowsAcknowledged: 1, groupsAnswered: 0 });
    expect(vm.vvtd.serviceCommands()).toBe(0);
    expect(vm.pendingGroups()).toBe(0);
    // A single-request group fits again.
    dev.injectPageRequest(1, VA + 2 * PAGE_SIZE, false);
    vm.vvtd.drainFaults();
    expect(driver.poll()).toBe(1);
    vm.vvtd.serviceCommands();
    expect(vm.vvtd.stats).toMatchObject({ delivered: 1, guestAnswered: 1 });
    expect(vm.pendingGroups()).toBe(0);
    expect(vm.iommu.iopf.pending).toBe(0);
  });
});

describe('vVT-d: the routing check', () => {
  const PASID_SPAN = 0x10_0000;

  /** VM a holds the function's RID and PASID 1, VM b only PASID 2, on one shared function. */
  function sharedFunction(routing: 'ioasid-owner' | 'device-owner') {
    const owners = new Map<number, string>([
      [SIDS[0] * PASID_SPAN + 0, 'a'],
      [SIDS[0] * PASID_SPAN + 1, 'a'],
      [SIDS[0] * PASID_SPAN + 2, 'b'],
    ]);
    const ownerOf = (streamId: number, pasid: number) => owners.get(streamId * PASID_SPAN + pasid);
    const invariants = new InvariantChecker();
    const a = vtdVm({ name: 'a', pasids: [[0, 1]], routing, ownerOf, invariants });
    const b = vtdVm({
      name: 'b',
      pasids: [[2]],
      ownsRid: false,
      routing,
      ownerOf,
      invariants,
      ops: a.ops,
      functions: false,
    });
    return { a, b, invariants, device: a.devices[0] };
  }

  test("device-owner: another VM's PASID delivered here is a fault-delivered-to-non-owner violation", () => {
    const { a, b, invariants, device } = sharedFunction('device-owner');
    device.injectPageRequest(1, VA, false);
    a.vvtd.drainFaults();
    expect(invariants.ok).toBe(true);
    device.injectPageRequest(2, VA, false);
    expect(b.vvtd.drainFaults()).toBe(0);
    expect(a.vvtd.drainFaults()).toBe(1);
    expect(invariants.counts.get('fault-delivered-to-non-owner')).toBe(1);
    expect(invariants.violations[0]).toMatchObject({ rule: 'fault-delivered-to-non-owner', vm: 'a' });
    expect(invariants.violations[0].detail).toMatch(/PASID 2 is owned by b/);
    // The misrouted group still reached a's guest, once, and can be answered.
    const seen = a.guestReads(a.prqDriver());
    expect(seen.map((r) => r.pasid)).toEqual([1, 2]);
    for (const r of seen) a.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_INVALID);
    a.vvtd.serviceCommands();
    expect(device.pri.outstanding).toBe(0);
    expect(a.pendingGroups() + b.pendingGroups()).toBe(0);
  });

  test('ioasid-owner: each PASID reaches its owner and nothing is violated', () => {
    const { a, b, invariants, device } = sharedFunction('ioasid-owner');
    device.injectPageRequest(1, VA, false);
    device.injectPageRequest(2, VA, false);
    expect(a.vvtd.drainFaults()).toBe(1);
    expect(b.vvtd.drainFaults()).toBe(1);
    expect(invariants.ok).toBe(true);
    expect(a.guestReads(a.prqDriver()).map((r) => r.pasid)).toEqual([1]);
    const [r] = b.guestReads(b.prqDriver());
    expect(r).toMatchObject({ rid: 0, pasid: 2 });
    b.respond(r.rid, r.pasid, r.prgIndex, QI_RESP_SUCCESS);
    b.vvtd.serviceCommands();
    expect(b.vvtd.stats.guestAnswered).toBe(1);
    expect(device.pri.outstanding).toBe(1);
  });

  test('a group for a PASID that no VM owns is a violation too, naming nobody', () => {
    const invariants = new InvariantChecker();
    const vm = vtdVm({ pasids: [[0, 1]], invariants, ownerOf: () => undefined });
    vm.devices[0].injectPageRequest(1, VA, false);
    vm.vvtd.drainFaults();
    expect(invariants.violations).toEqual([
      { rule: 'fault-delivered-to-non-owner', vm: 'vm', detail: expect.stringMatching(/owned by nobody/) },
    ]);
  });
});
