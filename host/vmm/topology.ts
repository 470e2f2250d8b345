/**
 * One concept, the topology format: a zod schema for VMs, their devices, workloads and queues, and
 * the host's physical IOMMUs, with the checks across fields, and the defaults resolved from it.
 * Every issue names the field's path and says what was expected. Reading a file (bounds, YAML, the
 * line of the bad field, the fit to this host and run) is topology-file.ts.
 */
import { z } from 'zod';
import { MISBEHAVIOURS, type WorkloadKind } from '../../shared/control.ts';
import { DEFAULT_EVTQ_LOG2, DEFAULT_IOMMU_NAME, DEFAULT_PRIQ_LOG2 } from '../iommu/iommu-instance.ts';

// Reading a file lives in topology-file.ts; its names are here too, where the tests import them.
export {
  formatPath,
  HOST_MEMORY_SHARE,
  loadTopology,
  MAX_ALIAS_COUNT,
  MAX_COLLECTION_ENTRIES,
  MAX_TOPOLOGY_BYTES,
  MAX_TOPOLOGY_DEPTH,
  parseTopology,
  type RunContext,
  TopologyError,
} from './topology-file.ts';

const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/, 'expected a name of 1-32 letters, digits, "_", "." or "-"');

const log2 = (min: number, max: number) => z.number().int().min(min).max(max);
/** A timeout: 1 ms to 10 minutes. */
const millis = z.number().int().min(1).max(600_000);

export const InjectorSchema = z
  .object({
    kind: z
      .enum(['page-request', 'event'])
      .default('page-request')
      .describe('page-request groups (PRI) or stage-1 fault events of terminated transactions'),
    ratePerSec: z.number().int().min(1).max(1_000_000).describe('groups (or event bursts) per second'),
    groupSize: z
      .number()
      .int()
      .min(1)
      .max(16)
      .default(1)
      .describe('requests per group, Last on the final one (events: records per burst)'),
    pasid: z.number().int().min(0).max(255).default(1).describe('PASID of the requests (0: the RID)'),
    base: z
      .number()
      .int()
      .min(0)
      .max(2 ** 48 - 4096)
      .default(0x4000_0000_0000)
      .describe('first address'),
    pages: z
      .number()
      .int()
      .min(1)
      .max(1 << 20)
      .default(1024)
      .describe('addresses cycle over this many pages'),
    write: z.boolean().default(false),
  })
  .strict();

export const DeviceSchema = z
  .object({
    name,
    pri: z.boolean().describe('PRI-capable: recovers stage-1 faults with page requests'),
    pasids: z
      .array(z.number().int().min(1).max(255))
      .max(16)
      .default([])
      .refine((p) => new Set(p).size === p.length, 'expected distinct PASIDs')
      .describe('PASIDs the device uses (1..255); PASID 0 is the RID itself'),
    priCredits: z
      .number()
      .int()
      .min(1)
      .max(512)
      .default(32)
      .describe('Outstanding Page Request Allocation written to the PRI capability'),
    stall: z
      .boolean()
      .default(false)
      .describe(
        'a platform device that can wait on stalled transactions (SMMUv3 stall model) instead of PRI',
      ),
    inject: InjectorSchema.optional().describe('the host raises faults from this device on its own'),
    function: name
      .optional()
      .describe(
        'a physical function shared between VMs: each VM listing it drives its own interface with its own PASIDs; the first VM to list it holds the RID',
      ),
    iommu: name
      .optional()
      .describe(
        `the physical IOMMU (a name from \`iommus\`) the device sits behind; default the first (without \`iommus\`: ${DEFAULT_IOMMU_NAME})`,
      ),
  })
  .strict()
  .refine((d) => d.inject?.kind !== 'page-request' || d.pri, {
    message: 'an injector of page requests needs pri: true',
    path: ['inject'],
  })
  .refine((d) => !(d.pri && d.stall), {
    message: 'a device recovers with PRI (a PCIe function, which never stalls) or by stalling, not both',
    path: ['stall'],
  })
  .superRefine((d, ctx) => {
    // PCIe PRI: a function has at most its Outstanding Page Request Allocation of requests
    // outstanding, so a larger group could never be sent whole.
    const inject = d.inject;
    if (inject?.kind === 'page-request' && inject.groupSize > d.priCredits)
      ctx.addIssue({
        code: 'custom',
        path: ['inject', 'groupSize'],
        message: `a group of ${inject.groupSize} page requests needs as many PRI credits, and the device has priCredits ${d.priCredits}: lower groupSize or raise priCredits`,
      });
  });

