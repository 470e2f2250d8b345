import { beforeEach, describe, expect, test } from 'vitest';
import { AddressSpaces } from '../../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../../guest/mm/page-allocator.ts';
import { MAP_READ_ONLY } from '../../../guest/mm/stage1-table.ts';
import {
  ACCESS_READ,
  ACCESS_WRITE,
  newWalkResult,
  type Stage1Context,
  walkStage1,
} from '../../../host/iommu/stage1-walker.ts';
import { GuestMemory } from '../../../shared/guest-memory.ts';
import {
  C_BAD_CD,
  C_BAD_SUBSTREAMID,
  CLASS_TTD,
  F_ACCESS,
  F_ADDR_SIZE,
  F_PERMISSION,
  F_TRANSLATION,
} from '../../../shared/records/event-types.ts';
import { CD_BYTES, ENTRY_BYTES, tableIndex } from '../../../shared/stage1-format.ts';

const VA = 0x7e00_0004_2000;

describe('stage-1 walk over a guest-built table', () => {
  let memory: GuestMemory;
  let spaces: AddressSpaces;
  let ctx: Stage1Context;
  const out = newWalkResult();

  beforeEach(() => {
    memory = GuestMemory.allocate(1);
    spaces = new AddressSpaces(memory, new PageAllocator(memory));
    const device = spaces.installDevice(0, [0, 1]);
    ctx = { memory, cdTableGpa: device.cdTableGpa, cdLog2: device.cdLog2 };
  });

  test('a missing entry is a stage-1 F_TRANSLATION, not a stage-2 fault', () => {
    expect(walkStage1(ctx, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
    expect(out.stage2).toBe(false);
  });

  test('a mapped page translates to its GPA plus the page offset', () => {
    expect(spaces.table(1).map(VA, 0x3000)).toBe(true);
    expect(walkStage1(ctx, 1, VA + 0x123, ACCESS_READ, out)).toBe(true);
    expect(out.gpa).toBe(0x3123);
    // Another PASID's table does not see it.
    expect(walkStage1(ctx, 0, VA, ACCESS_READ, out)).toBe(false);
  });

  test('writing a read-only page is F_PERMISSION', () => {
    spaces.table(1).map(VA, 0x3000, MAP_READ_ONLY);
    expect(walkStage1(ctx, 1, VA, ACCESS_READ, out)).toBe(true);
    expect(walkStage1(ctx, 1, VA, ACCESS_WRITE, out)).toBe(false);
    expect(out.fault).toBe(F_PERMISSION);
  });

  test('a PASID beyond the CD table is C_BAD_SUBSTREAMID; an invalid CD is C_BAD_CD', () => {
    expect(walkStage1(ctx, 1 << ctx.cdLog2, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(C_BAD_SUBSTREAMID);
    expect(walkStage1(ctx, 5, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(C_BAD_CD);
  });

  test('a table pointer outside guest RAM ends the walk with a stage-2 fault', () => {
    const table = spaces.table(1);
    table.map(VA, 0x3000);
    // Point the level-0 entry at a GPA past the end of guest RAM.
    const slot = table.rootGpa + tableIndex(VA >>> 0, Math.floor(VA / 2 ** 32), 0) * ENTRY_BYTES;
    memory.words[(slot >>> 2) + 1] = 0x10; // address bits [47:32] = 0x10: far outside 1 MiB
    expect(walkStage1(ctx, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_TRANSLATION);
    expect(out.stage2).toBe(true);
    expect(out.faultClass).toBe(CLASS_TTD);
  });

  test('reserved bits in an entry are F_ADDR_SIZE', () => {
    const table = spaces.table(1);
    table.map(VA, 0x3000);
    const slot = table.rootGpa + tableIndex(VA >>> 0, Math.floor(VA / 2 ** 32), 0) * ENTRY_BYTES;
    memory.words[(slot >>> 2) + 1] |= 1 << 16;
    expect(walkStage1(ctx, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_ADDR_SIZE);
  });

  test('a table that points at itself ends in four steps, without a hang', () => {
    const table = spaces.table(1);
    // Every level's entry for VA 0 points back at the root: a cycle.
    memory.words[table.rootGpa >>> 2] = (table.rootGpa | 0b11) >>> 0;
    expect(walkStage1(ctx, 1, 0, ACCESS_READ, out)).toBe(false);
    expect(out.fault).toBe(F_ACCESS);
  });

  test('a CD table pointer outside guest RAM is a stage-2 fault on the CD fetch', () => {
    const bad = { ...ctx, cdTableGpa: memory.size - CD_BYTES };
    expect(walkStage1(bad, 1, VA, ACCESS_READ, out)).toBe(false);
    expect(out.stage2).toBe(true);
  });
});
