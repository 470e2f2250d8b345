// The host's physical PRI queue (SMMUv3 PRIQ rules), its IRQ thread, and a queue shared by devices.
import { describe, expect, test } from 'vitest';
import { Iommu } from '../../../host/iommu/iommu.ts';
import type { IopfGroup } from '../../../host/iommu/iopf.ts';
import { newPageRequest, type PageRequest, PRG_SUCCESS } from '../../../host/iommu/page-request.ts';
import { PhysicalPriQueue } from '../../../host/iommu/physical-queue.ts';
import { PriqThread } from '../../../host/iommu/priq-thread.ts';
import { decodePriqEntry, newPriqEntry } from '../../../shared/records/priq-entry.ts';

const OVF = 0x8000_0000;
const turn = () => new Promise((resolve) => setImmediate(resolve));

interface Response {
  streamId: number;
  pasid: number;
  prgIndex: number;
}

function request(fields: Partial<PageRequest>): PageRequest {
  return Object.assign(newPageRequest(), { pasid: 1, ssv: true, read: true, last: true }, fields);
}

function queue(log2: number) {
  const responses: Response[] = [];
  const q = new PhysicalPriQueue(log2, (streamId, pasid, _ssv, prgIndex) =>
    responses.push({ streamId, pasid, prgIndex }),
  );
  let irqs = 0;
  q.irq = () => irqs++;
  return { q, responses, irqs: () => irqs };
}

describe('the physical PRI queue', () => {
  test('entries go in at PROD in the PRIQ entry layout and out at CONS; all 2^n slots are usable', () => {
    const { q } = queue(2);
    for (let i = 0; i < 4; i++) {
      expect(
        q.write(request({ streamId: 0x100 + i, pasid: 7, prgIndex: i, address: 0x7000 * (i + 1) }), -1),
      ).toBe(true);
    }
    expect(q.full).toBe(true);
    expect(q.prodRegister).toBe(4); // index 0, wrap 1
    const e = newPriqEntry();
    for (let i = 0; i < 4; i++) {
      decodePriqEntry(q.words, q.pop(), e);
      expect(e).toMatchObject({ streamId: 0x100 + i, substreamId: 7, ssv: true, prgIndex: i, last: true });
      expect(e.address).toBe(0x7000 * (i + 1));
    }
    expect(q.pop()).toBe(-1);
    expect(q.empty).toBe(true);
    expect(q.stats).toMatchObject({ written: 4, consumed: 4, discarded: 0, highWater: 4 });
  });

  test('the interrupt fires on the empty -> non-empty edge only', () => {
    const { q, irqs } = queue(3);
    q.write(request({ prgIndex: 1 }), -1);
    q.write(request({ prgIndex: 2 }), -1);
    expect(irqs()).toBe(1);
    q.pop();
    q.write(request({ prgIndex: 3 }), -1);
    expect(irqs()).toBe(1);
    q.pop();
    q.pop();
    q.write(request({ prgIndex: 4 }), -1);
    expect(irqs()).toBe(2);
  });

  test('the entry that finds the queue full raises the overflow and is discarded; a discarded Last is answered Success', () => {
    const { q, responses } = queue(1);
    q.write(request({ streamId: 1, prgIndex: 1 }), -1);
    q.write(request({ streamId: 1, prgIndex: 2 }), -1);
    expect(q.write(request({ streamId: 2, pasid: 9, prgIndex: 3 }), -1)).toBe(false);
    expect(q.overflowActive).toBe(true);
    expect(q.prodRegister & OVF).not.toBe(0);
    expect(q.consRegister & OVF).toBe(0);
    expect(responses).toEqual([{ streamId: 2, pasid: 9, prgIndex: 3 }]);
    expect(q.stats).toMatchObject({ written: 2, discarded: 1, autoResponded: 1, overflows: 1 });
  });

  test('while the overflow is unacknowledged every entry is discarded, even with room; Last=0 and Stop Markers get nothing', () => {
    const { q, responses } = queue(1);
    q.write(request({ prgIndex: 1 }), -1);
    q.write(request({ prgIndex: 2 }), -1);
    q.write(request({ prgIndex: 3 }), -1); // overflow
    q.pop();
    q.pop();
    expect(q.empty).toBe(true);
    expect(q.write(request({ prgIndex: 4, last: false }), -1)).toBe(false);
    expect(q.write(request({ prgIndex: 0, read: false, last: true }), -1)).toBe(false); // Stop Marker
    expect(q.write(request({ prgIndex: 5 }), -1)).toBe(false);
    expect(responses.map((r) => r.prgIndex)).toEqual([3, 5]);
    expect(q.stats).toMatchObject({ discarded: 4, autoResponded: 2, stopMarkersDiscarded: 1, overflows: 1 });
    q.acknowledgeOverflow();
    expect(q.consRegister & OVF).not.toBe(0); // OVACKFLG := OVFLG
    expect(q.write(request({ prgIndex: 6 }), -1)).toBe(true);
  });

  test('overflow flag toggles once until acknowledged, then again on the next overflow', () => {
    const { q } = queue(1);
    const fill = () => {
      while (!q.full) q.write(request({}), -1);
    };
    fill();
    for (let i = 0; i < 5; i++) q.write(request({}), -1);
    expect(q.stats.overflows).toBe(1);
    expect(q.prodRegister & OVF).not.toBe(0);
    while (q.pop() >= 0);
    q.acknowledgeOverflow();
    expect(q.overflowActive).toBe(false);
    fill();
    q.write(request({}), -1);
    expect(q.stats.overflows).toBe(2);
    expect(q.prodRegister & OVF).toBe(0); // toggled back
    expect(q.overflowActive).toBe(true);
    expect(q.stats.acknowledged).toBe(1);
  });

  test('a discard counts as lost to others for a requester below its fair share when the overflow began', () => {
    const { q } = queue(2);
    q.setRequesters(3, 2); // requesters 0 and 1 share the queue; 2 is tracked, not a sharer
    q.write(request({}), 0);
    q.write(request({}), 0);
    q.write(request({}), 0);
    q.write(request({}), 1);
    q.write(request({}), 0); // overflow: 0 holds 3 of 4 (over its share of 2), 1 holds 1
    q.write(request({}), 1);
    q.write(request({}), 1);
    q.write(request({}), 0);
    expect([q.lostOwn(0), q.lostToOthers(0)]).toEqual([2, 0]);
    expect([q.lostOwn(1), q.lostToOthers(1)]).toEqual([0, 2]);
    // Equal shares of a full queue: neither caused more of it, each loss is its own.
    while (q.pop() >= 0);
    q.acknowledgeOverflow();
    for (const r of [0, 1, 0, 1, 0, 1]) q.write(request({}), r);
    expect([q.lostOwn(0), q.lostOwn(1), q.lostToOthers(1)]).toEqual([3, 1, 2]);
  });

  test('alone behind its IOMMU a requester only ever loses to itself', () => {
    const { q } = queue(1);
    q.setRequesters(1, 1);
    for (let i = 0; i < 10; i++) q.write(request({}), 0);
    expect([q.lostOwn(0), q.lostToOthers(0)]).toEqual([8, 0]);
  });
});