/** VMM teardown operations a topology can inject into a running VM (docs/teardown.md). */
export const TEARDOWN_OPS = [
  'detach',
  'replace',
  'fault-fd-close',
  'hwpt-destroy',
  'unbind',
  'guest-death',
] as const;
export type TeardownOp = (typeof TEARDOWN_OPS)[number];

export const TeardownSchema = z
  .object({
    atMs: z.number().int().min(0).max(600_000).describe('milliseconds after the launch'),
    op: z
      .enum(TEARDOWN_OPS)
      .describe(
        "what the VMM does to every device of the VM while its faults are in flight: detach, replace the HWPT with a fresh one, close the fault fd, destroy the attached HWPT (refused: EBUSY), unbind, or the guest's death",
      ),
  })
  .strict();

export const WorkloadSchema = z
  .object({
    kind: z.enum(['sva-stream', 'fault-storm', 'map-churn', 'stray-dma', 'idle']),
    pages: z
      .number()
      .int()
      .min(1)
      .max(1 << 20)
      .default(256),
    seed: z.number().int().min(0).max(0xffff_ffff).default(1),
    queueDepth: z.number().int().min(1).max(512).default(16),
    dmaBytes: z
      .number()
      .int()
      .min(4)
      .max(4096)
      .refine((n) => n % 4 === 0, 'expected a multiple of 4')
      .optional()
      .describe(
        'sva-stream and fault-storm: each descriptor reads this many bytes from the start of one page (default: whole pages)',
      ),
  })
  .strict()
  .superRefine((w, ctx) => {
    if (w.dmaBytes !== undefined && w.kind !== 'sva-stream' && w.kind !== 'fault-storm')
      ctx.addIssue({
        code: 'custom',
        path: ['dmaBytes'],
        message: `dmaBytes applies to sva-stream and fault-storm, not ${w.kind}`,
      });
  });

export const QueuesSchema = z
  .object({
    priqLog2: log2(1, 19).default(8).describe('guest PRI queue: 2^n entries'),
    evtqLog2: log2(1, 19).default(6).describe('guest event queue: 2^n entries'),
    cmdqLog2: log2(1, 19).default(8).describe('guest command queue: 2^n entries'),
    dmaQueueLog2: log2(1, 12).default(6).describe('per-device DMA descriptor and completion queues'),
  })
  .strict();

