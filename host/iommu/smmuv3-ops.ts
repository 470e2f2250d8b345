/**
 * The host's SMMUv3 driver: the iommu_ops the registry calls for devices behind the physical
 * IOMMU model (what arm-smmu-v3 and its iommufd glue do in Linux). A paging domain is a stage-2
 * (the VM's IOAS); a nested domain carries the guest's vSTE, from which the driver installs the
 * stream's stage-1 configuration (S1ContextPtr = the guest's CD table, S1CDMax) in the stream table.
 *
 * A paging domain is real stage-2 tables in a host-only pool, kept in step with its IOAS by the
 * registry's map and unmap calls; the walker translates every guest physical address through them.
 */
import {
  CMD_ATC_INV,
  CMD_CFGI_CD,
  CMD_CFGI_CD_ALL,
  CMD_TLBI_NH_ASID,
  CMD_TLBI_NH_VA,
  CMDQ_ENTRY_BYTES,
  CMDQ_ENTRY_WORDS,
  commandOpcode,
  commandStreamId,
  commandSubstreamId,
  tlbiNhVaAddress,
} from '../../shared/records/cmdq-entry.ts';
import { EVTQ_ENTRY_WORDS, encodeEvtqEntry, newEvtqEntry } from '../../shared/records/evtq-entry.ts';
import {
  IDR0_ATS,
  IDR0_PRI,
  IDR0_S1P,
  IDR0_S2P,
  IDR0_TERM_MODEL,
  IDR0_TTF_AARCH64,
} from '../../shared/smmuv3-idr.ts';
import { ErrnoError } from './errno.ts';
import { HostIommuDriver, PhysicalDevice } from './host-driver.ts';
import type { Iommu } from './iommu.ts';
import type {
  Domain,
  HwInfo,
  InvalidateResult,
  InvalidationFormat,
  IommuDevice,
  IommuOps,
  NestedDomain,
  PagingDomain,
  ViommuEventSink,
  ViommuState,
} from './iommu-ops.ts';
import { ANY_PASID } from './iotlb.ts';
import type { Stage2Domain, Stage2Owner } from './stage2-domain.ts';

/** uAPI constants for the ARM SMMUv3 flavour (include/uapi/linux/iommufd.h). */
export const IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2;
export const IOMMU_HWPT_DATA_ARM_SMMUV3 = 2;
export const IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1;
export const IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1;
export const IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1;

/** STE dword 0 fields (SMMU spec 5.2). */
const STE0_V = 1n;
const STE0_CFG_SHIFT = 1n;
const STE0_CFG_MASK = 7n;
const STE0_S1FMT_MASK = 3n << 4n;
const STE0_S1CTXPTR_MASK = ((1n << 52n) - 1n) & ~((1n << 6n) - 1n);
const STE0_S1CDMAX_SHIFT = 59n;
const STE0_S1CDMAX_MASK = 0x1fn << STE0_S1CDMAX_SHIFT;
/** dword 1 fields a guest may set: S1DSS, S1CIR, S1COR, S1CSH, S1STALLD, EATS. */
const STE1_NESTING_ALLOWED = 0xffn | (1n << 27n) | (3n << 28n);
export const STE_CFG_ABORT = 0;
export const STE_CFG_BYPASS = 4;
export const STE_CFG_S1_TRANS = 5;

/** Command opcodes a guest may pass through vIOMMU invalidation. */
const INVALIDATE_OPCODES = new Set([
  CMD_CFGI_CD,
  CMD_CFGI_CD_ALL,
  CMD_TLBI_NH_ASID,
  CMD_TLBI_NH_VA,
  CMD_ATC_INV,
]);

/** Guest invalidations go through the vIOMMU as raw 16-byte commands; nested HWPTs take none. */
const VIOMMU_INVALIDATION: InvalidationFormat = {
  type: IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
  minLength: CMDQ_ENTRY_BYTES,
  maxLength: CMDQ_ENTRY_BYTES,
};

/** A PCIe function behind the SMMU, as the driver knows it. */
export class Smmuv3Device extends PhysicalDevice {
  constructor(
    ops: Smmuv3Ops,
    streamId: number,
    pasidLog2: number,
    /** The device can wait on a stalled transaction: the driver leaves STE.S1STALLD clear. */
    readonly stall = false,
  ) {
    super(ops, streamId, pasidLog2);
  }
}

export class Smmuv3NestedDomain implements NestedDomain {
  readonly kind = 'nested';
  readonly ste0: bigint;
  readonly ste1: bigint;

  constructor(
    readonly ops: Smmuv3Ops,
    readonly parent: PagingDomain,
    readonly data: Uint8Array,
    readonly viommu: Smmuv3Viommu,
  ) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.ste0 = view.getBigUint64(0, true);
    this.ste1 = view.getBigUint64(8, true);
  }

  get valid(): boolean {
    return (this.ste0 & STE0_V) !== 0n;
  }

  get config(): number {
    return Number((this.ste0 >> STE0_CFG_SHIFT) & STE0_CFG_MASK);
  }

  get cdTableGpa(): number {
    return Number(this.ste0 & STE0_S1CTXPTR_MASK);
  }

  get cdLog2(): number {
    return Number((this.ste0 & STE0_S1CDMAX_MASK) >> STE0_S1CDMAX_SHIFT);
  }
}

