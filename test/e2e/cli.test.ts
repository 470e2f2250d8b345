// The CLI as users and scripts run it: real processes, real files, exit codes and stdout checked.
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';

const env = { ...process.env, LOG_LEVEL: 'silent' };
const tmp = mkdtempSync(join(tmpdir(), 'ioasid-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['bin/ioasid-sandbox.mjs', ...args], {
    encoding: 'utf8',
    env,
    timeout: 60_000,
  });
}

function expectRunReport(stdout: string) {
  const lines = stdout.trim().split('\n');
  expect(lines).toHaveLength(1);
  const r = JSON.parse(lines[0]);
  expect(r).toMatchObject({
    topology: expect.any(String),
    routing: expect.stringMatching(/^(ioasid-owner|device-owner)$/),
    durationMs: expect.any(Number),
    faults: {
      raised: expect.any(Number),
      delivered: expect.any(Number),
      responded: expect.any(Number),
      autoResponded: expect.any(Number),
      dropped: expect.any(Number),
      lost: expect.any(Number),
    },
    dma: {
      ops: expect.any(Number),
      completed: expect.any(Number),
      failed: expect.any(Number),
      bytesVerified: expect.any(Number),
    },
    latencyUs: { p50: expect.any(Number), p99: expect.any(Number), max: expect.any(Number) },
    invariants: { ok: expect.any(Boolean), violations: expect.any(Array) },
  });
  for (const vm of r.vms) {
    expect(vm).toMatchObject({
      name: expect.any(String),
      faultsDelivered: expect.any(Number),
      responses: { success: expect.any(Number), invalid: expect.any(Number), failure: expect.any(Number) },
      dmaOps: expect.any(Number),
      crashed: expect.any(Boolean),
    });
  }
  return r;
}

describe('ioasid-sandbox run', () => {
  test('--json prints exactly one JSON object and exits 0 on the default topology', () => {
    const p = cli('run', 'configs/default.yaml', '--json');
    expect(p.stderr).toBe('');
    expect(p.status).toBe(0);
    const r = expectRunReport(p.stdout);
    expect(r.faults.delivered).toBeGreaterThan(0);
    expect(r.faults.lost).toBe(0);
    expect(r.dma.bytesVerified).toBeGreaterThan(0);
    expect(r.invariants.ok).toBe(true);
  });

  test('shared-device-device-owner.yaml exits 3 and names fault-delivered-to-non-owner', () => {
    const p = cli('run', 'configs/shared-device-device-owner.yaml', '--json');
    expect(p.status).toBe(3);
    const r = expectRunReport(p.stdout);
    expect(r.invariants.ok).toBe(false);
    expect(r.invariants.violations.map((v: { rule: string }) => v.rule)).toContain(
      'fault-delivered-to-non-owner',
    );
    expect(r.faults.lost).toBe(0);
  });

  test('without --json it prints a human summary naming each VM', () => {
    const p = cli('run', 'configs/default.yaml', '--seed', '7');
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/vm0: 256 faults delivered/);
    expect(p.stdout).toMatch(/vm1: 256 faults delivered/);
    expect(p.stdout).toMatch(/0 lost/);
    expect(p.stdout).toMatch(/invariants: ok/);
  });

  test('the summary names an injected teardown and its outcome, and the deadline count', () => {
    const file = join(tmp, 'teardown.yaml');
    writeFileSync(
      file,
      `name: teardown
iopfTimeoutMs: 5000
vms:
  - name: victim
    memoryMiB: 16
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 64, seed: 1 }
    teardown: { atMs: 0, op: hwpt-destroy }
`,
    );
    const p = cli('run', file);
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/victim: .*, teardown hwpt-destroy at 0 ms: EBUSY/);
    expect(p.stdout).toMatch(/answered automatically \(0 at their deadline, 0 for want of a route\)/);
  });

  test('a field of the wrong type exits 2 and names the field path', () => {
    const file = join(tmp, 'wrong-type.yaml');
    writeFileSync(
      file,
      'name: t\nvms:\n  - name: vm0\n    memoryMiB: "64"\n    viommu: smmuv3\n    devices: []\n    workload: { kind: idle }\n',
    );
    const p = cli('run', file, '--json');
    expect(p.status).toBe(2);
    expect(p.stdout).toBe('');
    expect(p.stderr).toContain(
      `${file}:4: vms[0].memoryMiB: Invalid input: expected number, received string`,
    );
  });

  test('a missing topology file exits 2', () => {
    const p = cli('run', join(tmp, 'nope.yaml'));
    expect(p.status).toBe(2);
    expect(p.stderr).toMatch(/cannot read the file/);
  });

  test('bad flags exit 2 with a message', () => {
    const p = cli('run', 'configs/default.yaml', '--duration', 'soon');
    expect(p.status).toBe(2);
    expect(p.stderr).toMatch(/--duration must be an integer/);
    expect(cli('fly').status).toBe(2);
  });

  test('--help exits 0', () => {
    const p = cli('run', '--help');
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/--duration <ms>/);
  });

  test("--version prints package.json's version and exits 0", () => {
    const { version } = JSON.parse(readFileSync('package.json', 'utf8'));
    for (const flag of ['--version', '-V']) {
      const p = cli(flag);
      expect(p.status).toBe(0);
      expect(p.stdout).toBe(`${version}\n`);
    }
  });
});

