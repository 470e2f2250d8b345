/**
 * One guest VM on its worker thread: guest memory manager, SMMUv3 driver, one workload per device,
 * and the main loop that sleeps on the VM's doorbell when there is nothing to do.
 */

import { ChannelSide } from '../shared/channel-side.ts';
import { CommandErrorRegister } from '../shared/command-error.ts';
import type { DeviceContext, GuestBoot, GuestControl, GuestStats } from '../shared/control.ts';
import { Doorbell } from '../shared/doorbell.ts';
import { GuestMemory } from '../shared/guest-memory.ts';
import type { Logger } from '../shared/logger.ts';
import { PostedLink } from '../shared/posted-link.ts';
import type { RingConsumer, RingProducer } from '../shared/ring.ts';
import { channelLayout } from '../shared/vm-channel.ts';
import { Misbehaviour } from './misbehave.ts';
import { AddressSpaces } from './mm/address-spaces.ts';
import { DemandPager } from './mm/demand-pager.ts';
import { PageAllocator } from './mm/page-allocator.ts';
import { Smmuv3Driver } from './smmuv3-driver.ts';
import { VtdDriver } from './vtd-driver.ts';
import { createWorkload, type DeviceQueues, type Workload } from './workloads/workload.ts';

/** Busy iterations between visits to the event loop, so the control plane is never starved. */
const YIELD_EVERY = 64;
/** Longest sleep on the doorbell before the loop looks around anyway. */
const SLEEP_MS = 1000;

/** What the main loop and the memory manager need of a vIOMMU driver, whatever its flavour. */
interface IommuDriver {
  poll(): number;
  readonly blockedOnCommandQueue: boolean;
  /** Its fault queues hold something. */
  readonly pending: boolean;
  readonly pageRequestRing: RingConsumer;
  readonly eventRing?: RingConsumer;
  invalidateVa(pasid: number, va: number): number;
  syncCompleted(): number;
}

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
  };
}

export class GuestVm implements GuestControl {
  private readonly counters = emptyStats();
  private readonly memory: GuestMemory;
  private readonly spaces: AddressSpaces;
  private readonly pager: DemandPager;
  private readonly driver: IommuDriver;
  private readonly cmdq: RingProducer;
  private readonly link: PostedLink | undefined;
  private readonly commandError: CommandErrorRegister;
  private readonly bell: Doorbell;
  private readonly devices: DeviceQueues[];
  private readonly workloads: Workload[];
  /** A hostile guest's hooks; undefined for a well-behaved guest. */
  private readonly misbehave: Misbehaviour | undefined;
  private running = false;
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
    const hostBell = side.ringer(layout.hostBell);
    this.cmdq = side.producer(layout.cmdq, hostBell);
    this.commandError = new CommandErrorRegister(config.channel, layout.commandError, this.link);
    const syncWord = pages.allocZeroed();
    if (syncWord < 0) throw new Error('guest RAM exhausted before boot');
    if (layout.prq) {
      this.driver = new VtdDriver(
        config.channel,
        layout.prq,
        this.cmdq,
        this.pager,
        this.counters,
        this.memory,
        syncWord,
        this.link,
        misbehave,
      );
    } else if (layout.priq && layout.evtq) {
      this.driver = new Smmuv3Driver(
        side.consumer(layout.priq),
        side.consumer(layout.evtq),
        this.cmdq,
        this.pager,
        this.counters,
        this.memory,
        syncWord,
        misbehave,
      );
    } else {
      throw new Error(`channel layout has no fault queues for ${config.channelConfig.flavour}`);
    }
    misbehave?.attach({
      flavour: config.channelConfig.flavour,
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
    this.loop = this.run().catch((error: unknown) => {
      this.log.fatal({ err: error }, 'guest main loop failed');
      throw error;
    });
    this.log.debug({ workload: this.config.workload.kind }, 'guest started');
  }

  async stop(graceMs: number): Promise<GuestStats> {
    for (const workload of this.workloads) workload.quiesce();
    const deadline = performance.now() + graceMs;
    while (this.running && this.workloads.some((w) => w.inFlight > 0) && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    this.running = false;
    this.bell.ring();
    await this.loop;
    return this.snapshot();
  }

  stats(): GuestStats {
    return this.snapshot();
  }

  private snapshot(): GuestStats {
    this.counters.pagesMapped = this.pager.pagesMapped;
    this.counters.workloadDone = this.workloads.every((w) => w.done);
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

  private async run(): Promise<void> {
    // start() answers the host before the first pass: the busy passes run without an await.
    await new Promise(setImmediate);
    const spinNs = this.config.spinNs;
    let busy = 0;
    while (this.running) {
      if (this.pollAll() > 0) {
        if (++busy % YIELD_EVERY === 0) await new Promise(setImmediate);
        continue;
      }
      if (this.driver.blockedOnCommandQueue) {
        const seen = this.cmdq.armSpaceWait();
        if (seen >= 0) await this.cmdq.spaceBell.waitAsync(seen, SLEEP_MS);
        continue;
      }
      // Sleep protocol: read the sequence, spin briefly, arm, re-check, then wait on that sequence.
      const seen = this.bell.sequence();
      if (this.bell.spin(seen, spinNs)) continue;
      this.bell.arm();
      if (this.pending() || !this.running) {
        this.bell.disarm();
        continue;
      }
      this.counters.wakeups++;
      await this.bell.waitAsync(seen, this.misbehave ? this.misbehave.sleepMs(SLEEP_MS) : SLEEP_MS);
    }
  }
}
