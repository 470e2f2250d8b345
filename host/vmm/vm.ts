/**
 * The host's side of one VM: its guest RAM and data-plane channel (SharedArrayBuffers shared with
 * this VM only), its worker thread and comlink control plane, its vIOMMU model, fault queue and
 * devices, and `pump()`, the pass over all of it that the host's reactor runs whenever the VM's
 * pending bit is set (reactor.ts). The control plane's calls (control-plane.ts), the response
 * watchdog (response-watchdog.ts) and the injectors (injector.ts) have files of their own.
 * One concept, the VM's host side, a little over 450 lines: its wiring and its lifecycle.
 */
import type { Worker } from 'node:worker_threads';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { ChannelSide, type TransportKind } from '../../shared/channel-side.ts';
import { CommandErrorRegister } from '../../shared/command-error.ts';
import type { DeviceContext, GuestBoot, GuestStats } from '../../shared/control.ts';
import type { Doorbell } from '../../shared/doorbell.ts';
import { GuestMemory } from '../../shared/guest-memory.ts';
import type { Logger } from '../../shared/logger.ts';
import { PostedLink } from '../../shared/posted-link.ts';
import type { RingConsumer } from '../../shared/ring.ts';
import { STAGE_DEVICE, STAGE_VIOMMU, stageClock } from '../../shared/stage-clock.ts';
import { type ChannelConfig, channelLayout } from '../../shared/vm-channel.ts';
import { spawnWorker } from '../../shared/worker-spawn.ts';
import {
  type DeviceTracer,
  type DmaObserver,
  type FunctionOwner,
  PciFunction,
} from '../devices/pci-function.ts';
import type { SharedPri } from '../devices/shared-pri.ts';
import type { Iommu } from '../iommu/iommu.ts';
import type { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import type { VtdOps } from '../iommu/vtd-ops.ts';
import { CONTROL_TIMEOUT_MS, ControlPlane, type GuestControlRemote } from './control-plane.ts';
import { FLAVOURS } from './flavours.ts';
import { guestWorkerEntry } from './guest-bundle.ts';
import { Injector } from './injector.ts';
import type { InvariantChecker } from './invariants.ts';
import type { Reactor, ReactorClient, Ticker } from './reactor.ts';
import { ResponseWatchdog } from './response-watchdog.ts';
import type { TeardownOp, Topology, VmConfig } from './topology.ts';
import type { FaultTrace } from './trace.ts';
import type { ViommuModel, VmRegistry } from './viommu-model.ts';

/**
 * Ops each device runs per pump, per VM of the topology. The faults a pump raises reach the guest
 * at its end, so with one VM a small batch lets the guest page in while the host goes on with the
 * next (a pipeline, not a lockstep of whole queues). With many VMs the others keep both sides busy,
 * and a larger batch spreads each guest's wake-up over more faults: 16 VMs on 2 cores ran 46 K
 * faults/s with 16 ops per pump and 65 K with no bound.
 */
const DEVICE_BATCH_PER_VM = 16;
/**
 * How long past its grace the host waits for a stopping guest's answer (the message's way there
 * and back) before it treats the guest as hung: the run ends by its duration plus the two.
 */
export const STOP_ANSWER_SLACK_MS = 1_000;
/**
 * Boot waits longer: a worker first loads and compiles the guest's code, and many VMs launched at
 * once on a small machine queue for the cores.
 */
const BOOT_TIMEOUT_MS = 120_000;

/** Where one of the VM's devices sits in the host. */
export interface DevicePlacement {
  /** Physical StreamID (RID). */
  streamId: number;
  /** The VM holds the function's RID; false for an interface on a function another VM owns. */
  ownsRid: boolean;
  /** The function's PRI capability when the function is shared between VMs. */
  sharedPri?: SharedPri;
}

/** A device's events on its own track of its VM in the trace. */
function deviceTracer(trace: FaultTrace, vm: number, track: number, streamId: number): DeviceTracer {
  const at = { vm, track };
  return {
    pageRequest: (prgIndex) => trace.pageRequest(at, streamId, prgIndex),
    answered: (prgIndex) => trace.answered(at, streamId, prgIndex),
    retried: (prgIndex) => trace.retried(at, streamId, prgIndex),
  };
}

export interface VmWiring {
  iommu: Iommu;
  /** The host drivers a VMM's iommufd reaches, by the VM's vIOMMU flavour. */
  smmu: Smmuv3Ops;
  vtd: VtdOps;
  routing: Topology['routing'];
  invariants: InvariantChecker;
  observer: DmaObserver;
  /** The VM that owns the address space of (physical StreamID, PASID). */
  ownerOf(streamId: number, pasid: number): string | undefined;
  devices: readonly DevicePlacement[];
  spinNs: number;
  /** The host's data plane, which serves this VM's queues and devices and keeps its deadlines. */
  reactor: Reactor;
  /** VMs in the topology. */
  vms: number;
  /** How queue records and interrupts travel between host and guest. */
  transport: TransportKind;
  /** The run's fault trace, when one is recorded. */
  trace?: FaultTrace;
  seed: number;
  log: Logger;
}

export class Vm implements ReactorClient, FunctionOwner {
  readonly name: string;
  readonly memory: GuestMemory;
  readonly devices: PciFunction[];
  /** The VM's /dev/iommu: IOAS, HWPTs, fault queue (and vIOMMU for SMMUv3). */
  readonly registry: VmRegistry;
  /** The host side of the guest-visible vIOMMU queues. */
  readonly model: ViommuModel;
  /** What the guest driver of this flavour is told at boot (the vSMMU's IDR0, ...). */
  private readonly flavourBoot: Partial<GuestBoot>;
  /** Pattern seed of this VM's workload. */
  readonly seed: number;
  crashed = false;
  crashReason: string | undefined;
  guestStats: GuestStats | undefined;
  /** The teardown operation injected into this VM, when and with what outcome. */
  teardown: { op: TeardownOp; atMs: number; outcome: string } | undefined;

  /** The host's channel: shared with the guest (`sab`), or the host's own copy (`postmessage`). */
  private readonly channel: SharedArrayBuffer;
  /** What the guest maps: the same buffer, or the guest's own copy. */
  private readonly guestChannel: SharedArrayBuffer;
  /** The postMessage transport's link and the guest's end of it. */
  private readonly link: PostedLink | undefined;
  private readonly guestPort: MessagePort | undefined;
  private readonly channelConfig: ChannelConfig;
  /** The VM's line to the host's reactor (its bit in the host signal, and the shared doorbell). */
  private readonly hostBell: Doorbell;
  private readonly guestBell: Doorbell;
  private readonly cmdq: RingConsumer;
  private readonly submitQueues: RingConsumer[];
  private readonly log: Logger;
  private worker: Worker | undefined;
  private control: ControlPlane | undefined;
  private readonly injectors: Ticker[] = [];
  private watchdog: Ticker | undefined;
  /** The host is ending the worker on purpose: its exit is not a crash. */
  private terminating = false;
  /** Ops each device runs per pump. */
  private readonly deviceBatch: number;

  constructor(
    readonly config: VmConfig,
    readonly index: number,
    private readonly wiring: VmWiring,
  ) {
    this.name = config.name;
    this.log = wiring.log.child({ vm: config.name });
    this.seed = wiring.seed;
    this.deviceBatch = DEVICE_BATCH_PER_VM * wiring.vms;
    this.memory = GuestMemory.allocate(config.memoryMiB);
    this.channelConfig = { flavour: config.viommu, ...config.queues, devices: config.devices.length };
    const layout = channelLayout(this.channelConfig);
    this.channel = new SharedArrayBuffer(layout.bytes);
    this.hostBell = wiring.reactor.signalOf(index);
    if (wiring.transport === 'postmessage') {
      // Each side keeps its own copy of the channel; the link carries every store across.
      this.guestChannel = new SharedArrayBuffer(layout.bytes);
      const { port1, port2 } = new MessageChannel();
      this.link = new PostedLink(port1, this.channel, this.hostBell);
      this.guestPort = port2;
    } else {
      this.guestChannel = this.channel;
    }
    const side = new ChannelSide(this.channel, this.link);
    const guestBell = side.ringer(layout.guestBell);
    this.guestBell = guestBell;
    const { cmdq, dma } = layout;
    const commandError = new CommandErrorRegister(this.channel, layout.commandError, this.link);
    this.cmdq = side.consumer(cmdq);
    this.submitQueues = dma.map((q) => side.consumer(q.submit));
    this.devices = config.devices.map(
      (device, i) =>
        new PciFunction(
          {
            name: `${config.name}/${device.name}`,
            streamId: wiring.devices[i].streamId,
            pri: device.pri,
            priCredits: device.priCredits,
            stall: device.stall,
            sharedPri: wiring.devices[i].sharedPri,
            interfacePasids: wiring.devices[i].sharedPri
              ? wiring.devices[i].ownsRid
                ? [0, ...device.pasids]
                : device.pasids
              : undefined,
            memory: this.memory,
            tracer: wiring.trace && deviceTracer(wiring.trace, index, i + 1, wiring.devices[i].streamId),
          },
          wiring.iommu,
          this.submitQueues[i],
          side.producer(dma[i].complete, guestBell),
          wiring.observer,
          this,
        ),
    );
    const flavour = FLAVOURS[config.viommu]({
      config,
      memory: this.memory,
      channel: this.channel,
      layout,
      side,
      link: this.link,
      guestBell,
      cmdq: this.cmdq,
      commandError,
      devices: wiring.devices,
      smmu: wiring.smmu,
      vtd: wiring.vtd,
      routing: wiring.routing,
      invariants: wiring.invariants,
      ownerOf: wiring.ownerOf,
    });
    this.registry = flavour.registry;
    this.model = flavour.model;
    this.flavourBoot = flavour.boot;
    if (wiring.trace) {
      const trace = wiring.trace;
      trace.nameVm(index, config.name);
      config.devices.forEach((d, i) => {
        trace.nameDevice(index, i + 1, d.name, wiring.devices[i].streamId);
      });
      this.registry.fault.tracer = trace.faultTracer(index);
    }
  }

  /**
   * One of the VM's functions has work (the host's own thread made an op runnable): the VM's
   * pending bit, for the reactor's next pass.
   */
  interrupt(): void {
    this.wiring.reactor.wake(this.index);
  }

  /** Spawn the guest's worker thread and connect the control plane. */
  launch(): void {
    const boot: GuestBoot = {
      name: this.name,
      index: this.index,
      memory: this.memory.buffer,
      channel: this.guestChannel,
      channelConfig: this.channelConfig,
      port: this.guestPort,
      devices: this.config.devices.map((d, i) => ({
        name: d.name,
        streamId: i,
        pasids: d.pasids,
        ownsRid: this.wiring.devices[i].ownsRid,
        pri: d.pri,
        stall: d.stall,
      })),
      workload: { ...this.config.workload, seed: this.seed },
      misbehave: this.config.misbehave,
      // A guest spinning on its own copy of the channel would keep the link's messages out.
      spinNs: this.link ? 0 : this.wiring.spinNs,
      // Over postMessage the guest rings the host through its link, never through shared memory.
      hostSignal: this.link ? undefined : this.wiring.reactor.buffer,
      ...this.flavourBoot,
    };
    const worker = spawnWorker(guestWorkerEntry(), {
      workerData: boot,
      transferList: this.guestPort ? [this.guestPort] : [],
    });
    this.worker = worker;
    worker.once('error', (error) => this.markCrashed(`uncaught exception in the guest: ${error.message}`));
    worker.once('exit', (code) => {
      if (!this.terminating) this.markCrashed(`guest worker exited with code ${code}`);
    });
    // Over postMessage the guest wakes on every message; over `sab` it is told on its doorbell.
    this.control = new ControlPlane(this.name, worker, this.link ? undefined : this.guestBell);
  }

  /** Let the guest build its tables, then install its streams in the IOMMU. */
  async boot(): Promise<void> {
    const contexts = await this.call((c) => c.boot(), BOOT_TIMEOUT_MS);
    if (contexts.length !== this.devices.length) {
      throw new Error(
        `guest ${this.name} booted ${contexts.length} devices, expected ${this.devices.length}`,
      );
    }
    contexts.forEach((ctx: DeviceContext, i) => {
      const valid =
        Number.isInteger(ctx.cdTableGpa) &&
        this.memory.contains(ctx.cdTableGpa, 16) &&
        ctx.cdLog2 >= 0 &&
        ctx.cdLog2 <= 20;
      if (!valid) throw new Error(`guest ${this.name} reported a bad CD table for device ${i}`);
    });
    this.registry.installContexts(contexts);
  }

  /**
   * Start serving and start the guest's workload. A guest that dies or hangs while starting (a
   * hostile one can meet its first fault before it answers) is a dead guest, not a failed launch:
   * the other VMs go on.
   */
  async start(): Promise<void> {
    this.wiring.reactor.serve(this.index, this);
    this.startWatchdog();
    try {
      await this.call((c) => c.start());
    } catch (error) {
      this.giveUp(`guest did not start: ${(error as Error).message}`);
      return;
    }
    this.startInjectors();
  }

  /** With `responseTimeoutMs`, a guest that sits on its faults is given up on (response-watchdog.ts). */
  private startWatchdog(): void {
    const timeout = this.config.responseTimeoutMs;
    if (timeout === undefined) return;
    this.watchdog = new ResponseWatchdog(this.model.stats, timeout, this).start(this.wiring.reactor);
  }

  /**
   * A VMM teardown operation on every device of this VM while its faults are in flight. The
   * registry answers every group it ends (detach, replace, unbind), and the VMM forgets what it
   * had delivered: a guest answer to one of those groups is then a counted unknown response, never
   * applied to a group that reused its cookie. Guest death is `giveUp`.
   */
  teardownOp(op: TeardownOp, atMs: number): void {
    if (this.crashed) {
      this.teardown = { op, atMs, outcome: 'skipped: the guest is dead' };
      return;
    }
    if (op === 'guest-death') {
      this.giveUp('guest death injected (teardown: guest-death)');
      this.teardown = { op, atMs, outcome: 'done' };
      return;
    }
    const outcome = this.registry.teardownOp(op);
    if (op === 'detach' || op === 'replace' || op === 'unbind') this.model.forgetDelivered();
    this.teardown = { op, atMs, outcome };
    this.log.info({ op, outcome }, 'teardown injected');
    this.wiring.reactor.wake(this.index);
  }

  /** Declare the guest dead and end its worker; everything of it is answered and torn down. */
  giveUp(reason: string): void {
    this.markCrashed(reason);
    this.terminating = true;
    this.worker?.terminate().catch(() => {});
  }

  /** Devices with an `inject` section raise faults on the host's own initiative (injector.ts). */
  private startInjectors(): void {
    this.config.devices.forEach((config, i) => {
      if (!config.inject) return;
      this.injectors.push(
        new Injector(this.devices[i], config.inject, this.wiring.reactor, this.index).start(),
      );
    });
  }

  /** The guest's counters; a guest that does not answer within `timeoutMs` rejects. */
  async stats(timeoutMs = CONTROL_TIMEOUT_MS): Promise<GuestStats | undefined> {
    if (this.crashed) return this.guestStats;
    this.guestStats = await this.call((c) => c.stats(), timeoutMs);
    return this.guestStats;
  }

  /**
   * Ask the guest to finish in-flight work and stop; keeps serving it meanwhile. A guest that has
   * not answered by `graceMs` plus STOP_ANSWER_SLACK_MS is hung, and treated as crashed.
   */
  async stop(graceMs: number): Promise<void> {
    this.stopTickers();
    if (!this.crashed) {
      try {
        this.guestStats = await this.call((c) => c.stop(graceMs), graceMs + STOP_ANSWER_SLACK_MS);
      } catch (error) {
        this.markCrashed(`guest did not stop: ${(error as Error).message}`);
      }
    }
  }

  /** Stop serving, answer what is still pending, end the worker, remove the streams. */
  async shutdown(): Promise<void> {
    this.stopTickers();
    this.wiring.reactor.retire(this.index);
    this.pump();
    this.registry.teardown();
    this.model.forgetDelivered();
    for (const device of this.devices) device.service();
    this.control?.release();
    this.terminating = true;
    await this.worker?.terminate();
    this.link?.close();
  }

  /**
   * Guest death: every group pending for it is answered INVALID (detach), its objects are destroyed
   * and its RAM unregistered from host memory (the registry's teardown); its devices fail their
   * in-flight work, and the host stops serving its queues. The other VMs go on.
   */
  private markCrashed(reason: string): void {
    if (this.crashed) return;
    this.crashed = true;
    this.crashReason = reason;
    this.stopTickers();
    this.log.error({ reason }, 'guest crashed');
    this.registry.teardown();
    this.model.forgetDelivered();
    this.wiring.reactor.wake(this.index);
  }

  private stopTickers(): void {
    const reactor = this.wiring.reactor;
    reactor.cancel(this.watchdog);
    for (const ticker of this.injectors) reactor.cancel(ticker);
    this.injectors.length = 0;
  }

  /** A control-plane call (control-plane.ts): rejects on the guest's exit or after `timeoutMs`. */
  private async call<T>(fn: (control: GuestControlRemote) => Promise<T>, timeoutMs?: number): Promise<T> {
    if (!this.control) throw new Error(`guest ${this.name} is not launched`);
    return this.control.call(fn, timeoutMs);
  }

  /**
   * One pass over everything the guest may have produced, for the reactor. Returns records handled.
   * A dead guest's queues are no longer served (its registry is closed); its devices still finish
   * their work. An exception is counted as the `host-exception` violation, never thrown: the
   * reactor serves every other VM in the same loop.
   */
  pump(): number {
    const clock = stageClock;
    try {
      let work = 0;
      if (!this.crashed) {
        clock.enter(STAGE_VIOMMU);
        work += this.model.serviceCommands();
        clock.leave();
      }
      clock.enter(STAGE_DEVICE);
      for (const device of this.devices) work += device.service(this.deviceBatch);
      clock.leave();
      if (this.crashed) return work;
      clock.enter(STAGE_VIOMMU);
      work += this.model.drainFaults() + this.model.drainEvents();
      clock.leave();
      return work;
    } catch (error) {
      this.wiring.invariants.violation({
        rule: 'host-exception',
        vm: this.name,
        detail: (error as Error).stack ?? String(error),
      });
      this.log.error({ err: error }, 'host service loop threw');
      return 0;
    }
  }

  hasWork(): boolean {
    if (!this.crashed && (!this.cmdq.empty() || this.model.faultsPending || this.model.eventsPending))
      return true;
    for (let i = 0; i < this.devices.length; i++) {
      if (this.devices[i].hasWork || !this.submitQueues[i].empty()) return true;
    }
    return false;
  }
}
