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
 * unverified (fault-queues.md 2.2); the SMMUv3 PRI queue rule is the model's choice here.
 * Guest descriptors are untrusted: unknown types, reserved codes, unknown groups and bad status
 * addresses are counted (the IQE of a real unit) and never stop the host.
 */

import { CERROR_ILL, type CommandErrorRegister } from '../../shared/command-error.ts';
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
import { STAGE_REGISTRY, stageClock } from '../../shared/stage-clock.ts';
import { IommufdError } from '../iommufd/errors.ts';
import {
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  PERM_EXEC,
  PERM_PRIV,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  pgfaultAddress,
  readPgfaultInto,
} from '../iommufd/eventq-records.ts';
import type { FaultFd } from '../iommufd/fault.ts';
import type { CorruptIndices } from './damage.ts';
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

const PRG_INDICES = 512;
const READ_RECORDS = 64;
/** Largest page-selective invalidation: 2^AM pages, AM up to 63 in the descriptor, 2^20 here. */
const MAX_ADDRESS_MASK = 20;

export class Vvtd implements ViommuModel {
  readonly stats = newModelStats();
  readonly eventsPending = false;
  /** Cookie of the group delivered as (RID, PRG index), or -1. */
  private readonly delivered: Int32Array;
  /** 1 once the guest answered the group last delivered as (RID, PRG index): a repeat is a duplicate. */
  private readonly answered: Uint8Array;
  private readonly request = newVtdPageRequest();
  private readonly response = newVtdPageGroupResponse();
  private readonly invalidation = newVtdPasidIotlbInvalidation();
  private readonly record = newPgfaultFields();
  private readonly faultBuffer = new Uint8Array(READ_RECORDS * PGFAULT_BYTES);
  private readonly faultView = new DataView(this.faultBuffer.buffer);
  private readonly reply = new Uint8Array(PAGE_RESPONSE_BYTES);
  private readonly replyView = new DataView(this.reply.buffer);

  constructor(
    private readonly vmName: string,
    private readonly prq: VtdPageRequestQueue,
    private readonly iq: RingConsumer,
    private readonly backend: VtdBackend,
    private readonly faultFd: FaultFd,
    private readonly invariants: InvariantChecker,
    private readonly ownerOf: (streamId: number, pasid: number) => string | undefined,
    private readonly memory: GuestMemory,
    /** Where refused descriptors are signalled (FSTS.IQE). */
    private readonly commandError?: CommandErrorRegister,
  ) {
    this.delivered = new Int32Array(backend.devices * PRG_INDICES).fill(-1);
    this.answered = new Uint8Array(backend.devices * PRG_INDICES);
  }

  get corruptIndices(): CorruptIndices {
    return { pageRequestQueue: this.prq.corruptIndex, eventQueue: 0, commandQueue: this.iq.corruptIndex };
  }

  get faultsPending(): boolean {
    return this.faultFd.readable;
  }

  /** VT-d reports no events to the guest: terminated faults stay with the host. */
  drainEvents(): number {
    return 0;
  }

  drainFaults(): number {
    // A fault fd the VMM has closed (teardown: fault-fd-close) is never read again.
    if (!this.faultFd.writable) return 0;
    let moved = 0;
    for (let bytes = this.readFaults(); bytes > 0; bytes = this.readFaults()) {
      for (let at = 0; at < bytes; at += PGFAULT_BYTES)
        this.deliver(readPgfaultInto(this.faultView, at, this.record));
      moved += bytes / PGFAULT_BYTES;
    }
    return moved;
  }

