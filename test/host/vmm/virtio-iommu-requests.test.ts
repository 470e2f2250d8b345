// The VMM's virtio-iommu request handler over a real virtqueue in guest RAM, a real registry and the
// host SMMUv3 driver over the physical IOMMU model: what each request does to DMA, and its status.
import { beforeEach, describe, expect, test } from 'vitest';
import { Iommu } from '../../../host/iommu/iommu.ts';
import { Smmuv3Ops } from '../../../host/iommu/smmuv3-ops.ts';
import { ACCESS_READ, ACCESS_WRITE, newWalkResult } from '../../../host/iommu/stage1-walker.ts';
import type { Ioas } from '../../../host/iommufd/ioas.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { statusOfErrno, VirtioIommuRequests } from '../../../host/vmm/virtio-iommu-requests.ts';
import { GuestMemory, PAGE_SIZE } from '../../../shared/guest-memory.ts';
import {
  decodeVirtioIommuProbeProperty,
  encodeVirtioIommuRequest,
  newVirtioIommuProbeProperty,
  newVirtioIommuRequest,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_MAP_F_MMIO,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_MAP_F_WRITE,
  VIRTIO_IOMMU_PROBE_T_RESV_MEM,
  VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
  VIRTIO_IOMMU_S_DEVERR,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
  VIRTIO_IOMMU_T_ATTACH,
  VIRTIO_IOMMU_T_DETACH,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_PROBE,
  VIRTIO_IOMMU_T_UNMAP,
  type VirtioIommuRequest,
  virtioIommuTailStatus,
} from '../../../shared/records/virtio-iommu.ts';
import {
  newVirtqUsed,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DROP_LOOP,
  VirtqueueDevice,
  VirtqueueDriver,
  virtqueueLayout,
} from '../../../shared/virtqueue.ts';

const SID0 = 0x100;
const SID1 = 0x200;
const QUEUE_GPA = 0x1000;
const REQ_GPA = 0x4000;
const OUT_GPA = 0x5000;
const PROBE_SIZE = 64;
/** Guest pages a MAP points at (inside the 1 MiB of RAM). */
const DATA_GPA = 0x20000;
const IOVA = 0x10_0000_0000;

