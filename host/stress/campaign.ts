/**
 * A stress campaign: independent seeded runs (run-worker.ts) on a piscina pool, judged one by one
 * and summed into one report. A shard i/n runs the campaign's indices with index % n === i - 1, so
 * the n shards of a campaign together run each of its runs exactly once, and their reports merge by
 * adding the counts and concatenating `failures`.
 */
import { availableParallelism } from 'node:os';
import { Presets, SingleBar } from 'cli-progress';
import { Piscina } from 'piscina';
import { MISBEHAVIOURS, type Misbehaviour } from '../../shared/control.ts';
import type { Violation } from '../vmm/invariants.ts';
import { TEARDOWN_OPS, type TeardownOp } from '../vmm/topology.ts';
import { replayCommand, runSeed } from './generate.ts';
import { DEFAULT_RUN_DURATION_MS, hostException, type RunResult, type RunTask } from './run-worker.ts';

export interface Shard {
  /** 1-based. */
  index: number;
  count: number;
}

export interface CampaignOptions {
  runs: number;
  seed: number;
  /** Pool threads (default: os.availableParallelism()). Each run spawns its own guest threads. */
  workers?: number;
  shard?: Shard;
  /** Cap on each run's workloads (default 5 s); a run still going this much later is ended. */
  durationMs?: number;
  /** Called as each run ends, in completion order. */
  onRun?: (result: RunResult, done: number, total: number) => void;
}

export interface CampaignFailure {
  seed: number;
  replay: string;
  violations: Violation[];
  /** Index of the run in its campaign, and every violation by rule. */
  index: number;
  counts: Record<string, number>;
}

export interface CampaignReport {
  runs: number;
  passed: number;
  failed: number;
  failures: CampaignFailure[];
  /** Runs in which a VM with this misbehaviour had a fault to mishandle (or crashed). */
  misbehaviours: Record<Misbehaviour, number>;
  /** Runs whose topology has a VM with this misbehaviour. */
  misbehavioursDrawn: Record<Misbehaviour, number>;
  /** Runs with a VM into which this teardown operation was injected. */
  teardowns: Record<TeardownOp, number>;
  /** Runs that set a response deadline on every group (iopfTimeoutMs). */
  deadlines: number;
  /** Groups answered INVALID at their deadline, over all runs. */
  iopfTimeouts: number;
  /** Page-request groups raised over all runs (each run's report `faults.raised`). */
  faults: number;
  /** `faults` per second of the campaign's wall time (`durationMs`). */
  faultsPerS: number;
  /** Runs whose queue records travelled by postMessage. */
  postMessageRuns: number;
  /** Well-behaved VMs, over all runs, whose workload did not finish within the cap. */
  unfinished: number;
  seed: number;
  shard: string | null;
  workers: number;
  /** Mean and longest run (the sandbox's own durationMs). */
  runMs: { mean: number; max: number };
  durationMs: number;
}

/** Runs past their cap by this much are ended by the pool (a hung host, not a slow guest). */
const HANG_GRACE_MS = 30_000;

/** The campaign indices a shard runs (all of them without a shard). */
export function shardIndices(runs: number, shard?: Shard): number[] {
  const all = Array.from({ length: runs }, (_, i) => i);
  return shard ? all.filter((i) => i % shard.count === shard.index - 1) : all;
}

const POOL_ENTRY = new URL(
  import.meta.url.endsWith('.ts') ? './run-worker.mjs' : './run-worker.js',
  import.meta.url,
).href;

export async function runCampaign(options: CampaignOptions): Promise<CampaignReport> {
  const started = performance.now();
  const indices = shardIndices(options.runs, options.shard);
  const workers = Math.max(1, Math.min(options.workers ?? availableParallelism(), indices.length || 1));
  const durationMs = options.durationMs ?? DEFAULT_RUN_DURATION_MS;
  const pool = new Piscina<RunTask, RunResult>({
    filename: POOL_ENTRY,
    minThreads: workers,
    maxThreads: workers,
    // Runs leave no timers behind, but a frozen idle worker would stall any that did.
    atomics: 'disabled',
    // Runs log nothing unless asked (their guests inherit this environment).
    env: { ...process.env, LOG_LEVEL: process.env.STRESS_LOG_LEVEL ?? 'silent' },
  });
  const results = new Array<RunResult>(indices.length);
  let done = 0;
  let next = 0;
  const runOneInPool = async (slot: number): Promise<void> => {
    const seed = runSeed(options.seed, indices[slot]);
    const hangMs = durationMs + HANG_GRACE_MS;
    try {
      results[slot] = await pool.run({ seed, durationMs }, { signal: AbortSignal.timeout(hangMs) });
    } catch (error) {
      // A pool worker that died or hung is a failed run, never a failed campaign.
      const hung = (error as Error).name === 'AbortError';
      results[slot] = hostException(
        seed,
        hung ? `no result ${hangMs} ms after the run started; the pool ended its worker` : error,
        hung ? 'run hung' : 'pool worker died',
      );
    }
    options.onRun?.(results[slot], ++done, indices.length);
  };
  // Hand the pool one run per thread at a time, so a run's hang timer starts when the run does.
  const lane = async (): Promise<void> => {
    while (next < indices.length) await runOneInPool(next++);
  };
  try {
    await Promise.all(Array.from({ length: workers }, lane));
  } finally {
    await pool.destroy();
  }
  return summarise(options, indices, results, workers, performance.now() - started);
}

