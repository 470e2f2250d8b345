/**
 * The index rules of a queue of 2^n slots (SMMUv3 spec 3.5; Linux arm-smmu-v3's Q_IDX, Q_WRP,
 * Q_OVF and queue_has_space are the model). Every ring and every queue-register model uses these
 * and writes none of the arithmetic itself.
 *
 * A PROD or CONS value holds:
 *   [n-1:0]  the index: the slot it points at;
 *   [n]      the wrap bit: flips each time the index passes the last slot;
 *   [31]     the overflow flag: OVFLG in PROD, OVACKFLG in CONS.
 * Any other bit is ignored: a value read from a peer is masked, never trusted.
 *
 * - Empty: index and wrap bit equal. Full: index equal, wrap bit different. So all 2^n slots are
 *   usable, and PROD - CONS over [n:0] is the number of entries in the queue.
 * - A distance above 2^n is impossible: one of the two values is corrupt (a guest may write
 *   anything into the index it owns).
 * - Advancing an index keeps its overflow flag; the flag only moves by a toggle (the producer
 *   raising an overflow) or a copy (the consumer acknowledging it).
 * - An overflow is pending while OVFLG differs from OVACKFLG.
 *
 * Pure functions over numbers: no allocation, cheap enough for every record of the hot path.
 * `log2Size` is n, 1..MAX_QUEUE_LOG2_SIZE (callers check it once, where the queue is built).
 */

/** SMMUv3 caps a queue at 2^19 entries (IDR1.PRIQS/EVTQS/CMDQS). */
export const MAX_QUEUE_LOG2_SIZE = 19;

/** Bit 31: OVFLG in PROD, OVACKFLG in CONS (Q_OVF). */
export const QUEUE_OVERFLOW = 1 << 31;

/** Slots in the queue: 2^n. */
export function queueSize(log2Size: number): number {
  return 1 << log2Size;
}

/** Mask of the index and wrap bit, [n:0]. */
export function queueIndexWrapMask(log2Size: number): number {
  return (2 << log2Size) - 1;
}

/** The slot a PROD or CONS value points at (Q_IDX). */
export function queueIndex(value: number, log2Size: number): number {
  return value & ((1 << log2Size) - 1);
}

/** The wrap bit of a PROD or CONS value, in place (Q_WRP): 0 or 2^n. */
export function queueWrap(value: number, log2Size: number): number {
  return value & (1 << log2Size);
}

/** Index and wrap bit, with the overflow flag and any other bit dropped. */
export function queueIndexWrap(value: number, log2Size: number): number {
  return value & ((2 << log2Size) - 1);
}

/** The overflow flag of a PROD or CONS value, in place (Q_OVF): 0 or QUEUE_OVERFLOW. */
export function queueOverflowFlag(value: number): number {
  return value & QUEUE_OVERFLOW;
}

/** Index and wrap bit equal: nothing between CONS and PROD. */
export function queueEmpty(prod: number, cons: number, log2Size: number): boolean {
  return ((prod ^ cons) & ((2 << log2Size) - 1)) === 0;
}

/** Index equal, wrap bit different: all 2^n slots hold entries. */
export function queueFull(prod: number, cons: number, log2Size: number): boolean {
  return ((prod ^ cons) & ((2 << log2Size) - 1)) === 1 << log2Size;
}

/**
 * Entries between CONS and PROD, 0..2^(n+1)-1. Above 2^n the two values cannot both be right: the
 * caller counts a corrupt index instead of following it.
 */
export function queueUsed(prod: number, cons: number, log2Size: number): number {
  return (prod - cons) & ((2 << log2Size) - 1);
}

/** Free slots, 2^n - used; negative when the values claim more than 2^n entries (corrupt). */
export function queueFree(prod: number, cons: number, log2Size: number): number {
  return (1 << log2Size) - ((prod - cons) & ((2 << log2Size) - 1));
}

/** Room for `n` more entries (queue_has_space). Impossible values have no room. */
export function queueHasSpace(prod: number, cons: number, log2Size: number, n: number): boolean {
  return queueFree(prod, cons, log2Size) >= n;
}

/**
 * `value` advanced by `n` entries (0 <= n <= 2^n): index and wrap bit move together, the overflow
 * flag stays as it was, any other bit is dropped (queue_inc_prod_n).
 */
export function queueAdvance(value: number, n: number, log2Size: number): number {
  return (value & QUEUE_OVERFLOW) | ((value + n) & ((2 << log2Size) - 1));
}

/** OVFLG differs from OVACKFLG: an overflow was raised and not acknowledged yet. */
export function queueOverflowPending(prod: number, cons: number): boolean {
  return ((prod ^ cons) & QUEUE_OVERFLOW) !== 0;
}

/** PROD with OVFLG toggled: the producer raises an overflow condition. */
export function queueToggleOverflow(prod: number): number {
  return prod ^ QUEUE_OVERFLOW;
}

/** CONS with OVACKFLG := PROD.OVFLG: the consumer acknowledges the overflow (queue_sync_cons_ovf). */
export function queueAcknowledgeOverflow(prod: number, cons: number): number {
  return (cons & ~QUEUE_OVERFLOW) | (prod & QUEUE_OVERFLOW);
}
