// The host VT-d driver (scalable mode) behind the real registry and the real IOMMU: nested HWPT
// checks, per-PASID attach into a host PASID table, stage-1 invalidation by HWPT, detach, and
// where a PASID's page requests go under each routing policy.
import { describe, expect, test } from 'vitest';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { type DmaObserver, PciFunction } from '../../../host/devices/pci-function.ts';
import { REGION_STRIDE } from '../../../host/iommu/host-memory.ts';
import { Iommu } from '../../../host/iommu/iommu.ts';
import {
  IOMMU_HWPT_DATA_ARM_SMMUV3,
  IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
  Smmuv3Ops,
} from '../../../host/iommu/smmuv3-ops.ts';
import { ACCESS_READ, newWalkResult } from '../../../host/iommu/stage1-walker.ts';
import {
  encodeVtdS1,
  encodeVtdS1Invalidate,
  IOMMU_HW_INFO_TYPE_INTEL_VTD,
  IOMMU_HWPT_DATA_VTD_S1,
  IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
  IOMMU_VTD_INV_FLAGS_LEAF,
  IOMMU_VTD_S1_EAFE,
  IOMMU_VTD_S1_SRE,
  IOMMU_VTD_S1_WPE,
  VTD_S1_BYTES,
  VtdOps,
} from '../../../host/iommu/vtd-ops.ts';
import {
  IOMMUFD_PAGE_RESP_SUCCESS,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  type PgfaultFields,
  pgfaultAddress,
  readPgfaultInto,
} from '../../../host/iommufd/eventq-records.ts';
import type { FaultFd } from '../../../host/iommufd/fault.ts';
import { IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_ALLOC_PASID } from '../../../host/iommufd/hwpt.ts';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from '../../../host/iommufd/ioas.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { U64_MAX } from '../../../host/iommufd/iova.ts';
import { VtdVmIommu } from '../../../host/vmm/vtd-vm-iommu.ts';
import { GuestMemory, PAGE_SIZE } from '../../../shared/guest-memory.ts';
import { DMA_COMPLETION_WORDS, DMA_DESCRIPTOR_WORDS } from '../../../shared/records/dma-descriptor.ts';
import { C_BAD_SUBSTREAMID, F_STREAM_DISABLED, F_TRANSLATION } from '../../../shared/records/event-types.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../../shared/ring.ts';
import { errnoOf, errorOf } from '../../support/iommufd-errors.ts';

const SID = 0x100;
const VA = 0x7e00_0000_5000;

/** One VMM's registry by hand: guest RAM at IOVA 0, a VT-d device, a NEST_PARENT HWPT over it. */
function handBuilt(iommu = new Iommu({ iotlbEntries: 64 }), ops = new VtdOps(iommu)) {
  const memory = GuestMemory.allocate(1);
  const spaces = new AddressSpaces(memory, new PageAllocator(memory));
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const userVa = fd.memory.mmap(BigInt(memory.size), { hpa: iommu.host.register(memory) });
  fd.ioasMap({
    flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
    ioasId,
    userVa,
    length: BigInt(memory.size),
    iova: 0n,
  });
  const devId = fd.bindDevice({ device: ops.device(SID, 20) }).devId;
  const parentId = fd.hwptAlloc({ flags: IOMMU_HWPT_ALLOC_NEST_PARENT, devId, ptId: ioasId }).hwptId;
  const nested = (data: Uint8Array, dataType = IOMMU_HWPT_DATA_VTD_S1, ptId = parentId) =>
    fd.hwptAlloc({ flags: IOMMU_HWPT_ALLOC_PASID, devId, ptId, dataType, data }).hwptId;
  /** A nested HWPT over PASID `pasid`'s guest table, attached to that PASID. */
  const attachPasid = (pasid: number) => {
    const hwptId = nested(encodeVtdS1(spaces.table(pasid).rootGpa));
    fd.attachDevice({ devId, pasid, ptId: hwptId });
    return hwptId;
  };
  return { iommu, ops, memory, spaces, fd, ioasId, devId, parentId, nested, attachPasid };
}

