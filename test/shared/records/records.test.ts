import { describe, expect, test } from 'vitest';
import { newPageRequest } from '../../../host/iommu/page-request.ts';
import {
  CMD_CFGI_CD,
  CMD_PRI_RESP,
  CMD_STALL_TERM,
  CMD_TLBI_NH_VA,
  commandOpcode,
  commandStreamId,
  commandSubstreamId,
  decodePriResp,
  encodePriResp,
  encodeStallTerm,
  encodeTlbiNhVa,
  newPriRespCommand,
  PRI_RESP_SUCCESS,
  tlbiNhVaAddress,
} from '../../../shared/records/cmdq-entry.ts';
import {
  decodeDmaDescriptor,
  dmaDescriptorReserved,
  encodeDmaDescriptor,
  newDmaDescriptor,
} from '../../../shared/records/dma-descriptor.ts';
import { isStopMarker as isPageRequestStopMarker } from '../../../shared/records/page-request.ts';
import {
  decodePriqEntry,
  encodePriqEntry,
  isStopMarker,
  newPriqEntry,
} from '../../../shared/records/priq-entry.ts';
import { encodeVtdInvWait, vtdInvWaitAddress, vtdInvWaitData } from '../../../shared/records/vtd-iq-entry.ts';

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

describe('VT-d invalidation wait descriptor', () => {
  test('the status address is bits 127:66: reserved bits 65:64 never move the status write', () => {
    const words = new Int32Array(4);
    encodeVtdInvWait(words, 0, 0x1_2345_6780, 7);
    expect(vtdInvWaitAddress(words, 0)).toBe(0x1_2345_6780);
    // A guest that sets the reserved low bits still names the same dword.
    words[2] |= 3;
    expect(vtdInvWaitAddress(words, 0)).toBe(0x1_2345_6780);
    expect(vtdInvWaitData(words, 0)).toBe(7);
  });
});

describe('page request fields', () => {
  test('one Stop Marker rule: a PRI queue entry and the host page request it came from agree', () => {
    const r = newPageRequest();
    const e = newPriqEntry();
    for (let bits = 0; bits < 16; bits++) {
      r.last = e.last = (bits & 1) !== 0;
      r.read = e.read = (bits & 2) !== 0;
      r.write = e.write = (bits & 4) !== 0;
      r.ssv = e.ssv = (bits & 8) !== 0;
      const expected = bits === (1 | 8);
      expect(isPageRequestStopMarker(r)).toBe(expected);
      expect(isStopMarker(e)).toBe(expected);
    }
  });
});

describe('SMMUv3 commands that name a stream', () => {
  test('StreamID is dword0 [63:32] and SubstreamID dword0 [31:12]', () => {
    const words = new Int32Array(4);
    encodeStallTerm(words, 0, 0x8000_0001);
    expect(commandOpcode(words, 0)).toBe(CMD_STALL_TERM);
    expect(commandStreamId(words, 0)).toBe(0x8000_0001);
    words[0] = CMD_CFGI_CD | (0xabcde << 12);
    words[1] = 7;
    expect(commandOpcode(words, 0)).toBe(CMD_CFGI_CD);
    expect(commandSubstreamId(words, 0)).toBe(0xabcde);
    expect(commandStreamId(words, 0)).toBe(7);
  });

  test('CMD_TLBI_NH_VA carries the page of a 52-bit VA; bits above it and below the page are ignored', () => {
    const words = new Int32Array(4);
    encodeTlbiNhVa(words, 0, 0x7e00_1234_5678);
    expect(commandOpcode(words, 0)).toBe(CMD_TLBI_NH_VA);
    expect(tlbiNhVaAddress(words, 0)).toBe(0x7e00_1234_5000);
    words[3] |= 0xfff0_0000;
    words[2] |= 0xfff;
    expect(tlbiNhVaAddress(words, 0)).toBe(0x7e00_1234_5000);
  });
});

describe('DMA descriptor reserved word', () => {
  test('is written as zero and read back as the guest left it', () => {
    const words = new Int32Array(8).fill(-1);
    encodeDmaDescriptor(words, 0, newDmaDescriptor());
    expect(dmaDescriptorReserved(words, 0)).toBe(0);
    words[7] = 5;
    expect(dmaDescriptorReserved(words, 0)).toBe(5);
  });
});
