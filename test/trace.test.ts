// run --trace: a Chrome trace-event file of every fault's life, checked against the run's report.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { runTopology } from '../host/vmm/sandbox.ts';
import { loadTopology } from '../host/vmm/topology.ts';

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
});
