import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { EventQueueModel, type EventQueueOptions } from '../../../host/vmm/evtq-model.ts';
import { DOORBELL_BYTES, Doorbell } from '../../../shared/doorbell.ts';
import {
  CLASS_IN,
  CLASS_TTD,
  F_CD_FETCH,
  F_PERMISSION,
  F_STE_FETCH,
  F_TRANSLATION,
  F_WALK_EABT,
} from '../../../shared/records/event-types.ts';
import {
  decodeEvtqEntry,
  EVTQ_ENTRY_WORDS,
  type EvtqEntry,
  encodeEvtqEntry,
  newEvtqEntry,
  recordsFetchAddress,
} from '../../../shared/records/evtq-entry.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../../shared/ring.ts';
import { StoreRecorder } from '../../support/store-recorder.ts';

/** Bit `n` of the 64-bit dword `d` of the record at word 0 of `words`. */
function bit(words: Int32Array, d: number, n: number): number {
  return n < 32 ? (words[2 * d] >>> n) & 1 : (words[2 * d + 1] >>> (n - 32)) & 1;
}

describe('SMMUv3 event record', () => {
  test('fields sit at the spec bit positions', () => {
    const words = new Int32Array(EVTQ_ENTRY_WORDS);
    const e = newEvtqEntry();
    Object.assign(e, {
      eventType: F_TRANSLATION,
      streamId: 0x8001_2345,
      ssv: true,
      substreamId: 0xabcde,
      stag: 0xbeef,
      stall: true,
      privileged: true,
      instruction: true,
      read: true,
      stage2: true,
      faultClass: CLASS_IN,
      inputAddress: 0x1f_dead_beef_f123,
      fetchAddress: 0xf_1234_5678_9abc,
    });
    encodeEvtqEntry(words, 0, e);
    expect(words[0] & 0xff).toBe(0x10); // dword0 [7:0] EventType
    expect(bit(words, 0, 11)).toBe(1); // [11] SSV
    expect((words[0] >>> 8) & 7).toBe(0); // [10:8] RES0
    expect(words[0] >>> 12).toBe(0xabcde); // [31:12] SubstreamID
    expect(words[1] >>> 0).toBe(0x8001_2345); // [63:32] StreamID
    expect(words[2] & 0xffff).toBe(0xbeef); // dword1 [15:0] STAG
    expect((words[2] >>> 16) & 0x7fff).toBe(0); // [30:16] RES0
    expect(bit(words, 1, 31)).toBe(1); // Stall
    expect(bit(words, 1, 33)).toBe(1); // PnU
    expect(bit(words, 1, 34)).toBe(1); // InD
    expect(bit(words, 1, 35)).toBe(1); // RnW
    expect(bit(words, 1, 39)).toBe(1); // S2
    expect((words[3] >>> 8) & 3).toBe(CLASS_IN); // [41:40] CLASS
    // Nothing else in dword1's high word: [32], [38:36], [63:42] are RES0 here.
    expect(words[3]).toBe((1 << 1) | (1 << 2) | (1 << 3) | (1 << 7) | (CLASS_IN << 8));
    expect(words[4] >>> 0).toBe(0xbeef_f123); // dword2 InputAddr[31:0]
    expect(words[5]).toBe(0x1f_dead); // InputAddr[63:32]
    expect(words[6] >>> 0).toBe(0x5678_9000); // dword3 IPA[31:12], [11:0] RES0
    expect(words[7]).toBe(0xf_1234); // IPA[51:32]
  });

  test('fetch aborts record FetchAddr[51:3]; every other record IPA[51:12]', () => {
    expect([F_STE_FETCH, F_CD_FETCH, F_WALK_EABT].map(recordsFetchAddress)).toEqual([true, true, true]);
    expect(recordsFetchAddress(F_PERMISSION)).toBe(false);
    const words = new Int32Array(EVTQ_ENTRY_WORDS);
    const e = newEvtqEntry();
    e.eventType = F_WALK_EABT;
    e.faultClass = CLASS_TTD;
    e.fetchAddress = 0x8_0000_1238 + 5; // a descriptor address; bits [2:0] are not recorded
    encodeEvtqEntry(words, 0, e);
    expect(words[6]).toBe(0x1238);
    expect(words[7]).toBe(8);
    expect(decodeEvtqEntry(words, 0, newEvtqEntry()).fetchAddress).toBe(0x8_0000_1238);
    e.eventType = F_TRANSLATION;
    encodeEvtqEntry(words, 0, e);
    expect(words[6]).toBe(0x1000);
    expect(decodeEvtqEntry(words, 0, newEvtqEntry()).fetchAddress).toBe(0x8_0000_1000);
  });

  test('out-of-range field values are masked, never spilled into neighbouring fields', () => {
    const words = new Int32Array(EVTQ_ENTRY_WORDS);
    const e = newEvtqEntry();
    Object.assign(e, { eventType: 0x1ff, substreamId: 0x1f_ffff, stag: 0x1_ffff, faultClass: 7 });
    encodeEvtqEntry(words, 0, e);
    expect(bit(words, 0, 8)).toBe(0);
    expect(bit(words, 0, 11)).toBe(0); // SSV not set by an oversize type
    expect(bit(words, 1, 16)).toBe(0);
    expect(bit(words, 1, 31)).toBe(0); // Stall not set by an oversize STAG
    expect(bit(words, 1, 42)).toBe(0);
  });

  test('decode inverts encode', () => {
    const words = new Int32Array(2 * EVTQ_ENTRY_WORDS);
    const e: EvtqEntry = {
      eventType: F_PERMISSION,
      streamId: 0xffff_ffff,
      ssv: true,
      substreamId: 0xf_ffff,
      stag: 0xffff,
      stall: true,
      privileged: false,
      instruction: true,
      read: true,
      stage2: false,
      faultClass: CLASS_TTD,
      inputAddress: 0x7fff_ffff_f000,
      fetchAddress: 0xf_ffff_ffff_f000,
    };
    encodeEvtqEntry(words, EVTQ_ENTRY_WORDS, e);
    expect(decodeEvtqEntry(words, EVTQ_ENTRY_WORDS, newEvtqEntry())).toEqual(e);
  });
});

