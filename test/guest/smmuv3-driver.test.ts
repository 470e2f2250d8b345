// The guest's SMMUv3 driver (guest/smmuv3-driver.ts) on real rings: the test plays the vSMMU,
// publishing PRI queue entries and event records and reading the commands the driver answers with.
import { describe, expect, test } from 'vitest';
import {
  PRI_RESP_INVALID,
  PRI_RESP_SUCCESS,
  RESUME_ABORT,
  RESUME_RETRY,
} from '../../shared/records/cmdq-entry.ts';
import { PASID, SID, smmuv3Guest, UNBACKED_VA, VA } from '../support/smmuv3-guest.ts';

const PAGE = 4096;

describe('page requests', () => {
  test('a PRI queue entry in, one CMD_PRI_RESP out: Success with its StreamID, SubstreamID and PRG index', () => {
    const g = smmuv3Guest();
    g.pageRequest({ page: 3, prgIndex: 17, last: true });
    g.host.priq.publish();

    expect(g.driver.poll()).toBe(1);
    expect(g.commands()).toEqual([
      { op: 'PRI_RESP', streamId: SID, ssv: true, substreamId: PASID, prgIndex: 17, resp: PRI_RESP_SUCCESS },
    ]);
    expect(g.resident(VA + 3 * PAGE)).toBe(true);
    expect(g.stats).toMatchObject({
      pageRequests: 1,
      groupsAnswered: 1,
      responses: { success: 1, invalid: 0 },
    });
  });

  test('a request without a PASID is answered without one, for the RID', () => {
    const g = smmuv3Guest();
    // PASID 0 has no backed range: the page-in fails, and the answer carries no SSV.
    g.pageRequest({ ssv: false, substreamId: 0, prgIndex: 2, last: true });
    g.host.priq.publish();
    g.driver.poll();
    expect(g.commands()).toEqual([
      { op: 'PRI_RESP', streamId: SID, ssv: false, substreamId: 0, prgIndex: 2, resp: PRI_RESP_INVALID },
    ]);
  });

  test('a group is answered once, at its Last, with the worst outcome of its requests', () => {
    const g = smmuv3Guest();
    g.pageRequest({ page: 0, prgIndex: 5 });
    g.pageRequest({ address: UNBACKED_VA, prgIndex: 5 });
    g.host.priq.publish();
    expect(g.driver.poll()).toBe(2);
    expect(g.commands()).toEqual([]); // partial: no answer before the Last

    g.pageRequest({ page: 1, prgIndex: 5, last: true });
    g.pageRequest({ page: 2, prgIndex: 6, last: true });
    g.host.priq.publish();
    expect(g.driver.poll()).toBe(2);
    expect(g.commands().map((c) => ('resp' in c ? [c.prgIndex, c.resp] : c))).toEqual([
      [5, PRI_RESP_INVALID],
      [6, PRI_RESP_SUCCESS],
    ]);
    // The pages that could be paged in were, whatever the group's answer.
    expect([0, 1, 2].map((p) => g.resident(VA + p * PAGE))).toEqual([true, true, true]);
    expect(g.stats).toMatchObject({
      pageRequests: 4,
      groupsAnswered: 2,
      responses: { success: 1, invalid: 1 },
    });
  });

  test('stop markers are counted and never answered', () => {
    const g = smmuv3Guest();
    g.pageRequest({ page: 0, prgIndex: 1 });
    g.pageRequest({ read: false, write: false, last: true, prgIndex: 0 }); // Stop PASID marker
    g.host.priq.publish();
    expect(g.driver.poll()).toBe(2);
    expect(g.commands()).toEqual([]);
    expect(g.stats).toMatchObject({ stopMarkers: 1, pageRequests: 1, groupsAnswered: 0 });
  });

  test('an overflow is acknowledged only once the queue is drained; the partial groups are then dropped', () => {
    // Two command slots: the driver stops at the third answer with the PRI queue not yet drained.
    const g = smmuv3Guest({ priqLog2: 3, cmdqLog2: 1 });
    g.pageRequest({ address: UNBACKED_VA, prgIndex: 9 }); // partial, and already Invalid
    for (const prgIndex of [1, 2, 3]) g.pageRequest({ page: prgIndex, prgIndex, last: true });
    expect(g.host.priq.discard()).toBe(true); // the next entry found no room: OVFLG
    expect(g.host.priq.overflowPending()).toBe(true);

    expect(g.driver.poll()).toBe(3);
    expect(g.driver.blockedOnCommandQueue).toBe(true);
    expect(g.host.priq.overflowPending()).toBe(true); // an entry is left: no acknowledgement yet
    expect(g.stats.overflowsAcknowledged).toBe(0);
    expect(g.commands().map((c) => ('prgIndex' in c ? c.prgIndex : c))).toEqual([1, 2]);

    expect(g.driver.poll()).toBe(1);
    expect(g.driver.blockedOnCommandQueue).toBe(false);
    expect(g.host.priq.overflowPending()).toBe(false);
    expect(g.stats).toMatchObject({ overflowsAcknowledged: 1, partialGroupsDropped: 1 });
    expect(g.commands().map((c) => ('prgIndex' in c ? c.prgIndex : c))).toEqual([3]);

    // Group 9's Last may have been lost in the overflow: a later group 9 starts afresh.
    g.pageRequest({ page: 9, prgIndex: 9, last: true });
    g.host.priq.publish();
    g.driver.poll();
    expect(g.commands()).toMatchObject([{ op: 'PRI_RESP', prgIndex: 9, resp: PRI_RESP_SUCCESS }]);
  });

  test('answers go out in batches of 8 while the queue drains, and the rest at the end of the poll', () => {
    const g = smmuv3Guest({ priqLog2: 4, cmdqLog2: 4 });
    for (let i = 0; i < 12; i++) g.pageRequest({ page: i, prgIndex: i, last: true });
    g.host.priq.publish();
    // The host sees PROD move after the 8th answer, before the driver finished the queue: watch the
    // command queue's PROD from a page-in, which runs inside the drain.
    const seen: number[] = [];
    const pageIn = g.pager.pageIn.bind(g.pager);
    g.pager.pageIn = (pasid, address) => {
      seen.push(g.host.cmdq.poll());
      return pageIn(pasid, address);
    };
    g.driver.poll();
    expect(seen).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8]);
    expect(g.commands()).toHaveLength(12);
  });
});

