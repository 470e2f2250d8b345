// A hostile guest's behaviours (guest/misbehave.ts), each through the hook its driver, pager or
// workload calls, on the real SMMUv3 driver and real rings where it forges commands. crash-mid-fault
// and hang end the thread they run on: the sandbox's tests run them in workers
// (test/e2e/hostile-guests.test.ts).
import { afterEach, describe, expect, test, vi } from 'vitest';
import { Misbehaviour, VtdForger } from '../../guest/misbehave.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import { PRI_RESP_RESERVED, PRI_RESP_SUCCESS, RESUME_RETRY } from '../../shared/records/cmdq-entry.ts';
import { VTD_IQ_ENTRY_WORDS } from '../../shared/records/vtd-iq-entry.ts';
import {
  decodeVtdPageGroupResponse,
  newVtdPageGroupResponse,
  QI_RESP_RESERVED,
} from '../../shared/records/vtd-prq-entry.ts';
import { CONS, PROD, RingConsumer, RingProducer, ringBytes } from '../../shared/ring.ts';
import { PASID, SID, smmuv3Guest, VA } from '../support/smmuv3-guest.ts';

const memory = GuestMemory.allocate(1);
const hostile = (kinds: ConstructorParameters<typeof Misbehaviour>[0], devices = 1) =>
  new Misbehaviour(kinds, devices, 1234, memory);

afterEach(() => {
  vi.restoreAllMocks();
});

describe('foreign-pasid-dma', () => {
  test("forges exactly every 4th descriptor's PASID, each from the topology's PASID range", () => {
    const m = hostile(['foreign-pasid-dma']);
    const own = 3;
    const named = Array.from({ length: 400 }, () => m.dmaPasid(own));
    for (let i = 0; i < named.length; i++) {
      if ((i + 1) % 4 !== 0) expect(named[i], `descriptor ${i + 1}`).toBe(own);
      else expect(named[i]).toBeGreaterThanOrEqual(0);
      expect(named[i]).toBeLessThan(256);
    }
    const forged = named.filter((_, i) => (i + 1) % 4 === 0);
    // PASID 0 (the RID), the neighbour's (own + 1) and random ones all turn up.
    expect(forged).toContain(0);
    expect(forged).toContain(own + 1);
    expect(forged.filter((p) => p !== 0 && p !== own + 1).length).toBeGreaterThan(10);
    expect(forged.filter((p) => p === own).length).toBeLessThan(5); // a random draw may hit it
  });

  test('a guest without it names its own PASID every time', () => {
    const m = hostile(['duplicate-responses']);
    expect(Array.from({ length: 16 }, () => m.dmaPasid(5))).toEqual(new Array(16).fill(5));
  });
});

describe('answers', () => {
  test('duplicate-responses: each answer goes out twice, in the same batch', () => {
    const g = smmuv3Guest({ misbehave: hostile(['duplicate-responses']) });
    g.pageRequest({ page: 0, prgIndex: 3, last: true });
    g.host.priq.publish();
    g.faultEvent(VA + PAGE_SIZE, true, 77);
    g.host.evtq.publish();
    g.driver.poll();
    const resume = { op: 'RESUME', streamId: SID, stag: 77, action: RESUME_RETRY };
    const answer = {
      op: 'PRI_RESP',
      streamId: SID,
      ssv: true,
      substreamId: PASID,
      prgIndex: 3,
      resp: PRI_RESP_SUCCESS,
    };
    expect(g.commands()).toEqual([resume, resume, answer, answer]);
    expect(g.stats.groupsAnswered).toBe(1); // the driver counts its own answer once
  });

  test('unknown-responses: after each answer, one for a StreamID it has no device for and one for its own', () => {
    const devices = 4;
    const g = smmuv3Guest({ misbehave: hostile(['unknown-responses'], devices) });
    for (const prgIndex of [1, 2]) g.pageRequest({ page: prgIndex, prgIndex, last: true });
    g.host.priq.publish();
    g.driver.poll();
    const streams = g.commands().map((c) => ('streamId' in c ? c.streamId : -1));
    expect(streams).toHaveLength(6);
    for (const at of [0, 3]) expect(streams[at]).toBe(SID); // the real answers
    for (const at of [1, 4]) expect(streams[at]).toBeGreaterThanOrEqual(devices);
    for (const at of [2, 5]) expect(streams[at]).toBeLessThan(devices);
  });

  test('response-flood: after an answer, as many more commands as the queue takes without waiting', () => {
    const g = smmuv3Guest({ cmdqLog2: 4, misbehave: hostile(['response-flood']) });
    g.pageRequest({ page: 0, prgIndex: 3, last: true });
    g.host.priq.publish();
    g.driver.poll();
    const commands = g.commands();
    expect(commands).toHaveLength(16); // the ring, full: the flood stopped at the first refusal
    expect(commands.filter((c) => 'resp' in c && c.resp === PRI_RESP_RESERVED).length).toBeGreaterThan(0);
    expect(
      commands.filter((c) => 'prgIndex' in c && c.prgIndex === 3 && c.streamId === SID).length,
    ).toBeGreaterThan(1);
  });

  test('never-respond: page requests and stalls are consumed and none is answered', () => {
    const g = smmuv3Guest({ misbehave: hostile(['never-respond']) });
    g.pageRequest({ page: 0, prgIndex: 3, last: true });
    g.host.priq.publish();
    g.faultEvent(VA, true, 5);
    g.host.evtq.publish();
    expect(g.driver.poll()).toBe(2);
    expect(g.commands()).toEqual([]);
    expect(g.resident(VA)).toBe(false);
    expect(g.driver.pending).toBe(false);
  });

  test('the VT-d forger writes page group responses, with the reserved code for an illegal one', () => {
    const geometry = { log2Size: 2, recordWords: VTD_IQ_ENTRY_WORDS };
    const buffer = new SharedArrayBuffer(ringBytes(geometry));
    const iq = new RingProducer(buffer, 0, geometry);
    const host = new RingConsumer(buffer, 0, geometry);
    const forger = new VtdForger(iq);
    expect(forger.resume()).toBe(false); // VT-d has no stalls
    expect(forger.illegal(9, 4)).toBe(true);
    iq.publish();
    expect(host.poll()).toBe(1);
    const r = decodeVtdPageGroupResponse(host.words, host.at(0), newVtdPageGroupResponse());
    expect(r).toMatchObject({ rid: 9, prgIndex: 4, pasidPresent: false, code: QI_RESP_RESERVED });
  });
});