/** A guest's VT-d set-up: one VM, its PASID table for `pasids` of the function at SID. */
function vm(
  ops: VtdOps,
  pasids: readonly number[],
  ownsRid = true,
  routing: 'ioasid-owner' | 'device-owner' = 'ioasid-owner',
) {
  const memory = GuestMemory.allocate(1);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  const registry = new VtdVmIommu(ops, memory, [{ streamId: SID, ownsRid }], routing);
  registry.installContexts([spaces.installDevice(SID, pasids)]);
  /** Map `va` of `pasid` to a page (a fresh one, or `gpa`) filled with `marker`; returns its GPA. */
  const mapMarked = (pasid: number, va: number, marker: number, gpa = pages.allocZeroed()) => {
    memory.words.fill(marker, gpa >>> 2, (gpa + PAGE_SIZE) >>> 2);
    expect(spaces.table(pasid).map(va, gpa)).toBe(true);
    return gpa;
  };
  return { memory, spaces, registry, mapMarked };
}

const noObserver: DmaObserver = {
  dmaRead() {},
  faultResolved() {},
  unrecoverableFault() {},
  hostViolation() {},
};

/** The physical function at `streamId` with PRI, as the IOMMU's PRI endpoint. */
function pciFunction(iommu: Iommu, streamId: number, credits = 8): PciFunction {
  const submit = { log2Size: 1, recordWords: DMA_DESCRIPTOR_WORDS };
  const complete = { log2Size: 1, recordWords: DMA_COMPLETION_WORDS };
  const completeAt = Math.ceil(ringBytes(submit) / 64) * 64;
  const buffer = new SharedArrayBuffer(completeAt + ringBytes(complete));
  const device = new PciFunction(
    { name: 'fn', streamId, pri: true, priCredits: credits },
    iommu,
    new RingConsumer(buffer, 0, submit),
    new RingProducer(buffer, completeAt, complete),
    noObserver,
    { interrupt() {} },
  );
  iommu.bindEndpoint(streamId, device);
  return device;
}

/** Every iommu_hwpt_pgfault record a fault fd has now. */
function readFaults(faultFd: FaultFd): PgfaultFields[] {
  const buffer = new Uint8Array(16 * PGFAULT_BYTES);
  const view = new DataView(buffer.buffer);
  const out: PgfaultFields[] = [];
  for (let bytes = faultFd.read(buffer); bytes > 0; bytes = faultFd.read(buffer)) {
    for (let at = 0; at < bytes; at += PGFAULT_BYTES) out.push(readPgfaultInto(view, at, newPgfaultFields()));
  }
  return out;
}

function respond(faultFd: FaultFd, cookie: number, code: number): void {
  const reply = new Uint8Array(PAGE_RESPONSE_BYTES);
  const view = new DataView(reply.buffer);
  view.setUint32(0, cookie, true);
  view.setUint32(4, code, true);
  expect(faultFd.write(reply)).toBe(PAGE_RESPONSE_BYTES);
}

function deviceIdOf(fd: Iommufd): number {
  const device = fd.objects().find((o) => o.type === 'DEVICE');
  if (!device) throw new Error('no DEVICE in this registry');
  return device.id;
}