describe('events', () => {
  test('a Stall=1 event is paged in and answered with CMD_RESUME retry; one it cannot page in, abort', () => {
    const g = smmuv3Guest();
    g.faultEvent(VA + 4 * PAGE + 0x10, true, 41);
    g.faultEvent(UNBACKED_VA, true, 42);
    g.host.evtq.publish();

    expect(g.driver.poll()).toBe(2);
    expect(g.commands()).toEqual([
      { op: 'RESUME', streamId: SID, stag: 41, action: RESUME_RETRY },
      { op: 'RESUME', streamId: SID, stag: 42, action: RESUME_ABORT },
    ]);
    expect(g.resident(VA + 4 * PAGE)).toBe(true);
    expect(g.stats).toMatchObject({ events: 2, stallsResumed: 2 });
  });

  test('an event of a terminated transaction is counted and needs no command', () => {
    const g = smmuv3Guest();
    g.faultEvent(VA, false);
    g.host.evtq.publish();
    expect(g.driver.poll()).toBe(1);
    expect(g.commands()).toEqual([]);
    expect(g.resident(VA)).toBe(false);
    expect(g.stats).toMatchObject({ events: 1, stallsResumed: 0 });
  });

  test('freed event-queue slots ring the host once per drain: a held stall record waits for that room', () => {
    const g = smmuv3Guest();
    g.faultEvent(VA, false);
    g.faultEvent(VA + PAGE, false);
    g.host.evtq.publish();
    const before = g.hostBell.sequence();
    g.driver.poll();
    expect(g.hostBell.sequence()).toBe(before + 1);
    g.driver.poll();
    expect(g.hostBell.sequence()).toBe(before + 1); // nothing freed, no ring
  });

  test('an event-queue overflow is acknowledged once the queue is drained', () => {
    const g = smmuv3Guest({ evtqLog2: 1 });
    g.faultEvent(VA, false);
    g.faultEvent(VA + PAGE, false);
    expect(g.host.evtq.claim()).toBe(-1);
    g.host.evtq.discard();
    expect(g.host.evtq.overflowPending()).toBe(true);
    expect(g.driver.poll()).toBe(2);
    expect(g.host.evtq.overflowPending()).toBe(false);
    expect(g.stats.eventOverflowsAcknowledged).toBe(1);
  });

  test('a stall that finds the command queue full stays in the event queue until a slot frees', () => {
    const g = smmuv3Guest({ cmdqLog2: 1 });
    for (const stag of [1, 2, 3]) g.faultEvent(VA + stag * PAGE, true, stag);
    g.host.evtq.publish();
    expect(g.driver.poll()).toBe(2);
    expect(g.driver.blockedOnCommandQueue).toBe(true);
    expect(g.driver.pending).toBe(true);
    expect(g.commands().map((c) => ('stag' in c ? c.stag : c))).toEqual([1, 2]);
    expect(g.driver.poll()).toBe(1);
    expect(g.commands().map((c) => ('stag' in c ? c.stag : c))).toEqual([3]);
    expect(g.driver.pending).toBe(false);
  });
});

describe('invalidation', () => {
  test('CMD_TLBI_NH_VA then a CMD_SYNC whose number the SMMU writes back into guest RAM', () => {
    const g = smmuv3Guest();
    expect(g.driver.invalidateVa(PASID, VA + 5 * PAGE)).toBe(1);
    expect(g.driver.invalidateVa(PASID, VA + 6 * PAGE)).toBe(2);
    const commands = g.commands();
    expect(commands.map((c) => c.op)).toEqual([0x12, 'SYNC', 0x12, 'SYNC']);
    expect(commands[3]).toEqual({ op: 'SYNC', msiAddress: g.syncWordGpa, msiData: 2 });
    expect(g.driver.syncCompleted()).toBe(0);
    Atomics.store(g.memory.words, g.syncWordGpa >>> 2, 2); // the SMMU completed the second sync
    expect(g.driver.syncCompleted()).toBe(2);
  });

  test('an invalidation that finds the command queue full is refused', () => {
    const g = smmuv3Guest({ cmdqLog2: 1 });
    expect(g.driver.invalidateVa(PASID, VA)).toBe(1);
    expect(g.driver.invalidateVa(PASID, VA)).toBe(-1);
  });
});
