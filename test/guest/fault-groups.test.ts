// What a guest's vIOMMU driver does with page requests whatever its flavour (guest/fault-groups.ts):
// group assembly by (device, PRG index), answer batching, and the numbered completion waits.
import { describe, expect, test } from 'vitest';
import {
  CompletionWaits,
  FaultGroups,
  GROUP_DROPPED,
  GROUP_INVALID,
  GROUP_OPEN,
  GROUP_SUCCESS,
} from '../../guest/fault-groups.ts';
import { emptyStats } from '../../guest/guest-vm.ts';
import { Misbehaviour } from '../../guest/misbehave.ts';
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { DemandPager } from '../../guest/mm/demand-pager.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import {
  CMD_SYNC,
  CMDQ_ENTRY_WORDS,
  commandOpcode,
  encodeSync,
  encodeTlbiNhVa,
  syncMsiAddress,
  syncMsiData,
} from '../../shared/records/cmdq-entry.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../shared/ring.ts';

const PASID = 1;
const VA = 0x7e00_0000_0000;
const BAD = 0x1000_0000_0000;
const page = (n: number) => VA + n * PAGE_SIZE;

function groups(misbehave?: Misbehaviour) {
  const memory = GuestMemory.allocate(1);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  spaces.installDevice(0, [PASID]);
  const pager = new DemandPager(memory, pages, spaces);
  pager.back(PASID, VA, 32, 1);
  const stats = emptyStats();
  return { groups: new FaultGroups(pager, stats, misbehave), stats, pager, memory };
}

describe('FaultGroups', () => {
  test('a group stays open until its Last, which answers it with the worst page-in outcome', () => {
    const { groups: g, stats } = groups();
    expect(g.request(0, 4, PASID, page(0), false)).toBe(GROUP_OPEN);
    expect(g.request(0, 4, PASID, BAD, false)).toBe(GROUP_OPEN);
    expect(g.request(0, 4, PASID, page(1), true)).toBe(GROUP_INVALID);
    // The Last closed the group: the same PRG index opens a new one.
    expect(g.request(0, 4, PASID, page(2), true)).toBe(GROUP_SUCCESS);
    expect(stats.pageRequests).toBe(4);
  });

  test('a group is named by device and PRG index: the same index on another device is another group', () => {
    const { groups: g } = groups();
    expect(g.request(0, 7, PASID, BAD, false)).toBe(GROUP_OPEN);
    expect(g.request(1, 7, PASID, page(0), true)).toBe(GROUP_SUCCESS);
    expect(g.request(0, 8, PASID, page(1), true)).toBe(GROUP_SUCCESS);
    expect(g.request(0, 7, PASID, page(2), true)).toBe(GROUP_INVALID);
  });

  test('dropping the partials after an overflow forgets them and counts each', () => {
    const { groups: g, stats } = groups();
    g.request(0, 1, PASID, BAD, false);
    g.request(1, 1, PASID, BAD, false);
    g.dropPartials();
    expect(stats).toMatchObject({ partialGroupsDropped: 2, overflowsAcknowledged: 1 });
    expect(g.request(0, 1, PASID, page(0), true)).toBe(GROUP_SUCCESS);
    g.dropPartials();
    expect(stats).toMatchObject({ partialGroupsDropped: 2, overflowsAcknowledged: 2 });
  });

  test('answers are counted by outcome, and every 8th says a batch is due', () => {
    const { groups: g, stats } = groups();
    const due: number[] = [];
    for (let i = 1; i <= 20; i++) if (g.answered(0, PASID, i, i % 5 !== 0)) due.push(i);
    expect(due).toEqual([8, 16]);
    expect(stats).toMatchObject({ groupsAnswered: 20, responses: { success: 16, invalid: 4, failure: 0 } });
  });

  test("a hostile guest's dropped request is consumed: not counted, not paged in", () => {
    const memory = GuestMemory.allocate(1);
    const { groups: g, stats, pager } = groups(new Misbehaviour(['never-respond'], 1, 1, memory));
    expect(g.request(0, 1, PASID, page(0), true)).toBe(GROUP_DROPPED);
    expect(stats.pageRequests).toBe(0);
    expect(pager.pagesMapped).toBe(0);
  });
});

describe('CompletionWaits', () => {
  const SYNC = { encodeWait: encodeSync };

  function waits(log2Size = 3) {
    const geometry = { log2Size, recordWords: CMDQ_ENTRY_WORDS };
    const buffer = new SharedArrayBuffer(ringBytes(geometry));
    const memory = GuestMemory.allocate(1);
    const wordGpa = 0x2000;
    const commands = new RingProducer(buffer, 0, geometry);
    const host = new RingConsumer(buffer, 0, geometry);
    /** The waits the host was sent, as [address, sequence]. */
    const sent = () => {
      const out: [number, number][] = [];
      const n = host.poll();
      for (let i = 0; i < n; i++) {
        const at = host.at(i);
        if (commandOpcode(host.words, at) === CMD_SYNC)
          out.push([syncMsiAddress(host.words, at), syncMsiData(host.words, at)]);
      }
      host.release(n);
      return out;
    };
    return { waits: new CompletionWaits(commands, SYNC, memory, wordGpa), commands, memory, wordGpa, sent };
  }

  test('each invalidation gets a wait numbered one past the last, published at once', () => {
    const w = waits();
    expect(w.waits.afterInvalidation()).toBe(1);
    expect(w.waits.afterInvalidation()).toBe(2);
    expect(w.sent()).toEqual([
      [w.wordGpa, 1],
      [w.wordGpa, 2],
    ]);
  });

  test('a wait that finds the queue full is owed: one wait, issued later, covers every invalidation before it', () => {
    const w = waits(1);
    for (let i = 0; i < 2; i++) {
      encodeTlbiNhVa(w.commands.words, w.commands.claim(), page(i));
      w.commands.commit();
    }
    expect(w.waits.afterInvalidation()).toBe(1);
    expect(w.waits.afterInvalidation()).toBe(1);
    w.waits.issue();
    expect(w.sent()).toEqual([]); // the two TLBIs, no room for the wait yet
    w.waits.issue();
    w.commands.publish();
    expect(w.sent()).toEqual([[w.wordGpa, 1]]);
    w.waits.issue();
    w.commands.publish();
    expect(w.sent()).toEqual([]); // nothing owed any more
    expect(w.waits.afterInvalidation()).toBe(2);
  });

  test('completed() is the number the IOMMU last wrote into the guest word, unsigned', () => {
    const w = waits();
    expect(w.waits.completed()).toBe(0);
    Atomics.store(w.memory.words, w.wordGpa >>> 2, 3);
    expect(w.waits.completed()).toBe(3);
    Atomics.store(w.memory.words, w.wordGpa >>> 2, -1);
    expect(w.waits.completed()).toBe(2 ** 32 - 1);
  });
});
