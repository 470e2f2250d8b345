// The physical IOMMU model with its IOTLB, driven through the host SMMUv3 driver and the registry.
import { beforeEach, describe, expect, test } from 'vitest';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { Iommu } from '../../../host/iommu/iommu.ts';
import {
  encodeVste,
  IOMMU_HWPT_DATA_ARM_SMMUV3,
  IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
  IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
  Smmuv3Ops,
} from '../../../host/iommu/smmuv3-ops.ts';
import { ACCESS_READ, ACCESS_WRITE, newWalkResult } from '../../../host/iommu/stage1-walker.ts';
import { IOMMU_HWPT_ALLOC_NEST_PARENT } from '../../../host/iommufd/hwpt.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { GuestMemory, PAGE_SIZE } from '../../../shared/guest-memory.ts';
import { CLASS_CD, CLASS_IN, F_PERMISSION, F_TRANSLATION } from '../../../shared/records/event-types.ts';
import { CD_RECORD, clearEntry, ENTRY_BYTES, tableIndex } from '../../../shared/stage1-format.ts';

const VA = 0x7e00_0000_5000;
const SID = 0x100;

describe('IOMMU translation with the IOTLB', () => {
  let memory: GuestMemory;
  let spaces: AddressSpaces;
  let iommu: Iommu;
  let fd: Iommufd;
  let viommuId: number;
  let devId: number;
  let parentId: number;
  const out = newWalkResult();

  /** One guest command through the vIOMMU's invalidation (the VMM's HWPT_INVALIDATE). */
  const guestCommand = (fill: (view: DataView) => void) => {
    const cmd = new Uint8Array(16);
    fill(new DataView(cmd.buffer));
    fd.hwptInvalidate({
      hwptId: viommuId,
      dataType: IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
      entryLen: 16,
      entryNum: 1,
      data: cmd,
    });
  };
  const tlbiNhVa = (va: number) =>
    guestCommand((view) => {
      view.setUint8(0, 0x12); // CMD_TLBI_NH_VA
      view.setBigUint64(8, BigInt(va), true);
    });

  beforeEach(() => {
    memory = GuestMemory.allocate(2);
    spaces = new AddressSpaces(memory, new PageAllocator(memory));
    const device = spaces.installDevice(0, [0, 1]);
    iommu = new Iommu({ iotlbEntries: 64 });
    const ops = new Smmuv3Ops(iommu);
    fd = new Iommufd();
    const { ioasId } = fd.ioasAlloc();
    // The VMM's mapping of guest RAM: backed by the RAM's host-physical pages.
    const userVa = fd.memory.mmap(BigInt(memory.size), { hpa: iommu.host.register(memory) });
    fd.ioasMap({ flags: 1 | 2 | 4, ioasId, userVa, length: BigInt(memory.size), iova: 0n });
    devId = fd.bindDevice({ device: ops.device(SID, 20) }).devId;
    const { hwptId } = fd.hwptAlloc({ flags: IOMMU_HWPT_ALLOC_NEST_PARENT, devId, ptId: ioasId });
    parentId = hwptId;
    viommuId = fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3, devId, hwptId }).viommuId;
    fd.vdeviceAlloc({ viommuId, devId, virtId: 0n });
    const nested = fd.hwptAlloc({
      devId,
      ptId: viommuId,
      dataType: IOMMU_HWPT_DATA_ARM_SMMUV3,
      data: encodeVste(device.cdTableGpa, device.cdLog2),
    }).hwptId;
    fd.attachDevice({ devId, ptId: nested });
  });

  test('a DMA through the nested translation lands on the GPA the guest mapped; a second one hits the IOTLB', () => {
    spaces.table(1).map(VA, 0x8000);
    expect(iommu.translate(SID, 1, VA + 0x10, ACCESS_READ, out)).toBe(true);
    expect(out.gpa).toBe(0x8010);
    // Stage 2 took GPA 0x8010 to the host-physical page of the VM's RAM region.
    expect(out.memory).toBe(memory);
    expect(out.offset).toBe(0x8010);
    expect(out.hpa % 2 ** 36).toBe(0x8010);
    expect(out.hpa).toBeGreaterThanOrEqual(2 ** 36);
    expect(iommu.translate(SID, 1, VA + 0x20, ACCESS_READ, out)).toBe(true);
    expect(out.memory).toBe(memory);
    expect(out.offset).toBe(0x8020);
    expect(iommu.stats).toMatchObject({ translations: 2, walks: 1, iotlbHits: 1, iotlbMisses: 1 });
  });

  test('a cached entry never grants an access its leaf forbids: the access walks and faults', () => {
    spaces.table(1).map(VA, 0x8000, 1 /* read-only */);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.translate(SID, 1, VA, ACCESS_WRITE, out)).toBe(false);
    expect(out.fault).toBe(F_PERMISSION);
  });

  test('after the guest unmaps and its TLBI completes, no DMA uses the old translation', () => {
    const table = spaces.table(1);
    table.map(VA, 0x8000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    // The guest clears its leaf entry: until it invalidates, the IOTLB may still translate.
    const leaf = (va: number) => {
      let t = table.rootGpa;
      for (let level = 0; level < 3; level++) {
        const slot = t + tableIndex(va >>> 0, Math.floor(va / 2 ** 32), level) * ENTRY_BYTES;
        t = (memory.words[slot >>> 2] & ~0xfff) >>> 0;
      }
      return t + tableIndex(va >>> 0, Math.floor(va / 2 ** 32), 3) * ENTRY_BYTES;
    };
    clearEntry(memory.words, leaf(VA));
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true); // stale but allowed before the TLBI
    tlbiNhVa(VA);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
  });

  test('the walk that faults at the last level leaves its table in the walk cache; the TLBI drops it', () => {
    const table = spaces.table(1);
    table.map(VA + PAGE_SIZE, 0x9000); // the last-level table over VA exists; VA's own entry does not
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
    const walks = iommu.iotlb.walks;
    expect(walks.occupancy).toBe(1);
    // The guest pages VA in and breaks its root without invalidating: the retry starts from the
    // cached last-level table, as an SMMU's walk cache may until the TLBI.
    table.map(VA, 0x8000);
    clearEntry(memory.words, table.rootGpa + tableIndex(VA >>> 0, Math.floor(VA / 2 ** 32), 0) * ENTRY_BYTES);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(out.gpa).toBe(0x8000);
    expect(walks.hits).toBe(1);
    tlbiNhVa(VA);
    expect(walks.occupancy).toBe(0);
    // The whole walk now meets the cleared root.
    expect(iommu.translate(SID, 1, VA + 2 * PAGE_SIZE, ACCESS_READ, out)).toBe(false);
    expect(out).toMatchObject({ fault: F_TRANSLATION, stage2: false });
    expect(walks.occupancy).toBe(0);
  });

  test("CFGI_CD drops the PASID's walk cache entries with its CD: the next walk reads the CD again", () => {
    spaces.table(1).map(VA, 0x8000);
    spaces.table(0).map(VA, 0xa000);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.translate(SID, 0, VA, ACCESS_READ, out)).toBe(true);
    expect(iommu.iotlb.walks.occupancy).toBe(2);
    guestCommand((view) => {
      view.setUint32(0, 0x05 | (1 << 12), true); // CMD_CFGI_CD, SSID 1
      view.setUint32(4, 0, true); // the guest's StreamID
    });
    expect(iommu.iotlb.walks.occupancy).toBe(1);
    expect(iommu.iotlb.occupancy).toBe(1);
  });

  test('a host stage-2 unmap invalidates the streams over it before it returns, and the DMA then faults at stage 2', () => {
    spaces.table(1).map(VA, 0x8000);
    iommu.translate(SID, 1, VA, ACCESS_READ, out);
    expect(iommu.iotlb.occupancy).toBe(1);
    fd.ioasUnmap({ ioasId: 1, iova: 0n, length: (1n << 64n) - 1n });
    expect(iommu.iotlb.occupancy).toBe(0);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    // The CD itself is no longer reachable: a stage-2 fault on the CD fetch, the host's.
    expect(out).toMatchObject({ fault: F_TRANSLATION, stage2: true, faultClass: CLASS_CD });
    expect(iommu.stats.stage2Faults).toBe(1);
  });

  test('a guest table pointing outside its IOAS faults at stage 2 on the output, and moves nothing', () => {
    spaces.table(1).map(VA, memory.size + 0x1000); // a GPA the VM's IOAS does not map
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out).toMatchObject({
      fault: F_TRANSLATION,
      stage2: true,
      faultClass: CLASS_IN,
      fetchAddress: memory.size + 0x1000,
    });
    expect(iommu.stats).toMatchObject({ stage1Faults: 0, stage2Faults: 1 });
  });

  test('a read-only stage 2 refuses a DMA write with a stage-2 permission fault', () => {
    const ro = new Iommufd();
    const { ioasId } = ro.ioasAlloc();
    const iommu2 = new Iommu();
    const ops2 = new Smmuv3Ops(iommu2);
    const userVa = ro.memory.mmap(BigInt(memory.size), { hpa: iommu2.host.register(memory) });
    ro.ioasMap({ flags: 1 | 4, ioasId, userVa, length: BigInt(memory.size), iova: 0n });
    const { devId: d } = ro.bindDevice({ device: ops2.device(SID, 20) });
    const { hwptId } = ro.hwptAlloc({ devId: d, ptId: ioasId });
    ro.attachDevice({ devId: d, ptId: hwptId }); // S1 bypass: the DMA address is the GPA
    expect(iommu2.translate(SID, 0, 0x8000, ACCESS_READ, out)).toBe(true);
    expect(iommu2.translate(SID, 0, 0x8000, ACCESS_WRITE, out)).toBe(false);
    expect(out).toMatchObject({ fault: F_PERMISSION, stage2: true });
  });

  test('an unknown invalidation command is refused with the entries handled so far', () => {
    const cmds = new Uint8Array(32);
    cmds[0] = 0x12;
    cmds[16] = 0x7f;
    try {
      fd.hwptInvalidate({
        hwptId: viommuId,
        dataType: IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        entryLen: 16,
        entryNum: 2,
        data: cmds,
      });
      expect.unreachable();
    } catch (error) {
      expect(error).toMatchObject({ errno: 'EIO', output: { entryNum: 1 } });
    }
  });

  test("a PASID's page requests report through the RID only while the guest owns the CD table", () => {
    const ridHandler = { handleGroup() {} };
    // Nested: the PASIDs are the guest CD table's, never attached one by one (user_pasid_table).
    iommu.setFaultHandler(SID, undefined, ridHandler);
    expect(iommu.faultHandlerOf(SID, 1)).toBe(ridHandler);
    expect(iommu.faultHandlerOf(SID, 0)).toBe(ridHandler);
    // A paging domain on the RID: no guest PASID table, so a PASID has no route at all.
    fd.replaceDevice({ devId, ptId: parentId });
    iommu.setFaultHandler(SID, undefined, ridHandler);
    expect(iommu.faultHandlerOf(SID, 1)).toBeUndefined();
    expect(iommu.faultHandlerOf(SID, 0)).toBe(ridHandler);
    fd.detachDevice({ devId });
    expect(iommu.faultHandlerOf(SID, 1)).toBeUndefined();
  });

  test('detach removes the stream: translation faults as a disabled stream, the IOTLB is empty', () => {
    spaces.table(1).map(VA, 0x8000);
    iommu.translate(SID, 1, VA, ACCESS_READ, out);
    fd.detachDevice({ devId });
    expect(iommu.iotlb.occupancy).toBe(0);
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
  });

  test("terminate model: a stage-1 fault is recorded only with the CD's R bit, and goes to the vIOMMU with the vSID", () => {
    const { veventqFd } = fd.veventqAlloc({ viommuId, type: 1, veventqDepth: 8 });
    expect(iommu.translate(SID, 1, VA, ACCESS_READ, out)).toBe(false);
    iommu.terminate(SID, 1, VA, ACCESS_READ, out);
    const buf = new Uint8Array(40);
    expect(veventqFd.read(buf)).toBe(40);
    const words = new Int32Array(buf.buffer);
    expect(words[2] & 0xff).toBe(F_TRANSLATION); // EventType
    expect(words[3]).toBe(0); // StreamID: the guest's (virt_id 0), not the physical 0x100
    // Clear R in the CD of PASID 1: the same fault is no longer recorded.
    const cd = spaces.installDevice(0, [0, 1]);
    iommu.installStream(SID, {
      s2: iommu.contextOf(SID)?.s2,
      host: iommu.host,
      cdTableGpa: cd.cdTableGpa,
      cdLog2: cd.cdLog2,
    });
    memory.words[(cd.cdTableGpa + 16) >>> 2] &= ~CD_RECORD;
    expect(iommu.translate(SID, 1, VA + PAGE_SIZE, ACCESS_READ, out)).toBe(false);
    iommu.terminate(SID, 1, VA + PAGE_SIZE, ACCESS_READ, out);
    expect(iommu.stats.eventsRecorded).toBe(1);
  });
});
