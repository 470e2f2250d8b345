// The host's vSMMU model between a VM's iommufd and the guest's queues, with the real IOMMU,
// registry, rings and a stalling device; the test plays the guest on the other side of the rings.
import { describe, expect, test } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { DemandPager } from '../../../guest/mm/demand-pager.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { Smmuv3Driver } from '../../../guest/smmuv3-driver.ts';
import { type DmaObserver, PciFunction } from '../../../host/devices/pci-function.ts';
import { Iommu } from '../../../host/iommu/iommu.ts';
import { Smmuv3Ops } from '../../../host/iommu/smmuv3-ops.ts';
import { InvariantChecker } from '../../../host/vmm/invariants.ts';
import { Reactor } from '../../../host/vmm/reactor.ts';
import { VmIommu } from '../../../host/vmm/vm-iommu.ts';
import { Vsmmu } from '../../../host/vmm/vsmmu.ts';
import { CERROR_ILL, COMMAND_ERROR_BYTES, CommandErrorRegister } from '../../../shared/command-error.ts';
import { GuestMemory } from '../../../shared/guest-memory.ts';
import {
  CMDQ_ENTRY_WORDS,
  encodeResume,
  encodeStallTerm,
  encodeSync,
  RESUME_ABORT,
  RESUME_RETRY,
  RESUME_TERMINATE,
} from '../../../shared/records/cmdq-entry.ts';
import {
  DMA_COMPLETION_WORDS,
  DMA_DESCRIPTOR_WORDS,
  DMA_FLAG_VERIFY,
  DMA_OP_READ,
  DMA_STATUS_FAULT,
  DMA_STATUS_OK,
  decodeDmaCompletion,
  encodeDmaDescriptor,
} from '../../../shared/records/dma-descriptor.ts';
import { decodeEvtqEntry, EVTQ_ENTRY_WORDS, newEvtqEntry } from '../../../shared/records/evtq-entry.ts';
import { PRIQ_ENTRY_WORDS } from '../../../shared/records/priq-entry.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../../shared/ring.ts';
import { IDR0_TERM_MODEL, termModelOf } from '../../../shared/smmuv3-idr.ts';
import { StoreRecorder } from '../../support/store-recorder.ts';

const SID = 0x100;
const VA = 0x7e00_0000_0000;
const PAGE = 4096;

interface SetupOptions {
  /** The device stalls (default); otherwise it uses PRI. */
  stall?: boolean;
  /** Record the stores of the guest's PRI queue, or of its event queue. */
  priqStores?: StoreRecorder;
  evtqStores?: StoreRecorder;
  /** The host SMMU's IDR0.TERM_MODEL (1: terminations always abort). */
  hostTermModel?: 0 | 1;
  /** What the VMM advertises to the guest (default: the host's). */
  termModel?: 0 | 1;
  /** log2 of the DMA submission and completion rings (the device runs that many ops at once). */
  dmaLog2?: number;
}

