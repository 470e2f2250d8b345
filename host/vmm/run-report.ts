/**
 * The run report builder: the RunReport (report.ts holds its types) from a sandbox's parts, live
 * while the run goes on or final once it is torn down. It reads counters and allocates; it is
 * never on the fault path.
 */
import type { Iommu } from '../iommu/iommu.ts';
import type { PhysicalPriqStats } from '../iommu/physical-queue.ts';
import { guestDamage } from './damage.ts';
import type { DmaOracle } from './dma-oracle.ts';
import type { InvariantChecker } from './invariants.ts';
import { LatencyHistogram } from './latency.ts';
import type { PhysicalIommuReport, RunReport, VmIsolation } from './report.ts';
import type { Topology } from './topology.ts';
import type { Vm } from './vm.ts';

/** What a report is built from: the sandbox's parts and its clock. */
export interface RunReportSource {
  topology: Topology;
  /** The transport the run used (the topology's, unless the run overrode it). */
  transport: RunReport['transport'];
  /** The run's `--seed`, when one was given. */
  seed: number | undefined;
  /** From the start of the launch to now, or to the end of the teardown once stopped. */
  elapsedMs: number;
  /** How long the launch took (0 while it is still under way). */
  launchMs: number;
  /** Torn down: what is still pending now is lost. */
  stopped: boolean;
  vms: readonly Vm[];
  iommu: Iommu;
  oracle: DmaOracle;
  invariants: InvariantChecker;
  /** The run's own fault round trips (devices no VM histogram was given for). */
  latency: LatencyHistogram;
  /** Each VM's fault round trips, by VM index. */
  vmLatency: readonly LatencyHistogram[];
}

/** Page-request groups and stalls raised so far (the report's `faults.raised`): cheap to poll. */
export function faultsRaised(iommu: Iommu): number {
  // A group whose Last a physical PRI queue discarded was raised, and answered Success by it.
  let raised = iommu.iopf.stats.groups + iommu.stallIopf.iopf.stats.groups;
  for (const instance of iommu.instances) raised += instance.priq.stats.autoResponded;
  return raised;
}

