/**
 * The nested walk the way SMMUv3 hardware does it: fetch the CD for the SubstreamID from the
 * device's CD table, then walk four levels of the guest's stage-1 table. Every address the guest
 * gives (the CD table, each table pointer, the output address) is a guest physical address (IPA)
 * that is itself translated through the VM's stage 2 before it is read, so a guest can reach only
 * what its IOAS maps. A fault at stage 2 is the host's (S2=1, CLASS says which fetch); a fault in
 * the guest's own tables is stage 1.
 *
 * A malformed table ends the walk with a fault record, never an exception or a hang: the walk is
 * bounded by the four levels, so a cycle cannot loop.
 *
 * Without a stage-2 table (`s2` undefined) the context's `memory` is reached by identity, for
 * tests and tools that have no registry in front of the IOMMU.
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
  CD_RECORD,
  CD_STALL,
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
import { type HostMemory, REGION_STRIDE } from './host-memory.ts';
import { type IoPageTable, S2AP_READ, S2AP_WRITE, type S2Result } from './io-pagetable.ts';
import { TLB_PERM_EXEC, TLB_PERM_UNPRIV, TLB_PERM_WRITE } from './iotlb.ts';

export const ACCESS_READ = 1;
export const ACCESS_WRITE = 2;
export const ACCESS_EXEC = 4;
export const ACCESS_PRIV = 8;

/**
 * An IOTLB entry's permissions (TLB_PERM_*, a walk's leafPerm) allow the access (otherwise the
 * access walks, and faults there): a write needs WRITE, an unprivileged access UNPRIV, an
 * instruction fetch EXEC.
 */
export function permitsAccess(perm: number, access: number): boolean {
  const need = PERMS_NEEDED[access & (ACCESS_WRITE | ACCESS_EXEC | ACCESS_PRIV)];
  return (perm & need) === need;
}

/** TLB_PERM_* bits an access needs, by its WRITE, EXEC and PRIV bits (the only ones that matter). */
const PERMS_NEEDED = Uint8Array.from({ length: 16 }, (_, access) => {
  let need = 0;
  if ((access & ACCESS_WRITE) !== 0) need |= TLB_PERM_WRITE;
  if ((access & ACCESS_PRIV) === 0) need |= TLB_PERM_UNPRIV;
  if ((access & ACCESS_EXEC) !== 0) need |= TLB_PERM_EXEC;
  return need;
});

const TWO_32 = 0x1_0000_0000;
const VA_LIMIT = 2 ** 48;

/** A stream's translation configuration: what its STE says. */
export interface Stage1Context {
  /** Guest RAM reached by identity when there is no stage-2 table. */
  memory?: GuestMemory;
  /** The VM's stage 2 (its IOAS's paging domain) and the host memory it points into. */
  s2?: IoPageTable;
  host?: HostMemory;
  cdTableGpa: number;
  cdLog2: number;
  /** Stage 1 bypassed (STE Config bypass, or a plain paging domain): the input address is the IPA. */
  s1Bypass?: boolean;
  /** The stream may stall (STE.S1STALLD clear: the device is not PCIe and can wait). */
  stall?: boolean;
  /**
   * A host-owned PASID table (VT-d scalable mode): each PASID carries its own stage-1 root and its
   * own stage 2, so two PASIDs of one device may translate in two VMs. When present, the CD fields
   * are unused.
   */
  pasidTable?: ReadonlyMap<number, PasidEntry>;
}

/** One PASID's entry of a host-owned PASID table: its stage 2 and the guest's stage-1 root (a GPA). */
export interface PasidEntry extends Stage1Context {
  ttbGpa: number;
  /** Record faults of terminated transactions (the fault-processing-disable bit clear). */
  recordFaults: boolean;
}

/** The outcome of one walk; reused by the caller, never allocated per walk. */
export interface WalkResult {
  /** Output IPA (guest physical) when `fault === 0`. */
  gpa: number;
  /** Output host-physical address (the GPA itself without a stage-2 table). */
  hpa: number;
  /** The memory the output lands in, and the byte offset there. */
  memory: GuestMemory | undefined;
  offset: number;
  /** SMMUv3 event type, 0 on success. */
  fault: number;
  /** The fault happened at stage 2 (the host's business, never the guest's). */
  stage2: boolean;
  /** CLASS field: CD fetch, table walk, or input address. */
  faultClass: number;
  /** For stage-2 faults: the IPA that could not be translated or read. */
  fetchAddress: number;
  /** On success: the combined permissions of both stages as TLB_PERM_* bits, for the IOTLB. */
  leafPerm: number;
  /** The CD's R bit once it was fetched: a terminated stage-1 fault is recorded as an event. */
  recordFaults: boolean;
  /** The CD's S bit: a stage-1 translation fault stalls (if the stream may stall). */
  stallFaults: boolean;
  /** Set by the IOMMU: the transaction is stalled, waiting for a RESUME. */
  stalled: boolean;
  /**
   * The GPA of the last-level table the walk reached (its entry read, faulting there or not), or
   * -1 when it stopped above it: what the walk cache keeps (walk-cache.ts).
   */
  leafTable: number;
}