function setup(options: SetupOptions = {}) {
  const stall = options.stall ?? true;
  const memory = GuestMemory.allocate(4);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  const iommu = new Iommu({ termModel: options.hostTermModel });
  const vm = new VmIommu(new Smmuv3Ops(iommu), memory, [{ streamId: SID, hasPasids: true, stall }]);
  vm.installContexts([spaces.installDevice(0, [0, 1], stall)]);
  const geometry = {
    priq: { log2Size: 2, recordWords: PRIQ_ENTRY_WORDS },
    evtq: { log2Size: 2, recordWords: EVTQ_ENTRY_WORDS },
    cmdq: { log2Size: 2, recordWords: CMDQ_ENTRY_WORDS },
    submit: { log2Size: options.dmaLog2 ?? 3, recordWords: DMA_DESCRIPTOR_WORDS },
    complete: { log2Size: options.dmaLog2 ?? 3, recordWords: DMA_COMPLETION_WORDS },
  };
  const offsets: Record<string, number> = {};
  let bytes = 0;
  for (const [name, g] of Object.entries(geometry)) {
    offsets[name] = bytes;
    bytes += ringBytes(g);
  }
  const buffer = new SharedArrayBuffer(bytes);
  const commandError = new CommandErrorRegister(new SharedArrayBuffer(COMMAND_ERROR_BYTES), 0);
  const vsmmu = new Vsmmu(
    'vm',
    new RingProducer(buffer, offsets.priq, geometry.priq, undefined, options.priqStores),
    new RingProducer(buffer, offsets.evtq, geometry.evtq, undefined, options.evtqStores),
    new RingConsumer(buffer, offsets.cmdq, geometry.cmdq),
    vm,
    vm.faultFd,
    vm.veventqFd,
    new InvariantChecker(),
    () => 'vm',
    memory,
    commandError,
    { termModel: options.termModel ?? vm.termModel },
  );
  /** What the device showed the oracle: words it read for checking, reads that were RAZ/WI. */
  const seen = { wordsRead: 0, razReads: [] as { pasid: number; va: number; bytes: number }[] };
  const observer: DmaObserver = {
    dmaRead(_device, _pasid, _va, _words, _at, count) {
      seen.wordsRead += count;
    },
    razRead(_device, pasid, va, bytes) {
      seen.razReads.push({ pasid, va, bytes });
    },
    faultResolved() {},
    unrecoverableFault() {},
    hostViolation() {},
  };
  const device = new PciFunction(
    { name: 'dev', streamId: SID, pri: !stall, priCredits: 8, stall },
    iommu,
    new RingConsumer(buffer, offsets.submit, geometry.submit),
    new RingProducer(buffer, offsets.complete, geometry.complete),
    observer,
    { interrupt() {} },
  );
  if (stall) iommu.stalls.bindEndpoint(SID, device);
  else iommu.bindEndpoint(SID, device);
  const guest = {
    priq: new RingConsumer(buffer, offsets.priq, geometry.priq),
    evtq: new RingConsumer(buffer, offsets.evtq, geometry.evtq),
    cmdq: new RingProducer(buffer, offsets.cmdq, geometry.cmdq),
    submit: new RingProducer(buffer, offsets.submit, geometry.submit),
    complete: new RingConsumer(buffer, offsets.complete, geometry.complete),
  };
  const read = (page: number, flags = 0) => {
    encodeDmaDescriptor(guest.submit.words, guest.submit.claim(), {
      opcode: DMA_OP_READ,
      pasid: 1,
      tag: page,
      length: PAGE,
      va: VA + page * PAGE,
      flags,
    });
    guest.submit.push();
    device.service();
    iommu.drainPageRequests();
    vsmmu.drainFaults();
  };
  const completions = () => {
    device.service();
    const out = [];
    const n = guest.complete.poll();
    for (let i = 0; i < n; i++)
      out.push(
        decodeDmaCompletion(guest.complete.words, guest.complete.at(i), { tag: 0, status: 0, bytes: 0 }),
      );
    guest.complete.release(n);
    return out;
  };
  /** The guest answers a stall: CMD_RESUME with `action` (Linux's RESP encoding: Ab is bit 1). */
  const resume = (stag: number, action: number) => {
    encodeResume(guest.cmdq.words, guest.cmdq.claim(), { streamId: 0, stag, action });
    guest.cmdq.push();
    vsmmu.serviceCommands();
  };
  /** The guest drains its event queue; returns the records, stall records as their STAG. */
  const takeEvents = () => {
    const out: { stall: boolean; stag: number; inputAddress: number }[] = [];
    const n = guest.evtq.poll();
    for (let i = 0; i < n; i++) {
      const e = decodeEvtqEntry(guest.evtq.words, guest.evtq.at(i), newEvtqEntry());
      out.push({ stall: e.stall, stag: e.stag, inputAddress: e.inputAddress });
    }
    guest.evtq.release(n);
    return out;
  };
  return {
    spaces,
    pages,
    iommu,
    vm,
    vsmmu,
    device,
    guest,
    read,
    resume,
    takeEvents,
    completions,
    memory,
    commandError,
    seen,
  };
}