export function buildRunReport(run: RunReportSource): RunReport {
  const { vms, iommu, oracle, invariants, latency, topology } = run;
  const lost = run.stopped ? iommu.iopf.pending + iommu.stallIopf.pending : 0;
  const sum = (f: (vm: Vm) => number) => vms.reduce((n, vm) => n + f(vm), 0);
  const sumDevices = (f: (d: Vm['devices'][number]) => number) =>
    sum((vm) => vm.devices.reduce((n, d) => n + f(d), 0));
  const priq = (key: keyof PhysicalPriqStats) => iommu.instances.reduce((n, i) => n + i.priq.stats[key], 0);
  return {
    topology: topology.name,
    routing: topology.routing,
    transport: run.transport,
    seed: run.seed ?? null,
    durationMs: Math.round(run.elapsedMs),
    launchMs: Math.round(run.launchMs),
    vms: vms.map((vm) => ({
      name: vm.name,
      flavour: vm.config.viommu,
      faultsByKind: {
        pageRequest: vm.model.stats.delivered,
        stall: vm.model.stats.stallsDelivered,
        terminate: vm.model.stats.eventsDelivered,
      },
      bytesVerified: oracle.verifiedByVm.get(vm.name) ?? 0,
      staleTranslationUses: oracle.staleByVm.get(vm.name) ?? 0,
      unmaps: vm.guestStats?.unmaps ?? 0,
      invalidations: vm.model.stats.invalidations,
      faultsDelivered: vm.model.stats.delivered + vm.model.stats.stallsDelivered,
      responses: { ...vm.model.stats.responses },
      dmaOps: vm.devices.reduce((n, d) => n + d.stats.ops, 0),
      crashed: vm.crashed,
      iommufdObjects: vm.registry.objectCount,
      damage: guestDamage(vm.model),
      ...(vm.crashReason ? { crashReason: vm.crashReason } : {}),
      pageRequests: vm.devices.reduce((n, d) => n + d.stats.pageRequests, 0),
      pagesMapped: vm.guestStats?.pagesMapped ?? 0,
      dmaCompleted: vm.devices.reduce((n, d) => n + d.stats.completed, 0),
      dmaCycleUs: vm.guestStats?.dmaCycleUs ?? { p50: 0, p99: 0, max: 0, count: 0 },
      dmaFailed: vm.devices.reduce((n, d) => n + d.stats.failed, 0),
      badDescriptors: vm.devices.reduce((n, d) => n + d.stats.badDescriptors, 0),
      foreignPasidDescriptors: vm.devices.reduce((n, d) => n + d.stats.foreignPasids, 0),
      dropped: vm.model.stats.dropped,
      overflows: vm.model.stats.overflows,
      unknownResponses: vm.model.stats.unknownResponses,
      illegalCommands: vm.model.stats.illegalCommands,
      commandErrorsAcknowledged: vm.guestStats?.commandErrors ?? 0,
      workloadDone: vm.guestStats?.workloadDone ?? false,
      overflowsAcknowledged: vm.guestStats?.overflowsAcknowledged ?? 0,
      unrecoverableFaults: { ...(oracle.byVm.get(vm.name) ?? { stage1: 0, stage2: 0 }) },
      eventsDelivered: vm.model.stats.eventsDelivered,
      eventsDropped: vm.model.stats.eventsDropped,
      eventsHandled: vm.guestStats?.events ?? 0,
      eventOverflowsAcknowledged: vm.guestStats?.eventOverflowsAcknowledged ?? 0,
      stallsDelivered: vm.model.stats.stallsDelivered,
      resumes: vm.model.stats.resumes,
      injected: vm.devices.reduce((n, d) => n + d.stats.injected, 0),
      injectedEvents: vm.devices.reduce((n, d) => n + d.stats.injectedEvents, 0),
      bytesMoved: vm.devices.reduce((n, d) => n + d.stats.bytesMoved, 0),
      razReads: oracle.razReadsByVm.get(vm.name) ?? 0,
      faultQueue: {
        read: vm.registry.fault.stats.read,
        responded: vm.registry.fault.stats.responded,
        autoResponded: vm.registry.fault.stats.autoResponded,
        refusedResponses: vm.registry.fault.stats.refusedResponses,
        lateResponses: vm.registry.fault.stats.lateResponses,
        revoked: vm.registry.fault.stats.revoked,
        staleTouches: vm.registry.fault.stats.staleTouches,
      },
      iopfTimeouts: iommu.timeoutsOf(vm.index),
      refaults: iommu.refaults.figures(vm.index),
      ...(vm.teardown ? { teardown: { ...vm.teardown } } : {}),
      isolation: isolationOf(iommu, vm, run.vmLatency[vm.index]),
    })),
    faults: {
      raised: faultsRaised(iommu),
      delivered: sum((vm) => vm.model.stats.delivered + vm.model.stats.stallsDelivered),
      responded: sum((vm) => vm.model.stats.guestAnswered),
      autoResponded:
        sum((vm) => vm.model.stats.autoResponded + vm.registry.fault.stats.autoResponded) +
        iommu.iopf.stats.answeredWithoutHandler +
        iommu.stallIopf.iopf.stats.answeredWithoutHandler +
        iopfTimeouts(iommu) +
        priq('autoResponded'),
      dropped: sum((vm) => vm.model.stats.dropped) + priq('discarded'),
      lost,
      iopfTimeouts: iopfTimeouts(iommu),
      unrouted: iommu.iopf.stats.answeredWithoutHandler + iommu.stallIopf.iopf.stats.answeredWithoutHandler,
    },
    dma: {
      ops: sumDevices((d) => d.stats.ops),
      completed: sumDevices((d) => d.stats.completed),
      failed: sumDevices((d) => d.stats.failed),
      bytesVerified: oracle.bytesVerified,
      razReads: oracle.razReads,
      unrecoverableFaults: oracle.unrecoverableFaults,
    },
    latencyUs: LatencyHistogram.merged([latency, ...run.vmLatency]).summary(),
    iommu: iommu.stats,
    physicalIommus: physicalIommuReport(iommu, vms),
    invariants: {
      ok: invariants.ok,
      violations: invariants.violations,
      counts: Object.fromEntries(invariants.counts),
    },
  };
}

/** A VM's share of the physical PRI queues' losses, and its own fault round trips. */
function isolationOf(iommu: Iommu, vm: Vm, latency: LatencyHistogram): VmIsolation {
  const { p50, p99, max, count } = latency.summary();
  const behind = iommu.instances.filter((i) => i.requesters.has(vm.index));
  return {
    iommus: behind.map((i) => i.name),
    lostToOthers: behind.reduce((n, i) => n + i.priq.lostToOthers(vm.index), 0),
    lostOwn: behind.reduce((n, i) => n + i.priq.lostOwn(vm.index), 0),
    // HDR reports a bucket's highest equivalent value; no percentile is above the max recorded.
    latencyP50Us: Math.min(p50, max),
    latencyP99Us: Math.min(p99, max),
    latencyMaxUs: max,
    faultsTimed: count,
  };
}

function physicalIommuReport(iommu: Iommu, vms: readonly Vm[]): PhysicalIommuReport[] {
  return iommu.instances.map((i) => ({
    name: i.name,
    priqLog2: i.priq.log2Size,
    vms: [...i.requesters].map((r) => vms[r].name),
    ...i.priq.stats,
    threadPasses: i.thread.stats.passes,
    deferredPasses: i.thread.stats.deferredPasses,
    partialsDiscarded: i.thread.stats.partialsDiscarded,
    eventQueue: {
      evtqLog2: i.evtq.log2Size,
      ...i.evtq.stats,
      threadPasses: i.evtqThread.stats.passes,
      deferredPasses: i.evtqThread.stats.deferredPasses,
    },
  }));
}

function iopfTimeouts(iommu: Iommu): number {
  return iommu.iopf.stats.timeouts + iommu.stallIopf.iopf.stats.timeouts;
}
