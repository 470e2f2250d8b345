// A PRI-capable PCIe function on the IOMMU model: real rings, real guest tables in guest RAM.
import { beforeEach, describe, expect, test } from 'vitest';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { type DmaObserver, PciFunction } from '../../../host/devices/pci-function.ts';
import { Iommu } from '../../../host/iommu/iommu.ts';
import type { IopfGroup } from '../../../host/iommu/iopf.ts';
import { PRG_FAILURE, PRG_INVALID, PRG_SUCCESS } from '../../../host/iommu/page-request.ts';
import { GuestMemory } from '../../../shared/guest-memory.ts';
import {
  DMA_COMPLETION_WORDS,
  DMA_DESCRIPTOR_WORDS,
  DMA_FLAG_VERIFY,
  DMA_OP_READ,
  DMA_STATUS_BAD_DESCRIPTOR,
  DMA_STATUS_FAULT,
  DMA_STATUS_OK,
  DMA_STATUS_PAGE_INVALID,
  decodeDmaCompletion,
  encodeDmaDescriptor,
} from '../../../shared/records/dma-descriptor.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../../shared/ring.ts';

const SID = 7;
const VA = 0x7e00_0000_0000;
const PAGE = 4096;

describe('PRI on a PCIe function', () => {
  let spaces: AddressSpaces;
  let device: PciFunction;
  let groups: IopfGroup[];
  let submit: RingProducer;
  let complete: RingConsumer;
  let tag = 0;

  function setup(credits: number, pri = true, interfacePasids?: number[]) {
    const memory = GuestMemory.allocate(4);
    spaces = new AddressSpaces(memory, new PageAllocator(memory));
    const ctx = spaces.installDevice(0, [0, 1]);
    const iommu = new Iommu();
    iommu.installStream(SID, { memory, cdTableGpa: ctx.cdTableGpa, cdLog2: ctx.cdLog2 });
    // The guest's CD table holds the PASIDs, so their page requests report through the RID.
    iommu.setUserPasidTable(SID, true);
    groups = [];
    iommu.setFaultHandler(SID, undefined, { handleGroup: (g) => groups.push(g) });
    const submitGeometry = { log2Size: 4, recordWords: DMA_DESCRIPTOR_WORDS };
    const completeGeometry = { log2Size: 4, recordWords: DMA_COMPLETION_WORDS };
    const buffer = new SharedArrayBuffer(ringBytes(submitGeometry) + ringBytes(completeGeometry));
    submit = new RingProducer(buffer, 0, submitGeometry);
    const deviceEnd = new RingConsumer(buffer, 0, submitGeometry);
    const completeOffset = ringBytes(submitGeometry);
    complete = new RingConsumer(buffer, completeOffset, completeGeometry);
    const observer: DmaObserver = {
      dmaRead() {},
      faultResolved() {},
      unrecoverableFault() {},
      hostViolation() {},
    };
    device = new PciFunction(
      { name: 'dev', streamId: SID, pri, priCredits: credits, interfacePasids },
      iommu,
      deviceEnd,
      new RingProducer(buffer, completeOffset, completeGeometry),
      observer,
      { interrupt() {} },
    );
    iommu.bindEndpoint(SID, device);
  }

  function read(page: number, pasid = 1): number {
    const at = submit.claim();
    encodeDmaDescriptor(submit.words, at, {
      opcode: DMA_OP_READ,
      pasid,
      tag: ++tag,
      length: PAGE,
      va: VA + page * PAGE,
      flags: DMA_FLAG_VERIFY,
    });
    submit.push();
    device.service();
    return tag;
  }

  function completions(): { tag: number; status: number; bytes: number }[] {
    device.service();
    const out = [];
    const n = complete.poll();
    for (let i = 0; i < n; i++)
      out.push(decodeDmaCompletion(complete.words, complete.at(i), { tag: 0, status: 0, bytes: 0 }));
    complete.release(n);
    return out;
  }

  beforeEach(() => {
    tag = 0;
    setup(4);
  });

  test('Success means retry: once the page is resident the DMA completes with every byte', () => {
    const t = read(0);
    expect(groups).toHaveLength(1);
    expect(groups[0]).toMatchObject({ pasid: 1, ssv: true, count: 1 });
    expect(completions()).toEqual([]);
    spaces.table(1).map(VA, 0x3000);
    groups[0].respond(PRG_SUCCESS);
    expect(completions()).toEqual([{ tag: t, status: DMA_STATUS_OK, bytes: PAGE }]);
    expect(device.stats).toMatchObject({ pageRequests: 1, retries: 1, bytesMoved: PAGE });
  });

  test('an interface of a shared function refuses a descriptor naming a PASID it was not assigned', () => {
    setup(4, true, [1]);
    spaces.table(0).map(VA, 0x3000);
    const rid = read(0, 0);
    const neighbour = read(0, 2);
    expect(completions()).toEqual([
      { tag: rid, status: DMA_STATUS_BAD_DESCRIPTOR, bytes: 0 },
      { tag: neighbour, status: DMA_STATUS_BAD_DESCRIPTOR, bytes: 0 },
    ]);
    // Refused before translation: no page request, nothing read.
    expect(groups).toEqual([]);
    expect(device.stats).toMatchObject({ badDescriptors: 2, foreignPasids: 2, bytesMoved: 0 });
    const own = read(0, 1);
    expect(groups).toHaveLength(1);
    expect(groups[0].pasid).toBe(1);
    expect(own).toBe(3);
  });

  test('Success for a page still missing faults again: a new page request, not a wrong read', () => {
    read(0);
    groups[0].respond(PRG_SUCCESS);
    expect(completions()).toEqual([]);
    expect(groups).toHaveLength(2);
    expect(device.stats.bytesMoved).toBe(0);
  });

  test('Invalid Request fails the access, and PRI stays enabled for the next fault', () => {
    const t = read(0);
    groups[0].respond(PRG_INVALID);
    expect(completions()).toEqual([{ tag: t, status: DMA_STATUS_PAGE_INVALID, bytes: 0 }]);
    expect(device.pri.usable).toBe(true);
    read(1);
    expect(groups).toHaveLength(2);
  });

  test('Response Failure latches RF and stops page requests until reset', () => {
    const t = read(0);
    groups[0].respond(PRG_FAILURE);
    expect(completions()).toEqual([{ tag: t, status: DMA_STATUS_FAULT, bytes: 0 }]);
    expect(device.pri.responseFailure).toBe(true);
    const t2 = read(1);
    expect(groups).toHaveLength(1);
    expect(completions()).toEqual([{ tag: t2, status: DMA_STATUS_FAULT, bytes: 0 }]);
    device.pri.reset();
    read(2);
    expect(groups).toHaveLength(2);
  });

  test('credits are never exceeded: faults beyond the allocation wait for a response', () => {
    setup(2);
    for (let p = 0; p < 6; p++) read(p);
    expect(groups).toHaveLength(2);
    expect(device.pri.outstanding).toBe(2);
    expect(completions()).toEqual([]);
    for (let p = 0; p < 6; p++) spaces.table(1).map(VA + p * PAGE, 0x3000 + p * PAGE);
    groups[0].respond(PRG_SUCCESS);
    // The retried op completes; the freed credit lets the four waiting ops walk the now-mapped pages.
    const first = completions();
    expect(first).toHaveLength(5);
    expect(device.pri.outstanding).toBe(1);
    groups[1].respond(PRG_SUCCESS);
    expect(completions()).toHaveLength(1);
    expect(groups).toHaveLength(2);
    expect(device.pri.outstanding).toBe(0);
  });

  test('one response per group: a second answer is a counted no-op', () => {
    read(0);
    spaces.table(1).map(VA, 0x3000);
    const group = groups[0];
    const generation = group.generation;
    group.respond(PRG_SUCCESS);
    group.respond(PRG_SUCCESS);
    expect(completions()).toHaveLength(1);
    expect(device.stats.retries).toBe(1);
    expect(generation).not.toBe(group.generation);
  });

  test('a response with an unexpected PRG index is ignored and latches UPRGI', () => {
    read(0);
    device.prgResponse(1, true, 300, PRG_SUCCESS);
    expect(device.pri.unexpectedPrgIndex).toBe(true);
    expect(device.pri.outstanding).toBe(1);
    expect(completions()).toEqual([]);
  });

  test('without PRI a stage-1 miss fails the access at once', () => {
    setup(4, false);
    const t = read(0);
    expect(groups).toHaveLength(0);
    expect(completions()).toEqual([{ tag: t, status: DMA_STATUS_FAULT, bytes: 0 }]);
    expect(device.stats.unrecoverableFaults).toBe(1);
  });
});

