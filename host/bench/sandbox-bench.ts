/**
 * The sandbox's own figures, each a whole topology on real worker threads: the fault round trip
 * with one group in flight (busy: host and guest spin; idle: both sleep between faults), sustained
 * fault throughput with many groups in flight, aggregate throughput with 1, 4 and 16 VMs, and the
 * time to launch 64 VMs until each has handled its first fault, with the resident memory it took.
 *
 * A round trip is the latency histogram's: from the device's page request to the retry's
 * successful translation. Throughput counts page-request groups between the workloads' start and
 * their end, launch excluded.
 */
import { spawn } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { TransportKind } from '../../shared/channel-side.ts';
import { makeLogger } from '../../shared/logger.ts';
import { STAGE_NAMES, type StageName, stageClock } from '../../shared/stage-clock.ts';
import { Sandbox } from '../vmm/sandbox.ts';
import type { Topology } from '../vmm/topology.ts';
import { parseTopology } from '../vmm/topology-file.ts';

export interface Percentiles {
  p50: number;
  p99: number;
}

// Silent whatever LOG_LEVEL says: this runs at import, before the CLI has checked LOG_LEVEL.
const quiet = makeLogger({ side: 'bench' }, 'silent');

/**
 * One VM per entry; `spin` applies to host and guest alike. Each descriptor reads `dmaBytes` of
 * its page (64: the pure fault path; 4096: a whole page of data moved and checked per fault).
 */
function stormTopology(
  vms: number,
  pages: number,
  queueDepth: number,
  spinNs: number,
  transport: TransportKind,
  dmaBytes = 4096,
): Topology {
  // Room for the buffer (a page per fault) and its page tables.
  const memoryMiB = Math.max(64, Math.ceil((pages * 4096 * 1.05) / 2 ** 20) + 16);
  const list = Array.from(
    { length: vms },
    (_, i) => `  - name: vm${i}
    memoryMiB: ${memoryMiB}
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1], priCredits: ${Math.max(32, queueDepth)} }]
    queues: { priqLog2: 8, evtqLog2: 6, cmdqLog2: 8, dmaQueueLog2: 7 }
    workload: { kind: fault-storm, pages: ${pages}, seed: ${i + 1}, queueDepth: ${queueDepth}, dmaBytes: ${dmaBytes} }`,
  ).join('\n');
  return parseTopology(
    `name: bench\ntransport: ${transport}\nspinNs: ${spinNs}\nhostSpinNs: ${spinNs}\nvms:\n${list}\n`,
  );
}

/**
 * Launch, time the workloads from start to done, stop. Done is judged from the host's own counters
 * (every descriptor of a fault storm completed), so no control-plane call runs inside the window.
 */
async function timedRun(
  topology: Topology,
  profile = false,
): Promise<{ ms: number; faults: number; hostBusyMs: number; sandbox: Sandbox }> {
  const sandbox = new Sandbox(topology, { log: quiet, graceMs: 500 });
  await sandbox.launch();
  if (profile) stageClock.enable();
  const start = performance.now();
  const busyBefore = sandbox.reactorStats().busyMs;
  // A cheap counter: polling the whole report every millisecond would steal the host's thread.
  const done = () => sandbox.dmaCompleted().every((n, i) => n >= topology.vms[i].workload.pages);
  let ms = 0;
  let hostBusyMs = 0;
  try {
    while (!done()) await new Promise((resolve) => setTimeout(resolve, 1));
    ms = performance.now() - start;
    hostBusyMs = sandbox.reactorStats().busyMs - busyBefore;
  } finally {
    stageClock.disable();
    await sandbox.stop();
  }
  const report = sandbox.report();
  if (!report.invariants.ok || report.faults.lost > 0)
    throw new Error(`bench run broke an invariant: ${JSON.stringify(report.invariants.counts)}`);
  return { ms, faults: report.faults.raised, hostBusyMs, sandbox };
}

/**
 * The DMA cycle a user feels, one descriptor in flight, host and guest spinning: from the guest's
 * submit to the guest seeing the completion (the guest's own histogram, in the same run as
 * `faultRoundTrip`'s window, which covers only the page request to the retry).
 */
export async function faultCycle(quick: boolean): Promise<Percentiles> {
  const { sandbox } = await timedRun(stormTopology(1, quick ? 4000 : 8000, 1, 1_000_000, 'sab'));
  const { p50, p99 } = sandbox.report().vms[0].dmaCycleUs;
  return { p50, p99 };
}

/** Round trip with one group in flight; `busy`: both sides spin instead of sleeping. */
export async function faultRoundTrip(
  busy: boolean,
  quick: boolean,
  transport: TransportKind = 'sab',
): Promise<Percentiles> {
  const { sandbox } = await timedRun(
    stormTopology(1, quick ? 4000 : 8000, 1, busy ? 1_000_000 : 0, transport),
  );
  const { p50, p99 } = sandbox.report().latencyUs;
  return { p50, p99 };
}

export interface Throughput {
  perS: number;
  /** Wall time the host's reactor spent in passes that found work, per fault, microseconds. */
  hostBusyUsPerFault: number;
}