const OVFLG_WORD = 0; // the ring's PROD header word; OVFLG is its bit 31

function makeQueue(options: EventQueueOptions = {}, log2Size = 3) {
  const geometry = { log2Size, recordWords: EVTQ_ENTRY_WORDS };
  const buffer = new SharedArrayBuffer(DOORBELL_BYTES + ringBytes(geometry));
  const bell = new Doorbell(buffer, 0);
  const ring = new RingProducer(buffer, DOORBELL_BYTES, geometry, bell);
  const consumer = new RingConsumer(buffer, DOORBELL_BYTES, geometry);
  const model = new EventQueueModel(ring, options);
  // One record object for every write: the model must copy, never keep a reference.
  const record = newEvtqEntry();
  record.eventType = F_TRANSLATION;
  const write = (id: number, stall = false) => {
    record.streamId = id;
    record.stall = stall;
    record.stag = stall ? id : 0;
    return model.write(record);
  };
  const ovflg = () => Atomics.load(ring.words, OVFLG_WORD) >>> 31;
  return { bell, ring, consumer, model, write, ovflg };
}

const scratch = newEvtqEntry();

/** Consume up to `max` published records; returns their StreamIDs, stall records as negative ids. */
function consume(consumer: RingConsumer, max = Number.POSITIVE_INFINITY): number[] {
  const ready = Math.min(consumer.poll(), max);
  const ids: number[] = [];
  for (let i = 0; i < ready; i++) {
    const e = decodeEvtqEntry(consumer.words, consumer.at(i), scratch);
    ids.push(e.stall ? -e.streamId : e.streamId);
  }
  consumer.release(ready);
  return ids;
}

function fill(write: (id: number) => string, from: number, n: number): void {
  for (let i = 0; i < n; i++) expect(write(from + i)).toBe('written');
}

