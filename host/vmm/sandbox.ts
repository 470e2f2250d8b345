/**
 * Launch a topology, run its workloads, take it down, and say what happened. The host owns one
 * physical IOMMU; each VM gets its own guest RAM, channel, worker thread, fault queue and devices.
 */
import { type Logger, makeLogger } from '../../shared/logger.ts';
import { Iommu } from '../iommu/iommu.ts';
import { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import { DmaOracle } from './dma-oracle.ts';
import { InvariantChecker } from './invariants.ts';
import { LatencyHistogram } from './latency.ts';
import type { RunReport } from './report.ts';
import type { Topology } from './topology.ts';
import { Vm } from './vm.ts';

export interface RunOptions {
  /** Longest the workloads may run, in ms; the run ends earlier when every workload is done. */
  durationMs?: number;
  /** Replaces every workload's seed with one derived from this and the VM's index. */
  seed?: number;
  /** How long stopping guests may take to finish in-flight DMA. */
  graceMs?: number;
  log?: Logger;
}

export const DEFAULT_DURATION_MS = 30_000;
const POLL_MS = 10;
const DEFAULT_GRACE_MS = 2_000;

/** Physical StreamIDs: VM i's devices start at (i + 1) << 8. */
function firstStreamId(vmIndex: number): number {
  return (vmIndex + 1) << 8;
}

export function vmSeed(runSeed: number | undefined, configured: number, vmIndex: number): number {
  if (runSeed === undefined) return configured;
  return (Math.imul(runSeed ^ 0x5bd1e995, 0x9e3779b1) + vmIndex * 0x632be5ab) >>> 0;
}

export async function runTopology(topology: Topology, options: RunOptions = {}): Promise<RunReport> {
  const log = options.log ?? makeLogger({ side: 'host' });
  const durationMs = options.durationMs ?? DEFAULT_DURATION_MS;
  const iommu = new Iommu(topology.iommu);
  const smmu = new Smmuv3Ops(iommu);
  const invariants = new InvariantChecker();
  const latency = new LatencyHistogram();
  const oracle = new DmaOracle(invariants, latency);
  const owners = new Map<number, string>();
  const ownerOf = (streamId: number, pasid: number) => owners.get(streamId * 0x10_0000 + pasid);

  const vms = topology.vms.map(
    (config, index) =>
      new Vm(config, index, {
        iommu,
        smmu,
        invariants,
        observer: oracle,
        ownerOf,
        firstStreamId: firstStreamId(index),
        spinNs: topology.spinNs,
        seed: vmSeed(options.seed, config.workload.seed, index),
        log,
      }),
  );
  // Every PASID of a device (and its RID, PASID 0) belongs to the VM the device is assigned to.
  for (const vm of vms) {
    vm.devices.forEach((device, i) => {
      oracle.watch(device, { vm: vm.name, seed: vm.seed });
      for (const pasid of [0, ...vm.config.devices[i].pasids])
        owners.set(device.streamId * 0x10_0000 + pasid, vm.name);
    });
  }
  // Faults reach a VM through the fault queue of the HWPT its device is attached to (the registry's
  // ioasid-owner routing). While every device's PASIDs belong to the VM the device is assigned to,
  // device-owner routing delivers to the same VM; topologies that split them come with workloads.
  for (const vm of vms) {
    for (const device of vm.devices) {
      iommu.bindEndpoint(device.streamId, device);
      iommu.stalls.bindEndpoint(device.streamId, device);
    }
  }

  const started = performance.now();
  try {
    for (const vm of vms) vm.launch();
    await Promise.all(vms.map((vm) => vm.boot()));
    await Promise.all(vms.map((vm) => vm.start()));
    log.info({ topology: topology.name, vms: vms.length }, 'topology running');
    const deadline = started + durationMs;
    while (performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const stats = await Promise.all(vms.map((vm) => vm.stats().catch(() => undefined)));
      if (stats.every((s, i) => vms[i].crashed || s?.workloadDone)) break;
    }
    await Promise.all(vms.map((vm) => vm.stop(options.graceMs ?? DEFAULT_GRACE_MS)));
  } finally {
    await Promise.all(vms.map((vm) => vm.shutdown()));
  }
  const elapsed = performance.now() - started;

  // Page-request groups and stalled transactions both travel as IOPF groups; none may be left.
  const lost = iommu.iopf.pending + iommu.stallIopf.pending;
  if (lost > 0) {
    invariants.violation({
      rule: 'group-lost',
      detail: `${lost} page-request group(s) ended the run unanswered`,
    });
  }
  const sum = (f: (vm: Vm) => number) => vms.reduce((n, vm) => n + f(vm), 0);
  const sumDevices = (f: (d: Vm['devices'][number]) => number) =>
    sum((vm) => vm.devices.reduce((n, d) => n + f(d), 0));
  return {
    topology: topology.name,
    routing: topology.routing,
    seed: options.seed ?? null,
    durationMs: Math.round(elapsed),
    vms: vms.map((vm) => ({
      name: vm.name,
      flavour: vm.config.viommu,
      faultsByKind: {
        pageRequest: vm.vsmmu.stats.delivered,
        stall: vm.vsmmu.stats.stallsDelivered,
        terminate: vm.vsmmu.stats.eventsDelivered,
      },
      bytesVerified: oracle.verifiedByVm.get(vm.name) ?? 0,
      staleTranslationUses: oracle.staleByVm.get(vm.name) ?? 0,
      unmaps: vm.guestStats?.unmaps ?? 0,
      invalidations: vm.vsmmu.stats.invalidations,
      faultsDelivered: vm.vsmmu.stats.delivered + vm.vsmmu.stats.stallsDelivered,
      responses: { ...vm.vsmmu.stats.responses },
      dmaOps: vm.devices.reduce((n, d) => n + d.stats.ops, 0),
      crashed: vm.crashed,
      ...(vm.crashReason ? { crashReason: vm.crashReason } : {}),
      pageRequests: vm.devices.reduce((n, d) => n + d.stats.pageRequests, 0),
      pagesMapped: vm.guestStats?.pagesMapped ?? 0,
      dmaCompleted: vm.devices.reduce((n, d) => n + d.stats.completed, 0),
      dmaFailed: vm.devices.reduce((n, d) => n + d.stats.failed, 0),
      dropped: vm.vsmmu.stats.dropped,
      unknownResponses: vm.vsmmu.stats.unknownResponses,
      illegalCommands: vm.vsmmu.stats.illegalCommands,
      workloadDone: vm.guestStats?.workloadDone ?? false,
      overflowsAcknowledged: vm.guestStats?.overflowsAcknowledged ?? 0,
      unrecoverableFaults: { ...(oracle.byVm.get(vm.name) ?? { stage1: 0, stage2: 0 }) },
      eventsDelivered: vm.vsmmu.stats.eventsDelivered,
      eventsDropped: vm.vsmmu.stats.eventsDropped,
      eventsHandled: vm.guestStats?.events ?? 0,
      eventOverflowsAcknowledged: vm.guestStats?.eventOverflowsAcknowledged ?? 0,
      stallsDelivered: vm.vsmmu.stats.stallsDelivered,
      resumes: vm.vsmmu.stats.resumes,
      bytesMoved: vm.devices.reduce((n, d) => n + d.stats.bytesMoved, 0),
      faultQueue: {
        read: vm.viommu.fault.stats.read,
        responded: vm.viommu.fault.stats.responded,
        autoResponded: vm.viommu.fault.stats.autoResponded,
      },
    })),
    faults: {
      raised: iommu.iopf.stats.groups + iommu.stallIopf.iopf.stats.groups,
      delivered: sum((vm) => vm.vsmmu.stats.delivered + vm.vsmmu.stats.stallsDelivered),
      responded: sum((vm) => vm.vsmmu.stats.guestAnswered),
      autoResponded:
        sum((vm) => vm.vsmmu.stats.autoResponded + vm.viommu.fault.stats.autoResponded) +
        iommu.iopf.stats.answeredWithoutHandler +
        iommu.stallIopf.iopf.stats.answeredWithoutHandler,
      dropped: sum((vm) => vm.vsmmu.stats.dropped),
      lost,
    },
    dma: {
      ops: sumDevices((d) => d.stats.ops),
      completed: sumDevices((d) => d.stats.completed),
      failed: sumDevices((d) => d.stats.failed),
      bytesVerified: oracle.bytesVerified,
      unrecoverableFaults: oracle.unrecoverableFaults,
    },
    latencyUs: latency.summary(),
    iommu: iommu.stats,
    invariants: {
      ok: invariants.ok,
      violations: invariants.violations,
      counts: Object.fromEntries(invariants.counts),
    },
  };
}