describe('wild-page-tables', () => {
  test('every 4th fresh page-in is made wild, and a page at most once', () => {
    const g = smmuv3Guest();
    const m = hostile(['wild-page-tables']);
    const table = g.spaces.table(PASID);
    const wild = Array.from({ length: 8 }, (_, p) => m.plantWild(table, PASID, VA + p * PAGE_SIZE));
    expect(wild).toEqual([true, false, false, false, true, false, false, false]);
    // The pages made wild once are mapped properly when they fault again, and count as no page-in.
    expect(m.plantWild(table, PASID, VA)).toBe(false);
    expect(m.plantWild(table, PASID, VA + 4 * PAGE_SIZE)).toBe(false);
    expect(m.plantWild(table, PASID, VA + 8 * PAGE_SIZE)).toBe(true);
  });

  test('the pager answers a wild page Success without mapping it', () => {
    const g = smmuv3Guest({ misbehave: hostile(['wild-page-tables']) });
    g.pageRequest({ page: 0, prgIndex: 1, last: true });
    g.host.priq.publish();
    g.driver.poll();
    expect(g.commands()).toMatchObject([{ op: 'PRI_RESP', prgIndex: 1, resp: PRI_RESP_SUCCESS }]);
    expect(g.resident(VA)).toBe(false);
    expect(g.pager.pagesMapped).toBe(0);
  });
});

describe('corrupt-ring-indices', () => {
  test('every 8th fault, CONS claims more than the ring holds, and the real one is back a few ms later', () => {
    let now = 1000;
    vi.spyOn(performance, 'now').mockImplementation(() => now);
    const m = hostile(['corrupt-ring-indices']);
    const g = smmuv3Guest({ priqLog2: 4, cmdqLog2: 4, misbehave: m });
    for (let i = 0; i < 7; i++) g.pageRequest({ page: i, prgIndex: i, last: true });
    g.host.priq.publish();
    g.driver.poll();
    m.afterPoll();
    expect(g.host.priq.hasRoom()).toBe(true); // 7 faults: nothing yet

    g.pageRequest({ page: 7, prgIndex: 7, last: true });
    g.host.priq.publish();
    m.beforePoll();
    g.driver.poll();
    m.afterPoll();
    const real = g.guest.priq.index;
    expect(Atomics.load(g.guest.priq.words, CONS)).not.toBe(real);
    // The host reads it as impossible: no room, the ring treated as full, and counted.
    expect(g.host.priq.hasRoom()).toBe(false);
    expect(g.host.priq.used()).toBe(g.host.priq.size);
    expect(g.host.priq.corruptIndex).toBe(1);
    expect(m.sleepMs(100)).toBe(1); // the guest must not sleep long with a corruption to undo

    now += 2;
    m.beforePoll();
    expect(Atomics.load(g.guest.priq.words, CONS)).not.toBe(real);
    now += 1;
    m.beforePoll();
    expect(Atomics.load(g.guest.priq.words, CONS)).toBe(real);
    expect(g.host.priq.used()).toBe(0);
  });

  test('once the host has drained the command queue, PROD claims as much; the host counts and ignores it', () => {
    vi.spyOn(performance, 'now').mockReturnValue(1000);
    const m = hostile(['corrupt-ring-indices']);
    const g = smmuv3Guest({ priqLog2: 4, cmdqLog2: 4, misbehave: m });
    for (let i = 0; i < 8; i++) g.pageRequest({ page: i, prgIndex: i, last: true });
    g.host.priq.publish();
    g.driver.poll();
    const rung = g.hostBell.sequence();
    m.afterPoll(); // the host has not read the answers yet: PROD is left alone
    expect(g.hostBell.sequence()).toBe(rung);
    expect(g.commands()).toHaveLength(8);
    m.afterPoll();
    expect(g.hostBell.sequence()).toBe(rung + 1);
    expect(Atomics.load(g.guest.cmdq.words, PROD)).not.toBe(g.host.cmdq.index);
    expect(g.commands()).toEqual([]);
    expect(g.host.cmdq.corruptIndex).toBe(1);
  });
});
