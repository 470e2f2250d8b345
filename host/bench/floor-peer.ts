/**
 * The other thread of the floors bench: echoes ping records, or produces numbered records into the
 * ring. Each command runs synchronously to its end and answers with one message; between commands
 * the thread idles in its event loop, never spinning.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { RingProducer } from '../../shared/ring.ts';
import {
  CHANNEL_BYTES,
  END_OF_RUN,
  GO,
  type PeerCommand,
  type PeerReply,
  PING,
  PING_RECORD,
  PONG,
  PONG_RECORD,
  PRODUCED,
  RECORD_WORDS,
  RING_GEOMETRY,
  RING_OFFSET,
  STALL_MS,
  STOP,
  sleepWhile,
  spinWhile,
} from './floor-channel.ts';

if (!parentPort) throw new Error('floor-peer.ts runs as a worker thread of host/bench/floors.ts');
const port = parentPort;
const { buffer } = workerData as { buffer: SharedArrayBuffer };
if (buffer.byteLength < CHANNEL_BYTES) throw new RangeError(`floor channel needs ${CHANNEL_BYTES} bytes`);

const words = new Int32Array(buffer);
// One producer for the thread's life: its index carries over from run to run, as the consumer's does.
const producer = new RingProducer(buffer, RING_OFFSET, RING_GEOMETRY);
const READY: PeerReply = { kind: 'ready' };

function echo(block: boolean): PeerReply {
  let last = Atomics.load(words, PING);
  let roundTrips = 0;
  let mismatches = 0;
  port.postMessage(READY);
  for (;;) {
    const seq = block ? sleepWhile(words, PING, last, STALL_MS) : spinWhile(words, PING, last, STALL_MS);
    if (seq === END_OF_RUN) break;
    for (let k = 0; k < RECORD_WORDS; k++) {
      const word = words[PING_RECORD + k];
      if (word !== seq + k) mismatches++;
      words[PONG_RECORD + k] = ~word;
    }
    Atomics.store(words, PONG, seq);
    if (block) Atomics.notify(words, PONG, 1);
    last = seq;
    roundTrips++;
  }
  return { kind: 'echoed', roundTrips, mismatches };
}

/** Record `seq` holds seq + k in word k: the consumer sees order and torn records alike. */
function produce(records: number, batch: number): PeerReply {
  port.postMessage(READY);
  spinWhile(words, GO, 0, STALL_MS);
  const ring = producer.words;
  let seq = 0;
  let fullSpins = 0;
  let stallAt = 0;
  while (seq < records && Atomics.load(words, STOP) === 0) {
    let n = 0;
    while (n < batch && seq < records) {
      const at = producer.claim();
      if (at < 0) break;
      for (let k = 0; k < RECORD_WORDS; k++) ring[at + k] = seq + k;
      producer.commit();
      seq++;
      n++;
    }
    if (n > 0) {
      producer.publish();
      fullSpins = 0;
      stallAt = 0;
    } else if (++fullSpins === 1 << 16) {
      // Ring full for a long while: the consumer may be gone.
      fullSpins = 0;
      const now = performance.now();
      if (stallAt === 0) stallAt = now + STALL_MS;
      else if (now > stallAt) throw new Error(`ring stayed full for ${STALL_MS} ms`);
    }
  }
  Atomics.store(words, PRODUCED, seq);
  return { kind: 'produced', records: seq };
}

port.on('message', (command: PeerCommand) => {
  let reply: PeerReply;
  try {
    reply = command.kind === 'echo' ? echo(command.block) : produce(command.records, command.batch);
  } catch (error) {
    reply = { kind: 'failed', message: error instanceof Error ? error.message : String(error) };
  }
  port.postMessage(reply);
});
port.postMessage({ kind: 'up' } satisfies PeerReply);