describe('virtio-iommu requests backed by iommufd', () => {
  let memory: GuestMemory;
  let iommu: Iommu;
  let fd: Iommufd;
  let driver: VirtqueueDriver;
  let device: VirtqueueDevice;
  let handler: VirtioIommuRequests;
  let interrupt = false;
  const used = newVirtqUsed();
  const walk = newWalkResult();

  beforeEach(() => {
    memory = GuestMemory.allocate(1);
    iommu = new Iommu({ iotlbEntries: 16 });
    const ops = new Smmuv3Ops(iommu);
    fd = new Iommufd();
    const ramUserVa = fd.memory.mmap(BigInt(memory.size), { hpa: iommu.host.register(memory) });
    const layout = virtqueueLayout(QUEUE_GPA, 8);
    driver = new VirtqueueDriver(memory, layout, false);
    device = new VirtqueueDevice(memory, layout, false);
    handler = new VirtioIommuRequests(
      fd,
      memory,
      ramUserVa,
      device,
      [ops.device(SID0, 0), ops.device(SID1, 0)],
      { probeSize: PROBE_SIZE },
    );
  });

  /** Puts one request on the queue, lets the VMM serve it, reaps it; returns the tail status. */
  function submit(fields: Partial<VirtioIommuRequest>, tweak?: (bytes: number) => number): number {
    const r = { ...newVirtioIommuRequest(), ...fields };
    let bytes = encodeVirtioIommuRequest(memory.words, REQ_GPA >>> 2, r);
    if (tweak) bytes = tweak(bytes);
    const writable = r.type === VIRTIO_IOMMU_T_PROBE ? PROBE_SIZE + 4 : 4;
    memory.bytes.fill(0xee, OUT_GPA, OUT_GPA + writable);
    expect(driver.beginChain(2)).toBe(true);
    driver.addReadable(REQ_GPA, bytes);
    driver.addWritable(OUT_GPA, writable);
    const head = driver.endChain();
    driver.publish();
    interrupt = handler.service();
    expect(driver.reap(used)).toBe(true);
    expect(used).toEqual({ id: head, len: writable });
    return virtioIommuTailStatus(memory.words, (OUT_GPA + writable - 4) >>> 2);
  }

  const attach = (domain: number, endpoint: number, flags = 0) =>
    submit({ type: VIRTIO_IOMMU_T_ATTACH, domain, endpoint, flags });
  const detach = (domain: number, endpoint: number) =>
    submit({ type: VIRTIO_IOMMU_T_DETACH, domain, endpoint });
  const map = (
    domain: number,
    virtStart: number,
    pages: number,
    physStart: number,
    flags = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE,
  ) =>
    submit({
      type: VIRTIO_IOMMU_T_MAP,
      domain,
      virtStart,
      virtEnd: virtStart + pages * PAGE_SIZE - 1,
      physStart,
      flags,
    });
  const unmap = (domain: number, virtStart: number, virtEnd: number) =>
    submit({ type: VIRTIO_IOMMU_T_UNMAP, domain, virtStart, virtEnd });
  const dma = (sid: number, iova: number, access = ACCESS_READ) =>
    iommu.translate(sid, 0, iova, access, walk);

  test('ATTACH then MAP makes a DMA translate onto the GPA the guest named; UNMAP makes it fault', () => {
    expect(attach(1, 0)).toBe(VIRTIO_IOMMU_S_OK);
    expect(interrupt).toBe(true);
    expect(dma(SID0, IOVA)).toBe(false); // attached, nothing mapped
    expect(map(1, IOVA, 2, DATA_GPA)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA + PAGE_SIZE + 0x10)).toBe(true);
    expect(walk.memory).toBe(memory);
    expect(walk.offset).toBe(DATA_GPA + PAGE_SIZE + 0x10);
    expect(dma(SID1, IOVA)).toBe(false); // endpoint 1 is in no domain
    expect(unmap(1, IOVA, IOVA + 2 * PAGE_SIZE - 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA)).toBe(false);
    expect(handler.stats.byStatus[VIRTIO_IOMMU_S_OK]).toBe(3);
  });

  test('a MAP without WRITE lets the DMA read and refuses its write', () => {
    attach(1, 0);
    expect(map(1, IOVA, 1, DATA_GPA, VIRTIO_IOMMU_MAP_F_READ)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA, ACCESS_READ)).toBe(true);
    expect(dma(SID0, IOVA, ACCESS_WRITE)).toBe(false);
  });

  test('a second endpoint attached to the domain sees its mappings, including ones made before', () => {
    attach(1, 0);
    map(1, IOVA, 1, DATA_GPA);
    expect(attach(1, 1)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID1, IOVA)).toBe(true);
    expect(walk.offset).toBe(DATA_GPA);
  });

  test('ATTACH: an unknown endpoint is NOENT, unknown flag bits INVAL, BYPASS UNSUPP; none creates a domain', () => {
    expect(attach(1, 2)).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(attach(1, 0, 1 << 5)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(attach(1, 0, VIRTIO_IOMMU_ATTACH_F_BYPASS)).toBe(VIRTIO_IOMMU_S_UNSUPP);
    expect(handler.ioasOf(1)).toBeUndefined();
    expect(fd.objects().filter((o) => o.type === 'IOAS')).toHaveLength(0);
  });

  test('an endpoint attached elsewhere moves; the domain it left, empty and unmapped, is freed', () => {
    attach(1, 0);
    const first = handler.ioasOf(1);
    attach(2, 0);
    map(2, IOVA, 1, DATA_GPA);
    expect(dma(SID0, IOVA)).toBe(true);
    expect(handler.ioasOf(1)).toBeUndefined();
    expect(fd.objects().some((o) => o.id === first)).toBe(false);
    // Attaching again where it already is changes nothing.
    expect(attach(2, 0)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA)).toBe(true);
  });

  test('DETACH: NOENT unless attached to that domain; the last DETACH keeps a mapped domain, frees an unmapped one', () => {
    attach(1, 0);
    expect(detach(2, 0)).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(detach(1, 1)).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(detach(1, 7)).toBe(VIRTIO_IOMMU_S_NOENT);
    map(1, IOVA, 1, DATA_GPA);
    expect(detach(1, 0)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA)).toBe(false);
    expect(handler.ioasOf(1)).toBeDefined();
    // Its mappings come back with the next ATTACH.
    attach(1, 0);
    expect(dma(SID0, IOVA)).toBe(true);
    // UNMAP [0, U64_MAX] as a guest sends it: virt_end's eight bytes all ones.
    expect(
      submit({ type: VIRTIO_IOMMU_T_UNMAP, domain: 1 }, (bytes) => {
        memory.words.fill(-1, (REQ_GPA >>> 2) + 4, (REQ_GPA >>> 2) + 6);
        return bytes;
      }),
    ).toBe(VIRTIO_IOMMU_S_OK);
    expect(detach(1, 0)).toBe(VIRTIO_IOMMU_S_OK);
    expect(handler.ioasOf(1)).toBeUndefined();
  });

  test('MAP: unknown domain NOENT; bad flags or virt_end < virt_start INVAL; MMIO UNSUPP; outside RAM or unaligned RANGE', () => {
    expect(map(9, IOVA, 1, DATA_GPA)).toBe(VIRTIO_IOMMU_S_NOENT);
    attach(1, 0);
    expect(map(1, IOVA, 1, DATA_GPA, 1 << 7)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(
      submit({ type: VIRTIO_IOMMU_T_MAP, domain: 1, virtStart: IOVA, virtEnd: IOVA - 1, flags: 1 }),
    ).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(map(1, IOVA, 1, DATA_GPA, VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_MMIO)).toBe(
      VIRTIO_IOMMU_S_UNSUPP,
    );
    expect(map(1, IOVA, 2, memory.size - PAGE_SIZE)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(1, IOVA + 0x800, 1, DATA_GPA)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(map(1, IOVA, 1, DATA_GPA + 0x800)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(dma(SID0, IOVA)).toBe(false);
  });

  test('MAP over an existing mapping is INVAL and changes nothing (spec 5.13.6.5, QEMU)', () => {
    attach(1, 0);
    map(1, IOVA, 2, DATA_GPA);
    expect(map(1, IOVA + PAGE_SIZE, 2, DATA_GPA + 0x4000)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(dma(SID0, IOVA + PAGE_SIZE)).toBe(true);
    expect(walk.offset).toBe(DATA_GPA + PAGE_SIZE);
    expect(dma(SID0, IOVA + 2 * PAGE_SIZE)).toBe(false);
  });

  test('UNMAP never splits a mapping: RANGE, and nothing in the range is removed; nothing mapped is OK', () => {
    attach(1, 0);
    map(1, IOVA, 1, DATA_GPA);
    map(1, IOVA + PAGE_SIZE, 2, DATA_GPA + PAGE_SIZE);
    expect(unmap(1, IOVA, IOVA + 2 * PAGE_SIZE - 1)).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(dma(SID0, IOVA)).toBe(true);
    expect(dma(SID0, IOVA + 2 * PAGE_SIZE)).toBe(true);
    expect(unmap(1, IOVA + 0x100_0000, IOVA + 0x200_0000)).toBe(VIRTIO_IOMMU_S_OK);
    expect(unmap(9, IOVA, IOVA + PAGE_SIZE - 1)).toBe(VIRTIO_IOMMU_S_NOENT);
    // A range over both mappings and some empty space removes both.
    expect(unmap(1, IOVA - PAGE_SIZE, IOVA + 8 * PAGE_SIZE)).toBe(VIRTIO_IOMMU_S_OK);
    expect(dma(SID0, IOVA)).toBe(false);
    expect(dma(SID0, IOVA + 2 * PAGE_SIZE)).toBe(false);
    expect(fd.lookup<Ioas>(handler.ioasOf(1) ?? -1, 'IOAS').areas).toHaveLength(0);
  });

  test("PROBE writes a RESV_MEM for each range the endpoint's IOAS reserves, then the tail", () => {
    expect(submit({ type: VIRTIO_IOMMU_T_PROBE, endpoint: 0 })).toBe(VIRTIO_IOMMU_S_OK);
    const prop = newVirtioIommuProbeProperty();
    // Not attached: the physical device reserves nothing, so the list is empty.
    expect(decodeVirtioIommuProbeProperty(memory.words, OUT_GPA >>> 2, prop)).toBe(0);
    attach(1, 0);
    expect(submit({ type: VIRTIO_IOMMU_T_PROBE, endpoint: 0 })).toBe(VIRTIO_IOMMU_S_OK);
    const reserved = fd.lookup<Ioas>(handler.ioasOf(1) ?? -1, 'IOAS').reserved;
    expect(reserved.length).toBeGreaterThan(0);
    let at = OUT_GPA >>> 2;
    for (const r of reserved) {
      const bytes = decodeVirtioIommuProbeProperty(memory.words, at, prop);
      expect(prop).toMatchObject({
        type: VIRTIO_IOMMU_PROBE_T_RESV_MEM,
        subtype: VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
        start: Number(r.start),
        end: Math.min(Number(r.last), Number.MAX_SAFE_INTEGER),
      });
      at += bytes >>> 2;
    }
    expect(decodeVirtioIommuProbeProperty(memory.words, at, prop)).toBe(0);
    // The SMMU's 48-bit aperture: a MAP above it is refused by the registry (EINVAL -> INVAL).
    expect(map(1, 2 ** 48, 1, DATA_GPA)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(handler.stats.registryErrors).toBe(1);
    expect(submit({ type: VIRTIO_IOMMU_T_PROBE, endpoint: 5 })).toBe(VIRTIO_IOMMU_S_NOENT);
  });

  test('a reserved byte set, a short request, an unknown type: INVAL or UNSUPP, counted, nothing done', () => {
    // ATTACH's reserved[4] (bytes 16..19).
    expect(
      submit({ type: VIRTIO_IOMMU_T_ATTACH, domain: 1, endpoint: 0 }, (bytes) => {
        memory.bytes[REQ_GPA + 17] = 1;
        return bytes;
      }),
    ).toBe(VIRTIO_IOMMU_S_INVAL);
    // The head's reserved[3].
    expect(
      submit({ type: VIRTIO_IOMMU_T_ATTACH, domain: 1, endpoint: 0 }, (bytes) => {
        memory.bytes[REQ_GPA + 2] = 1;
        return bytes;
      }),
    ).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(handler.ioasOf(1)).toBeUndefined();
    // A MAP cut short before its flags.
    attach(1, 0);
    expect(
      submit({ type: VIRTIO_IOMMU_T_MAP, domain: 1, virtStart: IOVA, virtEnd: IOVA + 0xfff }, () => 32),
    ).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(dma(SID0, IOVA)).toBe(false);
    // A type the spec does not define.
    expect(
      submit({ type: VIRTIO_IOMMU_T_DETACH, domain: 1, endpoint: 0 }, (bytes) => {
        memory.bytes[REQ_GPA] = 0x7f;
        return bytes;
      }),
    ).toBe(VIRTIO_IOMMU_S_UNSUPP);
    // A head shorter than 4 bytes.
    expect(submit({ type: VIRTIO_IOMMU_T_UNMAP, domain: 1 }, () => 2)).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(handler.stats.malformed).toBe(5);
    expect(handler.stats.byStatus[VIRTIO_IOMMU_S_INVAL]).toBe(4);
    expect(handler.stats.byStatus[VIRTIO_IOMMU_S_UNSUPP]).toBe(1);
    expect(dma(SID0, 0)).toBe(false);
  });

  test('a malformed chain is a counted drop, never completed; a chain without room for a tail completes with len 0', () => {
    // A chain whose next index loops back to itself.
    expect(driver.beginChain(1)).toBe(true);
    driver.addReadable(REQ_GPA, 24);
    const head = driver.endChain();
    const flagsWord = (QUEUE_GPA >>> 2) + head * 4 + 3;
    memory.words[flagsWord] = VIRTQ_DESC_F_NEXT | (head << 16);
    driver.publish();
    expect(handler.service()).toBe(false);
    expect(device.dropped[VIRTQ_DROP_LOOP]).toBe(1);
    expect(driver.reap(used)).toBe(false);
    // Readable only: nowhere to put a status.
    encodeVirtioIommuRequest(memory.words, REQ_GPA >>> 2, {
      ...newVirtioIommuRequest(),
      type: VIRTIO_IOMMU_T_ATTACH,
      domain: 1,
    });
    expect(driver.beginChain(1)).toBe(true);
    driver.addReadable(REQ_GPA, 20);
    const lone = driver.endChain();
    driver.publish();
    expect(handler.service()).toBe(true);
    expect(driver.reap(used)).toBe(true);
    expect(used).toEqual({ id: lone, len: 0 });
    expect(handler.stats.noTail).toBe(1);
    expect(handler.ioasOf(1)).toBeUndefined();
  });

  test('registry errnos become statuses through one table', () => {
    expect(statusOfErrno('ENOENT')).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(statusOfErrno('EINVAL')).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(statusOfErrno('ERANGE')).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(statusOfErrno('EOVERFLOW')).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(statusOfErrno('ENOMEM')).toBe(VIRTIO_IOMMU_S_NOMEM);
    expect(statusOfErrno('EBUSY')).toBe(VIRTIO_IOMMU_S_DEVERR);
    expect(statusOfErrno('EEXIST')).toBe(VIRTIO_IOMMU_S_DEVERR);
  });
});
