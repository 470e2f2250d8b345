// The host's vSMMU model between a VM's iommufd and the guest's queues, with the real IOMMU,
// registry, rings and a stalling device; the test plays the guest on the other side of the rings.
import { describe, expect, test } from 'vitest';
import { AddressSpaces } from '../guest/mm/address-spaces.ts';
import { PageAllocator } from '../guest/mm/page-allocator.ts';
import { type DmaObserver, PciFunction } from '../host/devices/pci-function.ts';
import { Iommu } from '../host/iommu/iommu.ts';
import { Smmuv3Ops } from '../host/iommu/smmuv3-ops.ts';
import { InvariantChecker } from '../host/vmm/invariants.ts';
import { VmIommu } from '../host/vmm/vm-iommu.ts';
import { Vsmmu } from '../host/vmm/vsmmu.ts';
import { CERROR_ILL, COMMAND_ERROR_BYTES, CommandErrorRegister } from '../shared/command-error.ts';
import { GuestMemory } from '../shared/guest-memory.ts';
import {
  CMDQ_ENTRY_WORDS,
  encodeResume,
  encodeStallTerm,
  encodeSync,
  RESUME_RETRY,
} from '../shared/records/cmdq-entry.ts';
import {
  DMA_COMPLETION_WORDS,
  DMA_DESCRIPTOR_WORDS,
  DMA_OP_READ,
  DMA_STATUS_FAULT,
  DMA_STATUS_OK,
  decodeDmaCompletion,
  encodeDmaDescriptor,
} from '../shared/records/dma-descriptor.ts';
import { decodeEvtqEntry, EVTQ_ENTRY_WORDS, newEvtqEntry } from '../shared/records/evtq-entry.ts';
import { PRIQ_ENTRY_WORDS } from '../shared/records/priq-entry.ts';
import { RingConsumer, RingProducer, ringBytes } from '../shared/ring.ts';

const SID = 0x100;
const VA = 0x7e00_0000_0000;
const PAGE = 4096;

function setup() {
  const memory = GuestMemory.allocate(4);
  const spaces = new AddressSpaces(memory, new PageAllocator(memory));
  const iommu = new Iommu();
  const vm = new VmIommu(new Smmuv3Ops(iommu), memory, [{ streamId: SID, hasPasids: true, stall: true }]);
  vm.installContexts([spaces.installDevice(0, [0, 1], true)]);
  const geometry = {
    priq: { log2Size: 2, recordWords: PRIQ_ENTRY_WORDS },
    evtq: { log2Size: 2, recordWords: EVTQ_ENTRY_WORDS },
    cmdq: { log2Size: 2, recordWords: CMDQ_ENTRY_WORDS },
    submit: { log2Size: 3, recordWords: DMA_DESCRIPTOR_WORDS },
    complete: { log2Size: 3, recordWords: DMA_COMPLETION_WORDS },
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
    new RingProducer(buffer, offsets.priq, geometry.priq),
    new RingProducer(buffer, offsets.evtq, geometry.evtq),
    new RingConsumer(buffer, offsets.cmdq, geometry.cmdq),
    vm,
    vm.faultFd,
    vm.veventqFd,
    new InvariantChecker(),
    () => 'vm',
    memory,
    commandError,
  );
  const observer: DmaObserver = {
    dmaRead() {},
    faultResolved() {},
    unrecoverableFault() {},
    hostViolation() {},
  };
  const device = new PciFunction(
    { name: 'dev', streamId: SID, pri: false, priCredits: 1, stall: true },
    iommu,
    new RingConsumer(buffer, offsets.submit, geometry.submit),
    new RingProducer(buffer, offsets.complete, geometry.complete),
    observer,
    () => {},
  );
  iommu.stalls.bindEndpoint(SID, device);
  const guest = {
    evtq: new RingConsumer(buffer, offsets.evtq, geometry.evtq),
    cmdq: new RingProducer(buffer, offsets.cmdq, geometry.cmdq),
    submit: new RingProducer(buffer, offsets.submit, geometry.submit),
    complete: new RingConsumer(buffer, offsets.complete, geometry.complete),
  };
  const read = (page: number) => {
    encodeDmaDescriptor(guest.submit.words, guest.submit.claim(), {
      opcode: DMA_OP_READ,
      pasid: 1,
      tag: page,
      length: PAGE,
      va: VA + page * PAGE,
      flags: 0,
    });
    guest.submit.push();
    device.service();
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
  return { spaces, iommu, vm, vsmmu, device, guest, read, completions, memory, commandError };
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
