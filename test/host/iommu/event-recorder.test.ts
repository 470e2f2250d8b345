import { describe, expect, test } from 'vitest';
import {
  type EventRecordFields,
  type EventSink,
  FaultRecorder,
  newTranslationFault,
  type TranslationFault,
} from '../../../host/iommu/event-recorder.ts';
import { ACCESS_EXEC, ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE } from '../../../host/iommu/stage1-walker.ts';
import {
  C_BAD_CD,
  CLASS_CD,
  CLASS_IN,
  CLASS_TTD,
  F_ACCESS,
  F_ADDR_SIZE,
  F_PERMISSION,
  F_TRANSLATION,
  F_WALK_EABT,
} from '../../../shared/records/event-types.ts';

function setup() {
  const records: EventRecordFields[] = [];
  const sink: EventSink = { record: (event) => records.push({ ...event }) };
  const recorder = new FaultRecorder(sink);
  let transaction = 0;
  /** A stage-1 read fault of a new transaction, with `fields` changed. */
  const fault = (fields: Partial<TranslationFault> = {}): TranslationFault =>
    Object.assign(newTranslationFault(), {
      transaction: ++transaction,
      eventType: F_TRANSLATION,
      faultClass: CLASS_IN,
      streamId: 3,
      address: 0x4000,
      access: ACCESS_READ,
      ...fields,
    });
  return { records, recorder, fault };
}

describe('translation fault recording', () => {
  test('terminate recording is gated by the record bit', () => {
    const { records, recorder, fault } = setup();
    for (const eventType of [F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION]) {
      expect(recorder.record(fault({ eventType }), false)).toBe(false);
    }
    expect(records).toHaveLength(0);
    expect(recorder.stats.silent).toBe(4);
    // The same faults with CD.R / STE.S2R set are recorded, Stall=0.
    expect(recorder.record(fault(), true)).toBe(true);
    expect(recorder.record(fault({ stage2: true, fetchAddress: 0x8000 }), true)).toBe(true);
    expect(records.map((r) => [r.stall, r.stage2])).toEqual([
      [false, false],
      [false, true],
    ]);
    // Faults outside the configurable four ignore the record bit: they are always recorded.
    expect(recorder.record(fault({ eventType: C_BAD_CD, faultClass: CLASS_CD }), false)).toBe(true);
    expect(
      recorder.record(fault({ eventType: F_WALK_EABT, faultClass: CLASS_TTD, fetchAddress: 0x3008 }), false),
    ).toBe(true);
    expect(records.map((r) => r.eventType).slice(2)).toEqual([C_BAD_CD, F_WALK_EABT]);
    // A stage-1 fetch abort keeps its fetch address in dword3.
    expect(records[3].fetchAddress).toBe(0x3008);
  });

  test('a stall record is never merged and always recorded', () => {
    const { records, recorder, fault } = setup();
    // Identical stalls of two transactions, record bit clear, merging allowed: both recorded.
    expect(recorder.record(fault({ stall: true, stag: 0x1_0005 }), false, true)).toBe(true);
    expect(recorder.record(fault({ stall: true, stag: 0x1_0005 }), false, true)).toBe(true);
    expect(records).toHaveLength(2);
    expect(records.every((r) => r.stall && r.stag === 5)).toBe(true);
    expect(recorder.stats).toMatchObject({ stallRecords: 2, merged: 0 });
    // Identical terminate records do merge under STE.MEV, and only under it.
    recorder.record(fault(), true, true);
    recorder.record(fault(), true, true);
    recorder.record(fault(), true, false);
    expect(records).toHaveLength(4);
    expect(recorder.stats.merged).toBe(1);
  });

  test('a transaction gets at most one record; its retry is a new transaction', () => {
    const { records, recorder, fault } = setup();
    const first = fault({ stall: true, stag: 1 });
    expect(recorder.record(first, true)).toBe(true);
    // The same transaction faulting again (e.g. a fallback path) records nothing more.
    expect(recorder.record({ ...first, stall: false }, true)).toBe(false);
    expect(recorder.stats.secondRecords).toBe(1);
    // RESUME(Retry) re-presents it as a new transaction, which may fault and record again.
    expect(recorder.record(fault({ stall: true, stag: 2 }), true)).toBe(true);
    expect(records.map((r) => r.stag)).toEqual([1, 2]);
  });

  test('only the four translation faults can be recorded as stalls', () => {
    const { records, recorder, fault } = setup();
    recorder.record(fault({ eventType: C_BAD_CD, faultClass: CLASS_CD, stall: true, stag: 7 }), false);
    expect(records[0]).toMatchObject({ eventType: C_BAD_CD, stall: false, stag: 0 });
    expect(recorder.stats.stallNotConfigurable).toBe(1);
  });

  test('the record carries the event fields of the fault', () => {
    const { records, recorder, fault } = setup();
    recorder.record(
      fault({
        eventType: F_PERMISSION,
        ssv: true,
        ssid: 0x12345,
        access: ACCESS_WRITE | ACCESS_EXEC | ACCESS_PRIV,
        address: 0xffff_0000_1234,
        fetchAddress: 0x5000,
        stall: true,
        stag: 0xbeef,
      }),
      false,
    );
    // A stage-2 fault without SSV: the SubstreamID reads 0 and the IPA is present.
    recorder.record(fault({ stage2: true, faultClass: CLASS_TTD, ssid: 9, fetchAddress: 0x7000 }), true);
    expect(records).toEqual([
      {
        eventType: F_PERMISSION,
        ssv: true,
        substreamId: 0x12345,
        streamId: 3,
        stag: 0xbeef,
        stall: true,
        privileged: true,
        instruction: true,
        read: false,
        stage2: false,
        faultClass: CLASS_IN,
        inputAddress: 0xffff_0000_1234,
        fetchAddress: 0, // UNKNOWN for a stage-1 translation fault
      },
      {
        eventType: F_TRANSLATION,
        ssv: false,
        substreamId: 0,
        streamId: 3,
        stag: 0,
        stall: false,
        privileged: false,
        instruction: false,
        read: true,
        stage2: true,
        faultClass: CLASS_TTD,
        inputAddress: 0x4000,
        fetchAddress: 0x7000,
      },
    ]);
  });
});
