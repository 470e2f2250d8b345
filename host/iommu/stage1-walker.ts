/**
 * The stage-1 walk the way SMMUv3 hardware does it: fetch the CD for the SubstreamID from the
 * device's CD table, then walk four levels of the guest's table, every pointer a guest physical
 * address. Stage 2 is identity over guest RAM for now: a GPA outside guest RAM is a stage-2 fault.
 * A malformed table ends the walk with a fault record, never an exception or a hang (the walk is
 * bounded by the four levels, so a cycle cannot loop).
 */
import type { GuestMemory } from '../../shared/guest-memory.ts';
import {
  C_BAD_CD,
  C_BAD_SUBSTREAMID,
  CLASS_CD,
  CLASS_IN,
  CLASS_TTD,
  F_ACCESS,
  F_ADDR_SIZE,
  F_PERMISSION,
  F_TRANSLATION,
} from '../../shared/records/event-types.ts';
import {
  CD_BYTES,
  CD_HIGH_RES0,
  CD_VALID,
  ENTRY_BYTES,
  LEVELS,
  PTE_ADDR_LOW_MASK,
  PTE_AF,
  PTE_AP_RDONLY,
  PTE_AP_UNPRIV,
  PTE_HIGH_ADDR_MASK,
  PTE_HIGH_RES0,
  PTE_HIGH_XN,
  PTE_TABLE,
  PTE_VALID,
  tableIndex,
} from '../../shared/stage1-format.ts';
import { TLB_PERM_EXEC, TLB_PERM_UNPRIV, TLB_PERM_WRITE } from './iotlb.ts';

export const ACCESS_READ = 1;
export const ACCESS_WRITE = 2;
export const ACCESS_EXEC = 4;
export const ACCESS_PRIV = 8;

const TWO_32 = 0x1_0000_0000;
const VA_LIMIT = 2 ** 48;

/** Where a stream's stage-1 configuration lives (what the guest's vSTE says). */
export interface Stage1Context {
  memory: GuestMemory;
  cdTableGpa: number;
  cdLog2: number;
  /** Stage 1 bypassed (STE Config bypass, or a plain paging domain): the input address is the GPA. */
  s1Bypass?: boolean;
}

/** The outcome of one walk; reused by the caller, never allocated per walk. */
export interface WalkResult {
  /** Output GPA when `fault === 0`. */
  gpa: number;
  /** SMMUv3 event type, 0 on success. */
  fault: number;
  /** The fault happened at stage 2 (the host's business, never the guest's). */
  stage2: boolean;
  /** CLASS field: CD fetch, table walk, or input address. */
  faultClass: number;
  /** For stage-2 faults on a fetch: the GPA that could not be read. */
  fetchAddress: number;
  /** On success: the leaf's permissions as TLB_PERM_* bits, for the IOTLB. */
  leafPerm: number;
}

export function newWalkResult(): WalkResult {
  return { gpa: 0, fault: 0, stage2: false, faultClass: 0, fetchAddress: 0, leafPerm: 0 };
}

function fail(
  out: WalkResult,
  fault: number,
  stage2: boolean,
  faultClass: number,
  fetchAddress = 0,
): boolean {
  out.fault = fault;
  out.stage2 = stage2;
  out.faultClass = faultClass;
  out.fetchAddress = fetchAddress;
  return false;
}

export function walkStage1(
  ctx: Stage1Context,
  pasid: number,
  va: number,
  access: number,
  out: WalkResult,
): boolean {
  const memory = ctx.memory;
  const words = memory.words;
  if (ctx.s1Bypass) {
    if (!memory.contains(va, 1)) return fail(out, F_TRANSLATION, true, CLASS_IN, va);
    out.gpa = va;
    out.fault = 0;
    out.leafPerm = TLB_PERM_WRITE | TLB_PERM_UNPRIV | TLB_PERM_EXEC;
    return true;
  }
  if (pasid < 0 || pasid >= 2 ** ctx.cdLog2) return fail(out, C_BAD_SUBSTREAMID, false, CLASS_CD);
  const cd = ctx.cdTableGpa + pasid * CD_BYTES;
  if (cd % 4 !== 0 || !memory.contains(cd, CD_BYTES)) return fail(out, F_TRANSLATION, true, CLASS_CD, cd);
  const cdLow = Atomics.load(words, cd >>> 2);
  const cdHigh = words[(cd >>> 2) + 1];
  if ((cdLow & CD_VALID) === 0 || (cdHigh & CD_HIGH_RES0) !== 0) return fail(out, C_BAD_CD, false, CLASS_CD);
  if (va < 0 || va >= VA_LIMIT) return fail(out, F_TRANSLATION, false, CLASS_IN);

  const vaLow = va >>> 0;
  const vaHigh = Math.floor(va / TWO_32);
  let table = ((cdLow & PTE_ADDR_LOW_MASK) >>> 0) + (cdHigh & PTE_HIGH_ADDR_MASK) * TWO_32;
  let low = 0;
  let high = 0;
  for (let level = 0; level < LEVELS; level++) {
    const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
    if (!memory.contains(slot, ENTRY_BYTES)) return fail(out, F_TRANSLATION, true, CLASS_TTD, slot);
    low = Atomics.load(words, slot >>> 2);
    high = words[(slot >>> 2) + 1];
    // Level 0-2 blocks are not part of this format: an entry without T is as invalid as one without V.
    if ((low & PTE_VALID) === 0 || (low & PTE_TABLE) === 0) return fail(out, F_TRANSLATION, false, CLASS_IN);
    if ((high & PTE_HIGH_RES0) !== 0) return fail(out, F_ADDR_SIZE, false, CLASS_IN);
    table = ((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * TWO_32;
  }
  if ((low & PTE_AF) === 0) return fail(out, F_ACCESS, false, CLASS_IN);
  if (
    ((access & ACCESS_WRITE) !== 0 && (low & PTE_AP_RDONLY) !== 0) ||
    ((access & ACCESS_PRIV) === 0 && (low & PTE_AP_UNPRIV) === 0) ||
    ((access & ACCESS_EXEC) !== 0 && (high & PTE_HIGH_XN) !== 0)
  ) {
    return fail(out, F_PERMISSION, false, CLASS_IN);
  }
  const gpa = table + (vaLow & 0xfff);
  if (!memory.contains(gpa, 1)) return fail(out, F_TRANSLATION, true, CLASS_IN, gpa);
  out.gpa = gpa;
  out.fault = 0;
  out.leafPerm =
    ((low & PTE_AP_RDONLY) === 0 ? TLB_PERM_WRITE : 0) |
    ((low & PTE_AP_UNPRIV) !== 0 ? TLB_PERM_UNPRIV : 0) |
    ((high & PTE_HIGH_XN) === 0 ? TLB_PERM_EXEC : 0);
  return true;
}
