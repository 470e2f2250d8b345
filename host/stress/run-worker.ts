/**
 * One stress run: draw the seed's topology, run it, and judge it. The piscina task (default export,
 * loaded through run-worker.mjs under tsx) and usable in-process (`runOne`).
 */
import type { Misbehaviour } from '../../shared/control.ts';
import { makeLogger } from '../../shared/logger.ts';
import type { Violation } from '../vmm/invariants.ts';
import type { RunReport } from '../vmm/report.ts';
import { runTopology } from '../vmm/sandbox.ts';
import type { TeardownOp, Topology } from '../vmm/topology.ts';
import { drawTopology } from './generate.ts';

/** Misbehaviours after which the host may legitimately declare the guest dead. */
export const MAY_CRASH: readonly Misbehaviour[] = ['crash-mid-fault', 'hang', 'never-respond'];
/** Violations kept per run (the report keeps up to 100; every one is counted in `counts`). */
const KEEP_VIOLATIONS = 20;
export const DEFAULT_RUN_DURATION_MS = 5_000;

export interface RunTask {
  seed: number;
  /** Cap on the workloads' run time (runTopology's durationMs). */
  durationMs?: number;
}

/** Per-VM workload counts: a replay of the seed must give the same for a well-behaved VM. */
export interface VmCounts {
  name: string;
  misbehave: Misbehaviour[];
  /** The teardown operation injected into the VM, if any (its counts then depend on timing). */
  teardown?: TeardownOp;
  workloadDone: boolean;
  crashed: boolean;
  dmaOps: number;
  dmaCompleted: number;
  pageRequests: number;
  bytesVerified: number;
}

export interface RunResult {
  seed: number;
  passed: boolean;
  violations: Violation[];
  /** Every violation by rule (including those past the kept ones). */
  counts: Record<string, number>;
  /** Misbehaviours drawn for some VM, and those whose VM had a fault to mishandle (or crashed). */
  misbehaviours: Misbehaviour[];
  exercised: Misbehaviour[];
  /** Teardown operations injected into some VM, and whether the run set response deadlines. */
  teardowns: TeardownOp[];
  deadline: boolean;
  /** Groups answered INVALID at their deadline. */
  iopfTimeouts: number;
  /** Page-request groups the run's devices raised (the report's `faults.raised`). */
  faults: number;
  /** The run's queue records travelled by postMessage instead of shared rings. */
  postMessage: boolean;
  vms: VmCounts[];
  /** Well-behaved VMs whose workload did not finish within the duration cap (not a failure). */
  unfinished: number;
  durationMs: number;
}

/** Judge a run: invariants hold, nothing lost, no well-behaved guest died, nothing left behind. */
export function judge(seed: number, topology: Topology, report: RunReport): RunResult {
  const violations = [...report.invariants.violations];
  const counts = { ...report.invariants.counts };
  const add = (v: Violation) => {
    violations.push(v);
    counts[v.rule] = (counts[v.rule] ?? 0) + 1;
  };
  if (report.faults.lost > 0)
    add({ rule: 'faults-lost', detail: `${report.faults.lost} fault(s) lost (report.faults.lost)` });
  const misbehaviours = new Set<Misbehaviour>();
  const exercised = new Set<Misbehaviour>();
  let unfinished = 0;
  const vms = report.vms.map((vm, i): VmCounts => {
    const misbehave = topology.vms[i].misbehave;
    for (const m of misbehave) misbehaviours.add(m);
    const faults = vm.faultsDelivered + vm.eventsDelivered;
    if (faults > 0 || vm.crashed) for (const m of misbehave) exercised.add(m);
    const teardown = topology.vms[i].teardown?.op;
    if (vm.crashed && teardown !== 'guest-death' && !misbehave.some((m) => MAY_CRASH.includes(m)))
      add({
        rule: 'vm-crashed',
        vm: vm.name,
        detail: `${misbehave.length ? `misbehave [${misbehave.join(', ')}]` : 'a well-behaved guest'} crashed: ${vm.crashReason ?? 'no reason given'}`,
      });
    if (vm.iommufdObjects > 0)
      add({
        rule: 'iommufd-objects-leaked',
        vm: vm.name,
        detail: `${vm.iommufdObjects} object(s) alive in the VM's /dev/iommu after the run`,
      });
    if (misbehave.length === 0 && !teardown && !vm.workloadDone && !vm.crashed) unfinished++;
    return {
      name: vm.name,
      misbehave,
      ...(teardown ? { teardown } : {}),
      workloadDone: vm.workloadDone,
      crashed: vm.crashed,
      dmaOps: vm.dmaOps,
      dmaCompleted: vm.dmaCompleted,
      pageRequests: vm.pageRequests,
      bytesVerified: vm.bytesVerified,
    };
  });
  return {
    seed,
    passed: Object.keys(counts).length === 0,
    violations: violations.slice(0, KEEP_VIOLATIONS).map(trimViolation),
    counts,
    misbehaviours: [...misbehaviours],
    exercised: [...exercised],
    teardowns: topology.vms.flatMap((vm) => (vm.teardown ? [vm.teardown.op] : [])),
    deadline: topology.iopfTimeoutMs !== undefined,
    iopfTimeouts: report.faults.iopfTimeouts,
    faults: report.faults.raised,
    postMessage: topology.transport === 'postmessage',
    vms,
    unfinished,
    durationMs: report.durationMs,
  };
}

/** The first line of a stack is enough to find it again; the replay gives the rest. */
function trimViolation(v: Violation): Violation {
  const lines = v.detail.split('\n');
  const detail = lines.length > 3 ? `${lines.slice(0, 3).join('\n')}\n    ...` : v.detail;
  return { rule: v.rule, ...(v.vm ? { vm: v.vm } : {}), ...(v.device ? { device: v.device } : {}), detail };
}

/** A run that never produced a report: the host threw (or the pool lost the worker). */
export function hostException(seed: number, error: unknown, where: string): RunResult {
  const detail = `${where}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`;
  const topology = drawTopology(seed);
  return {
    seed,
    passed: false,
    violations: [trimViolation({ rule: 'host-exception', detail })],
    counts: { 'host-exception': 1 },
    misbehaviours: [...new Set(topology.vms.flatMap((vm) => vm.misbehave))],
    exercised: [],
    teardowns: topology.vms.flatMap((vm) => (vm.teardown ? [vm.teardown.op] : [])),
    deadline: topology.iopfTimeoutMs !== undefined,
    iopfTimeouts: 0,
    faults: 0,
    postMessage: topology.transport === 'postmessage',
    vms: [],
    unfinished: 0,
    durationMs: 0,
  };
}

export async function runOne(task: RunTask): Promise<RunResult> {
  const topology = drawTopology(task.seed);
  try {
    const report = await runTopology(topology, {
      durationMs: task.durationMs ?? DEFAULT_RUN_DURATION_MS,
      log: makeLogger({ side: 'host', stress: task.seed }),
    });
    return judge(task.seed, topology, report);
  } catch (error) {
    return hostException(task.seed, error, 'runTopology threw');
  }
}

export default runOne;
