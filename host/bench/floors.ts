/**
 * One concept, the floors (the peer thread's side is floor-peer.ts, their shared channel
 * floor-channel.ts).
 *
 * Floors: what this machine allows between two threads, with no sandbox logic on the path. The
 * sandbox's own figures are read against these (docs/bench.md).
 *
 * - spin: round trip of one 32-byte record while both sides busy-poll a sequence word.
 * - sleep: the same round trip while both sides block in Atomics.wait between records. The main
 *   thread uses Atomics.wait too, not waitAsync: waitAsync would add the event loop's turn to each
 *   round trip, and the floor wanted is the two futex wake-ups alone.
 * - ring: one-way records/s through shared/ring.ts, batched on both sides, both sides polling.
 *
 * Each figure is measured in every repetition; the median of the repetitions is reported beside
 * each repetition's value. The peer thread starts and warms up before any timed window, and each
 * window also ends at a time budget, so a loaded machine gives fewer samples, not a hang.
 *
 * Run by hand: npx tsx host/bench/floors.ts [--full] [--json]
 */
import { setTimeout as delay } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import type { Worker } from 'node:worker_threads';
import * as hdr from 'hdr-histogram-js';
import { RingConsumer } from '../../shared/ring.ts';
import { sibling, spawnWorker } from '../../shared/worker-spawn.ts';
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

/** One figure: the median of the repetitions, and each repetition's value in run order. */
export interface Figure {
  median: number;
  runs: number[];
}

export interface Floors {
  quick: boolean;
  repetitions: number;
  /** Spin round trip, microseconds: mean over a window with no clock reads inside it. */
  spinUs: Figure;
  /** Spin round-trip percentiles from a second, sampled window; each sample includes one clock read. */
  spinP50Us: Figure;
  spinP99Us: Figure;
  /** Blocking round trip, microseconds, measured as the spin figures are. */
  sleepUs: Figure;
  sleepP50Us: Figure;
  sleepP99Us: Figure;
  /** One-way ring throughput, records per second. */
  ringRecordsPerS: Figure;
  /** Cost of one performance.now(), nanoseconds: what each latency sample carries on top. */
  clockNs: Figure;
  /** Latency samples behind each repetition's percentiles. */
  samples: { spin: number[]; sleep: number[] };
  /** Records per ring repetition as the consumer counted them, and as the producer reported them. */
  ringRecords: { consumed: number[]; produced: number[] };
  /** Echoed words that came back wrong, ring records torn or out of order; warm-up included. 0 when sound. */
  mismatches: { spin: number; sleep: number; ring: number };
  /** Records per ring publish on the producer side. */
  ringBatch: number;
  /** Spawning the peer until its first message (tsx transpiles it from source): outside every window. */
  startupMs: number;
  elapsedMs: number;
}

/** Round trips per window (a repetition has two windows) and each window's time budget. */
interface EchoWindow {
  roundTrips: number;
  budgetMs: number;
}

interface Plan {
  repetitions: number;
  spin: EchoWindow;
  sleep: EchoWindow;
  ring: { records: number; budgetMs: number };
  clockReads: number;
}

// Budgets bound a repetition on a loaded machine; on an idle one the counts end it first.
const QUICK: Plan = {
  repetitions: 5,
  spin: { roundTrips: 20_000, budgetMs: 60 },
  sleep: { roundTrips: 1_500, budgetMs: 120 },
  ring: { records: 2_000_000, budgetMs: 200 },
  clockReads: 100_000,
};
const FULL: Plan = {
  repetitions: 9,
  spin: { roundTrips: 200_000, budgetMs: 300 },
  sleep: { roundTrips: 10_000, budgetMs: 600 },
  ring: { records: 20_000_000, budgetMs: 1_000 },
  clockReads: 1_000_000,
};
const WARM_UP: Plan = {
  repetitions: 2,
  spin: { roundTrips: 20_000, budgetMs: 30 },
  sleep: { roundTrips: 500, budgetMs: 30 },
  ring: { records: 1_000_000, budgetMs: 50 },
  clockReads: 100_000,
};

const WARM_UP_IDLE_MS = 50;
const RING_BATCH = 64;
/** Polls between clock reads while consuming: bounds how late the consumer sees its budget end. */
const POLLS_PER_CLOCK_READ = 256;

