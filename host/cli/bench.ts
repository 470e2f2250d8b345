/**
 * `ioasid-sandbox bench`: speed figures measured side by side in one process run, each the median of
 * several repetitions: the machine's floors (no sandbox logic), the sandbox's fault round trip and
 * throughput over each transport, translation, and scale; then the ratios between them and the
 * targets they are held to. Figures move from run to run on a shared machine; the ratios, taken
 * within one run, move less.
 */
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import type { TransportKind } from '../../shared/channel-side.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import { measureFloors } from '../bench/floors.ts';
import {
  faultCycle,
  faultRoundTrip,
  faultThroughput,
  launchManyIsolated,
  profileFaultPath,
  type StageProfile,
  type Throughput,
} from '../bench/sandbox-bench.ts';
import { Iommu } from '../iommu/iommu.ts';
import { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import { ACCESS_READ, newWalkResult, type Stage1Context, walkStage1 } from '../iommu/stage1-walker.ts';
import { VmIommu } from '../vmm/vm-iommu.ts';

export interface BenchFigure {
  name: string;
  unit: string;
  value: number;
}

/** A fault round trip's percentiles, microseconds. */
export interface RoundTrip {
  p50: number;
  p99: number;
}

/** The sandbox's fault figures over one transport. */
export interface FaultFigures {
  /** One group in flight, host and guest spinning between faults (postMessage: they cannot spin). */
  busyUs: RoundTrip;
  /** One group in flight, both sides asleep between faults. */
  idleUs: RoundTrip;
  /** Sustained faults per second, 64 groups in flight, one VM, 64 bytes of DMA per fault. */
  perS: number;
}

/** The ring transport's figures, with those only it has. */
export interface RingFaultFigures extends FaultFigures {
  /**
   * One descriptor in flight, busy: from the guest's submit to the guest seeing its completion
   * (the round trip a user feels; busyUs covers only the page request to the retry).
   */
  cycleUs: RoundTrip;
  /** As `perS`, with a 4 KiB DMA per fault: data moving and checked. */
  perS4k: number;
  /** Wall time the host's reactor spent in passes that found work, per fault, in the `perS` run. */
  hostBusyUsPerFault: number;
}

export interface Target {
  value: number;
  /** What it is held to, as the issue states it. */
  target: string;
  met: boolean;
}

export interface BenchReport {
  quick: boolean;
  repetitions: number;
  /** Translation figures by name (kept from the first bench). */
  figures: BenchFigure[];
  floor: { spinUs: number; sleepUs: number; ringRecordsPerS: number };
  /** The ring (SharedArrayBuffer) transport. */
  fault: RingFaultFigures;
  postMessage: { fault: FaultFigures };
  translation: { iotlbHitsPerS: number; nestedWalksPerS: number };
  scale: {
    /** Aggregate faults per second with 1, 4 and 16 VMs. */
    vms1PerS: number;
    vms4PerS: number;
    vms16PerS: number;
    /** VMs launched (16 MiB each) and the time until every one had a fault answered. */
    launchVms: number;
    launchMs: number;
    /** Resident memory per launched VM beyond the guest RAM it touched, MB. */
    rssPerVmMB: number;
  };
  ratios: Record<string, number>;
  targets: Record<string, Target>;
  /** With --profile: the host's time per fault by stage, from a run with the stage clock on. */
  profile?: StageProfile;
  /** Signs that the machine was busy with something else while the bench ran. */
  warnings: string[];
  elapsedMs: number;
}

const SID = 1;
const BASE_VA = 0x7e00_0000_0000;

/** Run `step` in batches until `ms` have passed; returns operations per second. */
function rate(ms: number, batch: number, step: (i: number) => void): number {
  let ops = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < batch; i++) step(ops + i);
    ops += batch;
    now = performance.now();
  }
  return (ops * 1000) / (now - start);
}

/**
 * A VM as the sandbox builds it: guest RAM registered as host memory, an IOAS mapping it at GPA 0,
 * a nested HWPT from the guest's vSTE, so every translation walks stage 1 through real stage-2
 * tables. The guest maps `pages` pages of a buffer.
 */