describe('the IRQ thread', () => {
  function threaded(log2: number, weight: number) {
    const { q, responses } = queue(log2);
    const reported: number[] = [];
    let partial = 0;
    const thread = new PriqThread(q, {
      weight,
      iopf: { report: (r) => reported.push(r.prgIndex) },
      discardPartial: () => {
        partial++;
        return 0;
      },
    });
    return { q, responses, reported, thread, partialDiscards: () => partial };
  }

  test('within its weight it handles each entry inside the interrupt', () => {
    const { q, reported } = threaded(3, 4);
    for (let i = 0; i < 4; i++) q.write(request({ prgIndex: i }), -1);
    expect(reported).toEqual([0, 1, 2, 3]);
    expect(q.empty).toBe(true);
  });

  test('past its weight it yields: the rest waits for its next turn, in batches of its weight', async () => {
    const { q, reported, thread } = threaded(3, 2);
    for (let i = 0; i < 6; i++) q.write(request({ prgIndex: i }), -1);
    expect(reported).toEqual([0, 1]);
    expect(q.occupancy).toBe(4);
    await turn();
    expect(reported).toEqual([0, 1, 2, 3]);
    await turn();
    expect(reported).toEqual([0, 1, 2, 3, 4, 5]);
    expect(thread.stats.deferredPasses).toBe(2);
  });

  test('drain() runs it at once, whatever its budget', () => {
    const { q, reported, thread } = threaded(3, 1);
    for (let i = 0; i < 5; i++) q.write(request({ prgIndex: i }), -1);
    expect(thread.drain()).toBe(4);
    expect(reported).toEqual([0, 1, 2, 3, 4]);
  });

  test('the overflow is acknowledged only once the queue is drained, after the partial groups are dropped', async () => {
    const { q, reported, responses, thread, partialDiscards } = threaded(1, 1);
    for (let i = 0; i < 5; i++) q.write(request({ prgIndex: i }), -1);
    // 0 handled at once; 1 and 2 fill the queue; 3 overflows it; 4 is discarded.
    expect(reported).toEqual([0]);
    expect(responses.map((r) => r.prgIndex)).toEqual([3, 4]);
    await turn();
    expect(reported).toEqual([0, 1]);
    expect(q.overflowActive).toBe(true);
    expect(q.write(request({ prgIndex: 5 }), -1)).toBe(false); // room, but writes stay inhibited
    await turn();
    expect(reported).toEqual([0, 1, 2]);
    expect(q.overflowActive).toBe(false);
    expect(partialDiscards()).toBe(1);
    expect(thread.stats.partialsDiscarded).toBe(0);
    expect(q.write(request({ prgIndex: 6 }), -1)).toBe(true);
  });
});

