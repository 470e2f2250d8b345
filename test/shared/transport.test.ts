// The postMessage transport: the same rings and registers, each side on its own copy of the
// channel, every store carried across by a PostedLink. Unit tests on one MessageChannel, then whole
// topologies on real worker threads with each transport.
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { describe, expect, test } from 'vitest';
import { runTopology } from '../../host/vmm/sandbox.ts';
import { loadTopology } from '../../host/vmm/topology.ts';
import { ChannelSide } from '../../shared/channel-side.ts';
import { Doorbell } from '../../shared/doorbell.ts';
import { PostedLink } from '../../shared/posted-link.ts';
import { ringBytes } from '../../shared/ring.ts';

const PAGE = 4096;
const GEOMETRY = { log2Size: 3, recordWords: 4 };
const RING_AT = 128;
const BYTES = RING_AT + ringBytes(GEOMETRY);

function pair() {
  const { port1, port2 } = new MessageChannel();
  const a = new SharedArrayBuffer(BYTES);
  const b = new SharedArrayBuffer(BYTES);
  const aBell = new Doorbell(a, 0);
  const bBell = new Doorbell(b, 64);
  const aLink = new PostedLink(port1, a, aBell);
  const bLink = new PostedLink(port2, b, bBell);
  const place = { offset: RING_AT, geometry: GEOMETRY };
  const producer = new ChannelSide(a, aLink).producer(place, new ChannelSide(a, aLink).ringer(64));
  const consumer = new ChannelSide(b, bLink).consumer(place);
  const close = () => {
    aLink.close();
    bLink.close();
  };
  return { producer, consumer, aLink, bLink, bBell, port1, port2, close };
}

/**
 * Resolves once `port` has delivered `count` more messages. Listeners run in the order they were
 * added, so the link has applied each one by then. Call it before the await that lets them in.
 */
function delivered(port: MessagePort, count = 1): Promise<void> {
  return new Promise((resolve) => {
    let left = count;
    const onMessage = () => {
      if (--left > 0) return;
      port.off('message', onMessage);
      resolve();
    };
    port.on('message', onMessage);
  });
}

describe('PostedLink', () => {
  test('records and indices reach the other copy only by message, in order, and the reader is woken', async () => {
    const { producer, consumer, bBell, port1, port2, close } = pair();
    try {
      const seen = bBell.sequence();
      for (let r = 0; r < 5; r++) {
        const at = producer.claim();
        producer.words.set([r, r + 10, r + 20, r + 30], at);
        producer.commit();
      }
      producer.publish();
      // Nothing is shared: the consumer's copy changes when the message arrives.
      expect(consumer.poll()).toBe(0);
      await delivered(port2);
      expect(bBell.sequence()).not.toBe(seen);
      expect(consumer.poll()).toBe(5);
      for (let i = 0; i < 5; i++)
        expect(Array.from(consumer.words.subarray(consumer.at(i), consumer.at(i) + 4))).toEqual([
          i,
          i + 10,
          i + 20,
          i + 30,
        ]);
      consumer.release(5);
      await delivered(port1);
      // The producer learned the space back: the 8-slot ring takes 8 more across the wrap.
      for (let r = 0; r < 8; r++) {
        const at = producer.claim();
        expect(at).toBeGreaterThanOrEqual(0);
        producer.words.set([100 + r, 0, 0, 0], at);
        producer.commit();
      }
      expect(producer.claim()).toBe(-1);
      producer.publish();
      await delivered(port2);
      expect(consumer.poll()).toBe(8);
      expect(Array.from({ length: 8 }, (_, i) => consumer.words[consumer.at(i)])).toEqual([
        100, 101, 102, 103, 104, 105, 106, 107,
      ]);
    } finally {
      close();
    }
  });

  test('operations from one synchronous stretch travel as one message', async () => {
    const { producer, aLink, bLink, port2, close } = pair();
    try {
      for (let r = 0; r < 3; r++) {
        producer.claim();
        producer.push();
      }
      await delivered(port2);
      expect(aLink.stats.messagesSent).toBe(1);
      expect(bLink.stats.messagesReceived).toBe(1);
    } finally {
      close();
    }
  });

  test('malformed messages are counted and never thrown: wrong type, out of bounds, unknown operation', async () => {
    const { bLink, port1, port2, consumer, close } = pair();
    try {
      port1.postMessage('not a message');
      port1.postMessage(new Int32Array([1, BYTES / 4 - 1, 2, 7, 7])); // a store past the channel
      port1.postMessage(new Int32Array([99, 0, 0]));
      port1.postMessage(new Int32Array([1, -4, 1, 7]));
      await delivered(port2, 4);
      expect(bLink.stats.badMessages).toBe(4);
      expect(consumer.poll()).toBe(0);
    } finally {
      close();
    }
  });
});

describe('topologies over the postMessage transport', () => {
  test.each(['default', 'shared-device'])(
    '%s.yaml gives the same outcome as over shared memory',
    async (name) => {
      const topology = loadTopology(`configs/${name}.yaml`);
      const [ring, posted] = [
        await runTopology(topology, { transport: 'sab' }),
        await runTopology(topology, { transport: 'postmessage' }),
      ];
      expect(posted.transport).toBe('postmessage');
      expect(posted.invariants.ok).toBe(true);
      expect(posted.faults.lost).toBe(0);
      for (const [i, vm] of posted.vms.entries()) {
        expect(vm.workloadDone).toBe(true);
        expect(vm.bytesVerified).toBe(ring.vms[i].bytesVerified);
        expect(vm.dmaCompleted).toBe(ring.vms[i].dmaCompleted);
        expect(vm.faultsByKind.pageRequest).toBe(ring.vms[i].faultsByKind.pageRequest);
      }
      if (name === 'overflow') expect(posted.faults.dropped).toBeGreaterThan(0);
      else expect(posted.dma.bytesVerified).toBeGreaterThanOrEqual(256 * PAGE);
    },
  );
});
