// The fault-fd half every vIOMMU flavour shares (host/vmm/fault-pump.ts), on a real registry's fault
// queue and real guest memory.
import { describe, expect, test } from 'vitest';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import {
  ANSWER_FAILURE,
  ANSWER_INVALID,
  ANSWER_SUCCESS,
  answerCodes,
  CookieTable,
  FaultPump,
} from '../../../host/vmm/fault-pump.ts';
import { InvariantChecker } from '../../../host/vmm/invariants.ts';
import { newModelStats } from '../../../host/vmm/viommu-model.ts';
import { CERROR_ILL, COMMAND_ERROR_BYTES, CommandErrorRegister } from '../../../shared/command-error.ts';
import { GuestMemory } from '../../../shared/guest-memory.ts';

function pump() {
  const { faultFd } = new Iommufd().faultQueueAlloc();
  const stats = newModelStats();
  const memory = GuestMemory.allocate(1);
  const errors = new CommandErrorRegister(new SharedArrayBuffer(COMMAND_ERROR_BYTES), 0);
  const p = new FaultPump('vm', faultFd, 2, stats, new InvariantChecker(), () => 'vm', memory, errors);
  return { p, stats, memory, errors };
}

describe('the cookie table of what a guest was handed', () => {
  test('an answer takes the cookie once; a repeat is a duplicate, an unknown slot is neither', () => {
    const t = new CookieTable(2, 512);
    t.set(1, 7, 42);
    expect(t.outstanding).toBe(1);
    expect(t.take(1, 7)).toBe(42);
    expect(t.take(1, 7)).toBe(-2);
    expect(t.take(0, 7)).toBe(-1);
    expect(t.outstanding).toBe(0);
  });

  test('a guest naming a device or index past the table reaches nothing', () => {
    const t = new CookieTable(2, 512);
    t.set(0, 0, 1);
    for (const [device, index] of [
      [2, 0],
      [-1, 0],
      [0, 512],
      [0, -1],
    ])
      expect(t.take(device, index)).toBe(-1);
    expect(t.outstanding).toBe(1);
  });

  test('a delivery again after an answer is a fresh group, not a duplicate', () => {
    const t = new CookieTable(1, 512);
    t.set(0, 3, 10);
    t.take(0, 3);
    t.set(0, 3, 11);
    expect(t.take(0, 3)).toBe(11);
  });
});

describe('guest answers through the pump', () => {
  test("each flavour's response codes map to one answer; a reserved code is refused and signalled", () => {
    const codes = answerCodes(2, 1, 0); // CMD_PRI_RESP: Success 2, Invalid 1, Failure 0; 3 reserved
    expect([...codes]).toEqual([ANSWER_FAILURE, ANSWER_INVALID, ANSWER_SUCCESS]);
    const { p, stats, errors } = pump();
    p.answerCode(0, 0, 3, codes);
    p.answerCode(0, 0, -1, codes);
    expect(stats.illegalCommands).toBe(2);
    expect(errors.pending).toBe(true);
    expect(errors.code).toBe(CERROR_ILL);
  });

  test('an answer to a group never delivered is a counted drop, never a response', () => {
    const { p, stats } = pump();
    p.answer(1, 5, ANSWER_SUCCESS);
    expect(stats).toMatchObject({ unknownResponses: 1, duplicateResponses: 0, guestAnswered: 0 });
    expect(stats.responses).toEqual({ success: 0, invalid: 0, failure: 0 });
  });
});

describe('completion writes', () => {
  test('land aligned inside guest RAM; an unaligned or outside address is refused', () => {
    const { p, stats, memory } = pump();
    p.complete(0x100, 7);
    expect(memory.words[0x40]).toBe(7);
    p.complete(0x102, 8);
    p.complete(memory.size, 9);
    p.complete(memory.size - 2, 9);
    expect(stats).toMatchObject({ syncs: 4, syncsSignalled: 1, illegalCommands: 3 });
    expect(memory.words[0x40]).toBe(7);
    // Address 0 asks for no write.
    p.complete(0, 5);
    expect(stats).toMatchObject({ syncs: 5, syncsSignalled: 1, illegalCommands: 3 });
  });
});
