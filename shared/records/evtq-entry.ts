/**
 * SMMUv3 event record (32 bytes, 8 words), SMMU spec 7.3 (docs/queues.md):
 *   dword0 [7:0] EventType, [11] SSV, [31:12] SubstreamID, [63:32] StreamID
 *   dword1 [15:0] STAG, [31] Stall, [33] PnU, [34] InD, [35] RnW, [39] S2, [41:40] CLASS
 *   dword2 [63:0] InputAddr
 *   dword3 IPA [51:12] for faults that record an IPA (stage-2 translation, address size, access,
 *          permission), or FetchAddr [51:3] for the fetch aborts F_STE_FETCH, F_CD_FETCH and
 *          F_WALK_EABT (Linux EVTQ_3_IPA / EVTQ_3_FETCH_ADDR share the dword)
 * Every other bit is RES0 and written as zero. The host's event queue model writes it into a guest's
 * event queue; the guest's SMMUv3 driver decodes it.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';
import { F_CD_FETCH, F_STE_FETCH, F_WALK_EABT } from './event-types.ts';

export const EVTQ_ENTRY_WORDS = 8;

const EVENT_TYPE_MASK = 0xff;
const SSV = 1 << 11;
const SSID_SHIFT = 12;
const SSID_MASK = 0xf_ffff;
/** Stall tags a stream can have: STAG is 16 bits here and in CMD_RESUME (cmdq-entry.ts). */
export const STAGS = 1 << 16;
export const STAG_MASK = STAGS - 1;
const STALL = 1 << 31;
// dword1 bits 32 and up, as bits of its high word.
const PNU = 1 << 1;
const IND = 1 << 2;
const RNW = 1 << 3;
const S2 = 1 << 7;
const CLASS_SHIFT = 8;
const CLASS_MASK = 3;
// dword3: the low word keeps [31:12] of an IPA or [31:3] of a fetch address, the high word [51:32].
const IPA_LOW_MASK = ~0xfff;
const FETCH_LOW_MASK = ~0x7;
const ADDRESS_HIGH_MASK = 0xf_ffff;

export interface EvtqEntry {
  /** EventType: F_TRANSLATION, C_BAD_CD, ... (event-types.ts). */
  eventType: number;
  streamId: number;
  ssv: boolean;
  /** Valid when `ssv`. */
  substreamId: number;
  /** Stall tag, meaningful when `stall`: (StreamID, STAG) names the stalled transaction. */
  stag: number;
  /** The transaction is stalled waiting for CMD_RESUME: the record must never be discarded. */
  stall: boolean;
  /** PnU: 1 = privileged. */
  privileged: boolean;
  /** InD: 1 = instruction fetch. */
  instruction: boolean;
  /** RnW: 1 = read. */
  read: boolean;
  /** S2: the fault happened at stage 2. */
  stage2: boolean;
  /** CLASS: CLASS_CD, CLASS_TTD or CLASS_IN. */
  faultClass: number;
  /** InputAddr: the address as the device presented it (a JS number, so below 2^53). */
  inputAddress: number;
  /** dword3: the IPA (bits [11:0] dropped) or, for fetch aborts, the fetch PA (bits [2:0] dropped). */
  fetchAddress: number;
}

export function newEvtqEntry(): EvtqEntry {
  return {
    eventType: 0,
    streamId: 0,
    ssv: false,
    substreamId: 0,
    stag: 0,
    stall: false,
    privileged: false,
    instruction: false,
    read: false,
    stage2: false,
    faultClass: 0,
    inputAddress: 0,
    fetchAddress: 0,
  };
}

/** The event types whose dword3 is FetchAddr[51:3] rather than IPA[51:12]. */
export function recordsFetchAddress(eventType: number): boolean {
  return eventType === F_STE_FETCH || eventType === F_CD_FETCH || eventType === F_WALK_EABT;
}

export function encodeEvtqEntry(words: Int32Array, at: number, e: EvtqEntry): void {
  words[at] =
    (e.eventType & EVENT_TYPE_MASK) | (e.ssv ? SSV : 0) | ((e.substreamId & SSID_MASK) << SSID_SHIFT);
  words[at + 1] = e.streamId;
  words[at + 2] = (e.stag & STAG_MASK) | (e.stall ? STALL : 0);
  words[at + 3] =
    (e.privileged ? PNU : 0) |
    (e.instruction ? IND : 0) |
    (e.read ? RNW : 0) |
    (e.stage2 ? S2 : 0) |
    ((e.faultClass & CLASS_MASK) << CLASS_SHIFT);
  words[at + 4] = addressLow(e.inputAddress);
  words[at + 5] = addressHigh(e.inputAddress);
  const lowMask = recordsFetchAddress(e.eventType) ? FETCH_LOW_MASK : IPA_LOW_MASK;
  words[at + 6] = addressLow(e.fetchAddress) & lowMask;
  words[at + 7] = addressHigh(e.fetchAddress) & ADDRESS_HIGH_MASK;
}

export function decodeEvtqEntry(words: Int32Array, at: number, out: EvtqEntry): EvtqEntry {
  const w0 = words[at];
  const w2 = words[at + 2];
  const w3 = words[at + 3];
  out.eventType = w0 & EVENT_TYPE_MASK;
  out.ssv = (w0 & SSV) !== 0;
  out.substreamId = (w0 >>> SSID_SHIFT) & SSID_MASK;
  out.streamId = words[at + 1] >>> 0;
  out.stag = w2 & STAG_MASK;
  out.stall = (w2 & STALL) !== 0;
  out.privileged = (w3 & PNU) !== 0;
  out.instruction = (w3 & IND) !== 0;
  out.read = (w3 & RNW) !== 0;
  out.stage2 = (w3 & S2) !== 0;
  out.faultClass = (w3 >>> CLASS_SHIFT) & CLASS_MASK;
  out.inputAddress = joinAddress(words[at + 4], words[at + 5]);
  const lowMask = recordsFetchAddress(out.eventType) ? FETCH_LOW_MASK : IPA_LOW_MASK;
  out.fetchAddress = joinAddress(words[at + 6] & lowMask, words[at + 7] & ADDRESS_HIGH_MASK);
  return out;
}