describe('SMMUv3 event queue model', () => {
  test('a full event queue discards the newest non-stall record and toggles OVFLG once', () => {
    const { consumer, model, write, ovflg } = makeQueue();
    fill(write, 1, 8);
    model.flush();
    expect(ovflg()).toBe(0);
    expect(write(9)).toBe('discarded');
    expect(ovflg()).toBe(1);
    expect(consumer.overflowPending()).toBe(true);
    expect(write(10)).toBe('discarded');
    expect(write(11)).toBe('discarded');
    expect(ovflg()).toBe(1); // not toggled back by the second and third discard
    expect(model.stats.discarded.full).toBe(3);
    expect(model.stats.overflowsRaised).toBe(1);
    // The oldest records survive; the newest were lost.
    expect(consume(consumer)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  test('the overflow is never observable before the full queue that caused it', () => {
    const { consumer, write } = makeQueue();
    fill(write, 1, 8); // committed, not flushed: the guest still sees an empty queue
    expect(consumer.poll()).toBe(0);
    expect(write(9)).toBe('discarded');
    expect(consumer.overflowPending()).toBe(true);
    expect(consumer.poll()).toBe(8);
  });

  test('OVFLG is never observable before the records written ahead of it (recorded PROD stores)', () => {
    const stores = new StoreRecorder();
    const geometry = { log2Size: 3, recordWords: EVTQ_ENTRY_WORDS };
    const ring = new RingProducer(new SharedArrayBuffer(ringBytes(geometry)), 0, geometry, undefined, stores);
    const model = new EventQueueModel(ring);
    const e = newEvtqEntry();
    e.eventType = F_TRANSLATION;
    for (let i = 1; i <= 8; i++) {
      e.streamId = i;
      expect(model.write(e)).toBe('written'); // committed, not flushed: one batch
    }
    e.streamId = 9;
    expect(model.write(e)).toBe('discarded');
    e.streamId = 10;
    expect(model.write(e)).toBe('discarded');
    model.flush();
    expect(stores.prod).toEqual([
      { index: 8, overflow: false },
      { index: 8, overflow: true },
    ]);
  });

  test('the event queue keeps writing while the overflow is unacknowledged', () => {
    const { consumer, model, write, ovflg } = makeQueue();
    fill(write, 1, 8);
    expect(write(9)).toBe('discarded');
    expect(consume(consumer, 4)).toEqual([1, 2, 3, 4]); // space freed, overflow NOT acknowledged
    expect(consumer.overflowPending()).toBe(true);
    fill(write, 10, 4); // a PRI queue would discard these
    model.flush();
    expect(consume(consumer)).toEqual([5, 6, 7, 8, 10, 11, 12, 13]);
    // A second overflow before the acknowledgement is invisible.
    fill(write, 20, 8);
    expect(write(28)).toBe('discarded');
    expect(ovflg()).toBe(1);
    expect(model.stats.overflowsRaised).toBe(1);
    // Acknowledged: the next overflow toggles OVFLG back and is counted.
    consume(consumer);
    consumer.acknowledgeOverflow();
    expect(consumer.overflowPending()).toBe(false);
    fill(write, 30, 8);
    expect(write(38)).toBe('discarded');
    expect(ovflg()).toBe(0);
    expect(consumer.overflowPending()).toBe(true);
    expect(model.stats.overflowsRaised).toBe(2);
    expect(model.stats.discarded.full).toBe(3);
  });

  test('a stall record is never discarded and is written first once there is room', () => {
    const { consumer, model, write } = makeQueue();
    fill(write, 1, 8);
    model.flush();
    expect(write(100, true)).toBe('waiting');
    expect(write(9)).toBe('discarded'); // a non-stall record behind it is lost to the full queue
    expect(write(101, true)).toBe('waiting');
    expect(model.held).toBe(2);
    expect(consume(consumer, 3)).toEqual([1, 2, 3]);
    // Room for three: the held stall records go before the record that arrives now.
    expect(write(10)).toBe('written');
    model.flush();
    expect(model.held).toBe(0);
    expect(consume(consumer)).toEqual([4, 5, 6, 7, 8, -100, -101, 10]);
    expect(model.stats.stallHeld).toBe(2);
    expect(model.stats.written).toBe(11);
  });

  test('a held stall record is not overtaken when the guest frees space in the middle of a write', () => {
    // A ring whose consumer runs at the worst moment: right after the model found it full.
    class RacingRing extends RingProducer {
      onFull: (() => void) | undefined;
      override claim(): number {
        const at = super.claim();
        const race = this.onFull;
        if (at < 0 && race) {
          this.onFull = undefined;
          race();
        }
        return at;
      }
    }
    const geometry = { log2Size: 3, recordWords: EVTQ_ENTRY_WORDS };
    const buffer = new SharedArrayBuffer(ringBytes(geometry));
    const ring = new RacingRing(buffer, 0, geometry);
    const consumer = new RingConsumer(buffer, 0, geometry);
    const model = new EventQueueModel(ring);
    const e = newEvtqEntry();
    for (let i = 1; i <= 8; i++) {
      e.streamId = i;
      model.write(e);
    }
    model.flush();
    e.streamId = 100;
    e.stall = true;
    expect(model.write(e)).toBe('waiting');
    ring.onFull = () => consume(consumer, 2);
    e.streamId = 9;
    e.stall = false;
    model.write(e); // found the ring full, then the guest freed two slots
    e.streamId = 10;
    expect(model.write(e)).toBe('written');
    model.flush();
    const out = consume(consumer);
    expect(out.indexOf(-100)).toBeGreaterThanOrEqual(0);
    expect(out.indexOf(-100)).toBeLessThan(out.indexOf(10));
    expect(out).not.toContain(9); // 9 came after the held stall record, so it cannot be ahead of it
    expect(out.slice(0, 6)).toEqual([3, 4, 5, 6, 7, 8]);
  });

  test('a stall record never causes overflow', () => {
    const { consumer, model, ring, write, ovflg } = makeQueue();
    fill(write, 1, 8);
    model.flush();
    for (let i = 0; i < 5; i++) expect(write(100 + i, true)).toBe('waiting');
    expect(ovflg()).toBe(0);
    expect(consumer.overflowPending()).toBe(false);
    expect(ring.discarded).toBe(0);
    expect(model.stats.overflowsRaised).toBe(0);
    expect(model.stats.discarded).toEqual({ full: 0, disabled: 0 });
  });

  test('pump writes held stall records in order, publishes them, and stops when the ring is full', () => {
    const { consumer, model, write } = makeQueue();
    fill(write, 1, 8);
    model.flush();
    for (let i = 0; i < 4; i++) write(100 + i, true);
    expect(model.pump()).toBe(0);
    expect(consume(consumer, 2)).toEqual([1, 2]);
    expect(model.pump()).toBe(2);
    expect(model.held).toBe(2);
    expect(consumer.poll()).toBe(8); // published by pump, no flush needed
    expect(consume(consumer)).toEqual([3, 4, 5, 6, 7, 8, -100, -101]);
    expect(model.pump()).toBe(2);
    expect(consume(consumer)).toEqual([-102, -103]);
    expect(model.pump()).toBe(0);
  });

  test('with EVENTQEN=0 non-stall records are dropped without overflow and stall records wait', () => {
    const { consumer, model, write } = makeQueue();
    model.enabled = false;
    expect(write(1)).toBe('discarded');
    expect(write(100, true)).toBe('waiting');
    expect(write(2)).toBe('discarded');
    model.flush();
    expect(consumer.poll()).toBe(0);
    expect(consumer.overflowPending()).toBe(false);
    expect(model.stats.discarded).toEqual({ full: 0, disabled: 2 });
    expect(model.pump()).toBe(0); // not writable while disabled, though the ring is empty
    model.enabled = true;
    expect(model.pump()).toBe(1);
    expect(write(3)).toBe('written');
    model.flush();
    expect(consume(consumer)).toEqual([-100, 3]);
  });

  test('the stall buffer is bounded: a stall with no room left is refused, not dropped', () => {
    const { consumer, model, write } = makeQueue({ stallCapacity: 2 });
    fill(write, 1, 8);
    write(100, true);
    write(101, true);
    expect(model.stallRoom).toBe(0);
    expect(() => write(102, true)).toThrow(/stall buffer is full/);
    expect(model.held).toBe(2);
    expect(model.stats.stallHeld).toBe(2);
    model.flush();
    consume(consumer);
    expect(model.pump()).toBe(2);
    expect(consume(consumer)).toEqual([-100, -101]);
    expect(model.stallRoom).toBe(2);
  });

  test('a batch is published with one PROD store and rings the doorbell once, on the empty edge', () => {
    const { bell, consumer, model, write } = makeQueue();
    fill(write, 1, 3);
    expect(consumer.poll()).toBe(0);
    expect(bell.sequence()).toBe(0);
    expect(model.flush()).toBe(true);
    expect(bell.sequence()).toBe(1);
    expect(consumer.poll()).toBe(3);
    fill(write, 4, 2);
    expect(model.flush()).toBe(false); // not empty: the guest has not consumed anything yet
    expect(bell.sequence()).toBe(1);
    consume(consumer);
    write(6);
    expect(model.flush()).toBe(true);
    expect(bell.sequence()).toBe(2);
  });

  test('the model refuses a ring of other than 8-word records and a bad stall capacity', () => {
    const g = { log2Size: 3, recordWords: 4 };
    const ring4 = new RingProducer(new SharedArrayBuffer(ringBytes(g)), 0, g);
    expect(() => new EventQueueModel(ring4)).toThrow(/8-word records/);
    expect(() => makeQueue({ stallCapacity: 0 })).toThrow(/stallCapacity/);
    expect(() => makeQueue({ stallCapacity: 1.5 })).toThrow(/stallCapacity/);
  });

  type Op =
    | { kind: 'event'; stall: boolean }
    | { kind: 'consume'; n: number }
    | { kind: 'ack' }
    | { kind: 'flush' }
    | { kind: 'pump' }
    | { kind: 'enable'; on: boolean };

  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 8, arbitrary: fc.record({ kind: fc.constant('event' as const), stall: fc.boolean() }) },
    {
      weight: 3,
      arbitrary: fc.record({ kind: fc.constant('consume' as const), n: fc.integer({ min: 1, max: 9 }) }),
    },
    { weight: 1, arbitrary: fc.constant({ kind: 'ack' as const }) },
    { weight: 2, arbitrary: fc.constant({ kind: 'flush' as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'pump' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('enable' as const), on: fc.boolean() }) },
  );

  test('under any interleaving records arrive in order and no stall record is lost', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 120 }), (ops) => {
        const { consumer, model, write } = makeQueue({ stallCapacity: 4 });
        const kept = new Set<number>();
        const lost = new Set<number>();
        const stalls = new Set<number>();
        const out: number[] = [];
        let id = 0;
        let acks = 0;
        const take = (n: number) => {
          for (const v of consume(consumer, n)) out.push(v);
        };
        for (const op of ops) {
          if (op.kind === 'event') {
            if (op.stall && model.stallRoom === 0) continue; // the device back-pressures
            id++;
            const result = write(id, op.stall);
            if (op.stall) stalls.add(id);
            if (result === 'discarded') lost.add(id);
            else kept.add(id);
          } else if (op.kind === 'consume') take(op.n);
          else if (op.kind === 'ack') {
            consumer.acknowledgeOverflow();
            acks++;
          } else if (op.kind === 'flush') model.flush();
          else if (op.kind === 'pump') model.pump();
          else model.enabled = op.on;
        }
        // Drain: the guest consumes everything, the host retries its held stall records.
        model.enabled = true;
        model.flush();
        for (let guard = 0; guard < 100; guard++) {
          take(Number.POSITIVE_INFINITY);
          model.pump();
          if (model.held === 0 && consumer.poll() === 0) break;
        }
        const ids = out.map(Math.abs);
        for (let i = 1; i < ids.length; i++) expect(ids[i]).toBeGreaterThan(ids[i - 1]);
        expect(new Set(ids)).toEqual(kept);
        for (const s of stalls) expect(lost.has(s)).toBe(false);
        for (const v of out) expect(v < 0).toBe(stalls.has(Math.abs(v)));
        expect(model.held).toBe(0);
        expect(model.stats.written).toBe(out.length);
        expect(model.stats.discarded.full + model.stats.discarded.disabled).toBe(lost.size);
        expect(model.stats.overflowsRaised).toBeLessThanOrEqual(acks + 1);
        if (model.stats.discarded.full > 0) expect(model.stats.overflowsRaised).toBeGreaterThan(0);
        expect(consumer.corruptIndex).toBe(0);
      }),
      { seed: 0x3e7_0e, numRuns: 300 },
    );
  });
});