export async function measureFloors(options: { quick: boolean }): Promise<Floors> {
  const plan = options.quick ? QUICK : FULL;
  const began = performance.now();
  const buffer = new SharedArrayBuffer(CHANNEL_BYTES);
  const words = new Int32Array(buffer);
  const consumer = new RingConsumer(buffer, RING_OFFSET, RING_GEOMETRY);
  const worker = spawnWorker(sibling('./floor-peer', import.meta.url), { workerData: { buffer } });
  const peer = new PeerLink(worker);
  const spin = new EchoSeries(words, false, plan.spin.roundTrips);
  const sleep = new EchoSeries(words, true, plan.sleep.roundTrips);
  const ring = new RingSeries(words, consumer);
  const clock: number[] = [];
  let startupMs = 0;
  try {
    await peer.next('up');
    startupMs = performance.now() - began;
    // One repetition of every figure; interleaved so that machine noise spreads over all of them.
    const cycle = async (sizes: Plan, record: boolean) => {
      await spin.run(peer, sizes.spin, record);
      await sleep.run(peer, sizes.sleep, record);
      await ring.run(peer, sizes.ring, record);
      const ns = clockNs(sizes.clockReads);
      if (record) clock.push(ns);
    };
    for (let r = 0; r < WARM_UP.repetitions; r++) await cycle(WARM_UP, false);
    // V8 optimizes on background threads, which get no core while both threads spin: give them
    // one. A cycle after the pause too: in trials the first cycle after an idle gap ran slow.
    await delay(WARM_UP_IDLE_MS);
    await cycle(WARM_UP, false);
    for (let r = 0; r < plan.repetitions; r++) await cycle(plan, true);
  } finally {
    // Release a peer still inside a run, then end the thread whatever state it is in.
    Atomics.store(words, STOP, 1);
    Atomics.store(words, PING, END_OF_RUN);
    Atomics.notify(words, PING);
    await worker.terminate();
  }
  return {
    quick: options.quick,
    repetitions: plan.repetitions,
    spinUs: figure(spin.meanUs),
    spinP50Us: figure(spin.p50Us),
    spinP99Us: figure(spin.p99Us),
    sleepUs: figure(sleep.meanUs),
    sleepP50Us: figure(sleep.p50Us),
    sleepP99Us: figure(sleep.p99Us),
    ringRecordsPerS: figure(ring.perS),
    clockNs: figure(clock),
    samples: { spin: spin.sampleCounts, sleep: sleep.sampleCounts },
    ringRecords: { consumed: ring.consumed, produced: ring.produced },
    mismatches: { spin: spin.mismatches, sleep: sleep.mismatches, ring: ring.mismatches },
    ringBatch: RING_BATCH,
    startupMs,
    elapsedMs: performance.now() - began,
  };
}

/** Round trips in one mode, repetition after repetition, with preallocated sample storage. */
class EchoSeries {
  readonly meanUs: number[] = [];
  readonly p50Us: number[] = [];
  readonly p99Us: number[] = [];
  readonly sampleCounts: number[] = [];
  mismatches = 0;

