/**
 * The result of `ioasid-sandbox run`, printed as one JSON object with --json. Fields are a contract:
 * later versions add fields and never remove or rename one.
 */
import type { CyclePercentiles } from '../../shared/cycle-histogram.ts';
import type { TranslationStats } from '../iommu/iommu.ts';
import type { PhysicalEvtqStats } from '../iommu/physical-event-queue.ts';
import type { PhysicalPriqStats } from '../iommu/physical-queue.ts';
import type { RefaultFigures } from '../iommu/refault-gauge.ts';
import type { FaultStats } from '../iommufd/fault.ts';
import type { GuestDamage } from './damage.ts';
import type { Violation } from './invariants.ts';

export interface VmReport {
  name: string;
  /** The guest's vIOMMU flavour. */
  flavour: string;
  /** Faults that reached the guest, by how: page-request groups, stalls, terminate-model events. */
  faultsByKind: { pageRequest: number; stall: number; terminate: number };
  /** Bytes this VM's devices read that the oracle checked against the pattern. */
  bytesVerified: number;
  /** Reads that returned another page's bytes (a translation used after its invalidation): must be 0. */
  staleTranslationUses: number;
  /** Pages the guest unmapped, and its invalidation commands the vIOMMU carried out. */
  unmaps: number;
  invalidations: number;
  faultsDelivered: number;
  responses: { success: number; invalid: number; failure: number };
  dmaOps: number;
  crashed: boolean;
  crashReason?: string;
  /** Objects alive in the VM's /dev/iommu: 0 after the run, and at once after a guest's death. */
  iommufdObjects: number;
  /** What the guest did that no correct driver does, as the host counted it (damage.ts). */
  damage: GuestDamage;
  pageRequests: number;
  pagesMapped: number;
  dmaCompleted: number;
  /**
   * The guest's DMA cycle, from a descriptor's submit to the guest seeing its completion,
   * microseconds: `p50`, `p99`, `max`, `count` (0s when the guest died before reporting).
   */
  dmaCycleUs: CyclePercentiles;
  dmaFailed: number;
  /**
   * DMA descriptors its devices refused (a malformed one, or one naming a PASID its interface of a
   * shared function was not assigned: `foreignPasidDescriptors`, counted in both).
   */
  badDescriptors: number;
  foreignPasidDescriptors: number;
  dropped: number;
  /** Overflow conditions the guest's page request queue raised (SMMUv3 OVFLG, VT-d PRO). */
  overflows: number;
  unknownResponses: number;
  illegalCommands: number;
  /** Command errors (CMDQ_ERR, IQE) the guest's driver saw and acknowledged. */
  commandErrorsAcknowledged: number;
  workloadDone: boolean;
  /** PRI-queue overflows the guest's driver acknowledged. */
  overflowsAcknowledged: number;
  /** Faults of this VM's devices that no page request could recover: stage 1 (no PRI) and stage 2 (the host's). */
  unrecoverableFaults: { stage1: number; stage2: number };
  /**
   * Event records written into the guest's event queue, discarded by its overflow rule, drained by
   * the guest's driver, and the overflows the driver acknowledged.
   */
  eventsDelivered: number;
  eventsDropped: number;
  eventsHandled: number;
  eventOverflowsAcknowledged: number;
  /** Stalled transactions reported to the guest as Stall=1 events, and the CMD_RESUMEs that answered them. */
  stallsDelivered: number;
  resumes: number;
  /** Page-request groups the host injected from this VM's devices (`inject` in the topology). */
  injected: number;
  /** Stage-1 fault events the host injected from this VM's devices. */
  injectedEvents: number;
  /** Bytes this VM's devices moved by DMA. */
  bytesMoved: number;
  /**
   * Stalled reads the guest terminated RAZ/WI (CMD_RESUME Ab=0, TERM_MODEL=0): they completed with
   * zeros, which the oracle does not check against the pattern.
   */
  razReads: number;
  /** The VM's iommufd fault queue's counters (FaultStats has what each means). */
  faultQueue: Pick<
    FaultStats,
    'read' | 'responded' | 'autoResponded' | 'refusedResponses' | 'lateResponses' | 'revoked' | 'staleTouches'
  >;
  /** Groups of this VM the host answered INVALID because their response deadline passed. */
  iopfTimeouts: number;
  /** How often the same page faulted again (docs/report.md, the re-fault gauge). */
  refaults: RefaultFigures;
  /** The teardown operation the topology injected, when, and its outcome ('done' or an errno). */
  teardown?: { op: string; atMs: number; outcome: string };
  /** What sharing physical IOMMUs cost this VM (docs/report.md, isolation). */
  isolation: VmIsolation;
}

export interface VmIsolation {
  /** The physical IOMMUs its PRI devices sit behind. */
  iommus: string[];
  /**
   * Its page requests a physical PRI queue discarded during an overflow in which it held less than
   * its fair share of the full queue (size / VMs sharing it): lost to the others' traffic.
   */
  lostToOthers: number;
  /** Its discarded page requests when it held its fair share or more: its own storm. */
  lostOwn: number;
  /**
   * Its fault round trips, from the first page request to the retry that translated (retries after
   * an automatic Success included), and how many were timed. A VM with few faults in flight may
   * starve with its p99 unmoved: the max shows it.
   */
  latencyP50Us: number;
  latencyP99Us: number;
  latencyMaxUs: number;
  faultsTimed: number;
}

/**
 * One physical IOMMU over the run: its PRI queue's counters (PhysicalPriqStats says what each
 * means), its IRQ thread's, and its event queue's.
 */
export interface PhysicalIommuReport extends PhysicalPriqStats {
  name: string;
  priqLog2: number;
  /** VMs with a PRI device behind it. */
  vms: string[];
  /** IRQ thread passes, those that ran in a turn of their own, and partial groups dropped on recovery. */
  threadPasses: number;
  deferredPasses: number;
  partialsDiscarded: number;
  /** Its event queue (PhysicalEvtqStats) and that queue's thread. */
  eventQueue: { evtqLog2: number; threadPasses: number; deferredPasses: number } & PhysicalEvtqStats;
}

export interface RunReport {
  topology: string;
  routing: 'ioasid-owner' | 'device-owner';
  /** How queue records and interrupts travelled: shared-memory rings or postMessage. */
  transport: 'sab' | 'postmessage';
  seed: number | null;
  /** From the start of the launch to the end of the teardown. */
  durationMs: number;
  /**
   * Of that, the launch: spawning and booting the guests and starting their workloads. The
   * workloads then run for at most the run's duration, and stopping takes at most the grace.
   */
  launchMs: number;
  vms: VmReport[];
  faults: {
    raised: number;
    delivered: number;
    responded: number;
    autoResponded: number;
    dropped: number;
    lost: number;
    /** Groups answered INVALID at their response deadline (topology `iopfTimeoutMs`). */
    iopfTimeouts: number;
    /**
     * Groups answered INVALID at once because their (RID, PASID) had no route: an unattached
     * PASID, or one whose domain has no fault queue (counted in `autoResponded` too).
     */
    unrouted: number;
  };
  dma: {
    ops: number;
    completed: number;
    failed: number;
    bytesVerified: number;
    /** Stalled reads terminated RAZ/WI, over every VM. */
    razReads: number;
    unrecoverableFaults: number;
  };
  latencyUs: { p50: number; p99: number; max: number; count: number };
  /** The physical IOMMUs' counters, summed. */
  iommu: TranslationStats;
  /** Each physical IOMMU's PRI queue. */
  physicalIommus: PhysicalIommuReport[];
  invariants: { ok: boolean; violations: Violation[]; counts: Record<string, number> };
}