/**
 * Faults per second, aggregate over `vms` VMs, 64 groups in flight in each, each fault reading
 * `dmaBytes` of its page.
 */
export async function faultThroughput(
  vms: number,
  quick: boolean,
  transport: TransportKind = 'sab',
  dmaBytes = 64,
): Promise<Throughput> {
  const pages = Math.round((quick ? 80_000 : 100_000) / vms);
  const { ms, faults, hostBusyMs } = await timedRun(
    stormTopology(vms, pages, 64, 20_000, transport, dmaBytes),
  );
  return {
    perS: Math.round((faults * 1000) / ms),
    hostBusyUsPerFault: Number(((hostBusyMs * 1000) / faults).toPrecision(3)),
  };
}

export interface StageProfile {
  /** Page-request groups in the profiled run, and its faults per second (slower: the clock runs). */
  faults: number;
  perS: number;
  /** The reactor's busy time per fault, microseconds, and each stage's part of it. */
  hostBusyUsPerFault: number;
  stages: Record<StageName, { usPerFault: number; share: number }>;
}

/**
 * The `perS` run (one VM, 64 groups in flight, 64 bytes per fault) with the stage clock on: where
 * the host's busy time per fault goes (shared/stage-clock.ts).
 */
export async function profileFaultPath(quick: boolean): Promise<StageProfile> {
  const pages = quick ? 80_000 : 100_000;
  const { ms, faults } = await timedRun(stormTopology(1, pages, 64, 20_000, 'sab', 64), true);
  const { totalMs, ms: byStage } = stageClock.summary();
  const perFault = (v: number) => Number(((v * 1000) / faults).toPrecision(3));
  const stages = {} as StageProfile['stages'];
  for (const name of STAGE_NAMES) {
    stages[name] = {
      usPerFault: perFault(byStage[name]),
      share: totalMs > 0 ? Number((byStage[name] / totalMs).toFixed(3)) : 0,
    };
  }
  return { faults, perS: Math.round((faults * 1000) / ms), hostBusyUsPerFault: perFault(totalMs), stages };
}

export interface LaunchFigures {
  vms: number;
  /** From the first spawn until every VM has had a fault answered and its DMA completed. */
  launchMs: number;
  /**
   * Resident memory the launched VMs added, per VM, beyond the guest RAM they touched: each guest
   * writes every page of its RAM at boot (GuestMemory.touch, so that first-touch costs stay out of
   * fault latencies), so all of it is resident and is taken off. Measured after a full GC on both
   * sides of the launch.
   */
  rssPerVmMB: number;
  guestRamMiB: number;
}

/** A full garbage collection, so that RSS before and after a launch compare like with like. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

const GUEST_RAM_MIB = 16;

const LAUNCH_CHILD = new URL(
  import.meta.url.endsWith('.ts') ? './launch-child.mjs' : './launch-child.js',
  import.meta.url,
);

/** launchMany in a fresh process (launch-child.ts), so that its resident memory is its own. */
export function launchManyIsolated(vms: number): Promise<LaunchFigures> {
  // The earlier figures' guest RAM (hundreds of MB of SharedArrayBuffers) goes back to the system
  // first: held by this process, it slowed the child's launch of 64 VMs from ~2.3 s to 4-5 s.
  collectGarbage();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LAUNCH_CHILD.pathname, String(vms)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`the launch figure's process exited with ${code}`));
      else resolve(JSON.parse(out) as LaunchFigures);
    });
  });
}

/** Launch `vms` VMs of 16 MiB; each pages in one page by a page request. */
export async function launchMany(vms: number): Promise<LaunchFigures> {
  const list = Array.from(
    { length: vms },
    (_, i) =>
      `  - { name: vm${i}, memoryMiB: ${GUEST_RAM_MIB}, viommu: ${i % 2 ? 'vtd' : 'smmuv3'}, devices: [{ name: d, pri: true, pasids: [1] }], workload: { kind: sva-stream, pages: 1, seed: ${i + 1} } }`,
  ).join('\n');
  const topology = parseTopology(`name: launch\nvms:\n${list}\n`);
  collectGarbage();
  const rssBefore = process.memoryUsage().rss;
  const start = performance.now();
  const sandbox = new Sandbox(topology, { log: quiet, graceMs: 500 });
  await sandbox.launch();
  // Serving: each VM's one DMA completed, its page fault answered and retried. A cheap counter,
  // polled every turn of the event loop.
  while (!sandbox.dmaCompleted().every((n) => n > 0)) await new Promise((resolve) => setImmediate(resolve));
  const launchMs = performance.now() - start;
  collectGarbage();
  const rss = process.memoryUsage().rss - rssBefore;
  await sandbox.stop();
  return {
    vms,
    launchMs: Math.round(launchMs),
    rssPerVmMB: Math.round((rss / vms - GUEST_RAM_MIB * 2 ** 20) / 1e5) / 10,
    guestRamMiB: GUEST_RAM_MIB,
  };
}