  /** Per-round-trip latencies of the current window, milliseconds. */
  private readonly samples: Float64Array;
  /** Percentiles come from an HDR histogram, as everywhere latency is reported; filled after the window. */
  private readonly histogram = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000_000,
    numberOfSignificantValueDigits: 3,
  });
  private seq = 0;

  constructor(
    private readonly words: Int32Array,
    private readonly block: boolean,
    maxRoundTrips: number,
  ) {
    this.samples = new Float64Array(maxRoundTrips);
  }

  /** One repetition: a window for the mean, then a sampled window; `record` false for warm-up. */
  async run(peer: PeerLink, window: EchoWindow, record: boolean): Promise<void> {
    const words = this.words;
    Atomics.store(words, PING, 0);
    Atomics.store(words, PONG, 0);
    this.seq = 0;
    peer.send({ kind: 'echo', block: this.block });
    await peer.next('ready');
    let meanUs: number;
    let n: number;
    try {
      meanUs = this.meanWindow(window.roundTrips, window.budgetMs);
      n = this.sampledWindow(Math.min(window.roundTrips, this.samples.length), window.budgetMs);
    } finally {
      Atomics.store(words, PING, END_OF_RUN);
      if (this.block) Atomics.notify(words, PING, 1);
    }
    const reply = await peer.next('echoed');
    if (reply.roundTrips !== this.seq) {
      throw new Error(`floor peer echoed ${reply.roundTrips} records, ${this.seq} were sent`);
    }
    this.mismatches += reply.mismatches;
    if (!record) return;
    const h = this.histogram;
    h.reset();
    for (let i = 0; i < n; i++) h.recordValue(Math.max(1, Math.round(this.samples[i] * 1e6)));
    this.meanUs.push(meanUs);
    this.p50Us.push(h.getValueAtPercentile(50) / 1000);
    this.p99Us.push(h.getValueAtPercentile(99) / 1000);
    this.sampleCounts.push(n);
  }

  /**
   * Mean round trip in microseconds. The clock is read for the budget only: up to every 64 round
   * trips while they are fast, every one once they are slow (a starved peer takes a time slice each).
   */
  private meanWindow(roundTrips: number, budgetMs: number): number {
    const start = performance.now();
    const end = start + budgetMs;
    let n = 0;
    let stride = 1;
    let readAt = 1;
    let lastRead = start;
    while (n < roundTrips) {
      this.roundTrip();
      if (++n === readAt) {
        const now = performance.now();
        if (now > end) break;
        stride = now - lastRead < budgetMs / 64 ? Math.min(stride * 2, 64) : 1;
        lastRead = now;
        readAt = n + stride;
      }
    }
    return ((performance.now() - start) * 1000) / n;
  }

  /** Latency of each round trip into `samples`; returns how many were taken. */
  private sampledWindow(roundTrips: number, budgetMs: number): number {
    const samples = this.samples;
    let before = performance.now();
    const end = before + budgetMs;
    let n = 0;
    while (n < roundTrips) {
      this.roundTrip();
      // performance.now() boxes its result: one short-lived heap number per sample, no more.
      const now = performance.now();
      samples[n++] = now - before;
      before = now;
      if (now > end) break;
    }
    return n;
  }

  /** Write record `seq` (seq + k in word k), ring, and wait for its complement to come back. */
  private roundTrip(): void {
    const words = this.words;
    const seq = ++this.seq;
    for (let k = 0; k < RECORD_WORDS; k++) words[PING_RECORD + k] = seq + k;
    Atomics.store(words, PING, seq);
    if (this.block) {
      Atomics.notify(words, PING, 1);
      sleepWhile(words, PONG, seq - 1, STALL_MS);
    } else {
      spinWhile(words, PONG, seq - 1, STALL_MS);
    }
    for (let k = 0; k < RECORD_WORDS; k++) {
      if (words[PONG_RECORD + k] !== ~(seq + k)) this.mismatches++;
    }
  }
}

/** Ring throughput, repetition after repetition; this thread consumes, the peer produces. */
class RingSeries {
  readonly perS: number[] = [];
  readonly consumed: number[] = [];
  readonly produced: number[] = [];
  mismatches = 0;

  constructor(
    private readonly words: Int32Array,
    private readonly consumer: RingConsumer,
  ) {}

  async run(peer: PeerLink, { records, budgetMs }: Plan['ring'], record: boolean): Promise<void> {
    const words = this.words;
    Atomics.store(words, GO, 0);
    Atomics.store(words, STOP, 0);
    Atomics.store(words, PRODUCED, -1);
    peer.send({ kind: 'produce', records, batch: RING_BATCH });
    await peer.next('ready');
    let result: { records: number; ms: number; mismatches: number };
    try {
      result = this.consume(budgetMs);
    } finally {
      Atomics.store(words, STOP, 1);
    }
    const reply = await peer.next('produced');
    this.mismatches += result.mismatches;
    if (reply.records !== result.records) {
      throw new Error(`ring producer published ${reply.records} records, consumer took ${result.records}`);
    }
    if (!record) return;
    this.perS.push((result.records * 1000) / result.ms);
    this.consumed.push(result.records);
    this.produced.push(reply.records);
  }

  /**
   * Start the producer and drain until it reports its total. Record `seq` must hold seq + k in
   * word k: anything else (reordered, torn, lost) counts as a mismatch.
   */
  private consume(budgetMs: number): { records: number; ms: number; mismatches: number } {
    const words = this.words;
    const consumer = this.consumer;
    const ring = consumer.words;
    let expected = 0;
    let mismatches = 0;
    let polls = 0;
    const start = performance.now();
    const stopAt = start + budgetMs;
    const stallAt = stopAt + STALL_MS;
    Atomics.store(words, GO, 1);
    for (;;) {
      const ready = consumer.poll();
      for (let i = 0; i < ready; i++) {
        const at = consumer.at(i);
        let diff = 0;
        for (let k = 0; k < RECORD_WORDS; k++) diff |= ring[at + k] ^ (expected + k);
        if (diff !== 0) mismatches++;
        expected++;
      }
      if (ready > 0) {
        consumer.release(ready);
      } else {
        // PRODUCED is stored after the producer's last publish: equal means all has been drained.
        const produced = Atomics.load(words, PRODUCED);
        if (produced >= 0 && expected >= produced) break;
      }
      if (++polls === POLLS_PER_CLOCK_READ) {
        polls = 0;
        const now = performance.now();
        if (now > stopAt) Atomics.store(words, STOP, 1);
        if (now > stallAt) throw new Error(`ring producer silent for ${STALL_MS} ms`);
      }
    }
    return { records: expected, ms: performance.now() - start, mismatches };
  }
}

