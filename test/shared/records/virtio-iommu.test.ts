import { describe, expect, test } from 'vitest';
import {
  decodeVirtioIommuFault,
  decodeVirtioIommuProbeProperty,
  decodeVirtioIommuRequest,
  encodeVirtioIommuFault,
  encodeVirtioIommuRequest,
  encodeVirtioIommuResvMem,
  encodeVirtioIommuTail,
  newVirtioIommuFault,
  newVirtioIommuProbeProperty,
  newVirtioIommuRequest,
  VIRTIO_IOMMU_ATTACH_BYTES,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_FAULT_BYTES,
  VIRTIO_IOMMU_FAULT_F_ADDRESS,
  VIRTIO_IOMMU_FAULT_F_WRITE,
  VIRTIO_IOMMU_FAULT_R_MAPPING,
  VIRTIO_IOMMU_MAP_BYTES,
  VIRTIO_IOMMU_MAP_F_MASK,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_MAP_F_WRITE,
  VIRTIO_IOMMU_PROBE_FIXED_BYTES,
  VIRTIO_IOMMU_PROBE_T_RESV_MEM,
  VIRTIO_IOMMU_RESV_MEM_BYTES,
  VIRTIO_IOMMU_RESV_MEM_T_MSI,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_T_ATTACH,
  VIRTIO_IOMMU_T_DETACH,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_PROBE,
  VIRTIO_IOMMU_T_UNMAP,
  VIRTIO_IOMMU_UNMAP_BYTES,
  virtioIommuRequestInBytes,
  virtioIommuTailStatus,
} from '../../../shared/records/virtio-iommu.ts';

/** Little-endian byte view of the same words, to read fields at the Linux struct offsets. */
function bytesOf(words: Int32Array): DataView {
  return new DataView(words.buffer, words.byteOffset, words.byteLength);
}

function request(fields: Partial<ReturnType<typeof newVirtioIommuRequest>>) {
  return Object.assign(newVirtioIommuRequest(), fields);
}

describe('virtio-iommu request sizes (Linux uapi virtio_iommu.h)', () => {
  test('ATTACH 24, DETACH 24, MAP 40, UNMAP 32, PROBE 72 + properties + tail, fault 24', () => {
    // MAP: head 4 + domain 4 + virt_start 8 + virt_end 8 + phys_start 8 + flags 4 + tail 4.
    expect(VIRTIO_IOMMU_MAP_BYTES).toBe(4 + 4 + 8 + 8 + 8 + 4 + 4);
    // ATTACH: head 4 + domain 4 + endpoint 4 + flags 4 + reserved 4 + tail 4.
    expect(VIRTIO_IOMMU_ATTACH_BYTES).toBe(24);
    // UNMAP: head 4 + domain 4 + virt_start 8 + virt_end 8 + reserved 4 + tail 4.
    expect(VIRTIO_IOMMU_UNMAP_BYTES).toBe(32);
    expect(VIRTIO_IOMMU_PROBE_FIXED_BYTES).toBe(4 + 4 + 64);
    expect(VIRTIO_IOMMU_FAULT_BYTES).toBe(24);
    expect(VIRTIO_IOMMU_RESV_MEM_BYTES).toBe(4 + 4 + 8 + 8);
    expect(virtioIommuRequestInBytes(VIRTIO_IOMMU_T_MAP)).toBe(36);
    expect(virtioIommuRequestInBytes(VIRTIO_IOMMU_T_DETACH)).toBe(20);
    expect(virtioIommuRequestInBytes(9)).toBe(-1);
  });

  test('MAP fields sit at bytes 0, 4, 8, 16, 24, 32 and round-trip', () => {
    const words = new Int32Array(10).fill(-1);
    const map = request({
      type: VIRTIO_IOMMU_T_MAP,
      domain: 0x8000_0001,
      virtStart: 0x7f_1234_5000,
      virtEnd: 0x7f_1234_5fff,
      physStart: 0x1_0000_3000,
      flags: VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE,
    });
    expect(encodeVirtioIommuRequest(words, 0, map)).toBe(36);
    const v = bytesOf(words);
    expect(v.getUint8(0)).toBe(VIRTIO_IOMMU_T_MAP);
    expect([v.getUint8(1), v.getUint8(2), v.getUint8(3)]).toEqual([0, 0, 0]); // head reserved
    expect(v.getUint32(4, true)).toBe(0x8000_0001);
    expect(v.getBigUint64(8, true)).toBe(0x7f_1234_5000n);
    expect(v.getBigUint64(16, true)).toBe(0x7f_1234_5fffn);
    expect(v.getBigUint64(24, true)).toBe(0x1_0000_3000n);
    expect(v.getUint32(32, true)).toBe(3);
    expect(v.getInt32(36, true)).toBe(-1); // the tail is not part of the readable request
    expect(decodeVirtioIommuRequest(words, 0, newVirtioIommuRequest())).toBe(VIRTIO_IOMMU_T_MAP);
    const out = newVirtioIommuRequest();
    decodeVirtioIommuRequest(words, 0, out);
    expect(out).toEqual(map);
  });

  test('ATTACH carries domain 4, endpoint 8, flags 12; DETACH the same without flags', () => {
    const words = new Int32Array(6).fill(-1);
    const attach = request({
      type: VIRTIO_IOMMU_T_ATTACH,
      domain: 3,
      endpoint: 0x10,
      flags: VIRTIO_IOMMU_ATTACH_F_BYPASS,
    });
    encodeVirtioIommuRequest(words, 0, attach);
    const v = bytesOf(words);
    expect(v.getUint32(4, true)).toBe(3);
    expect(v.getUint32(8, true)).toBe(0x10);
    expect(v.getUint32(12, true)).toBe(1);
    expect(v.getUint32(16, true)).toBe(0); // reserved
    const out = newVirtioIommuRequest();
    decodeVirtioIommuRequest(words, 0, out);
    expect(out).toEqual(attach);
    const detach = request({ type: VIRTIO_IOMMU_T_DETACH, domain: 3, endpoint: 0x10 });
    encodeVirtioIommuRequest(words, 0, detach);
    expect(v.getUint32(12, true)).toBe(0); // reserved[8]
    decodeVirtioIommuRequest(words, 0, out);
    expect(out).toEqual(detach);
  });

  test('UNMAP carries domain 4, virt_start 8, virt_end 16 (inclusive) and round-trips', () => {
    const words = new Int32Array(8);
    const unmap = request({ type: VIRTIO_IOMMU_T_UNMAP, domain: 9, virtStart: 0x2000, virtEnd: 0x3fff });
    expect(encodeVirtioIommuRequest(words, 0, unmap)).toBe(28);
    const v = bytesOf(words);
    expect(v.getBigUint64(8, true)).toBe(0x2000n);
    expect(v.getBigUint64(16, true)).toBe(0x3fffn);
    const out = newVirtioIommuRequest();
    decodeVirtioIommuRequest(words, 0, out);
    expect(out).toEqual(unmap);
  });

  test('PROBE carries the endpoint at 4 and a zeroed reserved[64]', () => {
    const words = new Int32Array(18).fill(-1);
    encodeVirtioIommuRequest(words, 0, request({ type: VIRTIO_IOMMU_T_PROBE, endpoint: 0x42 }));
    const v = bytesOf(words);
    expect(v.getUint32(4, true)).toBe(0x42);
    for (let b = 8; b < 72; b += 4) expect(v.getUint32(b, true)).toBe(0);
    const out = newVirtioIommuRequest();
    expect(decodeVirtioIommuRequest(words, 0, out)).toBe(VIRTIO_IOMMU_T_PROBE);
    expect(out.endpoint).toBe(0x42);
  });

  test('an undefined request type decodes to -1, and the tail holds the status in byte 0', () => {
    const words = Int32Array.of(0x17, 5, 6, 7);
    const out = newVirtioIommuRequest();
    expect(decodeVirtioIommuRequest(words, 0, out)).toBe(-1);
    expect(out.type).toBe(0x17);
    expect(out.domain).toBe(0);
    encodeVirtioIommuTail(words, 3, VIRTIO_IOMMU_S_NOENT);
    expect(bytesOf(words).getUint8(12)).toBe(6);
    expect(virtioIommuTailStatus(words, 3)).toBe(VIRTIO_IOMMU_S_NOENT);
  });

  test('MAP flags are READ 1, WRITE 2, MMIO 4 and nothing else', () => {
    expect(VIRTIO_IOMMU_MAP_F_MASK).toBe(7);
  });
});

