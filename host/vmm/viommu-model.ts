/**
 * What a VM's host needs of its vIOMMU device model, whatever the flavour: the model moves records
 * between the VM's iommufd objects (fault fd, vEVENTQ) and the guest-visible queues, and carries out
 * the guest's commands. Vsmmu (SMMUv3) and Vvtd (VT-d) implement it.
 */
import type { DeviceContext } from '../../shared/control.ts';
import { IommufdError } from '../iommufd/errors.ts';
import type { FaultFd, FaultObject } from '../iommufd/fault.ts';
import type { CorruptIndices } from './damage.ts';
import type { TeardownOp } from './topology.ts';

export interface ViommuModelStats {
  /** Groups written whole into the guest's page request queue. */
  delivered: number;
  /** Page request entries discarded under the queue's overflow rule. */
  dropped: number;
  /** Overflow conditions the page request queue raised (SMMUv3 OVFLG toggled, VT-d PRO set). */
  overflows: number;
  /** Groups answered Success because their Last request was discarded. */
  autoResponded: number;
  /** Page responses as the guest sent them. */
  responses: { success: number; invalid: number; failure: number };
  /** Responses naming no group delivered to this guest. */
  unknownResponses: number;
  /**
   * Of those, the ones naming a group (or stall) the guest had already answered and that was not
   * delivered again since: a second answer to one request.
   */
  duplicateResponses: number;
  /** Commands the model refused: unknown opcodes or types, reserved codes, bad addresses. */
  illegalCommands: number;
  /** Completion waits (CMD_SYNC, invalidation wait) consumed. */
  syncs: number;
  /** Groups for a device this VM has no guest ID for (answered INVALID). */
  noVdevice: number;
  /** Groups the guest answered (the response reached the fault fd). */
  guestAnswered: number;
  /** Event records written into the guest's event queue, and discarded by its overflow rule. */
  eventsDelivered: number;
  eventsDropped: number;
  /** Lost-events markers read from the vEVENTQ (the host queue overflowed before the VMM read it). */
  eventsLost: number;
  /** Stalled transactions reported to the guest, and answered by its resume. */
  stallsDelivered: number;
  resumes: number;
  /**
   * Stalls the guest terminated with Ab=0 under TERM_MODEL=0 (CMD_RESUME): passed on as RAZ/WI, so
   * the device's read completed with zeros.
   */
  razTerminations: number;
  /** Stalls terminated by the guest. */
  stallsTerminated: number;
  /** Guest invalidations carried out, and completion waits that wrote their status. */
  invalidations: number;
  syncsSignalled: number;
}

export function newModelStats(): ViommuModelStats {
  return {
    delivered: 0,
    dropped: 0,
    overflows: 0,
    autoResponded: 0,
    responses: { success: 0, invalid: 0, failure: 0 },
    unknownResponses: 0,
    duplicateResponses: 0,
    illegalCommands: 0,
    syncs: 0,
    noVdevice: 0,
    guestAnswered: 0,
    eventsDelivered: 0,
    eventsDropped: 0,
    eventsLost: 0,
    stallsDelivered: 0,
    resumes: 0,
    razTerminations: 0,
    stallsTerminated: 0,
    invalidations: 0,
    syncsSignalled: 0,
  };
}

/** The host side of the guest-visible queues. */
export interface ViommuModel {
  readonly stats: ViommuModelStats;
  /** Impossible fill levels read from the guest's own ring indices, per queue. */
  readonly corruptIndices: CorruptIndices;
  readonly faultsPending: boolean;
  readonly eventsPending: boolean;
  /** Carry out the guest's commands; returns how many were consumed. */
  serviceCommands(): number;
  /** Fault fd -> guest page request queue; returns records moved. */
  drainFaults(): number;
  /** vEVENTQ -> guest event queue; returns records moved. */
  drainEvents(): number;
  /** Forget delivered groups (teardown answered them). */
  forgetDelivered(): void;
}

/** A VM's /dev/iommu as its VMM set it up, whatever the flavour. */
export interface VmRegistry {
  readonly faultFd: FaultFd;
  readonly fault: FaultObject;
  /** The guest booted: install what its driver built for each device (STEs, PASID tables). */
  installContexts(contexts: readonly DeviceContext[]): void;
  /** Detach every device (pending groups are answered INVALID), then close everything. */
  teardown(): void;
  /**
   * A teardown operation on every device while its faults are in flight (topology `teardown`);
   * returns 'done' or the errno the registry answered (hwpt-destroy: EBUSY).
   */
  teardownOp(op: RegistryTeardownOp): string;
  /** Objects alive in the VM's /dev/iommu (0 once torn down). */
  readonly objectCount: number;
}

/** The teardown operations a registry carries out (guest death is the VM's own). */
export type RegistryTeardownOp = Exclude<TeardownOp, 'guest-death'>;

/** Run registry calls; 'done', or the errno of the first refused one. */
export function errnoOutcome(calls: () => void): string {
  try {
    calls();
    return 'done';
  } catch (error) {
    if (error instanceof IommufdError) return error.errno;
    throw error;
  }
}