class Smmuv3Viommu implements ViommuState {
  readonly type = IOMMU_VIOMMU_TYPE_ARM_SMMUV3;
  constructor(readonly events: ViommuEventSink) {}
}

/** Build the 16-byte struct iommu_hwpt_arm_smmuv3 for an S1-translate vSTE. */
export function encodeVste(cdTableGpa: number, cdLog2: number): Uint8Array {
  const data = new Uint8Array(16);
  const ste0 =
    STE0_V |
    (BigInt(STE_CFG_S1_TRANS) << STE0_CFG_SHIFT) |
    (BigInt(cdTableGpa) & STE0_S1CTXPTR_MASK) |
    (BigInt(cdLog2) << STE0_S1CDMAX_SHIFT);
  new DataView(data.buffer).setBigUint64(0, ste0, true);
  return data;
}

export class Smmuv3Ops extends HostIommuDriver implements IommuOps, Stage2Owner {
  readonly name = 'arm-smmu-v3';
  readonly viommuType = IOMMU_VIOMMU_TYPE_ARM_SMMUV3;
  readonly veventqType = IOMMU_VEVENTQ_TYPE_ARM_SMMUV3;
  /** Stage 2 of each attached stream (the paging domain, or the nested domain's parent). */
  private readonly stage2Of = new Map<number, PagingDomain>();
  /** The command being invalidated, as words (the caller's bytes may sit at any offset). */
  private readonly command = new Int32Array(CMDQ_ENTRY_WORDS);
  private readonly commandBytes = new Uint8Array(this.command.buffer);

  constructor(iommu: Iommu, tablePages = 1 << 16) {
    super(iommu, tablePages, { flavour: 'SMMUv3', unit: 'SMMU' });
  }

  /** A stage-2 mapping changed: combined stage-1+2 entries of its streams are stale (TLBI_S12_VMALL). */
  invalidateStage2(domain: PagingDomain): void {
    for (const [streamId, s2] of this.stage2Of) if (s2 === domain) this.iommu.invalidateStream(streamId);
  }

  device(streamId: number, pasidLog2: number, stall = false): Smmuv3Device {
    return new Smmuv3Device(this, streamId, pasidLog2, stall);
  }

  hwInfo(): HwInfo {
    // struct iommu_hw_info_arm_smmuv3: flags, __reserved, idr[6], iidr, aidr (40 bytes).
    const data = new Uint8Array(40);
    const view = new DataView(data.buffer);
    // STALL_MODEL 0b00 (stall and terminate); TERM_MODEL as the stall model terminates.
    const idr0 =
      IDR0_S2P |
      IDR0_S1P |
      IDR0_TTF_AARCH64 |
      IDR0_ATS |
      IDR0_PRI |
      (this.iommu.stalls.abortOnly ? IDR0_TERM_MODEL : 0);
    view.setUint32(8, idr0, true);
    return { type: IOMMU_HW_INFO_TYPE_ARM_SMMUV3, data, capabilities: 0n };
  }

  allocNested(
    _device: IommuDevice,
    parent: PagingDomain,
    dataType: number,
    data: Uint8Array,
    viommu: ViommuState | undefined,
  ): NestedDomain {
    if (!viommu) throw new ErrnoError('EOPNOTSUPP', 'SMMUv3 nested domains are allocated through a vIOMMU');
    if (dataType !== IOMMU_HWPT_DATA_ARM_SMMUV3)
      throw new ErrnoError('EOPNOTSUPP', `unknown nested data type ${dataType}`);
    if (data.length !== 16)
      throw new ErrnoError('EINVAL', `struct iommu_hwpt_arm_smmuv3 is 16 bytes, got ${data.length}`);
    const domain = new Smmuv3NestedDomain(this, parent, data, viommu as Smmuv3Viommu);
    if (!domain.valid) return domain;
    // Linux reserves EIO for STE bits a guest may not set and configurations it may not ask for.
    const allowed0 =
      STE0_V | (STE0_CFG_MASK << STE0_CFG_SHIFT) | STE0_S1FMT_MASK | STE0_S1CTXPTR_MASK | STE0_S1CDMAX_MASK;
    if ((domain.ste0 & ~allowed0) !== 0n || (domain.ste1 & ~STE1_NESTING_ALLOWED) !== 0n) {
      throw new ErrnoError('EIO', 'the vSTE sets bits a guest may not set');
    }
    if (![STE_CFG_ABORT, STE_CFG_BYPASS, STE_CFG_S1_TRANS].includes(domain.config)) {
      throw new ErrnoError('EIO', `vSTE config ${domain.config} is not abort, bypass or S1 translate`);
    }
    return domain;
  }