describe('vSMMU model: stalls', () => {
  test('a stall reaches the guest as a Stall=1 event; CMD_RESUME retry resumes the transaction', () => {
    const { spaces, vsmmu, guest, read, completions } = setup();
    read(0);
    expect(guest.evtq.poll()).toBe(1);
    const e = decodeEvtqEntry(guest.evtq.words, guest.evtq.at(0), newEvtqEntry());
    guest.evtq.release(1);
    expect(e).toMatchObject({
      stall: true,
      streamId: 0,
      ssv: true,
      substreamId: 1,
      inputAddress: VA,
      read: true,
    });
    spaces.table(1).map(VA, 0x2000);
    encodeResume(guest.cmdq.words, guest.cmdq.claim(), { streamId: 0, stag: e.stag, action: RESUME_RETRY });
    guest.cmdq.push();
    vsmmu.serviceCommands();
    expect(completions()).toEqual([{ tag: 0, status: DMA_STATUS_OK, bytes: PAGE }]);
    expect(vsmmu.stats).toMatchObject({ stallsDelivered: 1, resumes: 1, guestAnswered: 1 });
  });

  test('CMD_STALL_TERM terminates every stall of the stream; a late RESUME is a counted no-op', () => {
    const { vsmmu, guest, read, completions, iommu } = setup();
    read(0);
    read(1);
    expect(guest.evtq.poll()).toBe(2);
    const stag = decodeEvtqEntry(guest.evtq.words, guest.evtq.at(0), newEvtqEntry()).stag;
    guest.evtq.release(2);
    encodeStallTerm(guest.cmdq.words, guest.cmdq.claim(), 0);
    guest.cmdq.push();
    encodeResume(guest.cmdq.words, guest.cmdq.claim(), { streamId: 0, stag, action: RESUME_RETRY });
    guest.cmdq.push();
    vsmmu.serviceCommands();
    expect(completions().map((c) => c.status)).toEqual([DMA_STATUS_FAULT, DMA_STATUS_FAULT]);
    expect(vsmmu.stats).toMatchObject({ stallsTerminated: 2, unknownResponses: 1, resumes: 0 });
    expect(iommu.stallIopf.pending).toBe(0);
    expect(iommu.stalls.held).toBe(0);
  });
});

describe('vSMMU model: CMD_SYNC', () => {
  test('a sync with an MSI address writes its data into guest RAM; an address outside RAM is refused', () => {
    const { vsmmu, guest, memory } = setup();
    encodeSync(guest.cmdq.words, guest.cmdq.claim(), 0x3000, 42);
    guest.cmdq.push();
    encodeSync(guest.cmdq.words, guest.cmdq.claim(), memory.size + 0x1000, 43);
    guest.cmdq.push();
    vsmmu.serviceCommands();
    expect(memory.words[0x3000 / 4]).toBe(42);
    expect(vsmmu.stats).toMatchObject({ syncs: 2, syncsSignalled: 1, illegalCommands: 1 });
  });
});

describe('vSMMU model: refused commands', () => {
  test('an unknown opcode is skipped, counted and signalled as CMDQ_ERR until the guest acknowledges', () => {
    const { vsmmu, guest, memory, commandError } = setup();
    guest.cmdq.words[guest.cmdq.claim()] = 0x7f; // no such opcode
    guest.cmdq.push();
    encodeSync(guest.cmdq.words, guest.cmdq.claim(), 0x3000, 7);
    guest.cmdq.push();
    expect(commandError.pending).toBe(false);
    expect(vsmmu.serviceCommands()).toBe(2);
    expect(vsmmu.stats.illegalCommands).toBe(1);
    expect(commandError.pending).toBe(true);
    expect(commandError.code).toBe(CERROR_ILL);
    // The queue was not halted: the sync behind the bad command completed.
    expect(memory.words[0x3000 / 4]).toBe(7);
    commandError.acknowledge();
    expect(commandError.pending).toBe(false);
  });
});

describe('vSMMU model: PRI queue overflow', () => {
  test('the overflow flag is never observable before the entries written ahead of it', () => {
    const stores = new StoreRecorder();
    const { device, iommu, vsmmu, guest } = setup({ stall: false, priqStores: stores });
    // Six one-request groups, read in one drain, into a four-entry PRI queue.
    for (let i = 0; i < 6; i++) expect(device.injectPageRequest(1, VA + i * PAGE, false)).toBe(true);
    iommu.drainPageRequests();
    expect(vsmmu.drainFaults()).toBe(6);
    expect(vsmmu.stats).toMatchObject({ delivered: 4, dropped: 2, overflows: 1, autoResponded: 2 });
    // Every PROD store that shows OVFLG also shows the four entries written ahead of it.
    const prod = stores.prod;
    expect(prod.some((p) => p.overflow)).toBe(true);
    for (const p of prod.filter((q) => q.overflow)) expect(p.index).toBe(4);
    expect(prod[0]).toEqual({ index: 4, overflow: false });
    // So the guest drains four entries before it sees the overflow it may acknowledge.
    expect(guest.priq.poll()).toBe(4);
    expect(guest.priq.overflowPending()).toBe(true);
  });
});

