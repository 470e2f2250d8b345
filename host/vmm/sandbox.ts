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

/** A fault the host raises into a VM on its own, not as a side effect of DMA. */
export interface InjectedFault {
  /** Device name within the VM (default: its first device). */
  device?: string;
  /** PASID of the request; 0 is the RID itself. */
  pasid: number;
  /** The address to fault in (page-aligned by the device). */
  address: number;
  /** Ask for write access (default read). */
  write?: boolean;
}

/**
 * A running topology: launched VMs and their host side, live stats, fault injection, and a report
 * at the end. `runTopology` is launch, wait for the workloads, stop; scripts and tests can drive
 * the steps themselves.
 */
export class Sandbox {
  private readonly log: Logger;
  private readonly iommu: Iommu;
  private readonly invariants = new InvariantChecker();
  private readonly latency = new LatencyHistogram();
  private readonly oracle: DmaOracle;
  private readonly vms: Vm[];
  private started = 0;
  private elapsed = 0;
  private state: 'new' | 'running' | 'stopped' = 'new';

  constructor(
    readonly topology: Topology,
    private readonly options: RunOptions = {},
  ) {
    this.log = options.log ?? makeLogger({ side: 'host' });
    this.iommu = new Iommu(topology.iommu);
    const smmu = new Smmuv3Ops(this.iommu);
    this.oracle = new DmaOracle(this.invariants, this.latency);
    const owners = new Map<number, string>();
    const ownerOf = (streamId: number, pasid: number) => owners.get(streamId * 0x10_0000 + pasid);
    this.vms = topology.vms.map(
      (config, index) =>
        new Vm(config, index, {
          iommu: this.iommu,
          smmu,
          invariants: this.invariants,
          observer: this.oracle,
          ownerOf,
          firstStreamId: firstStreamId(index),
          spinNs: topology.spinNs,
          seed: vmSeed(options.seed, config.workload.seed, index),
          log: this.log,
        }),
    );
    // Every PASID of a device (and its RID, PASID 0) belongs to the VM the device is assigned to.
    // Faults reach a VM through the fault queue of the HWPT its device is attached to (the
    // registry's ioasid-owner routing). While every device's PASIDs belong to the VM the device is
    // assigned to, device-owner routing delivers to the same VM.
    for (const vm of this.vms) {
      vm.devices.forEach((device, i) => {
        this.oracle.watch(device, { vm: vm.name, seed: vm.seed });
        for (const pasid of [0, ...vm.config.devices[i].pasids])
          owners.set(device.streamId * 0x10_0000 + pasid, vm.name);
        this.iommu.bindEndpoint(device.streamId, device);
        this.iommu.stalls.bindEndpoint(device.streamId, device);
      });
    }
  }

  /** Spawn the guests, install their STEs, start the workloads. */
  async launch(): Promise<void> {
    if (this.state !== 'new') throw new Error('a sandbox is launched once');
    this.state = 'running';
    this.started = performance.now();
    try {
      for (const vm of this.vms) vm.launch();
      await Promise.all(this.vms.map((vm) => vm.boot()));
      await Promise.all(this.vms.map((vm) => vm.start()));
    } catch (error) {
      await this.teardown();
      throw error;
    }
    this.log.info({ topology: this.topology.name, vms: this.vms.length }, 'topology running');
  }

  /**
   * True once every VM's workload is done (or its guest crashed). Injectors never finish: a
   * topology with one runs until it is stopped (`--duration`).
   */
  async workloadsDone(): Promise<boolean> {
    if (this.topology.vms.some((vm) => vm.devices.some((d) => d.inject))) return false;
    const stats = await Promise.all(this.vms.map((vm) => vm.stats().catch(() => undefined)));
    return stats.every((s, i) => this.vms[i].crashed || s?.workloadDone);
  }

  /**
   * Raise a page request from a VM's device, as the host's own act: it travels the whole fault
   * path (IOPF group, fault queue, the guest's PRI queue, its answer) like one raised by a DMA.
   */
  inject(vmName: string, fault: InjectedFault): void {
    if (this.state !== 'running') throw new Error('inject needs a running sandbox');
    const vm = this.vms.find((v) => v.name === vmName);
    if (!vm) throw new Error(`no VM named ${vmName}`);
    const index =
      fault.device === undefined ? 0 : vm.config.devices.findIndex((d) => d.name === fault.device);
    const device = vm.devices[index];
    if (!device) throw new Error(`VM ${vmName} has no device named ${fault.device}`);
    if (!device.injectPageRequest(fault.pasid, fault.address, fault.write ?? false)) {
      throw new Error(`${device.name} cannot raise a page request now (no PRI, PRI stopped, or no credit)`);
    }
  }

  /** The report so far (live while running; final after stop). */
  report(): RunReport {
    return this.buildReport(this.state === 'stopped' ? this.elapsed : performance.now() - this.started);
  }

  /** Stop the guests (in-flight DMA may finish), take everything down, and report. */
  async stop(): Promise<RunReport> {
    if (this.state === 'running') {
      await Promise.all(this.vms.map((vm) => vm.stop(this.options.graceMs ?? DEFAULT_GRACE_MS)));
    }
    await this.teardown();
    // Page-request groups and stalled transactions both travel as IOPF groups; none may be left.
    const lost = this.iommu.iopf.pending + this.iommu.stallIopf.pending;
    if (lost > 0) {
      this.invariants.violation({
        rule: 'group-lost',
        detail: `${lost} page-request group(s) ended the run unanswered`,
      });
    }
    return this.report();
  }

  private async teardown(): Promise<void> {
    if (this.state === 'stopped') return;
    await Promise.all(this.vms.map((vm) => vm.shutdown()));
    this.elapsed = performance.now() - this.started;
    this.state = 'stopped';
  }

  private buildReport(elapsed: number): RunReport {
    const { vms, iommu, oracle, invariants, latency, topology } = this;
    const lost = this.state === 'stopped' ? iommu.iopf.pending + iommu.stallIopf.pending : 0;
    const sum = (f: (vm: Vm) => number) => vms.reduce((n, vm) => n + f(vm), 0);
    const sumDevices = (f: (d: Vm['devices'][number]) => number) =>
      sum((vm) => vm.devices.reduce((n, d) => n + f(d), 0));
    return {
      topology: topology.name,
      routing: topology.routing,
      seed: this.options.seed ?? null,
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
        injected: vm.devices.reduce((n, d) => n + d.stats.injected, 0),
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
}

export async function runTopology(topology: Topology, options: RunOptions = {}): Promise<RunReport> {
  const sandbox = new Sandbox(topology, options);
  await sandbox.launch();
  const deadline = performance.now() + (options.durationMs ?? DEFAULT_DURATION_MS);
  try {
    while (performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (await sandbox.workloadsDone()) break;
    }
  } finally {
    await sandbox.stop();
  }
  return sandbox.report();
}