function summarise(
  options: CampaignOptions,
  indices: number[],
  results: RunResult[],
  workers: number,
  elapsed: number,
): CampaignReport {
  const zero = () => Object.fromEntries(MISBEHAVIOURS.map((m) => [m, 0])) as Record<Misbehaviour, number>;
  const misbehaviours = zero();
  const misbehavioursDrawn = zero();
  for (const r of results) {
    for (const m of r.exercised) misbehaviours[m]++;
    for (const m of r.misbehaviours) misbehavioursDrawn[m]++;
  }
  const teardowns = Object.fromEntries(TEARDOWN_OPS.map((op) => [op, 0])) as Record<TeardownOp, number>;
  for (const r of results) for (const op of new Set(r.teardowns)) teardowns[op]++;
  const failures = results.flatMap((r, slot) =>
    r.passed
      ? []
      : [
          {
            seed: r.seed,
            replay: replayCommand(r.seed),
            violations: r.violations,
            index: indices[slot],
            counts: r.counts,
          },
        ],
  );
  const runMs = results.map((r) => r.durationMs);
  const faults = results.reduce((n, r) => n + r.faults, 0);
  const durationMs = Math.round(elapsed);
  return {
    runs: results.length,
    passed: results.length - failures.length,
    failed: failures.length,
    failures,
    misbehaviours,
    misbehavioursDrawn,
    teardowns,
    deadlines: results.filter((r) => r.deadline).length,
    iopfTimeouts: results.reduce((n, r) => n + r.iopfTimeouts, 0),
    faults,
    faultsPerS: durationMs > 0 ? Math.round((faults * 1000) / durationMs) : 0,
    postMessageRuns: results.filter((r) => r.postMessage).length,
    unfinished: results.reduce((n, r) => n + r.unfinished, 0),
    seed: options.seed,
    shard: options.shard ? `${options.shard.index}/${options.shard.count}` : null,
    workers,
    runMs: {
      mean: runMs.length ? Math.round(runMs.reduce((a, b) => a + b, 0) / runMs.length) : 0,
      max: Math.max(0, ...runMs),
    },
    durationMs,
  };
}

/** A progress bar on stderr, ticked by `onRun`. */
export function progressBar(total: number): { onRun: CampaignOptions['onRun']; stop: () => void } {
  const bar = new SingleBar(
    {
      format:
        'stress |{bar}| {value}/{total} runs | {failed} failed | {duration_formatted} (eta {eta_formatted})',
      stream: process.stderr,
      hideCursor: true,
    },
    Presets.shades_classic,
  );
  let failed = 0;
  bar.start(total, 0, { failed });
  return {
    onRun: (result, done) => {
      if (!result.passed) failed++;
      bar.update(done, { failed });
    },
    stop: () => bar.stop(),
  };
}

/** The human-readable report. */
export function formatCampaign(r: CampaignReport): string {
  const lines = [
    `stress: ${r.runs} run(s) of campaign seed ${r.seed}${r.shard ? ` (shard ${r.shard})` : ''}, ${r.passed} passed, ${r.failed} failed, ${(r.durationMs / 1000).toFixed(1)} s on ${r.workers} worker(s)`,
    `misbehaviours exercised (runs): ${MISBEHAVIOURS.map((m) => `${m} ${r.misbehaviours[m]}`).join(', ')}`,
    `teardowns injected (runs): ${TEARDOWN_OPS.map((op) => `${op} ${r.teardowns[op]}`).join(', ')}`,
    `response deadlines: ${r.deadlines} run(s), ${r.iopfTimeouts} group(s) expired; ${r.postMessageRuns} run(s) over postMessage`,
    `faults: ${r.faults} page-request group(s) raised, ${r.faultsPerS.toLocaleString('en-US')} per second of the campaign`,
  ];
  if (r.unfinished > 0)
    lines.push(`${r.unfinished} well-behaved VM(s) did not finish their workload within the cap`);
  for (const f of r.failures) {
    lines.push(`FAILED run ${f.index} seed ${f.seed}: ${f.replay}`);
    for (const v of f.violations)
      lines.push(
        `  ${v.rule}${v.vm ? ` [${v.vm}${v.device ? `/${v.device}` : ''}]` : ''}: ${v.detail.replace(/\n/g, '\n    ')}`,
      );
  }
  return `${lines.join('\n')}\n`;
}