describe('vSMMU model: terminate models (IDR0.TERM_MODEL)', () => {
  test('the host reports TERM_MODEL (IDR0 bit 26) in its hw_info and the vSMMU advertises what it implements', () => {
    const hwIdr0 = (iommu: Iommu) =>
      new DataView(new Smmuv3Ops(iommu).hwInfo().data.buffer).getUint32(8, true);
    expect(hwIdr0(new Iommu()) & IDR0_TERM_MODEL).toBe(0);
    expect(hwIdr0(new Iommu({ termModel: 1 })) & IDR0_TERM_MODEL).toBe(1 << 26);
    const razCapable = setup();
    expect(razCapable.vm.termModel).toBe(0);
    expect(termModelOf(razCapable.vsmmu.idr0)).toBe(0);
    // A host that always aborts: the VMM reads it and advertises TERM_MODEL=1.
    const abortOnly = setup({ hostTermModel: 1 });
    expect(abortOnly.vm.termModel).toBe(1);
    expect(termModelOf(abortOnly.vsmmu.idr0)).toBe(1);
  });

  test('with TERM_MODEL=0 a CMD_RESUME terminate with Ab=0 completes the read RAZ/WI: zeros, DMA done, nothing checked', () => {
    const { read, resume, takeEvents, completions, vsmmu, device, seen, iommu } = setup();
    read(0, DMA_FLAG_VERIFY);
    const [e] = takeEvents();
    expect(e.stall).toBe(true);
    resume(e.stag, RESUME_TERMINATE);
    expect(completions()).toEqual([{ tag: 0, status: DMA_STATUS_OK, bytes: PAGE }]);
    expect(seen.razReads).toEqual([{ pasid: 1, va: VA, bytes: PAGE }]);
    expect(seen.wordsRead).toBe(0); // no data to check against the pattern: not a mismatch
    expect(device.stats).toMatchObject({ razReads: 1, completed: 1, failed: 0 });
    expect(vsmmu.stats).toMatchObject({ resumes: 1, razTerminations: 1, guestAnswered: 1 });
    expect(vsmmu.stats.responses.invalid).toBe(0);
    expect(iommu.stalls.stats).toMatchObject({ razed: 1, aborted: 0 });
  });

  test('with TERM_MODEL=1 Ab is ignored: a terminate with Ab=0 aborts like Ab=1', () => {
    for (const options of [{ termModel: 1 as const }, { hostTermModel: 1 as const }]) {
      const { read, resume, takeEvents, completions, vsmmu, device } = setup(options);
      read(0);
      read(1);
      const [a, b] = takeEvents();
      resume(a.stag, RESUME_TERMINATE);
      resume(b.stag, RESUME_ABORT);
      expect(completions().map((c) => c.status)).toEqual([DMA_STATUS_FAULT, DMA_STATUS_FAULT]);
      expect(device.stats.razReads).toBe(0);
      expect(vsmmu.stats.razTerminations).toBe(0);
    }
  });

  test('with Ac=1 the transaction retries whatever Ab says (SMMU spec 4.7.1)', () => {
    const { spaces, read, resume, takeEvents, completions, vsmmu } = setup();
    read(0);
    const [e] = takeEvents();
    spaces.table(1).map(VA, 0x2000);
    resume(e.stag, RESUME_RETRY | RESUME_ABORT);
    expect(completions()).toEqual([{ tag: 0, status: DMA_STATUS_OK, bytes: PAGE }]);
    expect(vsmmu.stats).toMatchObject({ illegalCommands: 0, resumes: 1 });
    expect(vsmmu.stats.responses.success).toBe(1);
  });
});

