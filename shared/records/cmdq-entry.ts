/**
 * SMMUv3 command queue entry (16 bytes, 4 words), the guest-to-host direction of a vSMMU.
 * Opcodes and fields from SMMU spec chapter 4 (docs/queues.md):
 *   CMD_PRI_RESP 0x41: dword0 [7:0] op, [11] SSV, [31:12] SSID, [63:32] SID;
 *                      dword1 [8:0] PRGIndex, [13:12] Resp (0 Failure, 1 InvalidRequest, 2 Success)
 *   CMD_RESUME   0x44: dword0 [13:12] action (Linux: 0 terminate RAZ/WI, 1 retry, 2 abort),
 *                      [63:32] SID; dword1 [15:0] STAG
 *   CMD_TLBI_NH_VA 0x12: dword0 [63:48] ASID; dword1 [63:12] VA (the model has no ASIDs)
 *   CMD_CFGI_CD  0x05, CMD_CFGI_CD_ALL 0x06: dword0 [31:12] SSID (CFGI_CD only), [63:32] SID
 *   CMD_SYNC     0x46: dword0 [13:12] CS (0 none, 1 IRQ), [63:32] MSIData; dword1 [51:2] MSIAddress:
 *                      when the SMMU reaches the sync it writes MSIData to MSIAddress (guest memory)
 * The host model counts any other opcode as an illegal command.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';
import { STAG_MASK } from './evtq-entry.ts';
import { PRG_INDEX_MASK } from './page-request.ts';

export const CMDQ_ENTRY_WORDS = 4;
export const CMDQ_ENTRY_BYTES = CMDQ_ENTRY_WORDS * 4;

export const CMD_PRI_RESP = 0x41;
export const CMD_RESUME = 0x44;
/** CMD_STALL_TERM 0x45: dword0 [63:32] SID: terminate every stalled transaction of the stream. */
export const CMD_STALL_TERM = 0x45;
export const CMD_SYNC = 0x46;
/** Invalidation commands, which a vSMMU passes to the host through the vIOMMU. */
export const CMD_CFGI_CD = 0x05;
export const CMD_CFGI_CD_ALL = 0x06;
export const CMD_TLBI_NH_ASID = 0x11;
export const CMD_TLBI_NH_VA = 0x12;
export const CMD_ATC_INV = 0x40;

/** CMD_RESUME actions as Linux packs dword0 [13:12]: terminate (RAZ/WI), retry, abort. */
export const RESUME_TERMINATE = 0;
export const RESUME_RETRY = 1;
export const RESUME_ABORT = 2;
const RESUME_ACTION_SHIFT = 12;

/** CMD_PRI_RESP Resp field. Linux names them DENY, FAIL, SUCC. */
export const PRI_RESP_FAILURE = 0;
export const PRI_RESP_INVALID = 1;
export const PRI_RESP_SUCCESS = 2;
/** Resp 3 is a reserved encoding: the SMMU refuses the command (CERROR_ILL). */
export const PRI_RESP_RESERVED = 3;

const SSV = 1 << 11;
const SSID_SHIFT = 12;
const SSID_MASK = 0xf_ffff;
const RESP_SHIFT = 12;

export interface PriRespCommand {
  streamId: number;
  ssv: boolean;
  substreamId: number;
  prgIndex: number;
  /** PRI_RESP_FAILURE | PRI_RESP_INVALID | PRI_RESP_SUCCESS; 3 is an illegal encoding. */
  resp: number;
}

export function newPriRespCommand(): PriRespCommand {
  return { streamId: 0, ssv: false, substreamId: 0, prgIndex: 0, resp: 0 };
}

export function commandOpcode(words: Int32Array, at: number): number {
  return words[at] & 0xff;
}

/** dword0 [63:32] StreamID of the commands that name a stream (PRI_RESP, RESUME, STALL_TERM, CFGI_CD*). */
export function commandStreamId(words: Int32Array, at: number): number {
  return words[at + 1] >>> 0;
}