describe('Stop PASID', () => {
  test('a stopped PASID emits one Stop Marker for its outstanding groups, which the IOPF layer drops unanswered', () => {
    const memory = GuestMemory.allocate(4);
    const spaces = new AddressSpaces(memory, new PageAllocator(memory));
    const ctx = spaces.installDevice(0, [0, 1]);
    const iommu = new Iommu();
    iommu.installStream(SID, { memory, cdTableGpa: ctx.cdTableGpa, cdLog2: ctx.cdLog2 });
    // The guest's CD table holds the PASIDs, so their page requests report through the RID.
    iommu.setUserPasidTable(SID, true);
    const groups: IopfGroup[] = [];
    iommu.setFaultHandler(SID, undefined, { handleGroup: (g) => groups.push(g) });
    const g = { log2Size: 4, recordWords: DMA_DESCRIPTOR_WORDS };
    const c = { log2Size: 4, recordWords: DMA_COMPLETION_WORDS };
    const buffer = new SharedArrayBuffer(ringBytes(g) + ringBytes(c));
    const submit = new RingProducer(buffer, 0, g);
    const observer: DmaObserver = {
      dmaRead() {},
      faultResolved() {},
      unrecoverableFault() {},
      hostViolation() {},
    };
    const device = new PciFunction(
      { name: 'dev', streamId: SID, pri: true, priCredits: 4 },
      iommu,
      new RingConsumer(buffer, 0, g),
      new RingProducer(buffer, ringBytes(g), c),
      observer,
      { interrupt() {} },
    );
    iommu.bindEndpoint(SID, device);
    encodeDmaDescriptor(submit.words, submit.claim(), {
      opcode: DMA_OP_READ,
      pasid: 1,
      tag: 1,
      length: PAGE,
      va: VA,
      flags: 0,
    });
    submit.push();
    device.service();
    expect(groups).toHaveLength(1);
    device.stopPasid(1);
    expect(device.stats.stopMarkers).toBe(1);
    expect(iommu.iopf.stats.stopMarkers).toBe(1);
    expect(groups).toHaveLength(1); // the marker made no group
    // The outstanding group still gets its one response; no new page request for PASID 1.
    groups[0].respond(PRG_SUCCESS);
    device.service();
    expect(groups).toHaveLength(1);
    expect(device.stats.unrecoverableFaults).toBe(1);
    expect(iommu.iopf.pending).toBe(0);
  });
});
