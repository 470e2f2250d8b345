/**
 * The control plane between the host and a guest: what the host hands a VM at spawn (workerData)
 * and the comlink API the guest exposes. Control only: faults, responses, commands and DMA never
 * travel here (they use the rings of vm-channel.ts).
 */
import type { MessagePort } from 'node:worker_threads';
import type { CyclePercentiles } from './cycle-histogram.ts';
import type { ChannelConfig } from './vm-channel.ts';

export type WorkloadKind = 'sva-stream' | 'fault-storm' | 'map-churn' | 'stray-dma' | 'idle';

/**
 * Ways a hostile guest misbehaves (topology `misbehave`, drawn by stress campaigns). The host must
 * survive each, count and name the damage, and keep every other VM's results unchanged.
 */
export const MISBEHAVIOURS = [
  /** Writes garbage into the consumer/producer indices of its rings. */
  'corrupt-ring-indices',
  /** Answers groups it was never given (unknown PRG indices, StreamIDs, cookies). */
  'unknown-responses',
  /** Answers each group twice. */
  'duplicate-responses',
  /** Floods its command queue with responses. */
  'response-flood',
  /** Never answers a page request. */
  'never-respond',
  /** Points its page tables outside guest RAM, at themselves (cycles), and sets reserved bits. */
  'wild-page-tables',
  /** Throws an uncaught exception in the middle of handling a fault. */
  'crash-mid-fault',
  /** Spins forever ignoring its doorbell once it has a fault to handle. */
  'hang',
  /**
   * Names PASIDs its devices were not given in its DMA descriptors: the RID's, a neighbour's, one
   * nobody attached.
   */
  'foreign-pasid-dma',
] as const;

export type Misbehaviour = (typeof MISBEHAVIOURS)[number];

export interface WorkloadConfig {
  kind: WorkloadKind;
  /** Buffer size in 4 KiB pages (sva-stream). */
  pages: number;
  seed: number;
  /** Descriptors a device may have outstanding at once. */
  queueDepth: number;
  /**
   * sva-stream and fault-storm: each descriptor reads this many bytes (a multiple of 4, 4..4096)
   * from the start of one page. Unset: whole pages.
   */
  dmaBytes?: number;
}

export interface GuestDeviceConfig {
  name: string;
  /** The StreamID the guest sees (its vSID); the host maps it to the physical one. */
  streamId: number;
  pasids: number[];
  /**
   * The device's RID (PASID 0) belongs to this VM. False for a VM's interface on a function another
   * VM owns (a shared device): it gets only its PASIDs.
   */
  ownsRid: boolean;
  pri: boolean;
  /** Stalls instead of PRI: the guest sets CD.S for it and answers stall events with CMD_RESUME. */
  stall: boolean;
}

/** workerData of a guest worker. */
export interface GuestBoot {
  name: string;
  index: number;
  memory: SharedArrayBuffer;
  /** The guest's channel: shared with the host, or (postmessage transport) the guest's own copy. */
  channel: SharedArrayBuffer;
  channelConfig: ChannelConfig;
  /** The postMessage transport's link to the host; absent with shared memory. */
  port?: MessagePort;
  devices: GuestDeviceConfig[];
  workload: WorkloadConfig;
  /** How this guest misbehaves (empty: a well-behaved guest). */
  misbehave: Misbehaviour[];
  /** Spin this long on the doorbell before sleeping (0: sleep at once). */
  spinNs: number;
  /**
   * The host's signal (host-signal.ts) with the `sab` transport: the guest rings the host by
   * setting bit `index` and ringing its doorbell. Absent over postMessage, where the link rings.
   */
  hostSignal?: SharedArrayBuffer;
  /** SMMU_IDR0 of the guest's vSMMU (shared/smmuv3-idr.ts); absent for another flavour. */
  smmuIdr0?: number;
}

/** What the guest's vIOMMU driver installed for one device (the vSTE's view of it). */
export interface DeviceContext {
  streamId: number;
  cdTableGpa: number;
  /** The CD table holds 2^cdLog2 entries, one per PASID. */
  cdLog2: number;
}

export interface GuestStats {
  pageRequests: number;
  groupsAnswered: number;
  responses: { success: number; invalid: number; failure: number };
  stopMarkers: number;
  overflowsAcknowledged: number;
  partialGroupsDropped: number;
  /** Event records drained from the event queue, and event-queue overflows acknowledged. */
  events: number;
  eventOverflowsAcknowledged: number;
  /** Command errors the host signalled (CMDQ_ERR, IQE) and the driver acknowledged. */
  commandErrors: number;
  /** Stall events answered with CMD_RESUME. */
  stallsResumed: number;
  /** Pages unmapped (and invalidated) by map-churn. */
  unmaps: number;
  pagesMapped: number;
  dmaSubmitted: number;
  dmaCompleted: number;
  dmaFailed: number;
  workloadDone: boolean;
  wakeups: number;
  /**
   * The DMA cycle a user feels: from a descriptor's submit to the guest seeing its completion,
   * microseconds (cycle-histogram.ts), over every device of the guest.
   */
  dmaCycleUs: CyclePercentiles;
}

export interface GuestControl {
  /** Set up the guest's side of its devices: CD tables and empty stage-1 tables per PASID. */
  boot(): DeviceContext[];
  /** Start the workload. */
  start(): void;
  /** Stop submitting work, let in-flight DMA finish for up to `graceMs`, then stop the driver. */
  stop(graceMs: number): Promise<GuestStats>;
  stats(): GuestStats;
}