describe('vSMMU model: stall records wait for room', () => {
  test('a stall that finds the event queue full waits, and is never answered on its own', () => {
    // A four-record event queue and 300 stalls: far more than the model's stall buffer holds.
    const { read, vsmmu, takeEvents, completions, resume, vm } = setup({ dmaLog2: 9 });
    for (let page = 0; page < 300; page++) read(page);
    expect(completions()).toEqual([]); // nothing terminated: every transaction still stalls
    expect(vsmmu.stats.responses.invalid).toBe(0);
    // The fault fd keeps what the stall buffer cannot take (back-pressure), unread, unanswered.
    expect(vm.fault.stats.read).toBeLessThan(300);
    expect(vm.fault.stats.autoResponded).toBe(0);
    // As the guest drains its event queue, every stall reaches it, in the order it arrived.
    const stags: number[] = [];
    for (let guard = 0; guard < 1000 && stags.length < 300; guard++) {
      for (const e of takeEvents()) {
        expect(e.stall).toBe(true);
        expect(e.inputAddress).toBe(VA + stags.length * PAGE);
        stags.push(e.stag);
      }
      vsmmu.drainFaults();
    }
    expect(stags).toHaveLength(300);
    expect(vsmmu.stats.stallsDelivered).toBe(300);
    for (const stag of stags.slice(0, 3)) resume(stag, RESUME_ABORT);
    expect(completions().map((c) => c.status)).toEqual([
      DMA_STATUS_FAULT,
      DMA_STATUS_FAULT,
      DMA_STATUS_FAULT,
    ]);
  });

  test('a guest that frees event-queue slots signals the host, whose reactor moves the held stall record at once', async () => {
    const { read, vsmmu, device, iommu, guest, memory, pages, spaces } = setup();
    // Four terminate-model events fill the guest's four-record event queue; a stall then waits.
    device.injectEvents(1, VA + 0x10_0000, false, 4);
    iommu.drainPageRequests();
    vsmmu.drainEvents();
    read(0);
    expect(vsmmu.stallsWaiting).toBe(1);

    // postmessage: the reactor sleeps in waitAsync (up to 100 ms), leaving this thread to the guest.
    const reactor = new Reactor({
      vms: 1,
      transport: 'postmessage',
      spinNs: 0,
      onError: (error) => {
        throw error;
      },
    });
    const log: string[] = [];
    /** How the reactor's current sleep ended, seen from a pump: a ring, or running out. */
    let wokenBefore = 0;
    const howWoken = () => (reactor.stats.wokenSleeps > wokenBefore ? 'woken by a ring' : 'sleep ran out');
    let moved: () => void = () => {};
    const heldMoved = new Promise<void>((resolve) => {
      moved = resolve;
    });
    reactor.serve(0, {
      pump() {
        const waiting = vsmmu.stallsWaiting;
        const work = vsmmu.serviceCommands() + vsmmu.drainFaults() + vsmmu.drainEvents();
        if (waiting > 0 && vsmmu.stallsWaiting === 0) {
          log.push(`host moved the held stall (${howWoken()})`);
          moved();
        }
        return work;
      },
      hasWork: () => vsmmu.eventsPending || vsmmu.faultsPending,
    });
    reactor.start();
    await until(() => reactor.stats.sleeps > 0);
    expect(vsmmu.stallsWaiting).toBe(1); // the queue is full: the reactor sleeps with the record held

    const stats = emptyStats();
    const driver = new Smmuv3Driver(
      guest.priq,
      guest.evtq,
      guest.cmdq,
      new DemandPager(memory, pages, spaces),
      stats,
      memory,
      pages.allocZeroed(),
      undefined,
      { hostBell: reactor.signalOf(0), idr0: vsmmu.idr0 },
    );
    // The guest drains its four events: one CONS write, then the signal; no command to send.
    wokenBefore = reactor.stats.wokenSleeps;
    expect(driver.poll()).toBe(4);
    log.push('guest freed four slots');
    await heldMoved;
    await reactor.stop();
    expect(log).toEqual(['guest freed four slots', 'host moved the held stall (woken by a ring)']);
    expect(driver.poll()).toBe(1);
    expect(stats.stallsResumed).toBe(1);
  });
});

/** Resolves once `check` holds, looking at every turn of the event loop. */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setImmediate(resolve));
}
