/**
 * Event recording for translation faults, the terminate model's half of SMMU spec 3.12
 * (SMMU spec 7.3; docs/fault-path.md): given a classified fault, decide whether it becomes an event record
 * and with which fields.
 *
 * - Only F_TRANSLATION, F_ADDR_SIZE, F_ACCESS and F_PERMISSION are configurable (terminate or
 *   stall); every other fault terminates with abort and is always recorded.
 * - A terminated translation fault is recorded only when its record bit is set (CD.R for a stage-1
 *   fault, STE.S2R for a stage-2 fault); with the bit clear the transaction dies silently.
 * - A stalled one is always recorded (Stall=1, with its STAG): software must see it to resume it.
 * - At most one record per incoming transaction; a RESUME(Retry) makes a new transaction.
 * - With STE.MEV=1, a non-stall record identical to the previous one may be merged into it
 *   (3.5.5); a stall record never is, since each one has to be answered.
 *
 * The record layout (32 bytes: dword0 EventType/SSV/SubstreamID/StreamID, dword1 STAG/Stall/PnU/
 * InD/RnW/S2/CLASS, dword2 InputAddr, dword3 IPA or fetch address) belongs to the event-queue
 * entry encoder in shared/records; this module hands that encoder's input, as field values named
 * like the record's fields, to an EventSink.
 */
import { F_ACCESS, F_ADDR_SIZE, F_PERMISSION, F_TRANSLATION } from '../../shared/records/event-types.ts';
import { type EvtqEntry, newEvtqEntry, STAG_MASK } from '../../shared/records/evtq-entry.ts';
import { ACCESS_EXEC, ACCESS_PRIV, ACCESS_WRITE } from './stage1-walker.ts';

/** The four translation-related faults whose fault model (terminate or stall) is configurable. */
export function isConfigurableFault(type: number): boolean {
  return type === F_TRANSLATION || type === F_ADDR_SIZE || type === F_ACCESS || type === F_PERMISSION;
}

/** A classified fault, as the IOMMU hands it over. Reused by the caller, never allocated per fault. */
export interface TranslationFault {
  /**
   * Identifies the incoming transaction and grows with every new one (the IOMMU's translation
   * counter does); a retried transaction is a new one.
   */
  transaction: number;
  /** Event type (F_*, C_*). */
  eventType: number;
  /** S2: the fault happened at stage 2. */
  stage2: boolean;
  /** CLASS: CD fetch, stage-1 table walk, or input address. */
  faultClass: number;
  streamId: number;
  /** A SubstreamID came with the transaction. */
  ssv: boolean;
  ssid: number;
  /** The input address as presented. */
  address: number;
  /**
   * For a stage-2 fault: the IPA that could not be translated or fetched (WalkResult's
   * fetchAddress); for a fetch abort (F_CD_FETCH, F_WALK_EABT, ...) the address fetched.
   */
  fetchAddress: number;
  /** ACCESS_* bits of the transaction. */
  access: number;
  /** The transaction is stalled (its fault model is stall and the stall was taken). */
  stall: boolean;
  /** The stall's STAG when `stall`. */
  stag: number;
}

export function newTranslationFault(): TranslationFault {
  return {
    transaction: 0,
    eventType: 0,
    stage2: false,
    faultClass: 0,
    streamId: 0,
    ssv: false,
    ssid: 0,
    address: 0,
    fetchAddress: 0,
    access: 0,
    stall: false,
    stag: 0,
  };
}

/** The fields of one event record: the SMMUv3 event record layout of shared/records/evtq-entry.ts. */
export type EventRecordFields = EvtqEntry;
export const newEventRecordFields = newEvtqEntry;

/**
 * Where records go: the event queue, which encodes them. The fields are reused after the call
 * returns. A sink must never discard a record with `stall` set (spec 7.4: a stall record waits for
 * room instead, and never causes overflow).
 */
export interface EventSink {
  record(event: Readonly<EventRecordFields>): void;
}

export interface FaultRecorderStats {
  faults: number;
  /** Records handed to the sink. */
  recorded: number;
  /** ... of which with Stall=1. */
  stallRecords: number;
  /** Terminated translation faults not recorded because their record bit was clear. */
  silent: number;
  /** Non-stall records merged into the identical previous record (STE.MEV). */
  merged: number;
  /** Faults of a transaction that already had its record: dropped. */
  secondRecords: number;
  /** Stall claimed for a fault that cannot stall: recorded as a terminate-model fault. */
  stallNotConfigurable: number;
}

export class FaultRecorder {
  readonly stats: FaultRecorderStats = {
    faults: 0,
    recorded: 0,
    stallRecords: 0,
    silent: 0,
    merged: 0,
    secondRecords: 0,
    stallNotConfigurable: 0,
  };
  private readonly event = newEventRecordFields();
  private readonly previous = newEventRecordFields();
  private hasPrevious = false;
  private lastTransaction = Number.NEGATIVE_INFINITY;

  constructor(private readonly sink: EventSink) {}

  /**
   * Record `fault` if the fault model says so. `recordFaults` is the fault's record bit (CD.R for
   * stage 1, STE.S2R for stage 2); `mergeEvents` is STE.MEV. Returns true when a record stands for
   * the fault (written, or merged into the identical previous one), false when it goes unrecorded.
   */
  record(fault: Readonly<TranslationFault>, recordFaults: boolean, mergeEvents = false): boolean {
    this.stats.faults++;
    if (fault.transaction <= this.lastTransaction) {
      this.stats.secondRecords++;
      return false;
    }
    const configurable = isConfigurableFault(fault.eventType);
    let stall = fault.stall;
    if (stall && !configurable) {
      this.stats.stallNotConfigurable++;
      stall = false;
    }
    if (configurable && !stall && !recordFaults) {
      this.stats.silent++;
      return false;
    }
    this.lastTransaction = fault.transaction;
    const e = this.event;
    e.eventType = fault.eventType;
    e.ssv = fault.ssv;
    e.substreamId = fault.ssv ? fault.ssid : 0;
    e.streamId = fault.streamId;
    e.stall = stall;
    e.stag = stall ? fault.stag & STAG_MASK : 0;
    e.privileged = (fault.access & ACCESS_PRIV) !== 0;
    e.instruction = (fault.access & ACCESS_EXEC) !== 0;
    e.read = (fault.access & ACCESS_WRITE) === 0;
    e.stage2 = fault.stage2;
    e.faultClass = fault.faultClass;
    e.inputAddress = fault.address;
    e.fetchAddress = fault.stage2 || !configurable ? fault.fetchAddress : 0;
    // 3.5.5: only identical records with Stall=0 may merge; a stall record must reach software.
    if (mergeEvents && !stall && this.hasPrevious && sameRecord(e, this.previous)) {
      this.stats.merged++;
      return true;
    }
    Object.assign(this.previous, e);
    this.hasPrevious = true;
    this.stats.recorded++;
    if (stall) this.stats.stallRecords++;
    this.sink.record(e);
    return true;
  }
}

function sameRecord(a: EventRecordFields, b: EventRecordFields): boolean {
  return (
    a.eventType === b.eventType &&
    a.ssv === b.ssv &&
    a.substreamId === b.substreamId &&
    a.streamId === b.streamId &&
    a.stag === b.stag &&
    a.stall === b.stall &&
    a.privileged === b.privileged &&
    a.instruction === b.instruction &&
    a.read === b.read &&
    a.stage2 === b.stage2 &&
    a.faultClass === b.faultClass &&
    a.inputAddress === b.inputAddress &&
    a.fetchAddress === b.fetchAddress
  );
}