describe('ioasid-sandbox validate', () => {
  test('a good file is reported valid with exit 0, and --json prints it with defaults filled in', () => {
    const p = cli('validate', 'configs/default.yaml');
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/valid: topology default, 2 VM\(s\), 2 device\(s\), routing ioasid-owner/);
    const j = cli('validate', 'configs/stray-dma.yaml', '--json');
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stdout).vms[1].queues.priqLog2).toBe(8);
  });

  test('a bad file exits 2 with the field path, and nothing runs', () => {
    const file = join(tmp, 'bad-validate.yaml');
    writeFileSync(
      file,
      'name: t\nvms:\n  - name: vm0\n    memoryMiB: 64\n    viommu: vtd9\n    devices: []\n    workload: { kind: idle }\n',
    );
    const p = cli('validate', file);
    expect(p.status).toBe(2);
    expect(p.stderr).toContain('vms[0].viommu');
    expect(p.stdout).toBe('');
  });
});

describe('ioasid-sandbox bench', () => {
  test('--quick --profile --json prints figures, ratios and the stage profile measured in one run', () => {
    // --quick is meant to finish within 60 s on an idle 2-core machine; the suite runs beside it.
    const args = ['bin/ioasid-sandbox.mjs', 'bench', '--quick', '--profile', '--json'];
    const p = spawnSync(process.execPath, args, {
      encoding: 'utf8',
      env,
      timeout: 170_000,
    });
    expect(p.status).toBe(0);
    const r = JSON.parse(p.stdout);
    expect(r.quick).toBe(true);
    expect(r.figures.map((f: { name: string }) => f.name)).toEqual([
      'translate, IOTLB hit',
      'translate, IOTLB miss (nested walk + fill)',
      'full nested walk (CD + 4 levels, each through 4 S2 levels)',
      'stage-1 walk, stage 2 by identity',
    ]);
    for (const f of r.figures) expect(f.value).toBeGreaterThan(0);
    expect(r.ratios['IOTLB hit / miss']).toBeGreaterThan(0);
    // Every field the bench promises, measured in this one run.
    const positive = expect.any(Number);
    const trip = { p50: positive, p99: positive };
    const faults = { busyUs: trip, idleUs: trip, perS: positive };
    expect(r).toMatchObject({
      floor: { spinUs: positive, sleepUs: positive, ringRecordsPerS: positive },
      fault: { ...faults, cycleUs: trip, perS4k: positive, hostBusyUsPerFault: positive },
      postMessage: { fault: faults },
      translation: { iotlbHitsPerS: positive, nestedWalksPerS: positive },
      scale: {
        vms1PerS: positive,
        vms4PerS: positive,
        vms16PerS: positive,
        launchMs: positive,
        rssPerVmMB: positive,
      },
    });
    for (const name of [
      'busyOverSpin',
      'idleOverSleep',
      'postMessageOverRingLatency',
      'ringOverPostMessageThroughput',
      'vms16Over1',
      'cycleOverSpin',
    ]) {
      expect(r.ratios[name]).toBeGreaterThan(0);
      expect(r.targets[name]).toMatchObject({ value: r.ratios[name], met: expect.any(Boolean) });
    }
    expect(r.targets.faultPerS4k).toMatchObject({ value: r.fault.perS4k, met: expect.any(Boolean) });
    expect(r.targets.hostBusyUsPerFault).toMatchObject({ value: r.fault.hostBusyUsPerFault });
    expect(r.fault.busyUs.p99).toBeGreaterThanOrEqual(r.fault.busyUs.p50);
    expect(r.fault.cycleUs.p99).toBeGreaterThanOrEqual(r.fault.cycleUs.p50);
    // The profile's stages split its busy time: their shares add up to the whole.
    const stages = Object.values(r.profile.stages) as { usPerFault: number; share: number }[];
    expect(Object.keys(r.profile.stages)).toEqual([
      'reactor',
      'device',
      'iommu',
      'iopf',
      'registry',
      'viommu',
      'oracle',
    ]);
    expect(stages.reduce((n, s) => n + s.share, 0)).toBeCloseTo(1, 2);
    for (const stage of ['device', 'iommu', 'iopf', 'registry', 'viommu', 'oracle'])
      expect(r.profile.stages[stage].usPerFault, stage).toBeGreaterThan(0);
  }, 180_000);
});

