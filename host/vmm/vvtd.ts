/**
 * The host side of one VM's virtual VT-d (what a VMM's intel-iommu model does with iommufd): it
 * reads the VM's fault fd into the guest's page request queue (VtdPageRequestQueue: PQT, PPR and
 * PRO, one slot always empty), and carries out the guest's invalidation queue: page group
 * responses go back to the fault fd by cookie, PASID-based IOTLB invalidations become
 * HWPT_INVALIDATE on the PASID's nested HWPTs, and invalidation waits write their status data.
 *
 * Overflow: a request that finds the queue full, or PRO still set, is dropped. If it carried LPIG,
 * the model answers its group Success, so that the device retries and no group is left pending in
 * the fault queue. QEMU's emulated PRQ does not do this and whether VT-d hardware does is
 * unverified (docs/queues.md, VT-d PRQ); the SMMUv3 PRI queue rule is the model's choice here.
 * Guest descriptors are untrusted: unknown types, reserved codes, unknown groups and bad status
 * addresses are counted (the IQE of a real unit) and never stop the host.
 */

import type { CommandErrorRegister } from '../../shared/command-error.ts';
import type { GuestMemory } from '../../shared/guest-memory.ts';
import {
  decodeVtdPasidIotlb,
  newVtdPasidIotlbInvalidation,
  PIOTLB_GRAN_PAGES,
  PIOTLB_GRAN_PASID,
  VTD_INV_WAIT_TYPE,
  VTD_PIOTLB_TYPE,
  vtdDescriptorType,
  vtdInvWaitAddress,
  vtdInvWaitData,
} from '../../shared/records/vtd-iq-entry.ts';
import {
  decodeVtdPageGroupResponse,
  newVtdPageGroupResponse,
  newVtdPageRequest,
  QI_RESP_FAILURE,
  QI_RESP_INVALID,
  QI_RESP_SUCCESS,
  VTD_PAGE_GROUP_RESPONSE_TYPE,
} from '../../shared/records/vtd-prq-entry.ts';
import type { RingConsumer } from '../../shared/ring.ts';
import {
  PERM_EXEC,
  PERM_PRIV,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_FLAGS_PASID_VALID,
  type PgfaultFields,
  pgfaultAddress,
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import type { CorruptIndices } from './damage.ts';
import {
  answerCodes,
  type CommandExecutor,
  FaultPump,
  type FaultSink,
  serviceCommands,
} from './fault-pump.ts';
import type { InvariantChecker } from './invariants.ts';
import { newModelStats, type ViommuModel } from './viommu-model.ts';
import type { VtdPageRequestQueue } from './vtd-prq-model.ts';

/** This VM's devices and PASIDs as the model needs them. */
export interface VtdBackend {
  /** The guest's RID (its device index) of iommufd DEVICE `devId`, or -1. */
  vsidOf(devId: number): number;
  streamIdOf(devId: number): number;
  /** HWPT_INVALIDATE on `pasid`'s nested HWPTs; false if none or refused. */
  invalidate(pasid: number, address: number, pages: number | undefined): boolean;
  readonly devices: number;
}

/** The page group response's Response Code; 2 and 4-15 are reserved. */
const QI_RESP_CODES = answerCodes(QI_RESP_SUCCESS, QI_RESP_INVALID, QI_RESP_FAILURE);
/** Largest page-selective invalidation: 2^AM pages, AM up to 63 in the descriptor, 2^20 here. */
const MAX_ADDRESS_MASK = 20;

export class Vvtd implements ViommuModel, FaultSink, CommandExecutor {
  readonly stats = newModelStats();
  readonly eventsPending = false;
  readonly canRead = true;
  private readonly pump: FaultPump;
  private readonly request = newVtdPageRequest();
  private readonly response = newVtdPageGroupResponse();
  private readonly invalidation = newVtdPasidIotlbInvalidation();

  constructor(
    vmName: string,
    private readonly prq: VtdPageRequestQueue,
    private readonly iq: RingConsumer,
    private readonly backend: VtdBackend,
    faultFd: FaultFd,
    invariants: InvariantChecker,
    ownerOf: (streamId: number, pasid: number) => string | undefined,
    memory: GuestMemory,
    /** Where refused descriptors are signalled (FSTS.IQE). */
    commandError?: CommandErrorRegister,
  ) {
    this.pump = new FaultPump(
      vmName,
      faultFd,
      backend.devices,
      this.stats,
      invariants,
      ownerOf,
      memory,
      commandError,
    );
  }

  get corruptIndices(): CorruptIndices {
    return { pageRequestQueue: this.prq.corruptIndex, eventQueue: 0, commandQueue: this.iq.corruptIndex };
  }

  get faultsPending(): boolean {
    return this.pump.readable;
  }

  /** VT-d reports no events to the guest: terminated faults stay with the host. */
  drainEvents(): number {
    return 0;
  }

  drainFaults(): number {
    return this.pump.drain(this);
  }

  vsidOf(devId: number): number {
    return this.backend.vsidOf(devId);
  }

  /** One page request descriptor; the page request queue publishes each as it is written. */
  deliver(f: Readonly<PgfaultFields>, rid: number, last: boolean): void {
    const r = this.request;
    r.rid = rid;
    r.pasidPresent = (f.flags & PGFAULT_FLAGS_PASID_VALID) !== 0;
    r.pasid = r.pasidPresent ? f.pasid : 0;
    r.read = (f.perm & PERM_READ) !== 0;
    r.write = (f.perm & PERM_WRITE) !== 0;
    r.execRequested = (f.perm & PERM_EXEC) !== 0;
    r.privilegedRequested = (f.perm & PERM_PRIV) !== 0;
    r.lpig = last;
    r.prgIndex = f.grpid;
    r.address = pgfaultAddress(f);
    if (this.prq.write(r) === 'dropped') {
      this.stats.overflows = this.prq.stats.overflows;
      this.pump.discarded(f, last);
    } else if (last) {
      this.pump.track(rid, f);
    }
  }

  publish(): void {}

  serviceCommands(): number {
    return serviceCommands(this.iq, this);
  }

  execute(words: Int32Array, at: number): void {
    switch (vtdDescriptorType(words, at)) {
      case VTD_PAGE_GROUP_RESPONSE_TYPE:
        this.groupResponse(words, at);
        return;
      case VTD_PIOTLB_TYPE:
        this.invalidatePasid(words, at);
        return;
      case VTD_INV_WAIT_TYPE:
        this.pump.complete(vtdInvWaitAddress(words, at), vtdInvWaitData(words, at));
        return;
      default:
        this.pump.refuse();
    }
  }

  private groupResponse(words: Int32Array, at: number): void {
    const p = decodeVtdPageGroupResponse(words, at, this.response);
    this.pump.answerCode(p.rid, p.prgIndex, p.code, QI_RESP_CODES);
  }

  private invalidatePasid(words: Int32Array, at: number): void {
    const d = decodeVtdPasidIotlb(words, at, this.invalidation);
    let ok = false;
    if (d.granularity === PIOTLB_GRAN_PASID) ok = this.backend.invalidate(d.pasid, 0, undefined);
    else if (d.granularity === PIOTLB_GRAN_PAGES && d.addressMask <= MAX_ADDRESS_MASK)
      ok = this.backend.invalidate(d.pasid, d.address, 2 ** d.addressMask);
    if (ok) this.stats.invalidations++;
    else this.pump.refuse();
  }

  forgetDelivered(): void {
    this.pump.groups.clear();
  }
}
