// Stress campaigns: the generator, the CLI's JSON, replay from a seed, and shards.
import { spawnSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { formatCampaign, runCampaign, shardIndices } from '../../host/stress/campaign.ts';
import { drawTopology, replayCommand, runSeed } from '../../host/stress/generate.ts';
import { runOne } from '../../host/stress/run-worker.ts';
import { TEARDOWN_OPS, TopologySchema } from '../../host/vmm/topology.ts';
import { MISBEHAVIOURS } from '../../shared/control.ts';

/** The first campaign seed from `from` whose first `runs` runs all have at most `maxVms` VMs (quick runs). */
function smallCampaign(from: number, runs: number, maxVms: number): number {
  for (let s = from; ; s++) {
    if (
      Array.from({ length: runs }, (_, i) => drawTopology(runSeed(s, i))).every((t) => t.vms.length <= maxVms)
    )
      return s;
  }
}

describe('drawTopology', () => {
  test('is deterministic and valid over 500 seeds, covering every misbehaviour and both flavours', () => {
    const misbehaviours = new Set<string>();
    const flavours = new Set<string>();
    const kinds = new Set<string>();
    let tinyQueue = false;
    let shared = false;
    let timeouts = true;
    const teardowns = new Set<string>();
    let deadlines = 0;
    let iommus = 0;
    let postMessage = 0;
    let deviceOwner = 0;
    let orphaned = 0;
    let injectors = 0;
    let largestQueue = false;
    for (let seed = 0; seed < 500; seed++) {
      const t = drawTopology(seed);
      expect(drawTopology(seed)).toEqual(t);
      expect(TopologySchema.parse(t)).toEqual(t);
      const sharedFunction = t.vms.some((vm) => vm.devices.some((d) => d.function !== undefined));
      // Device-owner routing hands one VM's PASID faults to another only on a shared function.
      if (t.routing === 'device-owner') {
        expect(sharedFunction).toBe(false);
        deviceOwner++;
      }
      expect(t.vms.length).toBeGreaterThanOrEqual(1);
      expect(t.vms.length).toBeLessThanOrEqual(16);
      if (t.iopfTimeoutMs !== undefined) deadlines++;
      if (t.iommus !== undefined) iommus++;
      if (t.transport === 'postmessage') postMessage++;
      for (const vm of t.vms) {
        if (vm.teardown) teardowns.add(vm.teardown.op);
        expect(vm.devices.length).toBeGreaterThanOrEqual(1);
        expect(vm.devices.length).toBeLessThanOrEqual(4);
        flavours.add(vm.viommu);
        kinds.add(vm.workload.kind);
        for (const m of vm.misbehave) misbehaviours.add(m);
        if (vm.misbehave.some((m) => m === 'hang' || m === 'never-respond'))
          timeouts &&= vm.responseTimeoutMs !== undefined && vm.responseTimeoutMs <= 500;
        if (Object.values(vm.queues).includes(1)) tinyQueue = true;
        if (Object.values(vm.queues).includes(19)) largestQueue = true;
        if (vm.devices.some((d) => d.inject)) injectors++;
        if (vm.teardown && vm.devices.some((d) => d.function !== undefined && d.inject)) orphaned++;
        if (vm.devices.some((d) => d.function !== undefined)) shared = true;
      }
    }
    expect([...misbehaviours].sort()).toEqual([...MISBEHAVIOURS].sort());
    expect([...flavours].sort()).toEqual(['smmuv3', 'vtd']);
    expect(kinds.size).toBe(5);
    expect(tinyQueue).toBe(true);
    expect(largestQueue).toBe(true);
    expect(deviceOwner).toBeGreaterThan(0);
    expect(injectors).toBeGreaterThan(0);
    // The shape the RID fallback leaked in: an interface without the RID, its route gone, still raising.
    expect(orphaned).toBeGreaterThan(0);
    expect(shared).toBe(true);
    expect(timeouts).toBe(true);
    expect([...teardowns].sort()).toEqual([...TEARDOWN_OPS].sort());
    expect(deadlines).toBeGreaterThan(50);
    expect(iommus).toBeGreaterThan(50);
    expect(postMessage).toBeGreaterThan(30);
  });

  test('run 0 of a campaign has its seed, so the replay command reruns it', () => {
    expect(runSeed(1234, 0)).toBe(1234);
    const seeds = new Set(Array.from({ length: 1000 }, (_, i) => runSeed(1234, i)));
    expect(seeds.size).toBe(1000);
    expect(replayCommand(42)).toBe('npx ioasid-sandbox stress --runs 1 --seed 42');
  });
});

describe('ioasid-sandbox stress', () => {
  test('--json prints one object and exits 0 when every run passes', () => {
    const seed = smallCampaign(100, 4, 3);
    const p = spawnSync(
      process.execPath,
      ['bin/ioasid-sandbox.mjs', 'stress', '--runs', '4', '--seed', String(seed), '--json', '--workers', '2'],
      { encoding: 'utf8', env: { ...process.env, LOG_LEVEL: 'silent' }, timeout: 60_000 },
    );
    const lines = p.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const r = JSON.parse(lines[0]);
    expect(r.failures).toEqual([]);
    expect(p.status).toBe(0);
    expect(r).toMatchObject({ runs: 4, passed: 4, failed: 0, seed, durationMs: expect.any(Number) });
    expect(Object.keys(r.misbehaviours).sort()).toEqual([...MISBEHAVIOURS].sort());
    expect(Object.keys(r.teardowns).sort()).toEqual([...TEARDOWN_OPS].sort());
    expect(r).toMatchObject({
      deadlines: expect.any(Number),
      iopfTimeouts: expect.any(Number),
      postMessageRuns: expect.any(Number),
    });
    // Every run here has DMA to fault in; the rate is over the campaign's wall time.
    expect(r.faults).toBeGreaterThan(0);
    expect(r.faultsPerS).toBe(Math.round((r.faults * 1000) / r.durationMs));
  });

  test('a failed run exits 3 and names its seed, replay command and violations', () => {
    // A host bug planted in every run (plant.ts): the first page response never reaches the device.
    let seed = 500;
    for (; ; seed++) {
      const t = drawTopology(seed);
      const [vm] = t.vms;
      const plain = vm.misbehave.length === 0 && !vm.teardown && t.iopfTimeoutMs === undefined;
      if (t.vms.length === 1 && plain && vm.workload.kind === 'sva-stream')
        if (vm.devices.every((d) => d.pri)) break;
    }
    const p = spawnSync(
      process.execPath,
      ['bin/ioasid-sandbox.mjs', 'stress', '--runs', '1', '--seed', String(seed), '--json'],
      {
        encoding: 'utf8',
        env: { ...process.env, LOG_LEVEL: 'silent', IOASID_SANDBOX_PLANT: 'drop-response=1' },
        timeout: 60_000,
      },
    );
    expect(p.status).toBe(3);
    const r = JSON.parse(p.stdout);
    expect(r).toMatchObject({ runs: 1, passed: 0, failed: 1 });
    expect(r.failures[0]).toMatchObject({
      seed,
      replay: `npx ioasid-sandbox stress --runs 1 --seed ${seed}`,
    });
    expect(r.failures[0].violations.map((v: { rule: string }) => v.rule)).toContain('group-unanswered');
  });

  test('bad flags exit 2 with a message', () => {
    for (const args of [
      ['--runs', '0'],
      ['--workers', '0'],
      ['--shard', '3/2'],
      ['--shard', '0/2'],
      ['--shard', 'x'],
    ]) {
      const p = spawnSync(process.execPath, ['bin/ioasid-sandbox.mjs', 'stress', ...args, '--json'], {
        encoding: 'utf8',
        env: { ...process.env, LOG_LEVEL: 'silent' },
      });
      expect(p.status).toBe(2);
      expect(p.stderr).toMatch(/--(runs|workers|shard)/);
      expect(p.stdout).toBe('');
    }
  });

  test('a run reproduces from its seed: same topology, same workload counts', async () => {
    // A seed with a few VMs, at least one well-behaved with DMA to do.
    let seed = 7000;
    for (; ; seed++) {
      const t = drawTopology(seed);
      // A deadline makes DMA outcomes depend on timing; so does a teardown of the compared VM.
      const steady = (vm: (typeof t.vms)[number]) =>
        vm.misbehave.length === 0 && !vm.teardown && ['sva-stream', 'map-churn'].includes(vm.workload.kind);
      if (t.vms.length >= 2 && t.vms.length <= 4 && t.iopfTimeoutMs === undefined && t.vms.some(steady))
        break;
    }
    expect(drawTopology(seed)).toEqual(drawTopology(seed));
    const [a, b] = [await runOne({ seed }), await runOne({ seed })];
    expect(a.passed && b.passed).toBe(true);
    const compared = (i: number) =>
      a.vms[i].misbehave.length === 0 &&
      a.vms[i].teardown === undefined &&
      a.vms[i].workloadDone &&
      b.vms[i].workloadDone;
    const counts = (r: typeof a) =>
      r.vms
        .filter((_, i) => compared(i))
        // Page requests are timing-dependent (retries after queue overflow, map-churn's unmaps).
        .map(({ name, dmaOps, dmaCompleted, bytesVerified }) => ({
          name,
          dmaOps,
          dmaCompleted,
          bytesVerified,
        }));
    expect(counts(a).some((c) => c.bytesVerified > 0)).toBe(true);
    expect(counts(b)).toEqual(counts(a));
  });

  test('shards 1/2 and 2/2 together run exactly the unsharded campaign', async () => {
    expect(shardIndices(7, { index: 1, count: 2 })).toEqual([0, 2, 4, 6]);
    expect(shardIndices(7, { index: 2, count: 2 })).toEqual([1, 3, 5]);
    for (const runs of [1, 2, 9, 100]) {
      for (const count of [1, 2, 3, 7]) {
        const all = Array.from({ length: count }, (_, i) =>
          shardIndices(runs, { index: i + 1, count }),
        ).flat();
        expect(all.sort((x, y) => x - y)).toEqual(shardIndices(runs));
      }
    }
    const seed = smallCampaign(300, 3, 2);
    const seeds: number[] = [];
    const faults = [0, 0];
    const reports = [];
    for (const index of [1, 2]) {
      reports.push(
        await runCampaign({
          runs: 3,
          seed,
          workers: 2,
          shard: { index, count: 2 },
          onRun: (r) => {
            seeds.push(r.seed);
            faults[index - 1] += r.faults;
          },
        }),
      );
    }
    expect(seeds.sort()).toEqual([0, 1, 2].map((i) => runSeed(seed, i)).sort());
    expect(reports.map((r) => r.runs)).toEqual([2, 1]);
    // A campaign's faults are its runs' faults.raised, summed; shards merge by adding them.
    expect(reports.map((r) => r.faults)).toEqual(faults);
    expect(faults[0] + faults[1]).toBeGreaterThan(0);
    for (const r of reports) {
      expect(r.faultsPerS).toBe(Math.round((r.faults * 1000) / r.durationMs));
      expect(formatCampaign(r)).toContain(`faults: ${r.faults} page-request group(s) raised`);
    }
    expect(reports.map((r) => r.shard)).toEqual(['1/2', '2/2']);
    expect(reports.flatMap((r) => r.failures)).toEqual([]);
  });
});
