/**
 * Where the event record of a faulted transaction goes (the terminate model, SMMU spec 3.12; the
 * stall model's Stall=1 records take the same road). The recorder writes at most one record per
 * transaction into the event queue of the IOMMU the stream sits behind; once that queue's IRQ
 * thread has drained it, a stage-1 record goes to the stream's vIOMMU (its event handler) and a
 * stage-2 record, or one of a stream without a vIOMMU, stays with the host. A Stall=1 record is not
 * a vIOMMU event: the Iommu hands it to the stall bridge, which raises an IOPF group.
 */
import { CLASS_IN, F_TRANSLATION } from '../../shared/records/event-types.ts';
import {
  type EventRecordFields,
  type EventSink,
  FaultRecorder,
  newTranslationFault,
} from './event-recorder.ts';
import type { IommuInstance } from './iommu-instance.ts';
import type { WalkResult } from './stage1-walker.ts';

/** Who takes a stream's stage-1 events (the driver's vIOMMU reporting). */
export type EventHandler = (event: Readonly<EventRecordFields>) => void;

/** The physical IOMMUs, by the stream behind each: whose event queue a record goes into. */
export interface EventQueues {
  instanceOf(streamId: number): IommuInstance;
}

export class EventDelivery implements EventSink {
  /** The terminate model's recording: at most one event record per transaction. */
  readonly recorder: FaultRecorder;
  /** Records the event threads handed on. */
  recorded = 0;
  /** ... of which reached a vIOMMU. */
  forwarded = 0;
  /** ... of which stayed with the host: stage 2, or a stream without a vIOMMU to report to. */
  hostOnly = 0;
  /** One fault's fields, reused: recording allocates nothing. */
  private readonly fault = newTranslationFault();
  private readonly handlers = new Map<number, EventHandler>();

  constructor(private readonly queues: EventQueues) {
    this.recorder = new FaultRecorder(this);
  }

  /** The recorder's sink: into the event queue of the IOMMU the stream sits behind. */
  record(event: Readonly<EventRecordFields>): void {
    this.queues.instanceOf(event.streamId).evtq.write(event);
  }

  /** Where a stream's stage-1 events go; undefined: the host keeps them. */
  setHandler(streamId: number, handler: EventHandler | undefined): void {
    if (handler) this.handlers.set(streamId, handler);
    else this.handlers.delete(streamId);
  }

  /**
   * Transaction `transaction` faulted and no page request will retry it: record it if it must be
   * (always for configuration errors and stage 2's S2R, the CD's R bit for the four translation
   * faults at stage 1).
   */
  terminate(
    transaction: number,
    streamId: number,
    pasid: number,
    va: number,
    access: number,
    walk: Readonly<WalkResult>,
  ): void {
    this.recordFault(
      transaction,
      walk.fault,
      walk.stage2,
      walk.faultClass,
      streamId,
      pasid,
      va,
      walk.fetchAddress,
      access,
      -1,
      walk.stage2 || walk.recordFaults,
    );
  }

  /** Fault injection: a stage-1 translation fault of transaction `transaction`, always recorded. */
  inject(transaction: number, streamId: number, pasid: number, va: number, access: number): void {
    this.recordFault(transaction, F_TRANSLATION, false, CLASS_IN, streamId, pasid, va, 0, access, -1, true);
  }

  /** A stalled transaction's Stall=1 record under `stag` (never merged, never dropped). */
  stalled(
    transaction: number,
    streamId: number,
    pasid: number,
    va: number,
    access: number,
    walk: Readonly<WalkResult>,
    stag: number,
  ): void {
    this.recordFault(
      transaction,
      walk.fault,
      false,
      walk.faultClass,
      streamId,
      pasid,
      va,
      0,
      access,
      stag,
      true,
    );
  }

  /** An event thread drained `event`: to the stream's vIOMMU, or kept by the host. */
  deliver(event: Readonly<EventRecordFields>): void {
    this.recorded++;
    // A stall travels as an IOPF group (the fault queue), not as a vIOMMU event.
    if (event.stall) return;
    const handler = event.stage2 ? undefined : this.handlers.get(event.streamId);
    if (!handler) {
      this.hostOnly++;
      return;
    }
    this.forwarded++;
    handler(event);
  }

  /** `stag` -1: the transaction terminates; otherwise it stalls under that STAG. */
  private recordFault(
    transaction: number,
    eventType: number,
    stage2: boolean,
    faultClass: number,
    streamId: number,
    pasid: number,
    va: number,
    fetchAddress: number,
    access: number,
    stag: number,
    recordFaults: boolean,
  ): void {
    const f = this.fault;
    f.transaction = transaction;
    f.eventType = eventType;
    f.stage2 = stage2;
    f.faultClass = faultClass;
    f.streamId = streamId;
    f.ssv = pasid !== 0;
    f.ssid = pasid;
    f.address = va;
    f.fetchAddress = fetchAddress;
    f.access = access;
    f.stall = stag >= 0;
    f.stag = Math.max(stag, 0);
    this.recorder.record(f, recordFaults);
  }
}
