/**
 * Stress campaigns: every run draws its topology from its seed alone, so a run reproduces from
 * `npx ioasid-sandbox stress --runs 1 --seed <seed>`.
 */
import { MISBEHAVIOURS, type Misbehaviour, type WorkloadKind } from '../../shared/control.ts';
import { Prng } from '../../shared/prng.ts';
import { TEARDOWN_OPS, type Topology, TopologySchema } from '../vmm/topology.ts';

export const MAX_VMS = 16;
export const MAX_DEVICES = 4;
/** Chance that a VM misbehaves, and that a misbehaving VM has a second misbehaviour. */
const MISBEHAVE_P = 0.3;
const SECOND_MISBEHAVIOUR_P = 0.2;
/** Chance that a run with two or more VT-d VMs shares a function between two of them. */
const SHARED_FUNCTION_P = 0.35;
/** Misbehaviours that leave faults unanswered: their VMs get a short responseTimeoutMs. */
const SILENT: readonly Misbehaviour[] = ['hang', 'never-respond'];
/** Chance that a VM gets a teardown operation injected while its faults are in flight. */
const TEARDOWN_P = 0.12;
/** Chance that a run sets a response deadline on every group (iopfTimeoutMs). */
const DEADLINE_P = 0.2;
/** Chance that a run carries its queue records by postMessage instead of shared rings. */
const POSTMESSAGE_P = 0.15;
/** Chance that a run has physical IOMMUs of its own (1 to 3, small queues, devices spread). */
const IOMMUS_P = 0.3;
/** Chance that a queue's size is drawn at a limit of its range (smallest or largest). */
const QUEUE_LIMIT_P = 0.1;
/** Chance that a PRI device has the host inject page requests on one of its PASIDs. */
const INJECT_P = 0.15;
/**
 * Chance that a shared function's interface without the RID injects page requests on its PASID
 * and is torn down mid-run: requests for a PASID whose attachment is gone, the shape in which a
 * fallback to the RID's handler delivers one VM's faults to another.
 */
const ORPHANED_INTERFACE_P = 0.4;
/** Teardown ops after which an interface's PASIDs have no route (ioasid-owner routing). */
const ORPHANING_OPS = ['detach', 'unbind'] as const;
/**
 * Chance that a run without a shared function uses device-owner routing: its PASIDs' HWPTs have
 * no fault queue, and their faults report through the RID's.
 */
const DEVICE_OWNER_P = 0.15;

/**
 * The seed of run `index` in a campaign seeded `campaignSeed`. Run 0 has the campaign's seed, so
 * `--runs 1 --seed <s>` replays any run whose seed is s.
 */
