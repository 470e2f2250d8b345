import { describe, expect, test } from 'vitest';
import {
  CMD_PRI_RESP,
  commandOpcode,
  decodePriResp,
  encodePriResp,
  newPriRespCommand,
  PRI_RESP_SUCCESS,
} from '../shared/records/cmdq-entry.ts';
import {
  decodeDmaDescriptor,
  encodeDmaDescriptor,
  newDmaDescriptor,
} from '../shared/records/dma-descriptor.ts';
import {
  decodePriqEntry,
  encodePriqEntry,
  isStopMarker,
  newPriqEntry,
} from '../shared/records/priq-entry.ts';

/** Bit `n` of the 64-bit dword made of words[lo], words[lo + 1]. */
function bit(words: Int32Array, lo: number, n: number): number {
  return n < 32 ? (words[lo] >>> n) & 1 : (words[lo + 1] >>> (n - 32)) & 1;
}

describe('SMMUv3 PRI queue entry', () => {
  test('fields sit at the spec bit positions', () => {
    const words = new Int32Array(4);
    const e = newPriqEntry();
    Object.assign(e, {
      streamId: 0x1234,
      substreamId: 0xabcde,
      ssv: true,
      last: true,
      read: true,
      prgIndex: 0x1ff,
    });
    e.address = 0x7e00_1234_5000;
    encodePriqEntry(words, 0, e);
    expect(words[0]).toBe(0x1234); // dword0 [31:0] StreamID
    expect(words[1] & 0xfffff).toBe(0xabcde); // [51:32] SubstreamID
    expect(bit(words, 0, 60)).toBe(1); // Read
    expect(bit(words, 0, 61)).toBe(0); // Write
    expect(bit(words, 0, 62)).toBe(1); // Last
    expect(bit(words, 0, 63)).toBe(1); // SSV
    expect(words[2] & 0x1ff).toBe(0x1ff); // dword1 [8:0] PRGIndex
    expect((words[2] >>> 12) << 12).toBe(0x1234_5000 >>> 0); // [31:12] address
    expect(words[3]).toBe(0x7e00); // [63:32] address
  });

  test('decode inverts encode, and a stop marker needs Last, no R/W, and a PASID', () => {
    const words = new Int32Array(4);
    const e = newPriqEntry();
    Object.assign(e, { streamId: 7, substreamId: 3, ssv: true, last: true, exec: true, privileged: true });
    e.address = 0x1000;
    encodePriqEntry(words, 0, e);
    const out = decodePriqEntry(words, 0, newPriqEntry());
    expect(out).toEqual(e);
    expect(isStopMarker(out)).toBe(true);
    out.ssv = false;
    expect(isStopMarker(out)).toBe(false);
  });
});

describe('SMMUv3 CMD_PRI_RESP', () => {
  test('opcode, SSID, SID, PRGIndex and Resp at the spec positions, and back', () => {
    const words = new Int32Array(4);
    const c = { streamId: 3, ssv: true, substreamId: 0x42, prgIndex: 0x101, resp: PRI_RESP_SUCCESS };
    encodePriResp(words, 0, c);
    expect(commandOpcode(words, 0)).toBe(CMD_PRI_RESP);
    expect(bit(words, 0, 11)).toBe(1);
    expect((words[0] >>> 12) & 0xfffff).toBe(0x42);
    expect(words[1]).toBe(3);
    expect(words[2] & 0x1ff).toBe(0x101);
    expect((words[2] >>> 12) & 3).toBe(2);
    expect(decodePriResp(words, 0, newPriRespCommand())).toEqual(c);
  });
});

describe('DMA descriptor', () => {
  test('round-trips a 48-bit VA', () => {
    const words = new Int32Array(8);
    const d = { opcode: 1, pasid: 9, tag: 77, length: 8192, va: 0x7fff_ffff_f000, flags: 1 };
    encodeDmaDescriptor(words, 0, d);
    expect(decodeDmaDescriptor(words, 0, newDmaDescriptor())).toEqual(d);
  });
});