function nestedVm(iotlbEntries: number, pages: number) {
  const iommu = new Iommu({ iotlbEntries });
  const memory = GuestMemory.allocate(256);
  memory.touch();
  const spaces = new AddressSpaces(memory, new PageAllocator(memory));
  const ctx = spaces.installDevice(0, [1]);
  const table = spaces.table(1);
  for (let p = 0; p < pages; p++)
    table.map(BASE_VA + p * PAGE_SIZE, (p % (memory.pages - 4096)) * PAGE_SIZE + 0x100_0000);
  const vm = new VmIommu(new Smmuv3Ops(iommu), memory, [{ streamId: SID, hasPasids: true, stall: false }]);
  vm.installContexts([ctx]);
  return { iommu, memory, ctx, stage1: iommu.contextOf(SID) as Stage1Context };
}

/** Translation: IOTLB hits, misses that walk, full nested walks, and stage-1-only walks. */
export function translationFigures(ms: number): BenchFigure[] {
  const pages = 32768;
  const out = newWalkResult();
  let sink = 0;

  const hot = nestedVm(4096, pages);
  const hotPages = 1024;
  const hits = rate(ms, 4096, (i) => {
    hot.iommu.translate(SID, 1, BASE_VA + (i % hotPages) * PAGE_SIZE + 64, ACCESS_READ, out);
    sink += out.offset;
  });

  // A stride through 32768 pages with a 64-entry IOTLB: (nearly) every translation walks.
  const cold = nestedVm(64, pages);
  const misses = rate(ms, 4096, (i) => {
    cold.iommu.translate(SID, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });

  const nested = rate(ms, 4096, (i) => {
    walkStage1(cold.stage1, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });

  // The same guest tables reached by identity: what stage 2 costs on top.
  const identity = { memory: cold.memory, cdTableGpa: cold.ctx.cdTableGpa, cdLog2: cold.ctx.cdLog2 };
  const stage1Only = rate(ms, 4096, (i) => {
    walkStage1(identity, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });
  if (sink === -1) process.stdout.write('');
  return [
    { name: 'translate, IOTLB hit', unit: 'translations/s', value: Math.round(hits) },
    { name: 'translate, IOTLB miss (nested walk + fill)', unit: 'translations/s', value: Math.round(misses) },
    {
      name: 'full nested walk (CD + 4 levels, each through 4 S2 levels)',
      unit: 'walks/s',
      value: Math.round(nested),
    },
    { name: 'stage-1 walk, stage 2 by identity', unit: 'walks/s', value: Math.round(stage1Only) },
  ];
}

function roundTrip(
  runs: number,
  busy: boolean,
  transport: TransportKind,
  quick: boolean,
): Promise<RoundTrip> {
  return percentiles(runs, () => faultRoundTrip(busy, quick, transport));
}

async function percentiles(runs: number, measure: () => Promise<RoundTrip>): Promise<RoundTrip> {
  const samples: RoundTrip[] = [];
  for (let i = 0; i < runs; i++) samples.push(await measure());
  const mid = (pick: (r: RoundTrip) => number) => {
    const v = samples.map(pick).sort((a, b) => a - b);
    return v[(v.length - 1) >> 1];
  };
  return { p50: mid((r) => r.p50), p99: mid((r) => r.p99) };
}

/** The throughput run with the median faults per second, whole (its host time goes with it). */
async function medianThroughput(runs: number, measure: () => Promise<Throughput>): Promise<Throughput> {
  const samples: Throughput[] = [];
  for (let i = 0; i < runs; i++) samples.push(await measure());
  samples.sort((a, b) => a.perS - b.perS);
  return samples[(samples.length - 1) >> 1];
}

async function faultFigures(runs: number, transport: TransportKind, quick: boolean): Promise<FaultFigures> {
  return {
    busyUs: await roundTrip(runs, true, transport, quick),
    idleUs: await roundTrip(runs, false, transport, quick),
    perS: (await medianThroughput(runs, () => faultThroughput(1, quick, transport))).perS,
  };
}

async function ringFaultFigures(runs: number, quick: boolean): Promise<RingFaultFigures> {
  const pure = await medianThroughput(runs, () => faultThroughput(1, quick, 'sab', 64));
  return {
    busyUs: await roundTrip(runs, true, 'sab', quick),
    idleUs: await roundTrip(runs, false, 'sab', quick),
    perS: pure.perS,
    cycleUs: await percentiles(runs, () => faultCycle(quick)),
    perS4k: (await medianThroughput(runs, () => faultThroughput(1, quick, 'sab', 4096))).perS,
    hostBusyUsPerFault: pure.hostBusyUsPerFault,
  };
}

/** Three significant digits: a ratio is never rounded to 0. */
const significant = (v: number) => Number(v.toPrecision(3));

export async function runBench(quick: boolean, profile = false): Promise<BenchReport> {
  const started = performance.now();
  const runs = quick ? 3 : 5;
  const floors = await measureFloors({ quick });
  const ring = await ringFaultFigures(runs, quick);
  const posted = await faultFigures(runs, 'postmessage', quick);
  const figures = translationFigures(quick ? 150 : 1000);
  const [hit, miss, nested, stage1Only] = figures.map((f) => f.value);
  const vms1PerS = ring.perS;
  const vms4PerS = (await medianThroughput(quick ? 1 : 3, () => faultThroughput(4, quick, 'sab'))).perS;
  const vms16PerS = (await medianThroughput(quick ? 1 : 3, () => faultThroughput(16, quick, 'sab'))).perS;
  const launch = await launchManyIsolated(quick ? 16 : 64);
  const stages = profile ? await profileFaultPath(quick) : undefined;
  const floor = {
    spinUs: floors.spinUs.median,
    sleepUs: floors.sleepUs.median,
    ringRecordsPerS: Math.round(floors.ringRecordsPerS.median),
  };
  const ratios = {
    'IOTLB hit / miss': significant(hit / miss),
    'stage-1-only walk / nested walk': significant(stage1Only / nested),
    busyOverSpin: significant(ring.busyUs.p50 / floor.spinUs),
    cycleOverSpin: significant(ring.cycleUs.p50 / floor.spinUs),
    idleOverSleep: significant(ring.idleUs.p50 / floor.sleepUs),
    postMessageOverRingLatency: significant(posted.busyUs.p50 / ring.busyUs.p50),
    ringOverPostMessageThroughput: significant(ring.perS / posted.perS),
    vms16Over1: significant(vms16PerS / vms1PerS),
  };
  const target = (value: number, text: string, met: boolean): Target => ({ value, target: text, met });
  const launchTarget =
    launch.vms === 64 ? 'launched and serving within 3000 ms' : 'measured on 64 VMs (full bench only)';
  return {
    quick,
    repetitions: runs,
    figures,
    floor,
    fault: ring,
    postMessage: { fault: posted },
    translation: { iotlbHitsPerS: hit, nestedWalksPerS: nested },
    scale: {
      vms1PerS,
      vms4PerS,
      vms16PerS,
      launchVms: launch.vms,
      launchMs: launch.launchMs,
      rssPerVmMB: launch.rssPerVmMB,
    },
    ratios,
    ...(stages ? { profile: stages } : {}),
    targets: {
      busyOverSpin: target(ratios.busyOverSpin, '<= 10', ratios.busyOverSpin <= 10),
      idleOverSleep: target(ratios.idleOverSleep, '<= 1.5', ratios.idleOverSleep <= 1.5),
      postMessageOverRingLatency: target(
        ratios.postMessageOverRingLatency,
        '>= 20',
        ratios.postMessageOverRingLatency >= 20,
      ),
      ringOverPostMessageThroughput: target(
        ratios.ringOverPostMessageThroughput,
        '>= 3',
        ratios.ringOverPostMessageThroughput >= 3,
      ),
      faultPerS: target(ring.perS, '>= 1,000,000', ring.perS >= 1_000_000),
      cycleOverSpin: target(ratios.cycleOverSpin, '<= 20', ratios.cycleOverSpin <= 20),
      faultPerS4k: target(ring.perS4k, '>= 300,000', ring.perS4k >= 300_000),
      hostBusyUsPerFault: target(ring.hostBusyUsPerFault, '<= 1', ring.hostBusyUsPerFault <= 1),
      iotlbHitsPerS: target(hit, '>= 50,000,000', hit >= 50_000_000),
      nestedWalksPerS: target(nested, '>= 5,000,000', nested >= 5_000_000),
      vms16Over1: target(ratios.vms16Over1, '>= 0.7', ratios.vms16Over1 >= 0.7),
      launchMs: target(launch.launchMs, launchTarget, launch.vms === 64 && launch.launchMs <= 3000),
      rssPerVmMB: target(launch.rssPerVmMB, '<= 25', launch.rssPerVmMB > 0 && launch.rssPerVmMB <= 25),
    },
    warnings: [
      ...(floor.spinUs > floor.sleepUs
        ? [
            `the spin round trip (${floor.spinUs} us) was slower than the blocking one (${floor.sleepUs} us): ` +
              'both threads could not run at once, so the cores were busy elsewhere; spin-based figures and ratios are not meaningful in this run',
          ]
        : []),
      ...(launch.rssPerVmMB <= 0
        ? ['resident memory fell while the VMs launched: rssPerVmMB is not meaningful in this run']
        : []),
    ],
    elapsedMs: Math.round(performance.now() - started),
  };
}

export function formatBench(report: BenchReport): string {
  const rt = (r: RoundTrip) => `p50 ${r.p50} us, p99 ${r.p99} us`;
  const n = (v: number) => v.toLocaleString('en-US');
  const rows: [string, string][] = [
    ['floor.spinUs', `${report.floor.spinUs.toFixed(3)} us`],
    ['floor.sleepUs', `${report.floor.sleepUs.toFixed(1)} us`],
    ['floor.ringRecordsPerS', n(report.floor.ringRecordsPerS)],
    ['fault.busyUs (ring)', rt(report.fault.busyUs)],
    ['fault.idleUs (ring)', rt(report.fault.idleUs)],
    ['fault.cycleUs (ring)', rt(report.fault.cycleUs)],
    ['fault.perS (ring, 64 B per fault)', n(report.fault.perS)],
    ['fault.perS4k (ring, 4 KiB per fault)', n(report.fault.perS4k)],
    ['fault.hostBusyUsPerFault', `${report.fault.hostBusyUsPerFault} us`],
    ['postMessage.fault.busyUs', rt(report.postMessage.fault.busyUs)],
    ['postMessage.fault.idleUs', rt(report.postMessage.fault.idleUs)],
    ['postMessage.fault.perS', n(report.postMessage.fault.perS)],
    ['translation.iotlbHitsPerS', n(report.translation.iotlbHitsPerS)],
    ['translation.nestedWalksPerS', n(report.translation.nestedWalksPerS)],
    [
      'scale.vms1PerS / vms4PerS / vms16PerS',
      `${n(report.scale.vms1PerS)} / ${n(report.scale.vms4PerS)} / ${n(report.scale.vms16PerS)}`,
    ],
    [`scale.launchMs (${report.scale.launchVms} VMs)`, `${n(report.scale.launchMs)} ms`],
    ['scale.rssPerVmMB', `${report.scale.rssPerVmMB} MB`],
  ];
  for (const f of report.figures) rows.push([f.name, `${n(f.value)} ${f.unit}`]);
  for (const [name, value] of Object.entries(report.ratios)) {
    const t = report.targets[name];
    rows.push([`ratio ${name}`, `${value}${t ? ` (target ${t.target}: ${t.met ? 'met' : 'NOT met'})` : ''}`]);
  }
  for (const name of [
    'faultPerS',
    'faultPerS4k',
    'hostBusyUsPerFault',
    'iotlbHitsPerS',
    'nestedWalksPerS',
    'launchMs',
    'rssPerVmMB',
  ]) {
    const t = report.targets[name];
    rows.push([`target ${name}`, `${n(t.value)} (${t.target}: ${t.met ? 'met' : 'NOT met'})`]);
  }
  if (report.profile) {
    const p = report.profile;
    rows.push([
      'profile (host busy time per fault, stage clock on)',
      `${p.hostBusyUsPerFault} us over ${n(p.faults)} faults (${n(p.perS)}/s while profiled)`,
    ]);
    for (const [stage, { usPerFault, share }] of Object.entries(p.stages)) {
      rows.push([`  ${stage}`, `${usPerFault} us (${(share * 100).toFixed(1)}%)`]);
    }
  }
  for (const warning of report.warnings) rows.push(['warning', warning]);
  const width = Math.max(...rows.map(([name]) => name.length));
  const head = `bench${report.quick ? ' --quick' : ''}: median of ${report.repetitions} repetitions (${(report.elapsedMs / 1000).toFixed(0)} s)`;
  return `${[head, ...rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`)].join('\n')}\n`;
}