describe('one physical PRI queue shared by two devices', () => {
  const A = 0x100;
  const B = 0x200;

  function host(shared: boolean) {
    const iommu = new Iommu({
      instances: shared
        ? [{ name: 'smmu0', priqLog2: 2 }]
        : [
            { name: 'smmu0', priqLog2: 2 },
            { name: 'smmu1', priqLog2: 2 },
          ],
      priqWeight: 1,
    });
    iommu.placeStream(A, 0, 0);
    iommu.placeStream(B, shared ? 0 : 1, 1);
    const woken: number[] = [];
    iommu.setRequesters(
      (streamId) => (streamId === A ? 0 : 1),
      (vm) => woken.push(vm),
    );
    const groups: IopfGroup[] = [];
    const answers = new Map<number, number[]>([
      [A, []],
      [B, []],
    ]);
    for (const sid of [A, B]) {
      // Nested streams (the guest owns the CD table): their PASIDs' requests report through the RID.
      iommu.setUserPasidTable(sid, true);
      iommu.setFaultHandler(sid, undefined, { handleGroup: (g) => groups.push(g) });
      iommu.bindEndpoint(sid, {
        prgResponse: (_p, _s, prgIndex, code) => answers.get(sid)?.push(prgIndex * 16 + code),
      });
    }
    const send = (streamId: number, prgIndex: number, last = true) =>
      iommu.pageRequest(request({ streamId, prgIndex, last, address: 0x1000 * (prgIndex + 1) }));
    return { iommu, groups, answers, send, woken };
  }

  test("one device's storm overflows the queue: the other's requests are discarded, answered Success, and lost to others", async () => {
    const { iommu, groups, answers, send, woken } = host(true);
    for (let i = 0; i < 12; i++) send(A, i);
    send(B, 100);
    send(B, 101);
    const [smmu0] = iommu.instances;
    expect(smmu0.priq.stats.overflows).toBe(1);
    expect(answers.get(B)).toEqual([100 * 16 + PRG_SUCCESS, 101 * 16 + PRG_SUCCESS]);
    expect(smmu0.priq.lostToOthers(1)).toBe(2);
    expect(smmu0.priq.lostOwn(0)).toBe(7);
    expect(smmu0.priq.lostToOthers(0)).toBe(0);
    // The thread catches up turn by turn, acknowledges, and both devices get through again.
    while (smmu0.priq.overflowActive) await turn();
    expect(groups.map((g) => g.prgIndex)).toEqual([0, 1, 2, 3, 4]);
    expect(woken).toContain(0);
    send(B, 102);
    await turn(); // this turn's budget is spent: the next turn takes it
    expect(groups.map((g) => g.prgIndex)).toContain(102);
    expect(iommu.iopf.pending).toBe(6);
  });

  test('behind IOMMUs of their own the storm overflows only its own queue', () => {
    const { iommu, groups, answers, send } = host(false);
    for (let i = 0; i < 12; i++) send(A, i);
    send(B, 100);
    send(B, 101);
    const [smmu0, smmu1] = iommu.instances;
    expect(smmu0.priq.stats.overflows).toBe(1);
    expect(smmu1.priq.stats.overflows).toBe(0);
    expect(answers.get(B)).toEqual([]);
    expect(groups.filter((g) => g.streamId === B).map((g) => g.prgIndex)).toEqual([100]);
    expect(smmu1.priq.occupancy).toBe(1); // 101 waits for smmu1's thread's next turn
    expect(iommu.drainPageRequests()).toBeGreaterThan(0);
    expect(groups.filter((g) => g.streamId === B).map((g) => g.prgIndex)).toEqual([100, 101]);
    expect(smmu1.priq.lostToOthers(1) + smmu1.priq.lostOwn(1)).toBe(0);
  });

  test('recovery drops the partial groups whose Last the overflow discarded, then a reused PRG index starts afresh', async () => {
    const { iommu, groups, answers, send } = host(true);
    send(A, 1); // handled at once (weight 1)
    send(B, 7, false); // queued: first request of a two-request group
    send(A, 2);
    send(A, 3);
    send(A, 4); // queue full
    send(B, 7, true); // overflow: the group's Last is discarded and answered
    expect(answers.get(B)).toEqual([7 * 16 + PRG_SUCCESS]);
    const [smmu0] = iommu.instances;
    while (smmu0.priq.overflowActive) await turn();
    expect(smmu0.thread.stats.partialsDiscarded).toBe(1);
    send(B, 7, true);
    await turn();
    const group = groups.find((g) => g.streamId === B);
    expect(group?.count).toBe(1);
    expect(group?.addresses[0]).toBe(0x8000);
  });

  test('streams behind different IOMMUs cache translations in their own IOTLBs', () => {
    const iommu = new Iommu({
      instances: [
        { name: 'a', priqLog2: 4, iotlbEntries: 8, iotlbWays: 2 },
        { name: 'b', priqLog2: 4 },
      ],
      iotlbEntries: 64,
    });
    expect(iommu.instances.map((i) => i.iotlb.entries)).toEqual([8, 64]);
    expect(iommu.iotlb).toBe(iommu.instances[0].iotlb);
    iommu.placeStream(5, 1);
    expect(iommu.instanceOf(5).name).toBe('b');
    expect(iommu.instanceOf(6).name).toBe('a');
  });
});
