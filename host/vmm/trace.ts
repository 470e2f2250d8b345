/**
 * `run --trace <file>`: a Chrome trace-event file (Perfetto UI and chrome://tracing open it) of
 * every fault's life. Each VM is a process with one track for its vIOMMU and one per device; a
 * fault is an async slice of its device from the page request to the retry that translated,
 * split into its stages (to the VMM: IOPF group and fault queue; in the guest: delivery, the
 * driver's handling and its answer; back to the device; the retry), and the VM track counts the
 * faults the guest holds.
 *
 * The hot path only stores five numbers per event into preallocated typed arrays; when they are
 * full, later events are counted and dropped. The JSON is built after the run.
 */
import { writeFileSync } from 'node:fs';
import { PRG_INDICES } from '../../shared/records/page-request.ts';
import type { FaultGroup, FaultTracer } from '../iommufd/fault.ts';

const REQUEST = 0;
const READ = 1;
const RESPONDED = 2;
const ANSWERED = 3;
const RETRIED = 4;

/** Where a device's events go: its VM (process) and track. */
export interface TraceTrack {
  vm: number;
  track: number;
}

export class FaultTrace {
  dropped = 0;
  private count = 0;
  private readonly time: Float64Array;
  private readonly kind: Uint8Array;
  private readonly vm: Int32Array;
  private readonly track: Int32Array;
  private readonly key: Int32Array;
  private readonly start: number;
  /** Device track of each physical stream, for events that know only the stream. */
  private readonly byStream = new Map<number, TraceTrack>();
  private readonly vmNames: string[] = [];
  private readonly trackNames = new Map<string, string>();

  /** `clock` reads milliseconds (performance.now() by default; a test drives its own). */
  constructor(
    capacity = 1 << 19,
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.start = clock();
    this.time = new Float64Array(capacity);
    this.kind = new Uint8Array(capacity);
    this.vm = new Int32Array(capacity);
    this.track = new Int32Array(capacity);
    this.key = new Int32Array(capacity);
  }

  /** Name a VM (process `vm`) and a device's track (track 0 is the vIOMMU's). */
  nameVm(vm: number, name: string): void {
    this.vmNames[vm] = name;
    this.trackNames.set(`${vm}/0`, 'vIOMMU');
  }

  nameDevice(vm: number, track: number, name: string, streamId: number): void {
    this.trackNames.set(`${vm}/${track}`, name);
    if (!this.byStream.has(streamId)) this.byStream.set(streamId, { vm, track });
  }

  /** The fault-fd side of the trace, for one VM's fault object. */
  faultTracer(vm: number): FaultTracer {
    return {
      read: (group) => this.record(READ, vm, 0, groupKey(group)),
      responded: (group) => this.record(RESPONDED, vm, 0, groupKey(group)),
    };
  }

  pageRequest(at: TraceTrack, streamId: number, prgIndex: number): void {
    this.record(REQUEST, at.vm, at.track, streamId * PRG_INDICES + prgIndex);
  }

  answered(at: TraceTrack, streamId: number, prgIndex: number): void {
    this.record(ANSWERED, at.vm, at.track, streamId * PRG_INDICES + prgIndex);
  }

  retried(at: TraceTrack, streamId: number, prgIndex: number): void {
    this.record(RETRIED, at.vm, at.track, streamId * PRG_INDICES + prgIndex);
  }

  private record(kind: number, vm: number, track: number, key: number): void {
    const i = this.count;
    if (i === this.time.length) {
      this.dropped++;
      return;
    }
    this.time[i] = this.clock();
    this.kind[i] = kind;
    this.vm[i] = vm;
    this.track[i] = track;
    this.key[i] = key;
    this.count = i + 1;
  }

  /** The trace-event JSON object. */
  toJson(): { traceEvents: object[]; displayTimeUnit: string; otherData: object } {
    const events: object[] = [];
    // The trace-event format's ts is in microseconds (displayTimeUnit only changes the display);
    // the clock reads milliseconds. Kept to the nanosecond.
    const us = (t: number) => Math.round((t - this.start) * 1_000_000) / 1000;
    this.vmNames.forEach((name, vm) => {
      events.push({ ph: 'M', name: 'process_name', pid: vm + 1, tid: 0, args: { name } });
    });
    for (const [where, name] of this.trackNames) {
      const [vm, track] = where.split('/').map(Number);
      events.push({ ph: 'M', name: 'thread_name', pid: vm + 1, tid: track, args: { name } });
    }
    // One open fault per (stream, PRG index): its stage boundaries as they arrive.
    const open = new Map<number, { at: TraceTrack; times: number[] }>();
    const held = new Map<number, number>();
    // Faults of one device overlap (many in flight), so each is an async slice with its own id,
    // its stages nested inside it.
    let id = 0;
    const slice = (name: string, at: TraceTrack, from: number, to: number, args?: object) => {
      const base = { cat: 'fault', id, pid: at.vm + 1, tid: at.track, name };
      events.push({ ...base, ph: 'b', ts: us(from), args });
      events.push({ ...base, ph: 'e', ts: us(to) });
    };
    for (let i = 0; i < this.count; i++) {
      const key = this.key[i];
      const t = this.time[i];
      const kind = this.kind[i];
      if (kind === REQUEST) {
        open.set(key, { at: { vm: this.vm[i], track: this.track[i] }, times: [t] });
        continue;
      }
      if (kind === READ || kind === RESPONDED) {
        const vm = this.vm[i];
        const depth = (held.get(vm) ?? 0) + (kind === READ ? 1 : -1);
        held.set(vm, depth);
        events.push({
          ph: 'C',
          name: 'faults held by the guest',
          pid: vm + 1,
          tid: 0,
          ts: us(t),
          args: { faults: depth },
        });
      }
      const fault = open.get(key);
      if (!fault) continue;
      fault.times.push(t);
      if (kind !== RETRIED) continue;
      const [request, read, responded, answered, retried] = fault.times;
      if (fault.times.length === 5) {
        id++;
        const prg = key % PRG_INDICES;
        slice('fault', fault.at, request, retried, { stream: Math.floor(key / PRG_INDICES), prgIndex: prg });
        slice('to the VMM (IOPF group, fault queue)', fault.at, request, read);
        slice('in the guest (delivery, driver, answer)', fault.at, read, responded);
        slice('back to the device', fault.at, responded, answered);
        slice('retry', fault.at, answered, retried);
      }
      open.delete(key);
    }
    return {
      traceEvents: events,
      displayTimeUnit: 'ns',
      otherData: { droppedEvents: this.dropped, recordedEvents: this.count },
    };
  }

  write(file: string): void {
    writeFileSync(file, JSON.stringify(this.toJson()));
  }

  trackOf(streamId: number): TraceTrack | undefined {
    return this.byStream.get(streamId);
  }
}

function groupKey(group: FaultGroup): number {
  return group.streamId * PRG_INDICES + group.grpid;
}