export const VmSchema = z
  .object({
    name,
    memoryMiB: z.number().int().min(1).max(4096),
    viommu: z.enum(['smmuv3', 'vtd']).describe('guest vIOMMU flavour'),
    devices: z.array(DeviceSchema).min(1).max(4),
    workload: WorkloadSchema,
    queues: QueuesSchema.default({ priqLog2: 8, evtqLog2: 6, cmdqLog2: 8, dmaQueueLog2: 6 }),
    misbehave: z
      .array(z.enum(MISBEHAVIOURS))
      .default([])
      .refine((m) => new Set(m).size === m.length, 'expected distinct misbehaviours')
      .describe('a hostile guest: how it misbehaves'),
    responseTimeoutMs: millis
      .optional()
      .describe(
        'treat the guest as dead (answer and tear down everything of it) when a fault delivered to it stays unanswered this long',
      ),
    teardown: TeardownSchema.optional().describe(
      'a teardown operation injected into the running VM (its faults in flight are answered exactly once)',
    ),
  })
  .strict()
  .superRefine((vm, ctx) => {
    vm.devices.forEach((d, i) => {
      if (vm.viommu === 'vtd' && d.stall)
        ctx.addIssue({
          code: 'custom',
          path: ['devices', i, 'stall'],
          message: 'VT-d has no stall model: a device behind a vtd vIOMMU recovers with PRI',
        });
      if (d.function !== undefined && vm.viommu !== 'vtd')
        ctx.addIssue({
          code: 'custom',
          path: ['devices', i, 'function'],
          message:
            "a shared function needs viommu: vtd (an SMMUv3 stream's PASIDs all belong to the guest that owns its CD table)",
        });
    });
    const functions = vm.devices.map((d) => d.function).filter((f) => f !== undefined);
    functions.forEach((f, i) => {
      if (functions.indexOf(f) !== i)
        ctx.addIssue({
          code: 'custom',
          path: ['devices'],
          message: `a VM has one interface per shared function; "${f}" is listed twice`,
        });
    });
    const names = vm.devices.map((d) => d.name);
    names.forEach((n, i) => {
      if (names.indexOf(n) !== i)
        ctx.addIssue({
          code: 'custom',
          path: ['devices', i, 'name'],
          message: `duplicate device name "${n}"`,
        });
    });
    const perDevice = Math.floor(guestPagesAvailable(vm.memoryMiB) / vm.devices.length);
    if (workloadPagesPerDevice(vm.workload.kind, vm.workload.pages) > perDevice) {
      let most = 0;
      for (let step = 1 << 20; step >= 1; step >>= 1)
        if (workloadPagesPerDevice(vm.workload.kind, most + step) <= perDevice) most += step;
      const why =
        vm.workload.kind === 'stray-dma'
          ? 'its stage-1 tables, which map the pages past RAM, live in guest RAM'
          : 'each device needs the buffer and its stage-1 tables in guest RAM';
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'pages'],
        message: `expected at most ${most} pages per device for ${vm.workload.kind} in ${vm.memoryMiB} MiB of guest RAM with ${vm.devices.length} device(s) (${why}): lower pages or raise memoryMiB`,
      });
    }
  });

/** Guest pages a workload may use: RAM less the pages the guest's boot takes (frame 0, sync word, ...). */
function guestPagesAvailable(memoryMiB: number): number {
  return memoryMiB * 256 - 16;
}

/**
 * Guest pages one device's workload takes: its buffer (sva-stream, fault-storm, map-churn), up to
 * four stage-1 table pages per 512 pages it maps (stray-dma maps GPAs past RAM, but its tables are
 * in RAM), and 8 for the device's CD table and table roots. An idle device maps nothing.
 */
export function workloadPagesPerDevice(kind: WorkloadKind, pages: number): number {
  const tables = 4 * Math.ceil(pages / 512) + 8;
  switch (kind) {
    case 'sva-stream':
    case 'fault-storm':
    case 'map-churn':
      return pages + tables;
    case 'stray-dma':
      return tables;
    case 'idle':
      return 8;
  }
}

const pow2 = (min: number, max: number) =>
  z
    .number()
    .int()
    .min(min)
    .max(max)
    .refine((n) => (n & (n - 1)) === 0, 'expected a power of two');

export const IommuSchema = z
  .object({
    iotlbEntries: pow2(1, 1 << 20)
      .default(4096)
      .describe('IOTLB entries (a power of two)'),
    iotlbWays: pow2(1, 64).default(4).describe('IOTLB associativity (a power of two, at most the entries)'),
  })
  .strict()
  .refine((i) => i.iotlbWays <= i.iotlbEntries, {
    message: 'expected iotlbWays <= iotlbEntries',
    path: ['iotlbWays'],
  });

export const PhysicalIommuSchema = z
  .object({
    name,
    priqLog2: log2(1, 19).describe(
      'the physical PRI queue, shared by every device behind this IOMMU: 2^n entries (SMMUv3 PRIQ rules)',
    ),
    evtqLog2: log2(1, 19)
      .optional()
      .describe(
        `the physical event queue, shared by every device behind this IOMMU: 2^n entries (SMMUv3 EVTQ rules; default 2^${DEFAULT_EVTQ_LOG2})`,
      ),
    iotlbEntries: pow2(1, 1 << 20)
      .optional()
      .describe("IOTLB entries (a power of two; default the `iommu` section's)"),
    iotlbWays: pow2(1, 64)
      .optional()
      .describe("IOTLB associativity (a power of two, at most the entries; default the `iommu` section's)"),
  })
  .strict();

