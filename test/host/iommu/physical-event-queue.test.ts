// The host's physical event queue (SMMUv3 EVTQ rules) and its IRQ thread, alone and in the IOMMU.
import { describe, expect, test } from 'vitest';
import { Iommu } from '../../../host/iommu/iommu.ts';
import { EvtqThread, PhysicalEventQueue } from '../../../host/iommu/physical-event-queue.ts';
import { ACCESS_READ } from '../../../host/iommu/stage1-walker.ts';
import { F_TRANSLATION } from '../../../shared/records/event-types.ts';
import { decodeEvtqEntry, type EvtqEntry, newEvtqEntry } from '../../../shared/records/evtq-entry.ts';

const OVF = 0x8000_0000;

function record(fields: Partial<EvtqEntry>): EvtqEntry {
  return Object.assign(newEvtqEntry(), { eventType: F_TRANSLATION, streamId: 1, read: true }, fields);
}

function popAll(q: PhysicalEventQueue): number[] {
  const out: number[] = [];
  const e = newEvtqEntry();
  for (let at = q.pop(); at >= 0; at = q.pop()) {
    decodeEvtqEntry(q.words, at, e);
    out.push(e.inputAddress);
    q.releaseHeld();
  }
  return out;
}

describe('the physical event queue', () => {
  test('a full queue discards non-stall records; OVFLG toggles once until acknowledged', () => {
    const q = new PhysicalEventQueue(1, 4);
    expect(q.write(record({ inputAddress: 0x1000 }))).toBe('written');
    expect(q.write(record({ inputAddress: 0x2000 }))).toBe('written');
    expect(q.write(record({ inputAddress: 0x3000 }))).toBe('discarded');
    expect(q.write(record({ inputAddress: 0x4000 }))).toBe('discarded');
    expect(q.prodRegister & OVF).not.toBe(0);
    expect(q.stats).toMatchObject({ written: 2, discarded: 2, overflows: 1 });
    q.acknowledgeOverflow();
    expect(q.overflowActive).toBe(false);
    expect(q.write(record({ inputAddress: 0x5000 }))).toBe('discarded');
    expect(q.stats.overflows).toBe(2);
  });

  test('unlike the PRI queue it keeps accepting records while the overflow is unacknowledged', () => {
    const q = new PhysicalEventQueue(1, 4);
    for (const a of [0x1000, 0x2000, 0x3000]) q.write(record({ inputAddress: a }));
    expect(q.overflowActive).toBe(true);
    q.pop();
    expect(q.write(record({ inputAddress: 0x4000 }))).toBe('written');
    expect(q.overflowActive).toBe(true);
    expect(popAll(q)).toEqual([0x2000, 0x4000]);
  });

  test('a stall record is never discarded and never overflows: it waits and goes ahead of later records', () => {
    const q = new PhysicalEventQueue(1, 4);
    q.write(record({ inputAddress: 0x1000 }));
    q.write(record({ inputAddress: 0x2000 }));
    expect(q.write(record({ inputAddress: 0x3000, stall: true, stag: 7 }))).toBe('held');
    expect(q.overflowActive).toBe(false);
    expect(q.heldStalls).toBe(1);
    // Room appears; a non-stall record arriving now still comes after the held stall.
    q.pop();
    expect(q.write(record({ inputAddress: 0x4000 }))).toBe('discarded');
    expect(popAll(q)).toEqual([0x2000, 0x3000]);
    expect(q.stats).toMatchObject({ stallsHeld: 1, discarded: 1 });
  });
});

describe('the event thread', () => {
  test('drains within its weight inside the interrupt, acknowledges an overflow once empty', () => {
    const q = new PhysicalEventQueue(1, 4);
    const handled: number[] = [];
    const thread = new EvtqThread(q, { weight: 8, handle: (e) => handled.push(e.inputAddress) });
    thread.mask();
    for (const a of [0x1000, 0x2000, 0x3000]) q.write(record({ inputAddress: a }));
    expect(handled).toEqual([]);
    expect(q.overflowActive).toBe(true);
    thread.unmask();
    expect(handled).toEqual([0x1000, 0x2000]);
    expect(q.overflowActive).toBe(false);
    expect(q.stats.acknowledged).toBe(1);
    q.write(record({ inputAddress: 0x4000 }));
    expect(handled).toEqual([0x1000, 0x2000, 0x4000]);
  });

  test('each record it consumes lets a held stall in, which it hands on in the same pass', () => {
    const q = new PhysicalEventQueue(1, 4);
    const handled: [number, boolean][] = [];
    const thread = new EvtqThread(q, { weight: 8, handle: (e) => handled.push([e.inputAddress, e.stall]) });
    thread.mask();
    q.write(record({ inputAddress: 0x1000 }));
    q.write(record({ inputAddress: 0x2000 }));
    q.write(record({ inputAddress: 0x3000, stall: true, stag: 1 }));
    q.write(record({ inputAddress: 0x4000, stall: true, stag: 2 }));
    expect(thread.drain()).toBe(4);
    expect(handled).toEqual([
      [0x1000, false],
      [0x2000, false],
      [0x3000, true],
      [0x4000, true],
    ]);
    expect(q.heldStalls).toBe(0);
  });
});

describe('in the IOMMU', () => {
  test("events of the streams behind one IOMMU share its queue; the others' queue is untouched", () => {
    const iommu = new Iommu({
      instances: [
        { name: 'small', priqLog2: 4, evtqLog2: 1 },
        { name: 'big', priqLog2: 4 },
      ],
    });
    iommu.placeStream(0x10, 0);
    iommu.placeStream(0x20, 1);
    const seen: number[] = [];
    iommu.setEventHandler(0x10, (e) => seen.push(e.streamId));
    iommu.setEventHandler(0x20, (e) => seen.push(e.streamId));
    const [small, big] = iommu.instances;
    small.evtqThread.mask();
    for (let i = 0; i < 4; i++) iommu.injectEvent(0x10, 1, 0x1000 * (i + 1), ACCESS_READ);
    iommu.injectEvent(0x20, 1, 0x9000, ACCESS_READ);
    expect(seen).toEqual([0x20]);
    expect(small.evtq.stats).toMatchObject({ written: 2, discarded: 2, overflows: 1 });
    expect(big.evtq.stats).toMatchObject({ written: 1, discarded: 0 });
    small.evtqThread.unmask();
    expect(seen).toEqual([0x20, 0x10, 0x10]);
    expect(small.evtq.overflowActive).toBe(false);
  });
});
