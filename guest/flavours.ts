/**
 * The vIOMMU flavours, guest side: the one place that maps the channel's flavour to the driver the
 * guest runs and to how a hostile guest forges commands for it. Everything else in the guest is
 * flavour-blind: the main loop and the memory manager talk to an IommuDriver. A new flavour is its
 * own files plus one line in GUEST_FLAVOURS (and its host side in host/vmm/flavours.ts).
 */
import type { ChannelSide } from '../shared/channel-side.ts';
import type { GuestBoot, GuestStats } from '../shared/control.ts';
import type { Doorbell } from '../shared/doorbell.ts';
import type { GuestMemory } from '../shared/guest-memory.ts';
import type { PostedLink } from '../shared/posted-link.ts';
import type { RingConsumer, RingProducer } from '../shared/ring.ts';
import type { ChannelLayout, Flavour } from '../shared/vm-channel.ts';
import type { CommandForger } from './command-forger.ts';
import type { Misbehaviour } from './misbehave.ts';
import type { DemandPager } from './mm/demand-pager.ts';
import { Smmuv3Driver } from './smmuv3-driver.ts';
import { Smmuv3Forger } from './smmuv3-forger.ts';
import { VtdDriver } from './vtd-driver.ts';
import { VtdForger } from './vtd-forger.ts';

/** What the main loop and the memory manager need of a vIOMMU driver, whatever its flavour. */
export interface IommuDriver {
  poll(): number;
  readonly blockedOnCommandQueue: boolean;
  /** Its fault queues hold something. */
  readonly pending: boolean;
  readonly pageRequestRing: RingConsumer;
  readonly eventRing?: RingConsumer;
  invalidateVa(pasid: number, va: number): number;
  syncCompleted(): number;
}

/** What a driver is built from: the guest's channel, memory, pager and boot parameters. */
export interface DriverContext {
  boot: GuestBoot;
  layout: ChannelLayout;
  side: ChannelSide;
  link: PostedLink | undefined;
  hostBell: Doorbell;
  commands: RingProducer;
  pager: DemandPager;
  stats: GuestStats;
  memory: GuestMemory;
  /** A word of guest RAM that completion waits write to. */
  syncWordGpa: number;
  misbehave: Misbehaviour | undefined;
}

export interface GuestFlavour {
  driver(ctx: DriverContext): IommuDriver;
  forger(commands: RingProducer): CommandForger;
}

export const GUEST_FLAVOURS: Readonly<Record<Flavour, GuestFlavour>> = {
  smmuv3: {
    driver(ctx) {
      const { layout } = ctx;
      if (!layout.priq || !layout.evtq)
        throw new Error('an SMMUv3 channel has a PRI queue and an event queue');
      return new Smmuv3Driver(
        ctx.side.consumer(layout.priq),
        ctx.side.consumer(layout.evtq),
        ctx.commands,
        ctx.pager,
        ctx.stats,
        ctx.memory,
        ctx.syncWordGpa,
        ctx.misbehave,
        { hostBell: ctx.hostBell, idr0: ctx.boot.smmuIdr0 },
      );
    },
    forger: (commands) => new Smmuv3Forger(commands),
  },
  vtd: {
    driver(ctx) {
      const { layout } = ctx;
      if (!layout.prq) throw new Error('a VT-d channel has a page request queue');
      return new VtdDriver(
        ctx.boot.channel,
        layout.prq,
        ctx.commands,
        ctx.pager,
        ctx.stats,
        ctx.memory,
        ctx.syncWordGpa,
        ctx.link,
        ctx.misbehave,
      );
    },
    forger: (commands) => new VtdForger(commands),
  },
};
