import { describe, expect, test } from 'vitest';
import {
  QUEUE_OVERFLOW,
  queueAcknowledgeOverflow,
  queueAdvance,
  queueEmpty,
  queueFree,
  queueFull,
  queueHasSpace,
  queueIndex,
  queueIndexWrap,
  queueIndexWrapMask,
  queueOverflowFlag,
  queueOverflowPending,
  queueSize,
  queueToggleOverflow,
  queueUsed,
  queueWrap,
} from '../../shared/queue-index.ts';

/** A queue of 8 slots: index in [2:0], wrap bit 3. */
const N = 3;

describe('queue index rules', () => {
  test('a value holds the index in its low n bits, the wrap in bit n and the overflow flag in bit 31', () => {
    const value = QUEUE_OVERFLOW | 0x8 | 0x5;
    expect(queueSize(N)).toBe(8);
    expect(queueIndex(value, N)).toBe(5);
    expect(queueWrap(value, N)).toBe(8);
    expect(queueIndexWrap(value, N)).toBe(13);
    expect(queueOverflowFlag(value)).toBe(QUEUE_OVERFLOW);
    expect(queueIndexWrapMask(N)).toBe(0xf);
  });

  test('empty when the indices and the wrap bits match', () => {
    expect(queueEmpty(0, 0, N)).toBe(true);
    expect(queueEmpty(8 | 3, 8 | 3, N)).toBe(true);
    expect(queueEmpty(3, 2, N)).toBe(false);
    expect(queueEmpty(8 | 3, 3, N)).toBe(false);
  });

  test('full when the indices match and the wrap bits differ', () => {
    expect(queueFull(8 | 3, 3, N)).toBe(true);
    expect(queueFull(3, 8 | 3, N)).toBe(true);
    expect(queueFull(3, 3, N)).toBe(false);
    expect(queueFull(8 | 2, 3, N)).toBe(false);
  });

  test('all 2^n slots are usable: the entries count 0..2^n across the wrap', () => {
    let prod = 0;
    const cons = 6;
    prod = queueAdvance(prod, 6, N);
    for (let held = 0; held <= 8; held++) {
      expect(queueUsed(prod, cons, N)).toBe(held);
      expect(queueFree(prod, cons, N)).toBe(8 - held);
      expect(queueEmpty(prod, cons, N)).toBe(held === 0);
      expect(queueFull(prod, cons, N)).toBe(held === 8);
      prod = queueAdvance(prod, 1, N);
    }
  });

  test('more than 2^n entries between CONS and PROD is impossible: negative free, no space', () => {
    // PROD nine entries ahead of CONS.
    const cons = 2;
    const prod = queueAdvance(cons, 9, N);
    expect(queueUsed(prod, cons, N)).toBe(9);
    expect(queueFree(prod, cons, N)).toBe(-1);
    expect(queueHasSpace(prod, cons, N, 0)).toBe(false);
    expect(queueHasSpace(prod, cons, N, 1)).toBe(false);
  });

  test('has space for n entries only when n slots are free', () => {
    const cons = 8 | 1;
    const prod = queueAdvance(cons, 5, N);
    expect(queueHasSpace(prod, cons, N, 3)).toBe(true);
    expect(queueHasSpace(prod, cons, N, 4)).toBe(false);
    expect(queueHasSpace(cons, cons, N, 8)).toBe(true);
  });

  test('advancing past the last slot flips the wrap bit and wraps the index', () => {
    expect(queueAdvance(7, 1, N)).toBe(8);
    expect(queueAdvance(8 | 7, 1, N)).toBe(0);
    expect(queueAdvance(6, 8, N)).toBe(8 | 6);
  });

  test('advancing keeps the overflow flag and drops every other bit', () => {
    const noisy = QUEUE_OVERFLOW | 0x7ff0 | 7;
    expect(queueAdvance(noisy, 1, N)).toBe(QUEUE_OVERFLOW | 8);
    expect(queueAdvance(7, 1, N)).toBe(8);
  });

  test('bits outside index, wrap and overflow flag change no answer', () => {
    const noise = 0x3ff0;
    expect(queueEmpty(5 | noise, 5, N)).toBe(true);
    expect(queueFull(8 | 5 | noise, 5, N)).toBe(true);
    expect(queueUsed(6 | noise, 2 | QUEUE_OVERFLOW, N)).toBe(4);
  });

  test('an overflow is pending while OVFLG differs from OVACKFLG, and an acknowledgement ends it', () => {
    let prod = 4;
    let cons = 4;
    expect(queueOverflowPending(prod, cons)).toBe(false);
    prod = queueToggleOverflow(prod);
    expect(queueOverflowPending(prod, cons)).toBe(true);
    // Toggling again would look like no overflow at all: producers toggle only when none is pending.
    expect(queueOverflowPending(queueToggleOverflow(prod), cons)).toBe(false);
    cons = queueAcknowledgeOverflow(prod, cons);
    expect(queueOverflowPending(prod, cons)).toBe(false);
    expect(queueIndexWrap(cons, N)).toBe(4);
    // The next overflow toggles the flag back to 0; acknowledging copies that too.
    prod = queueToggleOverflow(prod);
    expect(queueOverflowPending(prod, cons)).toBe(true);
    cons = queueAcknowledgeOverflow(prod, cons);
    expect(queueOverflowFlag(cons)).toBe(0);
  });

  test('the overflow flag takes no part in empty, full or the entry count', () => {
    const prod = QUEUE_OVERFLOW | 8 | 3;
    expect(queueFull(prod, 3, N)).toBe(true);
    expect(queueUsed(prod, 3, N)).toBe(8);
    expect(queueEmpty(QUEUE_OVERFLOW | 3, 3, N)).toBe(true);
  });
});