  attach(device: IommuDevice, pasid: number | undefined, domain: Domain, virtId?: bigint): void {
    const dev = device as Smmuv3Device;
    if (pasid !== undefined) {
      throw new ErrnoError(
        'EINVAL',
        "the PASIDs of an SMMUv3 stream are the guest CD table's, not attachable one by one",
      );
    }
    const s2 = (domain.kind === 'paging' ? domain : domain.parent) as Stage2Domain;
    const base = { s2: s2.table, host: this.iommu.host, cdTableGpa: 0, cdLog2: 0, stall: dev.stall };
    this.stage2Of.set(dev.streamId, s2);
    this.iommu.setEventHandler(dev.streamId, undefined);
    this.iommu.setUserPasidTable(dev.streamId, domain.kind === 'nested');
    if (domain.kind === 'paging') {
      this.iommu.installStream(dev.streamId, { ...base, s1Bypass: true });
      return;
    }
    const nested = domain as Smmuv3NestedDomain;
    // Stage-1 events of the stream go to the vIOMMU, with the guest's StreamID (its vDEVICE's virt_id).
    if (virtId !== undefined) this.reportEventsTo(dev.streamId, nested.viommu.events, Number(virtId));
    if (!nested.valid || nested.config === STE_CFG_ABORT) this.iommu.removeStream(dev.streamId);
    else if (nested.config === STE_CFG_BYPASS)
      this.iommu.installStream(dev.streamId, { ...base, s1Bypass: true });
    else
      this.iommu.installStream(dev.streamId, {
        ...base,
        cdTableGpa: nested.cdTableGpa,
        cdLog2: nested.cdLog2,
      });
  }

  detach(device: IommuDevice, pasid: number | undefined): void {
    if (pasid !== undefined) return;
    this.stage2Of.delete(device.streamId);
    this.iommu.setEventHandler(device.streamId, undefined);
    this.iommu.setUserPasidTable(device.streamId, false);
    this.iommu.removeStream(device.streamId);
  }

  allocViommu(
    _device: IommuDevice,
    parent: PagingDomain,
    type: number,
    data: Uint8Array,
    events: ViommuEventSink,
  ): ViommuState {
    if (type !== IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
      throw new ErrnoError('EOPNOTSUPP', `unsupported vIOMMU type ${type}`);
    if (data.length !== 0) throw new ErrnoError('EINVAL', 'the SMMUv3 vIOMMU takes no data');
    if (!parent.flags.nestParent) throw new ErrnoError('EINVAL', 'a vIOMMU needs a nest parent');
    return new Smmuv3Viommu(events);
  }

  /** Report the stream's stage-1 events as 32-byte SMMUv3 event records on the vIOMMU's vEVENTQ. */
  private reportEventsTo(streamId: number, sink: ViommuEventSink, vsid: number): void {
    const entry = newEvtqEntry();
    const bytes = new Uint8Array(EVTQ_ENTRY_WORDS * 4);
    const words = new Int32Array(bytes.buffer);
    this.iommu.setEventHandler(streamId, (event) => {
      Object.assign(entry, event);
      entry.streamId = vsid;
      encodeEvtqEntry(words, 0, entry);
      if (!sink.report(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, bytes)) this.eventsUnreported++;
    });
  }

  /** Events for a vIOMMU that had no vEVENTQ to take them (the VMM never asked for events). */
  eventsUnreported = 0;

  invalidationFormat(target: NestedDomain | ViommuState): InvalidationFormat | undefined {
    return target instanceof Smmuv3Viommu ? VIOMMU_INVALIDATION : undefined;
  }

  /**
   * One guest command passed through the vIOMMU. The model has no ASIDs, so a TLBI by ASID or VA
   * covers every stream of the vIOMMU; CFGI_CD names a stream by its virtual SID.
   */
  invalidate(
    _target: NestedDomain | ViommuState,
    entry: Uint8Array,
    vdevices: ReadonlyMap<bigint, IommuDevice>,
  ): InvalidateResult {
    // invalidationFormat makes the registry pass exactly one command.
    if (entry.length !== CMDQ_ENTRY_BYTES) return 'EINVAL';
    const command = this.command;
    this.commandBytes.set(entry);
    const opcode = commandOpcode(command, 0);
    if (!INVALIDATE_OPCODES.has(opcode)) return 'EIO';
    switch (opcode) {
      case CMD_TLBI_NH_VA: {
        const va = tlbiNhVaAddress(command, 0);
        for (const device of vdevices.values())
          this.iommu.invalidateStream(device.streamId, ANY_PASID, va, 4096);
        return undefined;
      }
      case CMD_TLBI_NH_ASID:
        for (const device of vdevices.values()) this.iommu.invalidateStream(device.streamId);
        return undefined;
      case CMD_CFGI_CD:
      case CMD_CFGI_CD_ALL: {
        const device = vdevices.get(BigInt(commandStreamId(command, 0)));
        if (!device) return 'EINVAL';
        const ssid = commandSubstreamId(command, 0);
        this.iommu.invalidateStream(device.streamId, opcode === CMD_CFGI_CD ? ssid : ANY_PASID);
        return undefined;
      }
      default:
        return undefined; // CMD_ATC_INV: no ATS cache modelled yet.
    }
  }
}
