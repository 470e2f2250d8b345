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
import { Sandbox } from '../vmm/sandbox.ts';
import { parseTopology, type Topology } from '../vmm/topology.ts';

export interface Percentiles {
  p50: number;
  p99: number;
}

const quiet = makeLogger({ side: 'bench' }).child({});
quiet.level = 'silent';

/** One VM per entry; `spin` applies to host and guest alike. */
function stormTopology(
  vms: number,
  pages: number,
  queueDepth: number,
  spinNs: number,
  transport: TransportKind,
): Topology {
  const list = Array.from(
    { length: vms },
    (_, i) => `  - name: vm${i}
    memoryMiB: 64
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1], priCredits: ${Math.max(32, queueDepth)} }]
    queues: { priqLog2: 8, evtqLog2: 6, cmdqLog2: 8, dmaQueueLog2: 7 }
    workload: { kind: fault-storm, pages: ${pages}, seed: ${i + 1}, queueDepth: ${queueDepth} }`,
  ).join('\n');
  return parseTopology(
    `name: bench\ntransport: ${transport}\nspinNs: ${spinNs}\nhostSpinNs: ${spinNs}\nvms:\n${list}\n`,
  );
}

/**
 * Launch, time the workloads from start to done, stop. Done is judged from the host's own counters
 * (every descriptor of a fault storm completed), so no control-plane call runs inside the window.
 */
async function timedRun(topology: Topology): Promise<{ ms: number; faults: number; sandbox: Sandbox }> {
  const sandbox = new Sandbox(topology, { log: quiet, graceMs: 500 });
  await sandbox.launch();
  const start = performance.now();
  // A cheap counter: polling the whole report every millisecond would steal the host's thread.
  const done = () => sandbox.dmaCompleted().every((n, i) => n >= topology.vms[i].workload.pages);
  try {
    while (!done()) await new Promise((resolve) => setTimeout(resolve, 1));
  } finally {
    await sandbox.stop();
  }
  const ms = performance.now() - start;
  const report = sandbox.report();
  if (!report.invariants.ok || report.faults.lost > 0)
    throw new Error(`bench run broke an invariant: ${JSON.stringify(report.invariants.counts)}`);
  return { ms, faults: report.faults.raised, sandbox };
}

/** Round trip with one group in flight; `busy`: both sides spin instead of sleeping. */
export async function faultRoundTrip(
  busy: boolean,
  quick: boolean,
  transport: TransportKind = 'sab',
): Promise<Percentiles> {
  const { sandbox } = await timedRun(
    stormTopology(1, quick ? 1500 : 8000, 1, busy ? 1_000_000 : 0, transport),
  );
  const { p50, p99 } = sandbox.report().latencyUs;
  return { p50, p99 };
}

/** Faults per second, aggregate over `vms` VMs, many groups in flight in each. */
export async function faultThroughput(
  vms: number,
  quick: boolean,
  transport: TransportKind = 'sab',
): Promise<number> {
  const pages = Math.round((quick ? 12_000 : 16_000) / vms);
  const { ms, faults } = await timedRun(stormTopology(vms, pages, 64, 0, transport));
  return Math.round((faults * 1000) / ms);
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