describe('virtio-iommu PROBE properties', () => {
  test('RESV_MEM: type 1 and length 20 in the header, subtype 4, start 8, end 16; NONE ends', () => {
    const words = new Int32Array(8);
    expect(encodeVirtioIommuResvMem(words, 0, VIRTIO_IOMMU_RESV_MEM_T_MSI, 0x800_0000, 0x80f_ffff)).toBe(24);
    const v = bytesOf(words);
    expect(v.getUint16(0, true)).toBe(VIRTIO_IOMMU_PROBE_T_RESV_MEM);
    expect(v.getUint16(2, true)).toBe(20);
    expect(v.getUint8(4)).toBe(VIRTIO_IOMMU_RESV_MEM_T_MSI);
    expect(v.getBigUint64(8, true)).toBe(0x800_0000n);
    expect(v.getBigUint64(16, true)).toBe(0x80f_ffffn);
    const p = newVirtioIommuProbeProperty();
    // 4-byte header + 20 bytes of value padded to 24: the next property starts at byte 28.
    expect(decodeVirtioIommuProbeProperty(words, 0, p)).toBe(28);
    expect(p).toEqual({ type: 1, length: 20, subtype: 1, start: 0x800_0000, end: 0x80f_ffff });
    expect(decodeVirtioIommuProbeProperty(words, 6, p)).toBe(0);
  });

  test('the property type is the low 12 bits of its first u16', () => {
    const words = Int32Array.of(0xf001 | (20 << 16), 0, 0, 0, 0, 0);
    const p = newVirtioIommuProbeProperty();
    decodeVirtioIommuProbeProperty(words, 0, p);
    expect(p.type).toBe(VIRTIO_IOMMU_PROBE_T_RESV_MEM);
  });
});

describe('virtio-iommu fault event', () => {
  test('reason 0, flags 4, endpoint 8, address 16; ADDRESS is bit 8; round-trips', () => {
    const words = new Int32Array(6).fill(-1);
    const fault = Object.assign(newVirtioIommuFault(), {
      reason: VIRTIO_IOMMU_FAULT_R_MAPPING,
      flags: VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS,
      endpoint: 0x0100,
      address: 0xdead_b000,
    });
    encodeVirtioIommuFault(words, 0, fault);
    const v = bytesOf(words);
    expect(v.getUint8(0)).toBe(2);
    expect(v.getUint32(4, true)).toBe(0x102);
    expect(v.getUint32(8, true)).toBe(0x100);
    expect(v.getUint32(12, true)).toBe(0); // reserved
    expect(v.getBigUint64(16, true)).toBe(0xdead_b000n);
    expect(decodeVirtioIommuFault(words, 0, newVirtioIommuFault())).toEqual(fault);
  });
});