export const TopologySchema = z
  .object({
    name,
    routing: z.enum(['ioasid-owner', 'device-owner']).default('ioasid-owner'),
    transport: z
      .enum(['sab', 'postmessage'])
      .default('sab')
      .describe(
        'how queue records and interrupts travel between host and guests: shared-memory rings with Atomics, or postMessage',
      ),
    iommu: IommuSchema.default({ iotlbEntries: 4096, iotlbWays: 4 }).describe(
      `the physical IOMMU (without \`iommus\`: the only one, ${DEFAULT_IOMMU_NAME}, with a 2^${DEFAULT_PRIQ_LOG2}-entry PRI queue); with \`iommus\`, their default IOTLB`,
    ),
    iommus: z
      .array(PhysicalIommuSchema)
      .min(1)
      .max(16)
      .optional()
      .describe("the host's physical IOMMUs; each device sits behind one (its `iommu`, default the first)"),
    vms: z.array(VmSchema).min(1).max(64),
    spinNs: z
      .number()
      .int()
      .min(0)
      .max(1_000_000)
      .default(20_000)
      .describe('how long a guest spins on its doorbell before sleeping'),
    iopfTimeoutMs: millis
      .optional()
      .describe(
        'response deadline of every page-request group handed to a fault queue: past it the host answers INVALID and counts an iopf-timeout (default: none)',
      ),
    hostSpinNs: z
      .number()
      .int()
      .min(0)
      .max(1_000_000)
      .default(20_000)
      .describe(
        "how long the host's reactor spins on its doorbell when a pass found nothing, before it blocks (0: block at once)",
      ),
  })
  .strict()
  .superRefine((t, ctx) => {
    const names = t.vms.map((vm) => vm.name);
    names.forEach((n, i) => {
      if (names.indexOf(n) !== i)
        ctx.addIssue({ code: 'custom', path: ['vms', i, 'name'], message: `duplicate VM name "${n}"` });
    });
    checkSharedFunctions(t.vms, ctx, t.iommus?.[0].name ?? DEFAULT_IOMMU_NAME);
    checkPhysicalIommus(t, ctx);
    checkInjectorPasids(t.vms, ctx);
  });

/**
 * An injector raises its requests as its device would, so with one of the device's own PASIDs, or
 * without a PASID (0) where the VM holds the RID: on a shared function only the first VM listing
 * it does, and the others' interfaces own just their `pasids`.
 */
function checkInjectorPasids(vms: readonly VmConfig[], ctx: z.RefinementCtx): void {
  const ridHolder = new Map<string, string>();
  vms.forEach((vm, v) => {
    vm.devices.forEach((d, i) => {
      const holder = d.function === undefined ? vm.name : (ridHolder.get(d.function) ?? vm.name);
      if (d.function !== undefined && !ridHolder.has(d.function)) ridHolder.set(d.function, vm.name);
      const pasid = d.inject?.pasid;
      if (pasid === undefined || d.pasids.includes(pasid) || (pasid === 0 && holder === vm.name)) return;
      const owned = [...(holder === vm.name ? ['0 (the RID)'] : []), ...d.pasids];
      const why =
        pasid === 0
          ? `PASID 0 is the RID of function "${d.function}", which ${holder} holds (the first VM to list it)`
          : `PASID ${pasid} is not one of the device's pasids [${d.pasids.join(', ')}]`;
      ctx.addIssue({
        code: 'custom',
        path: ['vms', v, 'devices', i, 'inject', 'pasid'],
        message: `${why}: an injector raises requests as its device would, with a PASID it owns (${owned.join(', ')})`,
      });
    });
  });
}

