/**
 * One guest VM on its worker thread: guest memory manager, vIOMMU driver, one workload per device,
 * and the main loop that sleeps on the VM's doorbell when there is nothing to do.
 *
 * Over `sab` the main loop is synchronous, like the host's reactor: it polls while polls find work,
 * spins briefly, returns to the event loop once, then blocks in Atomics.wait. It returns to the
 * event loop after at most SLICE_MS of busy polls and whenever the host posted a control-plane
 * message (the host raises CONTROL on the guest's doorbell with it). Over postMessage it sleeps in
 * Atomics.waitAsync, since the link's messages arrive through the event loop.
 */

import { ChannelSide } from '../shared/channel-side.ts';
import { CommandErrorRegister } from '../shared/command-error.ts';
import type { DeviceContext, GuestBoot, GuestControl, GuestStats } from '../shared/control.ts';
import { CycleHistogram } from '../shared/cycle-histogram.ts';
import { Doorbell } from '../shared/doorbell.ts';
import { GuestMemory } from '../shared/guest-memory.ts';
import { VmSignal } from '../shared/host-signal.ts';
import type { Logger } from '../shared/logger.ts';
import { PostedLink } from '../shared/posted-link.ts';
import type { RingProducer } from '../shared/ring.ts';
import { channelLayout } from '../shared/vm-channel.ts';
import { GUEST_FLAVOURS, type IommuDriver } from './flavours.ts';
import { Misbehaviour } from './misbehave.ts';
import { AddressSpaces } from './mm/address-spaces.ts';
import { DemandPager } from './mm/demand-pager.ts';
import { PageAllocator } from './mm/page-allocator.ts';
import { createWorkload, type DeviceQueues, type Workload } from './workloads/workload.ts';

/** postMessage: busy iterations between visits to the event loop, where the link's messages arrive. */
const YIELD_EVERY = 64;
/** Longest stretch of busy polls before the synchronous loop returns to the event loop. */
const SLICE_MS = 1;
/** Longest sleep on the doorbell before the loop looks around anyway. */
const SLEEP_MS = 1000;
/** Longest wait for room in the command queue (the host drains it on every pass). */
const SPACE_WAIT_MS = 10;

export function emptyStats(): GuestStats {
  return {
    pageRequests: 0,
    groupsAnswered: 0,
    responses: { success: 0, invalid: 0, failure: 0 },
    stopMarkers: 0,
    overflowsAcknowledged: 0,
    partialGroupsDropped: 0,
    events: 0,
    eventOverflowsAcknowledged: 0,
    commandErrors: 0,
    stallsResumed: 0,
    unmaps: 0,
    pagesMapped: 0,
    dmaSubmitted: 0,
    dmaCompleted: 0,
    dmaFailed: 0,
    workloadDone: false,
    wakeups: 0,
    dmaCycleUs: { p50: 0, p99: 0, max: 0, count: 0 },
  };
}