/** dword0 [31:12] SubstreamID of CMD_PRI_RESP and CMD_CFGI_CD. */
export function commandSubstreamId(words: Int32Array, at: number): number {
  return (words[at] >>> SSID_SHIFT) & SSID_MASK;
}

export function encodePriResp(words: Int32Array, at: number, c: PriRespCommand): void {
  words[at] = CMD_PRI_RESP | (c.ssv ? SSV : 0) | ((c.substreamId & SSID_MASK) << SSID_SHIFT);
  words[at + 1] = c.streamId;
  words[at + 2] = (c.prgIndex & PRG_INDEX_MASK) | ((c.resp & 3) << RESP_SHIFT);
  words[at + 3] = 0;
}

export function decodePriResp(words: Int32Array, at: number, out: PriRespCommand): PriRespCommand {
  const w0 = words[at];
  out.ssv = (w0 & SSV) !== 0;
  out.substreamId = commandSubstreamId(words, at);
  out.streamId = commandStreamId(words, at);
  out.prgIndex = words[at + 2] & PRG_INDEX_MASK;
  out.resp = (words[at + 2] >>> RESP_SHIFT) & 3;
  return out;
}

/** CMD_SYNC; with `msiAddress` non-zero the SMMU writes `msiData` there on completion. */
export function encodeSync(words: Int32Array, at: number, msiAddress = 0, msiData = 0): void {
  words[at] = CMD_SYNC;
  words[at + 1] = msiData;
  words[at + 2] = msiAddress & ~3;
  words[at + 3] = addressHigh(msiAddress) & 0xf_ffff;
}

/** The MSI address and data of a CMD_SYNC (address 0: no completion write). */
export function syncMsiAddress(words: Int32Array, at: number): number {
  return joinAddress(words[at + 2] & ~3, words[at + 3] & 0xf_ffff);
}

export function syncMsiData(words: Int32Array, at: number): number {
  return words[at + 1] >>> 0;
}

export function encodeTlbiNhVa(words: Int32Array, at: number, va: number): void {
  words[at] = CMD_TLBI_NH_VA;
  words[at + 1] = 0;
  words[at + 2] = addressLow(va) & ~0xfff;
  words[at + 3] = addressHigh(va);
}

/** The page address of a CMD_TLBI_NH_VA: dword1 [51:12] (bits above the 52-bit VA ignored). */
export function tlbiNhVaAddress(words: Int32Array, at: number): number {
  return joinAddress(words[at + 2] & ~0xfff, words[at + 3] & 0xf_ffff);
}

export interface ResumeCommand {
  streamId: number;
  stag: number;
  /**
   * RESUME_TERMINATE | RESUME_RETRY | RESUME_ABORT: bit 0 is Ac, bit 1 Ab (dword0 [13:12]). 3 is
   * Ac=1 with Ab=1, a retry: Ab is ignored when Ac=1 (SMMU spec 4.7.1).
   */
  action: number;
}

export function newResumeCommand(): ResumeCommand {
  return { streamId: 0, stag: 0, action: 0 };
}

export function encodeResume(words: Int32Array, at: number, c: ResumeCommand): void {
  words[at] = CMD_RESUME | ((c.action & 3) << RESUME_ACTION_SHIFT);
  words[at + 1] = c.streamId;
  words[at + 2] = c.stag & STAG_MASK;
  words[at + 3] = 0;
}

export function decodeResume(words: Int32Array, at: number, out: ResumeCommand): ResumeCommand {
  out.action = (words[at] >>> RESUME_ACTION_SHIFT) & 3;
  out.streamId = commandStreamId(words, at);
  out.stag = words[at + 2] & STAG_MASK;
  return out;
}

export function encodeStallTerm(words: Int32Array, at: number, streamId: number): void {
  words[at] = CMD_STALL_TERM;
  words[at + 1] = streamId;
  words[at + 2] = 0;
  words[at + 3] = 0;
}
