/**
 * The vIOMMU flavours a VM can have, host side: the one place that maps a topology's `viommu` to
 * the VMM's registry set-up (how it backs the guest's tables with iommufd objects) and the device
 * model of the guest-visible queues. Everything else in a VM is flavour-blind: it talks to a
 * VmRegistry and a ViommuModel. A new flavour is its own files plus one line in FLAVOURS (and
 * its guest driver in guest/flavours.ts).
 */
import type { ChannelSide } from '../../shared/channel-side.ts';
import type { CommandErrorRegister } from '../../shared/command-error.ts';
import type { GuestBoot } from '../../shared/control.ts';
import type { Doorbell } from '../../shared/doorbell.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import type { PostedLink } from '../../shared/posted-link.ts';
import type { RingConsumer } from '../../shared/ring.ts';
import type { ChannelLayout, Flavour } from '../../shared/vm-channel.ts';
import type { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import type { VtdOps } from '../iommu/vtd-ops.ts';
import type { InvariantChecker } from './invariants.ts';
import type { Topology, VmConfig } from './topology.ts';
import type { ViommuModel, VmRegistry } from './viommu-model.ts';
import { VmIommu } from './vm-iommu.ts';
import { Vsmmu } from './vsmmu.ts';
import { VtdPageRequestQueue } from './vtd-prq-model.ts';
import { VtdVmIommu } from './vtd-vm-iommu.ts';
import { Vvtd } from './vvtd.ts';

/** What a flavour's set-up is given: the VM's memory, its channel, and the host's drivers. */
export interface FlavourContext {
  config: VmConfig;
  memory: GuestMemory;
  channel: SharedArrayBuffer;
  layout: ChannelLayout;
  side: ChannelSide;
  link: PostedLink | undefined;
  /** The guest's interrupt line (the model rings it when it writes a queue). */
  guestBell: Doorbell;
  cmdq: RingConsumer;
  commandError: CommandErrorRegister;
  /** Each device's physical StreamID and whether the VM holds its RID. */
  devices: readonly { streamId: number; ownsRid: boolean }[];
  smmu: Smmuv3Ops;
  vtd: VtdOps;
  routing: Topology['routing'];
  invariants: InvariantChecker;
  ownerOf(streamId: number, pasid: number): string | undefined;
}

/** A VM's vIOMMU, host side, and what its guest driver must be told at boot. */
export interface VmFlavour {
  registry: VmRegistry;
  model: ViommuModel;
  boot: Partial<GuestBoot>;
}

function smmuv3(ctx: FlavourContext): VmFlavour {
  const { layout, config } = ctx;
  if (!layout.priq || !layout.evtq) throw new Error('an SMMUv3 channel has a PRI queue and an event queue');
  const registry = new VmIommu(
    ctx.smmu,
    ctx.memory,
    ctx.devices.map((d, i) => ({
      streamId: d.streamId,
      hasPasids: config.devices[i].pasids.length > 0,
      stall: config.devices[i].stall,
    })),
  );
  const model = new Vsmmu(
    config.name,
    ctx.side.producer(layout.priq, ctx.guestBell),
    ctx.side.producer(layout.evtq, ctx.guestBell),
    ctx.cmdq,
    registry,
    registry.faultFd,
    registry.veventqFd,
    ctx.invariants,
    ctx.ownerOf,
    ctx.memory,
    ctx.commandError,
    // The guest gets RAZ/WI terminations only where the host SMMU has them (QEMU smmuv3-accel).
    { termModel: registry.termModel },
  );
  return { registry, model, boot: { smmuIdr0: model.idr0 } };
}

function vtd(ctx: FlavourContext): VmFlavour {
  const { layout } = ctx;
  if (!layout.prq) throw new Error('a VT-d channel has a page request queue');
  const registry = new VtdVmIommu(ctx.vtd, ctx.memory, ctx.devices, ctx.routing);
  const model = new Vvtd(
    ctx.config.name,
    new VtdPageRequestQueue(ctx.channel, layout.prq.offset, layout.prq.log2Size, ctx.guestBell, ctx.link),
    ctx.cmdq,
    registry,
    registry.faultFd,
    ctx.invariants,
    ctx.ownerOf,
    ctx.memory,
    ctx.commandError,
  );
  return { registry, model, boot: {} };
}

export const FLAVOURS: Readonly<Record<Flavour, (ctx: FlavourContext) => VmFlavour>> = { smmuv3, vtd };