describe('ioasid-sandbox fail-nth', () => {
  test('--json prints one report object for the chosen scenario and exits 0', () => {
    const p = cli('fail-nth', '--scenario', 'plain-ioas', '--json');
    expect(p.stderr).toBe('');
    expect(p.status).toBe(0);
    const lines = p.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const r = JSON.parse(lines[0]);
    expect(Object.keys(r)).toEqual(['scenarios', 'runs', 'failures']);
    expect(r.failures).toEqual([]);
    expect(r.scenarios).toHaveLength(1);
    const s = r.scenarios[0];
    expect(s).toMatchObject({
      name: 'plain-ioas',
      points: expect.any(Number),
      tried: s.points + 1,
      failedAt: { 'id-reserve': expect.any(Number), 'interval-alloc': expect.any(Number) },
      teardown: { runs: s.points + 1, passed: s.points + 1 },
      resume: { runs: s.points, passed: s.points },
      failures: 0,
    });
    expect(s.points).toBeGreaterThan(5);
    expect(r.runs).toBe(s.runs);
  });

  test('an unknown scenario exits 2 and names the known ones', () => {
    const p = cli('fail-nth', '--scenario', 'plain-ioas', 'nope', '--json');
    expect(p.status).toBe(2);
    expect(p.stdout).toBe('');
    expect(p.stderr).toMatch(
      /'nope' is invalid\. unknown scenario; known scenarios: plain-ioas, mock-device/,
    );
  });

  test('a registry that leaks pins on a failed map exits 3 and lists the failures', () => {
    // The CLI's main() in a process whose ioasMap pins the range again when it fails.
    const code = `
      const { Iommufd } = await import('./host/iommufd/iommufd.ts');
      const { main } = await import('./host/cli/main.ts');
      const map = Iommufd.prototype.ioasMap;
      Iommufd.prototype.ioasMap = function (args) {
        try { return map.call(this, args); } catch (e) { this.memory.pin(args.userVa, args.length); throw e; }
      };
      process.exitCode = await main(['fail-nth', '--scenario', 'plain-ioas']);`;
    const p = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    expect(p.stderr).toBe('');
    expect(p.status).toBe(3);
    expect(p.stdout).toMatch(/^scenario +points +runs +failures\nplain-ioas +\d+ +\d+ +[1-9]\d*\n/);
    expect(p.stdout).toMatch(/unchanged: the failed call left a change: state\.pinnedPages is \d+, not 0/);
    expect(p.stdout).toMatch(/teardown: close\(\) left \d+ pinned page/);
  });
});

describe('packaging', () => {
  test('a script in the repo imports the library entry by package name under tsx', () => {
    const p = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/library-user.ts'], {
      encoding: 'utf8',
      env,
    });
    expect(p.stderr).toBe('');
    expect(p.status).toBe(0);
    expect(JSON.parse(p.stdout)).toEqual({ vms: 1, errno: 'EINVAL' });
  });

  test('the compiled build runs the default topology, guest workers included', () => {
    // The output must sit inside the repo so that node_modules resolves from it.
    const build = spawnSync(
      process.execPath,
      ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json', '--outDir', '.build-test'],
      {
        encoding: 'utf8',
      },
    );
    expect(build.stdout + build.stderr).toBe('');
    expect(build.status).toBe(0);
    try {
      const p = spawnSync(
        process.execPath,
        ['.build-test/host/cli/main.js', 'run', 'configs/default.yaml', '--json'],
        {
          encoding: 'utf8',
          env,
          timeout: 60_000,
        },
      );
      expect(p.status).toBe(0);
      const r = expectRunReport(p.stdout);
      expect(r.faults.lost).toBe(0);
      expect(r.dma.bytesVerified).toBe(2 * 256 * 4096);
    } finally {
      rmSync('.build-test', { recursive: true, force: true });
    }
  });
});