/** IOMMU names are distinct, every device names one that exists, and each IOTLB's ways fit its entries. */
function checkPhysicalIommus(
  t: { iommu: { iotlbEntries: number; iotlbWays: number }; iommus?: PhysicalIommuInput[]; vms: VmConfig[] },
  ctx: z.RefinementCtx,
): void {
  const names = t.iommus?.map((i) => i.name) ?? [DEFAULT_IOMMU_NAME];
  t.iommus?.forEach((i, n) => {
    if (names.indexOf(i.name) !== n)
      ctx.addIssue({
        code: 'custom',
        path: ['iommus', n, 'name'],
        message: `duplicate IOMMU name "${i.name}"`,
      });
    if ((i.iotlbWays ?? t.iommu.iotlbWays) > (i.iotlbEntries ?? t.iommu.iotlbEntries))
      ctx.addIssue({
        code: 'custom',
        path: ['iommus', n, 'iotlbWays'],
        message: 'expected iotlbWays <= iotlbEntries',
      });
  });
  t.vms.forEach((vm, v) => {
    vm.devices.forEach((d, i) => {
      if (d.iommu !== undefined && !names.includes(d.iommu))
        ctx.addIssue({
          code: 'custom',
          path: ['vms', v, 'devices', i, 'iommu'],
          message: `no physical IOMMU named "${d.iommu}" (${t.iommus ? "the topology's `iommus` are" : 'without `iommus` the only one is'} ${names.map((n) => `"${n}"`).join(', ')})`,
        });
    });
  });
}

/**
 * Interfaces on one shared function: the same PRI configuration and physical IOMMU, PASIDs that no
 * two VMs share, and at least one PASID for every interface but the RID holder's (it has no address
 * space otherwise).
 */
function checkSharedFunctions(vms: readonly VmConfig[], ctx: z.RefinementCtx, firstIommu: string): void {
  const first = new Map<string, DeviceConfig>();
  const pasidOwner = new Map<string, string>();
  vms.forEach((vm, v) => {
    vm.devices.forEach((d, i) => {
      if (d.function === undefined) return;
      const path = ['vms', v, 'devices', i];
      const owner = first.get(d.function);
      if (!owner) first.set(d.function, d);
      else {
        if (owner.pri !== d.pri || owner.priCredits !== d.priCredits)
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'priCredits'],
            message: `every interface on function "${d.function}" needs the same pri and priCredits (one PRI capability)`,
          });
        if ((owner.iommu ?? firstIommu) !== (d.iommu ?? firstIommu))
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'iommu'],
            message: `every interface on function "${d.function}" sits behind the same physical IOMMU (one RID)`,
          });
        if (d.pasids.length === 0)
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'pasids'],
            message: `an interface on function "${d.function}" without its RID needs at least one PASID`,
          });
      }
      for (const pasid of d.pasids) {
        const key = `${d.function}/${pasid}`;
        const holder = pasidOwner.get(key);
        if (holder !== undefined && holder !== vm.name)
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'pasids'],
            message: `PASID ${pasid} of function "${d.function}" is already ${holder}'s`,
          });
        pasidOwner.set(key, vm.name);
      }
    });
  });
}

export type Topology = z.infer<typeof TopologySchema>;
export type VmConfig = Topology['vms'][number];
export type DeviceConfig = VmConfig['devices'][number];
type PhysicalIommuInput = z.infer<typeof PhysicalIommuSchema>;

/** A physical IOMMU with its defaults resolved. */
export interface PhysicalIommuConfig {
  name: string;
  priqLog2: number;
  evtqLog2?: number;
  iotlbEntries: number;
  iotlbWays: number;
}

/**
 * The host's physical IOMMUs: `iommus`, or without it the one the `iommu` section describes
 * (named iommu0, with a PRI queue no topology's credits can fill).
 */
export function physicalIommus(t: Topology): PhysicalIommuConfig[] {
  const { iotlbEntries, iotlbWays } = t.iommu;
  if (!t.iommus) return [{ name: DEFAULT_IOMMU_NAME, priqLog2: DEFAULT_PRIQ_LOG2, iotlbEntries, iotlbWays }];
  return t.iommus.map((i) => ({
    ...i,
    iotlbEntries: i.iotlbEntries ?? iotlbEntries,
    iotlbWays: i.iotlbWays ?? iotlbWays,
  }));
}

/** Index in `physicalIommus(t)` of the IOMMU a device sits behind. */
export function iommuIndexOf(t: Topology, device: DeviceConfig): number {
  if (device.iommu === undefined || !t.iommus) return 0;
  return Math.max(
    0,
    t.iommus.findIndex((i) => i.name === device.iommu),
  );
}

/** The topology format as JSON Schema, for editors (configs/topology.schema.json). */
export function topologyJsonSchema(): unknown {
  return z.toJSONSchema(TopologySchema, { io: 'input' });
}
