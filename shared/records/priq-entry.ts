/**
 * SMMUv3 PRI queue entry (16 bytes, 4 words), SMMU spec 8.1 (docs/queues.md):
 *   dword0 [31:0] StreamID, [51:32] SubstreamID, [58] Priv, [59] Exec, [60] Read, [61] Write,
 *          [62] Last, [63] SSV
 *   dword1 [8:0] PRGIndex, [63:12] page address
 * The host's vSMMU model writes it into a guest's PRI queue; the guest's SMMUv3 driver decodes it.
 */
import { addressHigh, addressLow, joinAddress } from './address.ts';
import { PRG_INDEX_MASK } from './page-request.ts';

/** The Stop Marker rule and the PRG index width belong to every page request: page-request.ts. */
export { isStopMarker, PRG_INDEX_MASK } from './page-request.ts';

export const PRIQ_ENTRY_WORDS = 4;

const SSID_MASK = 0xf_ffff;
const PRIV = 1 << 26;
const EXEC = 1 << 27;
const READ = 1 << 28;
const WRITE = 1 << 29;
const LAST = 1 << 30;
const SSV = 1 << 31;
const PAGE_MASK = ~0xfff;

export interface PriqEntry {
  streamId: number;
  /** Valid when `ssv`. */
  substreamId: number;
  ssv: boolean;
  privileged: boolean;
  exec: boolean;
  read: boolean;
  write: boolean;
  last: boolean;
  prgIndex: number;
  /** Page-aligned address. */
  address: number;
}

export function newPriqEntry(): PriqEntry {
  return {
    streamId: 0,
    substreamId: 0,
    ssv: false,
    privileged: false,
    exec: false,
    read: false,
    write: false,
    last: false,
    prgIndex: 0,
    address: 0,
  };
}

export function encodePriqEntry(words: Int32Array, at: number, e: PriqEntry): void {
  words[at] = e.streamId;
  words[at + 1] =
    (e.substreamId & SSID_MASK) |
    (e.privileged ? PRIV : 0) |
    (e.exec ? EXEC : 0) |
    (e.read ? READ : 0) |
    (e.write ? WRITE : 0) |
    (e.last ? LAST : 0) |
    (e.ssv ? SSV : 0);
  words[at + 2] = (e.prgIndex & PRG_INDEX_MASK) | (addressLow(e.address) & PAGE_MASK);
  words[at + 3] = addressHigh(e.address);
}

export function decodePriqEntry(words: Int32Array, at: number, out: PriqEntry): PriqEntry {
  const w1 = words[at + 1];
  const w2 = words[at + 2];
  out.streamId = words[at] >>> 0;
  out.substreamId = w1 & SSID_MASK;
  out.privileged = (w1 & PRIV) !== 0;
  out.exec = (w1 & EXEC) !== 0;
  out.read = (w1 & READ) !== 0;
  out.write = (w1 & WRITE) !== 0;
  out.last = (w1 & LAST) !== 0;
  out.ssv = (w1 & SSV) !== 0;
  out.prgIndex = w2 & PRG_INDEX_MASK;
  out.address = joinAddress(w2 & PAGE_MASK, words[at + 3]);
  return out;
}