export function runSeed(campaignSeed: number, index: number): number {
  if (index === 0) return campaignSeed >>> 0;
  // splitmix32-style finaliser over (seed, index).
  let h = (campaignSeed ^ Math.imul(index, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The one-line command that reruns the run with this seed. */
export function replayCommand(seed: number): string {
  return `npx ioasid-sandbox stress --runs 1 --seed ${seed}`;
}

const pick = <T>(prng: Prng, items: readonly T[]): T => items[prng.below(items.length)];
const chance = (prng: Prng, p: number): boolean => prng.nextU32() / 0x1_0000_0000 < p;
/** Integer in [min, max]. */
const between = (prng: Prng, min: number, max: number): number => min + prng.below(max - min + 1);
/** Integer in [1, max] skewed toward 1: 1 + floor(max * u^power) for a uniform u. */
const skewed = (prng: Prng, max: number, power: number): number =>
  1 + Math.min(max - 1, Math.floor(max * (prng.nextU32() / 0x1_0000_0000) ** power));
/** A queue's log2 size, mostly in [min, max], now and then at a limit of the schema's range. */
const queueLog2 = (prng: Prng, min: number, max: number, lowest = min, highest = max): number =>
  chance(prng, QUEUE_LIMIT_P) ? pick(prng, [lowest, highest]) : between(prng, min, max);

/**
 * Buffer sizes (pages per device): a page fault per page, small enough that a run takes a second or
 * two (the reactor's fault path carries ten times the buffers of the loop-per-VM one in that time).
 */
function workloadPages(prng: Prng, kind: WorkloadKind): number {
  switch (kind) {
    case 'sva-stream':
    case 'fault-storm':
      return between(prng, 240, 2880);
    case 'map-churn':
      return between(prng, 240, 1440);
    case 'stray-dma':
      return between(prng, 4, 24);
    case 'idle':
      return 1;
  }
}

type DeviceInput = {
  name: string;
  pri: boolean;
  stall?: boolean;
  pasids: number[];
  priCredits: number;
  function?: string;
  iommu?: string;
  inject?: { ratePerSec: number; groupSize: number; pasid: number };
};

/** Page requests the host raises on one of the device's PASIDs (0: its RID, when it holds it). */
function injector(prng: Prng, device: DeviceInput, holdsRid: boolean): DeviceInput['inject'] {
  return {
    ratePerSec: pick(prng, [200, 1000, 2000]),
    groupSize: between(prng, 1, Math.min(4, device.priCredits)),
    pasid: pick(prng, holdsRid ? [0, ...device.pasids] : device.pasids),
  };
}

export function drawTopology(seed: number): Topology {
  const prng = new Prng(seed ^ 0x2545f491);
  const vmCount = skewed(prng, MAX_VMS, 4);
  const vms = Array.from({ length: vmCount }, (_, v) => {
    const viommu = pick(prng, ['smmuv3', 'vtd'] as const);
    const misbehave: Misbehaviour[] = [];
    if (chance(prng, MISBEHAVE_P)) {
      misbehave.push(pick(prng, MISBEHAVIOURS));
      const second = pick(prng, MISBEHAVIOURS);
      if (chance(prng, SECOND_MISBEHAVIOUR_P) && !misbehave.includes(second)) misbehave.push(second);
    }
    // A misbehaviour shows in fault handling, so a misbehaving VM gets a faulting workload.
    const kind: WorkloadKind = pick(
      prng,
      misbehave.length > 0
        ? (['sva-stream', 'fault-storm', 'map-churn'] as const)
        : (['sva-stream', 'fault-storm', 'map-churn', 'stray-dma', 'idle'] as const),
    );
    const devices: DeviceInput[] = Array.from({ length: skewed(prng, MAX_DEVICES, 2) }, (_, d) => {
      // SMMUv3: PRI, stall or plain (terminate model); VT-d: PRI or plain.
      const mode =
        viommu === 'smmuv3'
          ? pick(prng, ['pri', 'pri', 'pri', 'stall', 'plain'] as const)
          : pick(prng, ['pri', 'pri', 'pri', 'plain'] as const);
      return {
        name: `dev${d}`,
        pri: mode === 'pri',
        ...(mode === 'stall' ? { stall: true } : {}),
        pasids: [...pick(prng, [[1], [1], [1], [1, 2], []])],
        priCredits: pick(prng, [1, 2, 4, 8, 32, 32]),
      };
    });
    for (const device of devices) {
      if (device.pri && chance(prng, INJECT_P)) device.inject = injector(prng, device, true);
    }
    const timeout = misbehave.some((m) => SILENT.includes(m));
    const pages = workloadPages(prng, kind);
    return {
      name: `vm${v}`,
      memoryMiB: 16,
      viommu,
      devices,
      workload: {
        kind,
        pages,
        seed: prng.nextU32(),
        queueDepth: pick(prng, [1, 2, 4, 8, 16]),
      },
      // The largest limits are the schema's, except the DMA queue's (a 2^12-slot completion queue
      // per device would hold every op a run makes, and test nothing of a full queue).
      queues: {
        priqLog2: queueLog2(prng, 1, 8, 1, 19),
        evtqLog2: queueLog2(prng, 1, 6, 1, 19),
        cmdqLog2: queueLog2(prng, 1, 8, 1, 19),
        dmaQueueLog2: queueLog2(prng, 1, 6),
      },
      misbehave,
      ...(timeout ? { responseTimeoutMs: between(prng, 200, 500) } : {}),
      ...(chance(prng, TEARDOWN_P)
        ? { teardown: { atMs: between(prng, 0, 150), op: pick(prng, TEARDOWN_OPS) } }
        : {}),
    };
  });
  // A function shared by two VT-d VMs: the first holds its RID and PASID 1, the other PASID 2.
  const vtd = vms.filter((vm) => vm.viommu === 'vtd');
  if (vtd.length >= 2 && chance(prng, SHARED_FUNCTION_P)) {
    const [a, b] = prng.shuffle([...vtd]).slice(0, 2);
    const priCredits = pick(prng, [4, 8, 32]);
    [a, b].forEach((vm, i) => {
      const iface: DeviceInput = { name: 'sf0', function: 'sf0', pri: true, pasids: [i + 1], priCredits };
      if (vm.devices.length === MAX_DEVICES) vm.devices[MAX_DEVICES - 1] = iface;
      else vm.devices.push(iface);
    });
    if (chance(prng, ORPHANED_INTERFACE_P)) {
      const iface = b.devices.find((d) => d.function === 'sf0') as DeviceInput;
      iface.inject = injector(prng, iface, false);
      b.teardown = { atMs: between(prng, 0, 100), op: pick(prng, ORPHANING_OPS) };
      if (b.workload.kind === 'idle') b.workload = { ...b.workload, kind: 'sva-stream', pages: 512 };
    }
  }
  const shared = vms.some((vm) => vm.devices.some((d) => d.function !== undefined));
  // Room for every device's buffer and its page tables (the sum topology.ts checks).
  for (const vm of vms) {
    const pages = vm.workload.pages;
    const needed = vm.devices.length * (pages + 4 * Math.ceil(pages / 512) + 8) + 16;
    vm.memoryMiB = Math.max(16, Math.ceil(needed / 256));
  }
  // Physical IOMMUs: each device that is not a shared function's interface sits behind one.
  const iommus = chance(prng, IOMMUS_P)
    ? Array.from({ length: between(prng, 1, 3) }, (_, i) => ({
        name: `iommu${i}`,
        priqLog2: queueLog2(prng, 3, 8, 1, 19),
        evtqLog2: queueLog2(prng, 2, 8, 1, 19),
      }))
    : undefined;
  if (iommus) {
    for (const vm of vms) {
      for (const device of vm.devices) if (!device.function) device.iommu = pick(prng, iommus).name;
    }
  }
  const deadline = chance(prng, DEADLINE_P) ? between(prng, 5, 200) : undefined;
  const transport = chance(prng, POSTMESSAGE_P) ? 'postmessage' : 'sab';
  return TopologySchema.parse({
    name: `stress-${seed.toString(16)}`,
    routing: !shared && chance(prng, DEVICE_OWNER_P) ? 'device-owner' : 'ioasid-owner',
    ...(iommus ? { iommus } : {}),
    ...(deadline === undefined ? {} : { iopfTimeoutMs: deadline }),
    transport,
    iommu: pick(prng, [
      { iotlbEntries: 4096, iotlbWays: 4 },
      { iotlbEntries: 64, iotlbWays: 4 },
      { iotlbEntries: 16, iotlbWays: 1 },
    ]),
    vms,
    spinNs: pick(prng, [0, 20_000]),
  });
}
