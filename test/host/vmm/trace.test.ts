// run --trace: a Chrome trace-event file of every fault's life, checked against the run's report.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import type { FaultGroup } from '../../../host/iommufd/fault.ts';
import { runTopology } from '../../../host/vmm/sandbox.ts';
import { loadTopology } from '../../../host/vmm/topology.ts';
import { FaultTrace } from '../../../host/vmm/trace.ts';

const dir = mkdtempSync(join(tmpdir(), 'ioasid-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface TraceEvent {
  ph: string;
  name: string;
  pid: number;
  tid: number;
  ts: number;
  id?: number;
  args?: Record<string, unknown>;
}

describe('fault trace', () => {
  test('one async slice per fault, its four stages inside it, named tracks, a counter back at zero', async () => {
    const file = join(dir, 'default.json');
    const r = await runTopology(loadTopology('configs/default.yaml'), { trace: file });
    const trace = JSON.parse(readFileSync(file, 'utf8')) as {
      traceEvents: TraceEvent[];
      otherData: { droppedEvents: number };
    };
    const events = trace.traceEvents;
    expect(trace.otherData.droppedEvents).toBe(0);
    const processes = events.filter((e) => e.ph === 'M' && e.name === 'process_name');
    expect(processes.map((e) => e.args?.name)).toEqual(['vm0', 'vm1']);
    const threads = events.filter((e) => e.ph === 'M' && e.name === 'thread_name').map((e) => e.args?.name);
    expect(threads).toEqual(['vIOMMU', 'dev0', 'vIOMMU', 'dev0']);
    const begins = events.filter((e) => e.ph === 'b');
    const faults = begins.filter((e) => e.name === 'fault');
    // Every fault of the run resolved by a retry: one slice each.
    expect(faults).toHaveLength(r.latencyUs.count);
    expect(r.latencyUs.count).toBe(512);
    const byId = new Map<number, TraceEvent[]>();
    for (const e of events.filter((x) => x.ph === 'b' || x.ph === 'e')) {
      const list = byId.get(e.id as number) ?? [];
      list.push(e);
      byId.set(e.id as number, list);
    }
    for (const list of byId.values()) {
      // fault + four stages, each begun and ended; the stages tile the fault exactly.
      expect(list).toHaveLength(10);
      const begin = (name: string) => list.find((e) => e.ph === 'b' && e.name === name)?.ts as number;
      const end = (name: string) => list.find((e) => e.ph === 'e' && e.name === name)?.ts as number;
      expect(begin('to the VMM (IOPF group, fault queue)')).toBe(begin('fault'));
      expect(begin('in the guest (delivery, driver, answer)')).toBe(
        end('to the VMM (IOPF group, fault queue)'),
      );
      expect(begin('back to the device')).toBe(end('in the guest (delivery, driver, answer)'));
      expect(begin('retry')).toBe(end('back to the device'));
      expect(end('retry')).toBe(end('fault'));
      expect(end('fault')).toBeGreaterThanOrEqual(begin('fault'));
    }
    const counters = events.filter((e) => e.ph === 'C');
    for (const pid of [1, 2]) {
      const last = counters.filter((e) => e.pid === pid).at(-1);
      expect(last?.args?.faults).toBe(0);
    }
  });

  test('timestamps are microseconds since the trace began, as the trace-event format requires', () => {
    // A clock in milliseconds, like performance.now(), driven by hand.
    let now = 5000;
    const trace = new FaultTrace(64, () => now);
    trace.nameVm(0, 'vm0');
    const at = { vm: 0, track: 1 };
    trace.nameDevice(0, 1, 'dev0', 7);
    const group = { streamId: 7, grpid: 3 } as FaultGroup;
    const tracer = trace.faultTracer(0);
    now = 5002;
    trace.pageRequest(at, 7, 3);
    now = 5002.5;
    tracer.read(group);
    now = 5004.25;
    tracer.responded(group);
    now = 5004.5;
    trace.answered(at, 7, 3);
    now = 5006;
    trace.retried(at, 7, 3);
    const events = trace.toJson().traceEvents as TraceEvent[];
    const at_ = (ph: string, name: string) => events.find((e) => e.ph === ph && e.name === name)?.ts;
    // 2 ms after the trace began, lasting 4 ms: 2000 us and 4000 us.
    expect(at_('b', 'fault')).toBe(2000);
    expect(at_('e', 'fault')).toBe(6000);
    expect(at_('e', 'to the VMM (IOPF group, fault queue)')).toBe(2500);
    expect(at_('e', 'in the guest (delivery, driver, answer)')).toBe(4250);
    expect(at_('e', 'back to the device')).toBe(4500);
    const counters = events.filter((e) => e.ph === 'C').map((e) => [e.ts, e.args?.faults]);
    expect(counters).toEqual([
      [2500, 1],
      [4250, 0],
    ]);
  });

  test('a fault timed by the real clock spans its real length in microseconds', async () => {
    const trace = new FaultTrace(64);
    const at = { vm: 0, track: 1 };
    const before = performance.now();
    trace.pageRequest(at, 1, 0);
    const group = { streamId: 1, grpid: 0 } as FaultGroup;
    trace.faultTracer(0).read(group);
    trace.faultTracer(0).responded(group);
    trace.answered(at, 1, 0);
    // Wait for the clock to pass 20 ms, then close the fault.
    while (performance.now() - before < 20) await new Promise((resolve) => setImmediate(resolve));
    trace.retried(at, 1, 0);
    const elapsedMs = performance.now() - before;
    const fault = (trace.toJson().traceEvents as TraceEvent[]).filter((e) => e.name === 'fault');
    const lengthUs = (fault[1]?.ts ?? 0) - (fault[0]?.ts ?? 0);
    expect(lengthUs).toBeGreaterThanOrEqual(20_000);
    expect(lengthUs).toBeLessThanOrEqual(elapsedMs * 1000);
  });
});