/** Mean cost of one performance.now(), nanoseconds. */
function clockNs(reads: number): number {
  const start = performance.now();
  let last = start;
  for (let i = 0; i < reads; i++) last = performance.now();
  return ((last - start) * 1e6) / reads;
}

function figure(runs: number[]): Figure {
  const sorted = [...runs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, runs };
}

/** Replies from the peer in arrival order; once the peer fails or exits, every later wait rejects. */
class PeerLink {
  private readonly inbox: PeerReply[] = [];
  private waiting: ((item: PeerReply | Error) => void) | undefined;
  private failure: Error | undefined;

  constructor(private readonly worker: Worker) {
    worker.on('message', (reply: PeerReply) => {
      this.deliver(reply.kind === 'failed' ? new Error(`floor peer: ${reply.message}`) : reply);
    });
    worker.on('error', (error: Error) => this.deliver(error));
    worker.on('exit', (code: number) => this.deliver(new Error(`floor peer exited with code ${code}`)));
  }

  send(command: PeerCommand): void {
    this.worker.postMessage(command);
  }

  /** The next reply, which must be of `kind` and come within STALL_MS. */
  async next<K extends PeerReply['kind']>(kind: K): Promise<Extract<PeerReply, { kind: K }>> {
    let item = this.inbox.shift() ?? this.failure;
    if (!item) {
      let timer: NodeJS.Timeout | undefined;
      item = await new Promise<PeerReply | Error>((resolve) => {
        this.waiting = resolve;
        timer = setTimeout(
          () => this.deliver(new Error(`floor peer sent no '${kind}' within ${STALL_MS} ms`)),
          STALL_MS,
        );
      });
      clearTimeout(timer);
    }
    if (item instanceof Error) throw item;
    if (item.kind !== kind) throw new Error(`floor peer answered '${item.kind}', expected '${kind}'`);
    return item as Extract<PeerReply, { kind: K }>;
  }

  private deliver(item: PeerReply | Error): void {
    if (item instanceof Error) this.failure ??= item;
    else this.inbox.push(item);
    const waiting = this.waiting;
    if (!waiting) return;
    this.waiting = undefined;
    waiting(this.inbox.shift() ?? (this.failure as Error));
  }
}

export function formatFloors(floors: Floors): string {
  const rows: [string, Figure, string, (v: number) => string][] = [
    ['spin round trip, mean', floors.spinUs, 'us', (v) => v.toFixed(3)],
    ['spin round trip, p50', floors.spinP50Us, 'us', (v) => v.toFixed(3)],
    ['spin round trip, p99', floors.spinP99Us, 'us', (v) => v.toFixed(3)],
    ['sleep round trip, mean', floors.sleepUs, 'us', (v) => v.toFixed(1)],
    ['sleep round trip, p50', floors.sleepP50Us, 'us', (v) => v.toFixed(1)],
    ['sleep round trip, p99', floors.sleepP99Us, 'us', (v) => v.toFixed(1)],
    [`ring, batches of ${floors.ringBatch}`, floors.ringRecordsPerS, 'M rec/s', (v) => (v / 1e6).toFixed(1)],
    ['performance.now()', floors.clockNs, 'ns', (v) => v.toFixed(0)],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  const lines = [
    `floors, ${floors.quick ? 'quick' : 'full'}: median of ${floors.repetitions} repetitions, then each ` +
      `(${(floors.elapsedMs / 1000).toFixed(1)} s, peer start-up ${floors.startupMs.toFixed(0)} ms)`,
  ];
  for (const [name, fig, unit, show] of rows) {
    lines.push(
      `${name.padEnd(width)}  ${show(fig.median).padStart(8)} ${unit.padEnd(7)}  ${fig.runs.map(show).join(' ')}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const floors = await measureFloors({ quick: !process.argv.includes('--full') });
  process.stdout.write(
    process.argv.includes('--json') ? `${JSON.stringify(floors)}\n` : formatFloors(floors),
  );
}