export function newWalkResult(): WalkResult {
  return {
    gpa: 0,
    hpa: 0,
    memory: undefined,
    offset: 0,
    fault: 0,
    stage2: false,
    faultClass: 0,
    fetchAddress: 0,
    leafPerm: 0,
    recordFaults: true,
    stallFaults: false,
    stalled: false,
    leafTable: -1,
  };
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

const s2Scratch: S2Result = { pa: 0, prot: 0 };

function stage2Fault(out: WalkResult, fault: number, faultClass: number, ipa: number): number {
  fail(out, fault, true, faultClass, ipa);
  return -1;
}

/**
 * Stage 2 of `length` bytes at `ipa` for `access`: on success sets out.memory/out.offset (where the
 * bytes are) and out.hpa, and returns the S2 permissions; on a fault fills `out` and returns -1.
 */
function stage2(
  ctx: Stage1Context,
  ipa: number,
  length: number,
  access: number,
  faultClass: number,
  out: WalkResult,
): number {
  const s2 = ctx.s2;
  if (!s2) return identity(ctx, ipa, length, faultClass, out);
  if (!s2.resolve(ipa, s2Scratch)) return stage2Fault(out, F_TRANSLATION, faultClass, ipa);
  return stage2Landed(ctx, ipa, access, faultClass, out);
}

/**
 * `stage2` for the walk's own reads (a CD, a table entry): these few pages go through the stage-2
 * walk cache (IoPageTable.resolveCached), the output address does not. Separate functions, so that
 * each stays small enough for the compiler to inline where it is called.
 */
function stage2Fetch(
  ctx: Stage1Context,
  ipa: number,
  length: number,
  faultClass: number,
  out: WalkResult,
): number {
  const s2 = ctx.s2;
  if (!s2) return identity(ctx, ipa, length, faultClass, out);
  if (!s2.resolveCached(ipa, s2Scratch)) return stage2Fault(out, F_TRANSLATION, faultClass, ipa);
  return stage2Landed(ctx, ipa, ACCESS_READ, faultClass, out);
}

/** Without a stage-2 table: the IPA is an offset in the context's memory. */
function identity(
  ctx: Stage1Context,
  ipa: number,
  length: number,
  faultClass: number,
  out: WalkResult,
): number {
  const memory = ctx.memory;
  if (!memory?.contains(ipa, length)) return stage2Fault(out, F_TRANSLATION, faultClass, ipa);
  out.memory = memory;
  out.offset = ipa;
  out.hpa = ipa;
  return S2AP_READ | S2AP_WRITE;
}

/** The rest of a stage-2 translation of `ipa` that `s2Scratch` holds: its permissions, and where it lands. */
function stage2Landed(
  ctx: Stage1Context,
  ipa: number,
  access: number,
  faultClass: number,
  out: WalkResult,
): number {
  const need = (access & ACCESS_WRITE) !== 0 ? S2AP_WRITE : S2AP_READ;
  if ((s2Scratch.prot & need) === 0) return stage2Fault(out, F_PERMISSION, faultClass, ipa);
  const hpa = s2Scratch.pa;
  const memory = ctx.host?.regionOf(hpa);
  // A stage 2 that points at no memory is a host bug or a stray mapping: an external abort on the fetch.
  if (!memory) return stage2Fault(out, F_TRANSLATION, faultClass, ipa);
  out.memory = memory;
  // hpa % REGION_STRIDE without a floating-point remainder (a library call past 32 bits).
  out.offset = hpa - Math.floor(hpa / REGION_STRIDE) * REGION_STRIDE;
  out.hpa = hpa;
  return s2Scratch.prot;
}

export function walkStage1(
  ctx: Stage1Context,
  pasid: number,
  va: number,
  access: number,
  out: WalkResult,
): boolean {
  out.leafTable = -1;
  if (ctx.s1Bypass) {
    const prot = stage2(ctx, va, 1, access, CLASS_IN, out);
    if (prot < 0) return false;
    out.gpa = va;
    out.fault = 0;
    out.leafPerm = ((prot & S2AP_WRITE) !== 0 ? TLB_PERM_WRITE : 0) | TLB_PERM_UNPRIV | TLB_PERM_EXEC;
    return true;
  }
  out.recordFaults = true;
  out.stallFaults = false;
  if (ctx.pasidTable) {
    const entry = ctx.pasidTable.get(pasid);
    if (!entry) return fail(out, C_BAD_SUBSTREAMID, false, CLASS_CD);
    if (entry.s1Bypass) return walkStage1(entry, pasid, va, access, out);
    out.recordFaults = entry.recordFaults;
    if (va < 0 || va >= VA_LIMIT) return fail(out, F_TRANSLATION, false, CLASS_IN);
    return walkTables(entry, entry.ttbGpa, va, access, out);
  }
  // A shift, not `2 **` (a Math.pow call on every walk): CD tables hold at most 2^20 entries.
  if (pasid < 0 || ctx.cdLog2 > 30 || pasid >= 1 << ctx.cdLog2)
    return fail(out, C_BAD_SUBSTREAMID, false, CLASS_CD);
  const cd = ctx.cdTableGpa + pasid * CD_BYTES;
  if (cd % 4 !== 0) return fail(out, F_TRANSLATION, true, CLASS_CD, cd);
  if (stage2Fetch(ctx, cd, CD_BYTES, CLASS_CD, out) < 0) return false;
  const words = (out.memory as GuestMemory).words;
  const cdLow = Atomics.load(words, out.offset >>> 2);
  const cdHigh = words[(out.offset >>> 2) + 1];
  out.recordFaults = (cdLow & CD_RECORD) !== 0;
  out.stallFaults = (cdLow & CD_STALL) !== 0;
  if ((cdLow & CD_VALID) === 0 || (cdHigh & CD_HIGH_RES0) !== 0) return fail(out, C_BAD_CD, false, CLASS_CD);
  if (va < 0 || va >= VA_LIMIT) return fail(out, F_TRANSLATION, false, CLASS_IN);
  return walkTables(
    ctx,
    ((cdLow & PTE_ADDR_LOW_MASK) >>> 0) + (cdHigh & PTE_HIGH_ADDR_MASK) * TWO_32,
    va,
    access,
    out,
  );
}

/**
 * The walk of a CD-table stream from the last-level table a walk cache entry holds (`table`, a
 * GPA), with the CD's R and S bits it kept: one entry read through stage 2 instead of the CD and
 * four levels. The caller checked that the entry is for this (stream, PASID, VA region).
 */
export function walkLeaf(
  ctx: Stage1Context,
  table: number,
  recordFaults: boolean,
  stallFaults: boolean,
  va: number,
  access: number,
  out: WalkResult,
): boolean {
  out.recordFaults = recordFaults;
  out.stallFaults = stallFaults;
  return walkTables(ctx, table, va, access, out, LEVELS - 1);
}

/**
 * The levels of a stage-1 table from `first` (0: rooted at `root`, a GPA; LEVELS - 1: `root` is a
 * last-level table), each fetch through `ctx`'s stage 2.
 */
function walkTables(
  ctx: Stage1Context,
  root: number,
  va: number,
  access: number,
  out: WalkResult,
  first = 0,
): boolean {
  const vaLow = va >>> 0;
  const vaHigh = Math.floor(va / TWO_32);
  let table = root;
  let words: Int32Array;
  let low = 0;
  let high = 0;
  out.leafTable = -1;
  for (let level = first; level < LEVELS; level++) {
    if (level === LEVELS - 1) out.leafTable = table;
    const slot = table + tableIndex(vaLow, vaHigh, level) * ENTRY_BYTES;
    if (stage2Fetch(ctx, slot, ENTRY_BYTES, CLASS_TTD, out) < 0) return false;
    words = (out.memory as GuestMemory).words;
    low = Atomics.load(words, out.offset >>> 2);
    high = words[(out.offset >>> 2) + 1];
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
  const prot = stage2(ctx, gpa, 1, access, CLASS_IN, out);
  if (prot < 0) return false;
  out.gpa = gpa;
  out.fault = 0;
  out.leafPerm =
    ((low & PTE_AP_RDONLY) === 0 && (prot & S2AP_WRITE) !== 0 ? TLB_PERM_WRITE : 0) |
    ((low & PTE_AP_UNPRIV) !== 0 ? TLB_PERM_UNPRIV : 0) |
    ((high & PTE_HIGH_XN) === 0 ? TLB_PERM_EXEC : 0);
  return true;
}