export class GuestVm implements GuestControl {
  private readonly counters = emptyStats();
  /** Every device's DMA cycles, from submit to completion. */
  private readonly cycles = new CycleHistogram();
  private readonly memory: GuestMemory;
  private readonly spaces: AddressSpaces;
  private readonly pager: DemandPager;
  private readonly driver: IommuDriver;
  private readonly cmdq: RingProducer;
  private readonly link: PostedLink | undefined;
  private readonly commandError: CommandErrorRegister;
  private readonly bell: Doorbell;
  /** The line to the host: this VM's bit in the host signal over `sab`, the link's ring otherwise. */
  private readonly hostBell: Doorbell;
  private readonly devices: DeviceQueues[];
  private readonly workloads: Workload[];
  /** A hostile guest's hooks; undefined for a well-behaved guest. */
  private readonly misbehave: Misbehaviour | undefined;
  private running = false;
  /** stop() asked the workloads to finish: the loop ends once none is in flight, or at this time. */
  private stopDeadline = Number.POSITIVE_INFINITY;
  /** The synchronous loop spun and found nothing since its last work: it may sleep now. */
  private idle = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly config: GuestBoot,
    private readonly log: Logger,
  ) {
    this.memory = new GuestMemory(config.memory);
    const misbehave =
      config.misbehave.length > 0
        ? new Misbehaviour(
            config.misbehave,
            config.devices.length,
            config.workload.seed ^ Math.imul(config.index + 1, 0x9e3779b1),
            this.memory,
          )
        : undefined;
    this.misbehave = misbehave;
    const pages = new PageAllocator(this.memory);
    this.spaces = new AddressSpaces(this.memory, pages);
    this.pager = new DemandPager(this.memory, pages, this.spaces, misbehave);
    const layout = channelLayout(config.channelConfig);
    this.bell = new Doorbell(config.channel, layout.guestBell);
    // With the postMessage transport this channel is the guest's own copy, kept by the link.
    this.link = config.port ? new PostedLink(config.port, config.channel, this.bell) : undefined;
    const side = new ChannelSide(config.channel, this.link);
    const hostBell = config.hostSignal
      ? new VmSignal(config.hostSignal, config.index)
      : side.ringer(layout.hostBell);
    this.hostBell = hostBell;
    this.cmdq = side.producer(layout.cmdq, hostBell);
    this.commandError = new CommandErrorRegister(config.channel, layout.commandError, this.link);
    const syncWord = pages.allocZeroed();
    if (syncWord < 0) throw new Error('guest RAM exhausted before boot');
    const flavour = GUEST_FLAVOURS[config.channelConfig.flavour];
    this.driver = flavour.driver({
      boot: config,
      layout,
      side,
      link: this.link,
      hostBell,
      commands: this.cmdq,
      pager: this.pager,
      stats: this.counters,
      memory: this.memory,
      syncWordGpa: syncWord,
      misbehave,
    });
    misbehave?.attach({
      forger: flavour.forger(this.cmdq),
      commands: this.cmdq,
      pageRequests: this.driver.pageRequestRing,
      events: this.driver.eventRing,
      hostBell,
      mirror: this.link,
    });
    this.devices = config.devices.map((device, index) => ({
      index,
      streamId: device.streamId,
      pasid: device.pasids[0] ?? 0,
      submit: side.producer(layout.dma[index].submit, hostBell),
      complete: side.consumer(layout.dma[index].complete),
      cycles: this.cycles,
      misbehave,
    }));
    this.workloads = this.devices.map((device) =>
      createWorkload(
        config.workload,
        device,
        {
          pager: this.pager,
          spaces: this.spaces,
          pages,
          memoryWords: this.memory.words,
          ramSize: this.memory.size,
          tlb: this.driver,
        },
        this.counters,
      ),
    );
  }

  boot(): DeviceContext[] {
    this.memory.touch();
    // Entry 0 of the CD (or PASID) table is the RID's own address space (requests without a PASID).
    return this.config.devices.map((device) =>
      this.spaces.installDevice(
        device.streamId,
        device.ownsRid ? [0, ...device.pasids] : device.pasids,
        device.stall,
      ),
    );
  }

  start(): void {
    if (this.running) return;
    for (const workload of this.workloads) workload.start();
    this.running = true;
    this.loop = (this.link ? this.runAsync() : this.runSync()).catch((error: unknown) => {
      this.log.fatal({ err: error }, 'guest main loop failed');
      throw error;
    });
    this.log.debug({ workload: this.config.workload.kind }, 'guest started');
  }

  /** Quiesce the workloads; the loop serves their in-flight DMA for up to `graceMs`, then ends. */
  async stop(graceMs: number): Promise<GuestStats> {
    for (const workload of this.workloads) workload.quiesce();
    this.stopDeadline = performance.now() + graceMs;
    this.bell.ring();
    await this.loop;
    this.running = false;
    return this.snapshot();
  }

  /**
   * A control-plane message was posted to the host: over `sab` its reactor may be blocked in
   * Atomics.wait, so raise CONTROL on the host signal (worker.ts calls this after every post).
   */
  controlPosted(): void {
    if (!this.link) this.hostBell.ringControl();
  }

  stats(): GuestStats {
    return this.snapshot();
  }

  private snapshot(): GuestStats {
    this.counters.pagesMapped = this.pager.pagesMapped;
    this.counters.workloadDone = this.workloads.every((w) => w.done);
    this.counters.dmaCycleUs = this.cycles.summary();
    return structuredClone(this.counters);
  }

  private pollAll(): number {
    this.misbehave?.beforePoll();
    // The driver's error handler: the host refused a command it skipped; count and acknowledge.
    if (this.commandError.pending) {
      this.counters.commandErrors++;
      this.commandError.acknowledge();
    }
    let work = this.driver.poll();
    for (const workload of this.workloads) work += workload.poll();
    this.misbehave?.afterPoll();
    return work;
  }

  private pending(): boolean {
    if (this.driver.pending) return true;
    return this.devices.some((device) => !device.complete.empty());
  }

  /** The loop is over: stopped, or stop()'s workloads are done or out of time. */
  private finished(): boolean {
    if (!this.running) return true;
    if (this.stopDeadline === Number.POSITIVE_INFINITY) return false;
    if (this.workloads.some((w) => w.inFlight > 0) && performance.now() < this.stopDeadline) return false;
    this.running = false;
    return true;
  }

  /** The longest sleep now: shorter while stop() waits, or while a hostile guest must not sleep. */
  private sleepMs(): number {
    const ms = Math.min(SLEEP_MS, Math.max(0, this.stopDeadline - performance.now()));
    return this.misbehave ? this.misbehave.sleepMs(ms) : ms;
  }

  /** The `sab` loop: synchronous stretches, each ended by a return to the event loop. */
  private runSync(): Promise<void> {
    return new Promise((resolve, reject) => {
      const turn = () => {
        try {
          if (this.stretch()) setImmediate(turn);
          else resolve();
        } catch (error) {
          reject(error);
        }
      };
      // start() answers the host before the first pass.
      setImmediate(turn);
    });
  }

  /** One synchronous stretch; false once the loop is over. */
  private stretch(): boolean {
    const spinNs = this.config.spinNs;
    const sliceEnd = performance.now() + SLICE_MS;
    for (;;) {
      if (this.finished()) return false;
      if (this.pollAll() > 0) {
        this.idle = false;
        if (performance.now() >= sliceEnd) return true;
        continue;
      }
      if (this.bell.takeControl()) return true;
      if (this.driver.blockedOnCommandQueue) {
        const seen = this.cmdq.armSpaceWait();
        if (seen >= 0) this.cmdq.spaceBell.wait(seen, SPACE_WAIT_MS);
        if (performance.now() >= sliceEnd) return true;
        continue;
      }
      // Sleep protocol: read the sequence, spin briefly, visit the event loop once (timers and
      // messages run before a long sleep, not after it), arm, re-check, then wait on that sequence.
      const seen = this.bell.sequence();
      if (!this.idle) {
        if (this.bell.spin(seen, spinNs)) continue;
        this.idle = true;
        return true;
      }
      this.bell.arm();
      if (this.pending()) {
        this.bell.disarm();
        this.idle = false;
        continue;
      }
      this.counters.wakeups++;
      const result = this.bell.wait(seen, this.sleepMs());
      this.idle = false;
      if (result === 'timed-out') return true;
    }
  }

  /** The postMessage loop: the link's records arrive through the event loop, so it never blocks. */
  private async runAsync(): Promise<void> {
    // start() answers the host before the first pass: the busy passes run without an await.
    await new Promise(setImmediate);
    let busy = 0;
    while (!this.finished()) {
      if (this.pollAll() > 0) {
        if (++busy % YIELD_EVERY === 0) await new Promise(setImmediate);
        continue;
      }
      if (this.driver.blockedOnCommandQueue) {
        const seen = this.cmdq.armSpaceWait();
        if (seen >= 0) await this.cmdq.spaceBell.waitAsync(seen, SPACE_WAIT_MS);
        continue;
      }
      const seen = this.bell.sequence();
      this.bell.arm();
      if (this.pending()) {
        this.bell.disarm();
        continue;
      }
      this.counters.wakeups++;
      await this.bell.waitAsync(seen, this.sleepMs());
    }
  }
}