describe('VT-d nested HWPT allocation (struct iommu_hwpt_vtd_s1)', () => {
  test('a well-formed struct is accepted, with every known flag', () => {
    const { nested, spaces, fd } = handBuilt();
    const root = spaces.table(1).rootGpa;
    const flags = IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_EAFE | IOMMU_VTD_S1_WPE;
    const id = nested(encodeVtdS1(root, 48, flags));
    expect(fd.lookup(id, 'HWPT_NESTED').type).toBe('HWPT_NESTED');
  });

  test('a data type other than IOMMU_HWPT_DATA_VTD_S1 is EOPNOTSUPP', () => {
    const { nested, spaces } = handBuilt();
    const data = encodeVtdS1(spaces.table(1).rootGpa);
    expect(errnoOf(() => nested(data, IOMMU_HWPT_DATA_ARM_SMMUV3))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => nested(data, 0x7f))).toBe('EOPNOTSUPP');
  });

  test('a parent that is not NEST_PARENT is EINVAL, through the registry and at the driver', () => {
    const { fd, devId, ioasId, nested, spaces, ops } = handBuilt();
    const data = encodeVtdS1(spaces.table(1).rootGpa);
    const plain = fd.hwptAlloc({ flags: IOMMU_HWPT_ALLOC_PASID, devId, ptId: ioasId }).hwptId;
    expect(errnoOf(() => nested(data, IOMMU_HWPT_DATA_VTD_S1, plain))).toBe('EINVAL');
    // The driver's own check, for a caller that is not the registry.
    const device = ops.device(SID, 20);
    const flags = { nestParent: false, dirtyTracking: false, pasid: true };
    const domain = ops.allocPaging(device, flags, 0, new Uint8Array(0));
    expect(() => ops.allocNested(device, domain, IOMMU_HWPT_DATA_VTD_S1, data, undefined)).toThrow(
      /^EINVAL: /,
    );
  });

  test('a wrong length, unknown flags, a reserved word, an unaligned table or addr_width != 48 are EINVAL', () => {
    const { nested, spaces, fd } = handBuilt();
    const root = spaces.table(1).rootGpa;
    const before = fd.objects().length;
    const long = new Uint8Array(VTD_S1_BYTES + 8);
    long.set(encodeVtdS1(root));
    expect(errnoOf(() => nested(encodeVtdS1(root).subarray(0, 16)))).toBe('EINVAL');
    expect(errnoOf(() => nested(long))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root, 48, 8)))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root, 48, 0x8000_0000)))).toBe('EINVAL');
    const reserved = encodeVtdS1(root);
    reserved[20] = 1;
    expect(errnoOf(() => nested(reserved))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root + 0x800)))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root + 8)))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root, 57)))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root, 39)))).toBe('EINVAL');
    // A refused allocation leaves nothing behind.
    expect(fd.objects().length).toBe(before);
    expect(fd.reservedIds).toBe(0);
  });

  test('flag bits above bit 31 of the u64 flags are unknown flags too (EINVAL)', () => {
    const { nested, spaces } = handBuilt();
    const root = spaces.table(1).rootGpa;
    expect(errnoOf(() => nested(encodeVtdS1(root, 48, 2 ** 32)))).toBe('EINVAL');
    expect(errnoOf(() => nested(encodeVtdS1(root, 48, 2 ** 40 + IOMMU_VTD_S1_SRE)))).toBe('EINVAL');
  });

  test('a pgtbl_addr whose low 12 bits are set is unaligned even above 2^53 (EINVAL)', () => {
    const { nested } = handBuilt();
    const data = encodeVtdS1(0);
    const view = new DataView(data.buffer);
    view.setBigUint64(8, (1n << 60n) | 0x800n, true);
    expect(errnoOf(() => nested(data))).toBe('EINVAL');
    // 2^63 + 0x400 is not a double: read as a number it rounds to 2^63, which looks aligned.
    view.setBigUint64(8, (1n << 63n) | 0x400n, true);
    expect(errnoOf(() => nested(data))).toBe('EINVAL');
  });

  test('VT-d has no vIOMMU: viommuAlloc and a nested HWPT through a vIOMMU are EOPNOTSUPP', () => {
    const iommu = new Iommu({ iotlbEntries: 64 });
    const { fd, devId, ioasId, spaces, ops, parentId } = handBuilt(iommu);
    expect(
      errnoOf(() => fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3, devId, hwptId: parentId })),
    ).toBe('EOPNOTSUPP');
    expect(() => ops.allocViommu()).toThrow(/EOPNOTSUPP/);
    // An SMMUv3 function behind the same physical IOMMU has a vIOMMU; the VT-d device still cannot
    // allocate through it: the driver refuses any nested domain that comes with a vIOMMU.
    const smmu = new Smmuv3Ops(iommu);
    const smmuDev = fd.bindDevice({ device: smmu.device(0x200, 20) }).devId;
    const smmuParent = fd.hwptAlloc({
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
      devId: smmuDev,
      ptId: ioasId,
    }).hwptId;
    const viommuId = fd.viommuAlloc({
      type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
      devId: smmuDev,
      hwptId: smmuParent,
    }).viommuId;
    const before = fd.objects().length;
    expect(
      errnoOf(() =>
        fd.hwptAlloc({
          devId,
          ptId: viommuId,
          dataType: IOMMU_HWPT_DATA_VTD_S1,
          data: encodeVtdS1(spaces.table(1).rootGpa),
        }),
      ),
    ).toBe('EOPNOTSUPP');
    expect(fd.objects().length).toBe(before);
  });
});