  private deliver(f: ReturnType<typeof newPgfaultFields>): void {
    const last = (f.flags & PGFAULT_FLAGS_LAST_PAGE) !== 0;
    const rid = this.backend.vsidOf(f.devId);
    if (rid < 0) {
      if (last) {
        this.stats.noVdevice++;
        this.respond(f.cookie, IOMMUFD_PAGE_RESP_INVALID);
      }
      return;
    }
    if (last) {
      // Where the group really came from (a misrouted group names another VM's stream).
      const streamId = this.faultFd.originOf(f.cookie);
      const owner = this.ownerOf(streamId, f.pasid);
      if (owner !== this.vmName) {
        this.invariants.violation({
          rule: 'fault-delivered-to-non-owner',
          vm: this.vmName,
          detail: `group ${f.grpid} of stream ${streamId} PASID ${f.pasid} is owned by ${owner ?? 'nobody'}`,
        });
      }
    }
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
      this.stats.dropped++;
      this.stats.overflows = this.prq.stats.overflows;
      if (last) {
        this.stats.autoResponded++;
        this.respond(f.cookie, IOMMUFD_PAGE_RESP_SUCCESS);
      }
      return;
    }
    if (last) {
      this.stats.delivered++;
      this.delivered[rid * PRG_INDICES + f.grpid] = f.cookie;
      this.answered[rid * PRG_INDICES + f.grpid] = 0;
    }
  }

  /** One iommu_hwpt_page_response; false when the fault fd refused the cookie (answered already). */
  /** read() on the fault fd: whole records, or 0 when nothing waits (the registry's stage). */
  private readFaults(): number {
    stageClock.enter(STAGE_REGISTRY);
    const bytes = this.faultFd.read(this.faultBuffer);
    stageClock.leave();
    return bytes;
  }

  private respond(cookie: number, code: number): boolean {
    this.replyView.setUint32(0, cookie, true);
    this.replyView.setUint32(4, code, true);
    stageClock.enter(STAGE_REGISTRY);
    try {
      this.faultFd.write(this.reply);
      return true;
    } catch (error) {
      if (error instanceof IommufdError) return false;
      throw error;
    } finally {
      stageClock.leave();
    }
  }

  serviceCommands(): number {
    const ring = this.iq;
    let consumed = 0;
    for (let ready = ring.poll(); ready > 0; ready = ring.poll()) {
      for (let i = 0; i < ready; i++) this.execute(ring.words, ring.at(i));
      ring.release(ready);
      consumed += ready;
    }
    return consumed;
  }

  private execute(words: Int32Array, at: number): void {
    switch (vtdDescriptorType(words, at)) {
      case VTD_PAGE_GROUP_RESPONSE_TYPE:
        this.groupResponse(words, at);
        return;
      case VTD_PIOTLB_TYPE:
        this.invalidatePasid(words, at);
        return;
      case VTD_INV_WAIT_TYPE:
        this.wait(words, at);
        return;
      default:
        this.refuse();
    }
  }

  private groupResponse(words: Int32Array, at: number): void {
    const p = decodeVtdPageGroupResponse(words, at, this.response);
    if (p.code !== QI_RESP_SUCCESS && p.code !== QI_RESP_INVALID && p.code !== QI_RESP_FAILURE) {
      this.refuse();
      return;
    }
    const slot = p.rid < this.backend.devices ? p.rid * PRG_INDICES + p.prgIndex : -1;
    const cookie = slot >= 0 ? this.delivered[slot] : -1;
    if (cookie < 0) {
      this.stats.unknownResponses++;
      if (slot >= 0 && this.answered[slot] !== 0) this.stats.duplicateResponses++;
      return;
    }
    this.delivered[slot] = -1;
    this.answered[slot] = 1;
    if (p.code === QI_RESP_SUCCESS) this.stats.responses.success++;
    else if (p.code === QI_RESP_INVALID) this.stats.responses.invalid++;
    else this.stats.responses.failure++;
    // iommufd takes SUCCESS or INVALID; a guest's Response Failure reaches the device as INVALID.
    if (
      this.respond(cookie, p.code === QI_RESP_SUCCESS ? IOMMUFD_PAGE_RESP_SUCCESS : IOMMUFD_PAGE_RESP_INVALID)
    )
      this.stats.guestAnswered++;
    else this.stats.unknownResponses++;
  }

  private invalidatePasid(words: Int32Array, at: number): void {
    const d = decodeVtdPasidIotlb(words, at, this.invalidation);
    let ok = false;
    if (d.granularity === PIOTLB_GRAN_PASID) ok = this.backend.invalidate(d.pasid, 0, undefined);
    else if (d.granularity === PIOTLB_GRAN_PAGES && d.addressMask <= MAX_ADDRESS_MASK)
      ok = this.backend.invalidate(d.pasid, d.address, 2 ** d.addressMask);
    if (ok) this.stats.invalidations++;
    else this.refuse();
  }

  /** Every earlier descriptor is done once consumed; a status write lands in guest RAM. */
  private wait(words: Int32Array, at: number): void {
    this.stats.syncs++;
    const address = vtdInvWaitAddress(words, at);
    if (address === 0) return;
    if (!this.memory.contains(address, 4)) {
      this.refuse();
      return;
    }
    Atomics.store(this.memory.words, address >>> 2, vtdInvWaitData(words, at));
    this.stats.syncsSignalled++;
  }

  /** A refused descriptor: counted, and signalled to the guest as IQE. */
  private refuse(): void {
    this.stats.illegalCommands++;
    this.commandError?.raise(CERROR_ILL);
  }

  forgetDelivered(): void {
    this.delivered.fill(-1);
    this.answered.fill(0);
  }
}
