import { once } from 'node:events';
import { describe, expect, test } from 'vitest';
import { DOORBELL_BYTES, Doorbell } from '../../shared/doorbell.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../shared/ring.ts';
import { spawnWorker } from '../../shared/worker-spawn.ts';

const geometry = { log2Size: 3, recordWords: 4 };

function makeRing(g = geometry) {
  const buffer = new SharedArrayBuffer(DOORBELL_BYTES + ringBytes(g));
  const bell = new Doorbell(buffer, 0);
  const producer = new RingProducer(buffer, DOORBELL_BYTES, g, bell);
  const consumer = new RingConsumer(buffer, DOORBELL_BYTES, g);
  return { buffer, bell, producer, consumer };
}

function push(producer: RingProducer, value: number): boolean {
  const at = producer.claim();
  if (at < 0) return false;
  producer.words[at] = value;
  producer.push();
  return true;
}

describe('ring', () => {
  test('all 2^n slots are usable: full holds 2^n records, empty holds none', () => {
    const { producer, consumer } = makeRing();
    expect(consumer.poll()).toBe(0);
    for (let i = 0; i < 8; i++) expect(push(producer, 100 + i)).toBe(true);
    expect(producer.claim()).toBe(-1);
    expect(consumer.poll()).toBe(8);
    for (let i = 0; i < 8; i++) expect(consumer.words[consumer.at(i)]).toBe(100 + i);
    consumer.release(8);
    expect(consumer.poll()).toBe(0);
    // Across the wrap: full again with the wrap bit flipped, still 8 records.
    for (let i = 0; i < 8; i++) expect(push(producer, 200 + i)).toBe(true);
    expect(producer.claim()).toBe(-1);
    expect(consumer.poll()).toBe(8);
    expect(consumer.words[consumer.at(7)]).toBe(207);
  });

  test('full and empty differ only in the wrap bit of the raw indices', () => {
    const { producer, consumer } = makeRing();
    const prodWord = () => Atomics.load(producer.words, 0);
    const consWord = () => Atomics.load(producer.words, 16);
    for (let i = 0; i < 8; i++) push(producer, i);
    expect(prodWord() & 7).toBe(consWord() & 7);
    expect(prodWord() & 8).not.toBe(consWord() & 8);
    consumer.poll();
    consumer.release(8);
    expect(prodWord()).toBe(consWord());
  });

  test('records are not visible before publish', () => {
    const { producer, consumer } = makeRing();
    const at = producer.claim();
    producer.words[at] = 7;
    producer.commit();
    expect(consumer.poll()).toBe(0);
    producer.publish();
    expect(consumer.poll()).toBe(1);
  });

  test('overflow flag toggles once until acknowledged', () => {
    const { producer, consumer } = makeRing();
    for (let i = 0; i < 8; i++) push(producer, i);
    expect(consumer.overflowPending()).toBe(false);
    expect(producer.discard()).toBe(true);
    const raised = Atomics.load(producer.words, 0);
    expect(consumer.overflowPending()).toBe(true);
    // A second overflow before the acknowledgement is invisible: OVFLG does not toggle back.
    expect(producer.discard()).toBe(false);
    expect(producer.discard()).toBe(false);
    expect(Atomics.load(producer.words, 0)).toBe(raised);
    expect(producer.discarded).toBe(3);
    expect(producer.overflowPending()).toBe(true);
    consumer.poll();
    consumer.release(8);
    consumer.acknowledgeOverflow();
    expect(consumer.overflowPending()).toBe(false);
    expect(producer.overflowPending()).toBe(false);
    // Acknowledged: the next discard raises the condition again (the flag toggles back).
    for (let i = 0; i < 8; i++) push(producer, i);
    expect(producer.discard()).toBe(true);
    expect(Atomics.load(producer.words, 0) >>> 31).toBe(0);
    expect(consumer.overflowPending()).toBe(true);
  });

  test('doorbell rings only on the empty to non-empty edge', () => {
    const { producer, consumer, bell } = makeRing();
    expect(bell.sequence()).toBe(0);
    expect(push(producer, 1)).toBe(true);
    expect(bell.sequence()).toBe(1);
    push(producer, 2);
    push(producer, 3);
    expect(bell.sequence()).toBe(1);
    // A consumer that read but has not released yet still counts as non-empty.
    expect(consumer.poll()).toBe(3);
    push(producer, 4);
    expect(bell.sequence()).toBe(1);
    consumer.release(4);
    push(producer, 5);
    expect(bell.sequence()).toBe(2);
    // A batch of records published with one index store rings once.
    consumer.poll();
    consumer.release(1);
    for (let i = 0; i < 5; i++) {
      producer.words[producer.claim()] = i;
      producer.commit();
    }
    expect(producer.publish()).toBe(true);
    expect(bell.sequence()).toBe(3);
  });

  test('a consumer index claiming more than 2^n in flight is counted and treated as full', () => {
    const { producer } = makeRing();
    for (let i = 0; i < 8; i++) push(producer, i);
    Atomics.store(producer.words, 16, 12); // CONS "ahead" of PROD: 12 of 8 slots in use
    expect(producer.claim()).toBe(-1);
    expect(producer.corruptIndex).toBe(1);
  });

  test('a producer index claiming more than 2^n records is counted and read as empty', () => {
    const { consumer, producer } = makeRing();
    Atomics.store(producer.words, 0, 13); // 13 records in an 8-slot ring
    expect(consumer.poll()).toBe(0);
    expect(consumer.corruptIndex).toBe(1);
  });

  test('bad geometry is refused with a clear error', () => {
    expect(() => ringBytes({ log2Size: 20, recordWords: 4 })).toThrow(/log2Size/);
    expect(() => ringBytes({ log2Size: 0, recordWords: 4 })).toThrow(/log2Size/);
    expect(() => ringBytes({ log2Size: 4, recordWords: 0 })).toThrow(/recordWords/);
  });

  test('a producer blocked on a full ring is woken once the ring is at most half full', () => {
    const { producer, consumer } = makeRing();
    for (let i = 0; i < 8; i++) push(producer, i);
    const seen = producer.armSpaceWait();
    expect(seen).toBeGreaterThanOrEqual(0);
    consumer.poll();
    consumer.release(3); // 5 of 8 still in use: no wake yet
    expect(producer.spaceBell.sequence()).toBe(seen);
    consumer.release(1); // 4 of 8: half full
    expect(producer.spaceBell.sequence()).toBe(seen + 1);
  });

  test('two threads move 1,000,000 records with none lost, duplicated or reordered', async () => {
    const g = { log2Size: 10, recordWords: 4 };
    const { buffer, bell } = makeRing(g);
    const consumer = new RingConsumer(buffer, DOORBELL_BYTES, g);
    const total = 1_000_000;
    const worker = spawnWorker(new URL('../fixtures/ring-producer.worker.ts', import.meta.url), {
      workerData: { buffer, offset: DOORBELL_BYTES, geometry: g, total },
    });
    const exited = once(worker, 'exit');
    let expected = 0;
    let mismatches = 0;
    let sleeps = 0;
    while (expected < total) {
      const seen = bell.sequence();
      const ready = consumer.poll();
      if (ready === 0) {
        bell.arm();
        if (consumer.poll() === 0) {
          sleeps++;
          bell.wait(seen, 1000);
        } else {
          bell.disarm();
        }
        continue;
      }
      for (let i = 0; i < ready; i++) {
        const at = consumer.at(i);
        const w = consumer.words;
        if (
          w[at] !== expected ||
          w[at + 1] !== ~expected ||
          w[at + 2] !== expected * 7 ||
          w[at + 3] !== -expected
        ) {
          mismatches++;
        }
        expected++;
      }
      consumer.release(ready);
    }
    const [code] = await exited;
    expect(code).toBe(0);
    expect(mismatches).toBe(0);
    expect(expected).toBe(total);
    expect(consumer.poll()).toBe(0);
    expect(consumer.corruptIndex).toBe(0);
    // The consumer drained faster than the producer at times and slept on the doorbell.
    expect(sleeps).toBeGreaterThan(0);
  });
});