describe('VT-d per-PASID attach (host PASID table)', () => {
  const out = newWalkResult();

  test('only attached PASIDs translate; any other PASID is C_BAD_SUBSTREAMID', () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const a = vm(ops, [1, 2]);
    const gpa1 = a.mapMarked(1, VA, 0x1111_1111);
    const gpa2 = a.mapMarked(2, VA, 0x2222_2222);
    expect(a.registry.rejectedEntries).toBe(0);
    expect(ops.iommu.translate(SID, 1, VA + 0x24, ACCESS_READ, out)).toBe(true);
    expect(out.gpa).toBe(gpa1 + 0x24);
    expect(out.memory).toBe(a.memory);
    expect(out.memory?.words[out.offset >>> 2]).toBe(0x1111_1111);
    expect(ops.iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.gpa).toBe(gpa2);
    for (const pasid of [0, 3, 255]) {
      expect(ops.iommu.translate(SID, pasid, VA, ACCESS_READ, out)).toBe(false);
      expect(out.fault).toBe(C_BAD_SUBSTREAMID);
      expect(out.stage2).toBe(false);
    }
    // An attached PASID with nothing mapped at the address is the guest's stage-1 fault.
    expect(ops.iommu.translate(SID, 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
    expect(out.stage2).toBe(false);
  });

  test('two VMs sharing one function translate their disjoint PASIDs into their own RAM', () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const a = vm(ops, [0, 1]);
    const b = vm(ops, [2], false);
    // Both guests use the same GPA (their last page): only stage 2 tells them apart.
    const gpa = a.memory.size - PAGE_SIZE;
    a.mapMarked(1, VA, 0x0a0a_0a0a, gpa);
    b.mapMarked(2, VA, 0x0b0b_0b0b, gpa);
    expect(ops.iommu.translate(SID, 1, VA + 0x40, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(a.memory);
    expect(out.offset).toBe(gpa + 0x40);
    expect(out.memory?.words[out.offset >>> 2]).toBe(0x0a0a_0a0a);
    expect(ops.iommu.translate(SID, 2, VA + 0x40, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(b.memory);
    expect(out.offset).toBe(gpa + 0x40);
    expect(out.memory?.words[out.offset >>> 2]).toBe(0x0b0b_0b0b);
    // Repeats come from the IOTLB and still land in the right VM.
    const hits = ops.iommu.stats.iotlbHits;
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(a.memory);
    expect(ops.iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(b.memory);
    expect(ops.iommu.stats.iotlbHits).toBe(hits + 2);
    expect(a.registry.rejectedEntries + b.registry.rejectedEntries).toBe(0);
  });

  test('a PASID another handle holds is EBUSY, and VtdVmIommu counts it instead of throwing', () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const a = vm(ops, [0, 1]);
    a.mapMarked(1, VA, 0x0a0a_0a0a);
    // B's PASID table claims A's PASID 1 and the RID it does not own, and its own PASID 2.
    const b = vm(ops, [0, 1, 2], false);
    expect(b.registry.rejectedEntries).toBe(2);
    b.mapMarked(2, VA, 0x0b0b_0b0b);
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(a.memory);
    expect(ops.iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(b.memory);
    // The registry call itself, from a third handle on the same function.
    const c = handBuilt(ops.iommu, ops);
    const hwptId = c.nested(encodeVtdS1(c.spaces.table(1).rootGpa));
    expect(errnoOf(() => c.fd.attachDevice({ devId: c.devId, pasid: 1, ptId: hwptId }))).toBe('EBUSY');
    // The failed attach holds nothing: the HWPT can go, and PASID 1 still belongs to A.
    c.fd.destroy({ id: hwptId });
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(a.memory);
  });
  test("replacing a PASID's HWPT switches its table and drops what it had cached", () => {
    const { iommu, spaces, fd, devId, attachPasid, nested } = handBuilt();
    const first = attachPasid(1);
    spaces.table(1).map(VA, 0x8000);
    spaces.table(3).map(VA, 0xa000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.offset).toBe(0x8000);
    const second = nested(encodeVtdS1(spaces.table(3).rootGpa));
    expect(fd.replaceDevice({ devId, pasid: 1, ptId: second })).toEqual({ ptId: second });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.offset).toBe(0xa000);
    // The old HWPT is no longer attached anywhere: it can be destroyed.
    fd.destroy({ id: first });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
  });

  test('unmapping guest RAM from the IOAS drops cached translations: the next access is a stage-2 fault', () => {
    const { iommu, spaces, fd, ioasId, attachPasid, memory } = handBuilt();
    attachPasid(1);
    spaces.table(1).map(VA, 0x8000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(fd.ioasUnmap({ ioasId, iova: 0n, length: BigInt(memory.size) })).toEqual({
      length: BigInt(memory.size),
    });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.stage2).toBe(true);
  });

  test('GET_HW_INFO reports the VT-d type with nesting, PRS, PASID and first-stage support', () => {
    const { fd, devId } = handBuilt();
    const data = new Uint8Array(24);
    const info = fd.getHwInfo({ devId, dataLen: 24, data });
    expect(info).toMatchObject({ dataType: IOMMU_HW_INFO_TYPE_INTEL_VTD, dataLen: 24, maxPasidLog2: 20 });
    const ecap = new DataView(data.buffer).getBigUint64(16, true);
    for (const bit of [26n, 29n, 40n, 43n, 46n, 47n]) expect((ecap >> bit) & 1n).toBe(1n);
  });
});

describe('VT-d stage-1 invalidation (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1)', () => {
  const out = newWalkResult();
  const invalidate = (fd: Iommufd, hwptId: number, ...entries: Uint8Array[]) => {
    const data = new Uint8Array(24 * entries.length);
    entries.forEach((e, i) => {
      data.set(e, 24 * i);
    });
    return fd.hwptInvalidate({
      hwptId,
      dataType: IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
      entryLen: 24,
      entryNum: entries.length,
      data,
    });
  };
  const entry = (addr: bigint, npages: bigint, flags = 0, reserved = 0) => {
    const data = new Uint8Array(24);
    const view = new DataView(data.buffer);
    view.setBigUint64(0, addr, true);
    view.setBigUint64(8, npages, true);
    view.setUint32(16, flags, true);
    view.setUint32(20, reserved, true);
    return data;
  };

  test('after the guest unmaps, a page-selective HWPT_INVALIDATE makes the cached translation fault', () => {
    const { iommu, spaces, fd, attachPasid } = handBuilt();
    const hwpt1 = attachPasid(1);
    attachPasid(2);
    spaces.table(1).map(VA, 0x8000);
    spaces.table(2).map(VA, 0x9000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    const hits = iommu.stats.iotlbHits;
    expect(iommu.translate(SID, 1, VA + 8, ACCESS_READ, out)).toBe(true);
    expect(iommu.stats.iotlbHits).toBe(hits + 1);
    spaces.table(1).unmap(VA);
    spaces.table(2).unmap(VA);
    // The IOTLB still holds the old translation until the guest invalidates (hits report the
    // output page through `offset`; guest RAM sits at IOVA 0, so it equals the GPA).
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.offset).toBe(0x8000);
    // A range that misses the page leaves it cached.
    expect(invalidate(fd, hwpt1, encodeVtdS1Invalidate(VA + PAGE_SIZE, 1))).toEqual({ entryNum: 1 });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(invalidate(fd, hwpt1, encodeVtdS1Invalidate(VA, 1))).toEqual({ entryNum: 1 });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
    expect(out.stage2).toBe(false);
    // PASID 2's HWPT was not invalidated: its stale entry remains (the guest owes that TLBI).
    expect(iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.offset).toBe(0x9000);
  });

  test('addr 0 with U64_MAX pages invalidates every address of the HWPT', () => {
    const { iommu, spaces, fd, attachPasid } = handBuilt();
    const hwpt = attachPasid(1);
    spaces.table(1).map(VA, 0x8000);
    spaces.table(1).map(VA + 0x40_0000, 0xa000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.translate(SID, 1, VA + 0x40_0000, ACCESS_READ, out)).toBe(true);
    spaces.table(1).unmap(VA);
    spaces.table(1).unmap(VA + 0x40_0000);
    expect(
      invalidate(fd, hwpt, encodeVtdS1Invalidate(0), entry(0n, U64_MAX, IOMMU_VTD_INV_FLAGS_LEAF)),
    ).toEqual({ entryNum: 2 });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(iommu.translate(SID, 1, VA + 0x40_0000, ACCESS_READ, out)).toBe(false);
  });

  test('unknown flags or a reserved word are EOPNOTSUPP; an unaligned addr or U64_MAX pages from addr != 0 EINVAL', () => {
    const { fd, attachPasid } = handBuilt();
    const hwpt = attachPasid(1);
    const good = encodeVtdS1Invalidate(VA, 1);
    const va = BigInt(VA);
    expect(errnoOf(() => invalidate(fd, hwpt, entry(va, 1n, 2)))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => invalidate(fd, hwpt, entry(va, 1n, 0, 1)))).toBe('EOPNOTSUPP');
    expect(errnoOf(() => invalidate(fd, hwpt, entry(va + 0x10n, 1n)))).toBe('EINVAL');
    expect(errnoOf(() => invalidate(fd, hwpt, entry(va, U64_MAX)))).toBe('EINVAL');
    // Entries before the bad one were carried out: entry_num says how many.
    const error = errorOf(() => invalidate(fd, hwpt, good, good, entry(va, 1n, 2)));
    expect(error.errno).toBe('EOPNOTSUPP');
    expect(error.output.entryNum).toBe(2);
    expect(errorOf(() => invalidate(fd, hwpt, entry(va + 1n, 1n), good)).output.entryNum).toBe(0);
  });

  test('the registry checks the format first: another data type, another length, or a paging HWPT', () => {
    const { fd, attachPasid, parentId } = handBuilt();
    const hwpt = attachPasid(1);
    const data = new Uint8Array(32);
    data.set(encodeVtdS1Invalidate(VA, 1));
    const call = (args: { hwptId?: number; dataType?: number; entryLen?: number }) =>
      fd.hwptInvalidate({
        hwptId: args.hwptId ?? hwpt,
        dataType: args.dataType ?? IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        entryLen: args.entryLen ?? 24,
        entryNum: 1,
        data,
      });
    expect(call({})).toEqual({ entryNum: 1 });
    expect(errnoOf(() => call({ dataType: IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 + 1 }))).toBe('EINVAL');
    expect(errnoOf(() => call({ entryLen: 16 }))).toBe('EINVAL');
    expect(errnoOf(() => call({ entryLen: 32 }))).toBe('EINVAL');
    expect(errnoOf(() => call({ hwptId: parentId }))).toBe('EINVAL');
  });
});

describe('VT-d detach and teardown', () => {
  const out = newWalkResult();

  test('detaching a PASID blocks it; detaching the last one removes the stream', () => {
    const { iommu, spaces, fd, devId, attachPasid } = handBuilt();
    attachPasid(1);
    attachPasid(2);
    spaces.table(1).map(VA, 0x8000);
    spaces.table(2).map(VA, 0x9000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    fd.detachDevice({ devId, pasid: 1 });
    // Blocked at once, although PASID 1's translation was cached.
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(C_BAD_SUBSTREAMID);
    expect(iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.contextOf(SID)).toBeDefined();
    fd.detachDevice({ devId, pasid: 2 });
    expect(iommu.contextOf(SID)).toBeUndefined();
    expect(iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_STREAM_DISABLED);
    // Attaching again installs the stream afresh.
    attachPasid(2);
    expect(iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.offset).toBe(0x9000);
  });

  test("a handle's detach of a PASID it does not hold changes nothing", () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const a = vm(ops, [1]);
    a.mapMarked(1, VA, 7);
    const other = ops.device(SID, 20);
    ops.detach(other, 1);
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(a.memory);
  });

  test('teardown leaves no object, no stream, no pending group and no host memory region', () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const device = pciFunction(ops.iommu, SID);
    const a = vm(ops, [0, 1]);
    a.mapMarked(1, VA, 1);
    expect(ops.iommu.host.regionOf(REGION_STRIDE)).toBe(a.memory);
    expect(device.injectPageRequest(1, VA + PAGE_SIZE, false)).toBe(true);
    expect(a.registry.fd.pendingFaultGroups).toBe(1);
    expect(a.registry.fd.objects().map((o) => o.type)).toContain('HWPT_NESTED');
    a.registry.teardown();
    expect(a.registry.fd.objects()).toEqual([]);
    expect(a.registry.fd.reservedIds).toBe(0);
    expect(ops.iommu.contextOf(SID)).toBeUndefined();
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_STREAM_DISABLED);
    // The group nobody read was answered INVALID on the guest's behalf; its credit came back.
    expect(a.registry.fault.stats.autoResponded).toBe(1);
    expect(device.pri.outstanding).toBe(0);
    expect(ops.iommu.iopf.pending).toBe(0);
    expect(ops.iommu.host.regionOf(REGION_STRIDE)).toBeUndefined();
    // A second teardown is a no-op.
    expect(() => a.registry.teardown()).not.toThrow();
  });

  test("one VM's teardown on a shared function leaves the other VM's PASIDs translating", () => {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const a = vm(ops, [0, 1]);
    const b = vm(ops, [2], false);
    a.mapMarked(1, VA, 1);
    b.mapMarked(2, VA, 2);
    a.registry.teardown();
    expect(ops.iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(C_BAD_SUBSTREAMID);
    expect(ops.iommu.translate(SID, 2, VA, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(b.memory);
    b.registry.teardown();
    expect(ops.iommu.contextOf(SID)).toBeUndefined();
  });
});

describe('VT-d page-request routing between two VMs on one function', () => {
  function shared(routing: 'ioasid-owner' | 'device-owner') {
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64, routePasidsToRid: routing === 'device-owner' }));
    const device = pciFunction(ops.iommu, SID);
    const a = vm(ops, [0, 1], true, routing);
    const b = vm(ops, [2], false, routing);
    return { ops, device, a, b };
  }

  test("device-owner: a PASID's page request reaches the RID holder's fault queue", () => {
    const { device, a, b } = shared('device-owner');
    expect(device.injectPageRequest(2, VA + 0x123, true)).toBe(true);
    expect(b.registry.faultFd.readable).toBe(false);
    const [record, ...rest] = readFaults(a.registry.faultFd);
    expect(rest).toEqual([]);
    expect(record).toMatchObject({
      devId: deviceIdOf(a.registry.fd),
      pasid: 2,
      flags: PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE,
    });
    expect(pgfaultAddress(record)).toBe(VA);
    expect(a.registry.vsidOf(record.devId)).toBe(0);
    expect(readFaults(b.registry.faultFd)).toEqual([]);
    // A's answer reaches the function: its credit comes back.
    expect(device.pri.outstanding).toBe(1);
    respond(a.registry.faultFd, record.cookie, IOMMUFD_PAGE_RESP_SUCCESS);
    expect(device.pri.outstanding).toBe(0);
    expect(a.registry.fault.stats.responded).toBe(1);
  });

  test("ioasid-owner: a PASID's page request reaches the fault queue of the VM that attached it", () => {
    const { device, a, b } = shared('ioasid-owner');
    expect(device.injectPageRequest(2, VA, false)).toBe(true);
    expect(device.injectPageRequest(1, VA, false)).toBe(true);
    const inB = readFaults(b.registry.faultFd);
    const inA = readFaults(a.registry.faultFd);
    expect(inB.map((r) => r.pasid)).toEqual([2]);
    expect(inB[0].devId).toBe(deviceIdOf(b.registry.fd));
    expect(inA.map((r) => r.pasid)).toEqual([1]);
    respond(b.registry.faultFd, inB[0].cookie, IOMMUFD_PAGE_RESP_SUCCESS);
    respond(a.registry.faultFd, inA[0].cookie, IOMMUFD_PAGE_RESP_SUCCESS);
    expect(device.pri.outstanding).toBe(0);
    expect(a.registry.fd.pendingFaultGroups + b.registry.fd.pendingFaultGroups).toBe(0);
  });

  test("ioasid-owner: a PASID nobody attached is answered INVALID at once, never the RID holder's", () => {
    const { ops, device, a, b } = shared('ioasid-owner');
    expect(device.injectPageRequest(3, VA, false)).toBe(true);
    expect(readFaults(a.registry.faultFd)).toEqual([]);
    expect(readFaults(b.registry.faultFd)).toEqual([]);
    // Answered by the IOMMU core (the credit is back), and counted.
    expect(device.pri.outstanding).toBe(0);
    expect(ops.iommu.iopf.stats.answeredWithoutHandler).toBe(1);
  });

  test('a PASID attached to a domain without a fault queue is answered INVALID, not sent to the RID', () => {
    // Under device-owner routing the VMM gives a PASID's HWPT no fault queue; an IOMMU that does
    // not route PASIDs to their RID (Linux's VT-d) answers such a group at once.
    const ops = new VtdOps(new Iommu({ iotlbEntries: 64 }));
    const device = pciFunction(ops.iommu, SID);
    const a = vm(ops, [0, 1], true, 'device-owner');
    const b = vm(ops, [2], false, 'device-owner');
    expect(device.injectPageRequest(2, VA, false)).toBe(true);
    expect(device.injectPageRequest(1, VA, false)).toBe(true);
    expect(readFaults(a.registry.faultFd)).toEqual([]);
    expect(readFaults(b.registry.faultFd)).toEqual([]);
    expect(device.pri.outstanding).toBe(0);
    expect(ops.iommu.iopf.stats.answeredWithoutHandler).toBe(2);
  });

  test("a detached PASID's requests are answered INVALID, and the RID holder never sees them", () => {
    const { ops, device, a, b } = shared('ioasid-owner');
    b.registry.teardownOp('detach');
    expect(device.injectPageRequest(2, VA, false)).toBe(true);
    expect(readFaults(a.registry.faultFd)).toEqual([]);
    expect(device.pri.outstanding).toBe(0);
    expect(ops.iommu.iopf.stats.answeredWithoutHandler).toBe(1);
  });

  test('a request without a PASID is the RID owner’s under either policy', () => {
    for (const routing of ['ioasid-owner', 'device-owner'] as const) {
      const { device, a, b } = shared(routing);
      expect(device.injectPageRequest(0, VA, false)).toBe(true);
      const inA = readFaults(a.registry.faultFd);
      expect(inA).toHaveLength(1);
      expect(inA[0].flags & PGFAULT_FLAGS_PASID_VALID).toBe(0);
      expect(b.registry.faultFd.readable).toBe(false);
    }
  });
});
