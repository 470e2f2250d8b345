/**
 * Launch a topology, run its workloads, take it down, and say what happened. The host owns the
 * physical IOMMUs (one unless the topology lists `iommus`); each VM gets its own guest RAM, channel,
 * worker thread, fault queue and devices. This file is the wiring and the lifecycle; the checks
 * made once the run is down are end-of-run-checks.ts, and the report is built by run-report.ts.
 */
import { type Logger, makeLogger } from '../../shared/logger.ts';
import type { PciFunction } from '../devices/pci-function.ts';
import { SharedPri } from '../devices/shared-pri.ts';
import { Iommu } from '../iommu/iommu.ts';
import { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import { VtdOps } from '../iommu/vtd-ops.ts';
import { type DeviceOwner, DmaOracle } from './dma-oracle.ts';
import { checkEndOfRun } from './end-of-run-checks.ts';
import { InvariantChecker } from './invariants.ts';
import { LatencyHistogram } from './latency.ts';
import { type PlantedBugs, parsePlantedBugs, plantBugs } from './plant.ts';
import { Reactor, type ReactorStats, type Ticker } from './reactor.ts';
import type { RunReport } from './report.ts';
import { buildRunReport, faultsRaised } from './run-report.ts';
import { iommuIndexOf, physicalIommus, type TeardownOp, type Topology } from './topology.ts';
import { FaultTrace } from './trace.ts';
import { type DevicePlacement, Vm } from './vm.ts';

export interface RunOptions {
  /** Longest the workloads may run, in ms; the run ends earlier when every workload is done. */
  durationMs?: number;
  /** Replaces every workload's seed with one derived from this and the VM's index. */
  seed?: number;
  /** How long stopping guests may take to finish in-flight DMA. */
  graceMs?: number;
  log?: Logger;
  /**
   * Test only: bugs to plant in the host, to show the checker catches them (plant.ts). Defaults to
   * the IOASID_SANDBOX_PLANT environment variable, which is how the CLI gets them.
   */
  plant?: PlantedBugs;
  /** Overrides the topology's transport. */
  transport?: 'sab' | 'postmessage';
  /** Write a Chrome trace-event file of every fault's life here when the run stops (trace.ts). */
  trace?: string;
  /** runTopology calls this about every 10 ms while the workloads run (the CLI's progress bar). */
  onProgress?: (elapsedMs: number, durationMs: number, faultsRaised: number) => void;
}

export const DEFAULT_DURATION_MS = 30_000;
const POLL_MS = 10;
/** How long stopping guests may take to finish in-flight DMA, by default. */
export const DEFAULT_GRACE_MS = 2_000;

/** Physical StreamIDs: VM i's own devices start at (i + 1) << 8; shared functions at 0x8000. */
const SHARED_FUNCTIONS = 0x8000;

/**
 * Where every VM's devices sit. A device naming a `function` is an interface on a function shared
 * between VMs: the first VM to list it holds the RID, and every interface shares its StreamID and
 * its PRI capability.
 */
export function placeDevices(topology: Topology): DevicePlacement[][] {
  const shared = new Map<string, DevicePlacement>();
  return topology.vms.map((vm, vmIndex) =>
    vm.devices.map((device, i) => {
      if (device.function === undefined) return { streamId: ((vmIndex + 1) << 8) + i, ownsRid: true };
      const owner = shared.get(device.function);
      if (owner) return { ...owner, ownsRid: false };
      const placement = {
        streamId: SHARED_FUNCTIONS + shared.size,
        ownsRid: true,
        sharedPri: new SharedPri(device.priCredits),
      };
      shared.set(device.function, placement);
      return placement;
    }),
  );
}

/** The oracle, also keeping each VM's fault round trips (its isolation figure's latency). */
class RunOracle extends DmaOracle {
  /** Each watched device's VM histogram, by the device's observer slot. */
  private readonly latencyBySlot: LatencyHistogram[] = [];

  /** Watch `device` for `owner`, and time its faults into `latency` too. */
  watchTimed(device: PciFunction, owner: DeviceOwner, latency: LatencyHistogram): void {
    this.watch(device, owner);
    this.latencyBySlot[device.observerSlot] = latency;
  }

  /**
   * One record per fault, in its VM's histogram: the run's figure is their merge (report time), so
   * the fault path pays one HDR record, not two. A device no VM histogram was given for (none in a
   * sandbox) goes to the run's own.
   */
  override faultResolved(device: PciFunction, ms: number): void {
    const latency = this.latencyBySlot[device.observerSlot];
    if (latency) latency.recordMs(ms);
    else super.faultResolved(device, ms);
  }
}

export function vmSeed(runSeed: number | undefined, configured: number, vmIndex: number): number {
  if (runSeed === undefined) return configured;
  return (Math.imul(runSeed ^ 0x5bd1e995, 0x9e3779b1) + vmIndex * 0x632be5ab) >>> 0;
}

/** A fault the host raises into a VM on its own, not as a side effect of DMA. */
export interface InjectedFault {
  /** A page request (default, travels PRI and the fault queue) or a stage-1 fault event. */
  kind?: 'page-request' | 'event';
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
  private readonly oracle: RunOracle;
  private readonly vmLatency: LatencyHistogram[];
  private readonly trace: FaultTrace | undefined;
  private readonly vms: Vm[];
  /** The host's one data plane: every VM's queues, the IRQ threads' turns, the deadlines. */
  private readonly reactor: Reactor;
  private readonly timers: Ticker[] = [];
  private started = 0;
  /** When the launch completed: what a teardown's `atMs` counts from. */
  private launched = 0;
  private elapsed = 0;
  private state: 'new' | 'running' | 'stopped' = 'new';

  constructor(
    readonly topology: Topology,
    private readonly options: RunOptions = {},
  ) {
    this.log = options.log ?? makeLogger({ side: 'host' });
    this.reactor = new Reactor({
      vms: topology.vms.length,
      transport: options.transport ?? topology.transport,
      spinNs: topology.hostSpinNs,
      onError: (error) => this.threadException(error),
    });
    this.iommu = new Iommu({
      ...topology.iommu,
      instances: physicalIommus(topology),
      onThreadError: (error) => this.threadException(error),
      scheduleTurn: this.reactor.defer,
      routePasidsToRid: topology.routing === 'device-owner',
    });
    this.trace = options.trace ? new FaultTrace() : undefined;
    if (topology.iopfTimeoutMs !== undefined) {
      this.iommu.iopf.deadlineMs = topology.iopfTimeoutMs;
      this.iommu.stallIopf.iopf.deadlineMs = topology.iopfTimeoutMs;
    }
    const plant = options.plant ?? parsePlantedBugs(process.env.IOASID_SANDBOX_PLANT);
    if (Object.keys(plant).length > 0) {
      plantBugs(this.iommu, plant);
      this.log.warn({ plant }, 'test-only bugs planted in the host');
    }
    const smmu = new Smmuv3Ops(this.iommu);
    const vtd = new VtdOps(this.iommu);
    this.oracle = new RunOracle(this.invariants, this.latency);
    this.vmLatency = topology.vms.map(() => new LatencyHistogram());
    const owners = new Map<number, string>();
    const requesters = new Map<number, number>();
    const ownerOf = (streamId: number, pasid: number) => owners.get(streamId * 0x10_0000 + pasid);
    const placements = placeDevices(topology);
    this.vms = topology.vms.map(
      (config, index) =>
        new Vm(config, index, {
          iommu: this.iommu,
          smmu,
          vtd,
          routing: topology.routing,
          invariants: this.invariants,
          observer: this.oracle,
          ownerOf,
          devices: placements[index],
          spinNs: topology.spinNs,
          reactor: this.reactor,
          vms: topology.vms.length,
          transport: options.transport ?? topology.transport,
          trace: this.trace,
          seed: vmSeed(options.seed, config.workload.seed, index),
          log: this.log,
        }),
    );
    // A PASID belongs to the VM whose device lists it, and the RID (PASID 0) to the VM that holds
    // it. That VM owns the address space; a fault delivered anywhere else is a violation. With
    // ioasid-owner routing a fault reaches the fault queue of the HWPT its PASID is attached to;
    // with device-owner routing, the RID holder's, which differs only on a shared function.
    for (const vm of this.vms) {
      vm.devices.forEach((device, i) => {
        const placement = placements[vm.index][i];
        this.oracle.watchTimed(device, { vm: vm.name, seed: vm.seed }, this.vmLatency[vm.index]);
        const config = vm.config.devices[i];
        this.iommu.placeStream(
          device.streamId,
          iommuIndexOf(topology, config),
          config.pri ? vm.index : undefined,
        );
        const pasids = config.pasids;
        for (const pasid of placement.ownsRid ? [0, ...pasids] : pasids) {
          owners.set(device.streamId * 0x10_0000 + pasid, vm.name);
          requesters.set(device.streamId * 0x10_0000 + pasid, vm.index);
        }
        if (placement.sharedPri) {
          if (placement.ownsRid) this.iommu.bindEndpoint(device.streamId, placement.sharedPri);
        } else {
          this.iommu.bindEndpoint(device.streamId, device);
          this.iommu.stalls.bindEndpoint(device.streamId, device);
        }
      });
    }
    // A page request is its PASID's owner's (the RID holder's without one of its own); once an IRQ
    // thread has handed it on, the reactor pumps that VM, which reads its fault queue. Asked twice
    // per page request (its PRI queue slot, the re-fault gauge): a storm asks for the same (stream,
    // PASID) again and again, and the table never changes once built.
    let lastKey = -1;
    let lastRequester = -1;
    this.iommu.setRequesters(
      (streamId, pasid) => {
        const key = streamId * 0x10_0000 + pasid;
        if (key !== lastKey) {
          lastKey = key;
          lastRequester = requesters.get(key) ?? requesters.get(streamId * 0x10_0000) ?? -1;
        }
        return lastRequester;
      },
      (vm) => this.reactor.wake(vm),
    );
  }

  /** Spawn the guests, install their STEs, start the workloads. */
  async launch(): Promise<void> {
    if (this.state !== 'new') throw new Error('a sandbox is launched once');
    this.state = 'running';
    this.started = performance.now();
    try {
      for (const vm of this.vms) vm.launch();
      await Promise.all(this.vms.map((vm) => vm.boot()));
      // Serving starts with the workloads: until then the event loop has the thread to itself.
      this.reactor.start();
      await Promise.all(this.vms.map((vm) => vm.start()));
    } catch (error) {
      await this.teardown();
      throw error;
    }
    this.launched = performance.now();
    this.startTimers();
    this.log.info({ topology: this.topology.name, vms: this.vms.length }, 'topology running');
  }

  /**
   * True once every VM's workload is done (or its guest crashed). Injectors never finish: a
   * topology with one runs until it is stopped (`--duration`). A guest that has not answered
   * within `timeoutMs` (a hung one) counts as not done.
   */
  async workloadsDone(timeoutMs?: number): Promise<boolean> {
    if (this.topology.vms.some((vm) => vm.devices.some((d) => d.inject))) return false;
    const stats = await Promise.all(this.vms.map((vm) => vm.stats(timeoutMs).catch(() => undefined)));
    return stats.every((s, i) => this.vms[i].crashed || s?.workloadDone);
  }

  /**
   * Raise a fault from a VM's device, as the host's own act. A page request travels the whole
   * fault path (IOPF group, fault queue, the guest's page request queue, its answer) like one
   * raised by a DMA; an event goes the way of a terminated transaction's record (vEVENTQ, the
   * guest's event queue for SMMUv3; the host keeps it for VT-d).
   */
  inject(vmName: string, fault: InjectedFault): void {
    if (this.state !== 'running') throw new Error('inject needs a running sandbox');
    const vm = this.vms.find((v) => v.name === vmName);
    if (!vm) throw new Error(`no VM named ${vmName}`);
    const index =
      fault.device === undefined ? 0 : vm.config.devices.findIndex((d) => d.name === fault.device);
    const device = vm.devices[index];
    if (!device) throw new Error(`VM ${vmName} has no device named ${fault.device}`);
    if (fault.kind === 'event') {
      device.injectEvents(fault.pasid, fault.address, fault.write ?? false);
      return;
    }
    if (!device.injectPageRequest(fault.pasid, fault.address, fault.write ?? false)) {
      throw new Error(`${device.name} cannot raise a page request now (no PRI, PRI stopped, or no credit)`);
    }
  }

  /**
   * A VMM teardown operation on every device of a running VM, now (docs/teardown.md): detach,
   * replace, fault-fd-close, hwpt-destroy, unbind, or guest-death. Its faults in flight are
   * answered exactly once; the outcome ('done' or the registry's errno) is in the VM's report.
   */
  injectTeardown(vmName: string, op: TeardownOp): string {
    if (this.state !== 'running') throw new Error('injectTeardown needs a running sandbox');
    const vm = this.vms.find((v) => v.name === vmName);
    if (!vm) throw new Error(`no VM named ${vmName}`);
    vm.teardownOp(op, Math.round(performance.now() - this.launched));
    return vm.teardown?.outcome ?? 'done';
  }

  /**
   * Guest death on demand: end a VM's worker as if it had died. Everything pending for it is
   * answered INVALID, its devices detached, its objects destroyed; the other VMs go on.
   */
  killGuest(vmName: string): void {
    if (this.state !== 'running') throw new Error('killGuest needs a running sandbox');
    const vm = this.vms.find((v) => v.name === vmName);
    if (!vm) throw new Error(`no VM named ${vmName}`);
    vm.giveUp('killed by the host (Sandbox.killGuest)');
  }

  /**
   * DMA descriptors each VM's devices have completed so far, in topology order: a live counter
   * cheap enough to poll every millisecond (report() computes every figure and percentile).
   */
  dmaCompleted(): number[] {
    return this.vms.map((vm) => vm.devices.reduce((n, d) => n + d.stats.completed, 0));
  }

  /** The host reactor's counters so far: passes, busy time, sleeps, yields (reactor.ts). */
  reactorStats(): ReactorStats {
    return { ...this.reactor.stats };
  }

  /** Page-request groups and stalls raised so far (the report's `faults.raised`): cheap to poll. */
  faultsRaised(): number {
    return faultsRaised(this.iommu);
  }

  /** The report so far (live while running; final after stop). */
  report(): RunReport {
    const stopped = this.state === 'stopped';
    return buildRunReport({
      topology: this.topology,
      transport: this.options.transport ?? this.topology.transport,
      seed: this.options.seed,
      elapsedMs: stopped ? this.elapsed : performance.now() - this.started,
      launchMs: this.launched > 0 ? this.launched - this.started : 0,
      stopped,
      vms: this.vms,
      iommu: this.iommu,
      oracle: this.oracle,
      invariants: this.invariants,
      latency: this.latency,
      vmLatency: this.vmLatency,
    });
  }

  /** Stop the guests (in-flight DMA may finish), take everything down, and report. */
  async stop(): Promise<RunReport> {
    if (this.state === 'running') {
      await Promise.all(this.vms.map((vm) => vm.stop(this.options.graceMs ?? DEFAULT_GRACE_MS)));
    }
    await this.teardown();
    // What the PRI queues still hold reaches the IOPF layer, where teardown left no handler: INVALID.
    this.iommu.drainPageRequests();
    checkEndOfRun(this.iommu, this.vms, this.invariants);
    if (this.trace && this.options.trace) this.trace.write(this.options.trace);
    return this.report();
  }

  /**
   * An IRQ thread's turn of its own, or a reactor deadline (a teardown, a watchdog, an injector),
   * threw: counted like a VM pump's exception.
   */
  private threadException(error: unknown): void {
    this.invariants.violation({ rule: 'host-exception', detail: (error as Error).stack ?? String(error) });
    this.log.error({ err: error }, 'an IRQ thread turn or a reactor deadline threw');
  }

  /**
   * Teardown operations the topology injects (a VM's `teardown`), and the response deadline's
   * clock (`iopfTimeoutMs`): expired groups are taken back and answered INVALID.
   */
  private startTimers(): void {
    for (const vm of this.vms) {
      const teardown = vm.config.teardown;
      if (!teardown) continue;
      this.timers.push(
        this.reactor.at(this.launched + teardown.atMs, () => vm.teardownOp(teardown.op, teardown.atMs)),
      );
    }
    const timeout = this.topology.iopfTimeoutMs;
    if (timeout === undefined) return;
    this.timers.push(
      this.reactor.every(Math.max(1, Math.min(50, timeout / 4)), (now) => {
        this.iommu.iopf.expire(now);
        this.iommu.stallIopf.iopf.expire(now);
      }),
    );
  }

  private stopTimers(): void {
    for (const timer of this.timers) this.reactor.cancel(timer);
    this.timers.length = 0;
  }

  private async teardown(): Promise<void> {
    this.stopTimers();
    if (this.state === 'stopped') return;
    await Promise.all(this.vms.map((vm) => vm.shutdown()));
    await this.reactor.stop();
    this.elapsed = performance.now() - this.started;
    this.state = 'stopped';
  }
}

export async function runTopology(topology: Topology, options: RunOptions = {}): Promise<RunReport> {
  const sandbox = new Sandbox(topology, options);
  await sandbox.launch();
  const durationMs = options.durationMs ?? DEFAULT_DURATION_MS;
  const start = performance.now();
  const deadline = start + durationMs;
  try {
    while (performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      options.onProgress?.(performance.now() - start, durationMs, sandbox.faultsRaised());
      // A hung guest's answer is waited for no later than the deadline: --duration is a promise.
      if (await sandbox.workloadsDone(Math.max(1, deadline - performance.now()))) break;
    }
  } finally {
    await sandbox.stop();
  }
  return sandbox.report();
}
