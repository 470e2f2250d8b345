// Bad input is refused up front (issue 14, item 4): every class of hostile file, environment and
// flag exits 2 before anything starts, with a message naming the file (or variable, or flag) and the
// field path, and no stack trace. And `--duration` is a promise no schema-valid topology breaks.
import { execFileSync, type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, test, vi } from 'vitest';
import { DEFAULT_GRACE_MS } from '../../host/vmm/sandbox.ts';
import {
  loadTopology,
  MAX_ALIAS_COUNT,
  MAX_COLLECTION_ENTRIES,
  MAX_TOPOLOGY_BYTES,
  MAX_TOPOLOGY_DEPTH,
  parseTopology,
  type RunContext,
  TopologyError,
} from '../../host/vmm/topology.ts';
import { STOP_ANSWER_SLACK_MS } from '../../host/vmm/vm.ts';

// Every read of a topology file goes through these counters; `sizeLies` makes fstat report 0 bytes
// for every file, as procfs does, to show that the read itself is bounded.
const fsSpy = vi.hoisted(() => ({ sizeLies: false, bytesRead: 0 }));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  return {
    ...fs,
    fstatSync: ((fd: number) => {
      const stat = fs.fstatSync(fd);
      if (fsSpy.sizeLies) stat.size = 0;
      return stat;
    }) as typeof fs.fstatSync,
    readSync: ((...args: Parameters<typeof fs.readSync>) => {
      const n = fs.readSync(...args);
      fsSpy.bytesRead += n;
      return n;
    }) as typeof fs.readSync,
  };
});

const tmp = mkdtempSync(join(tmpdir(), 'ioasid-hostile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
beforeEach(() => {
  fsSpy.sizeLies = false;
  fsSpy.bytesRead = 0;
});

const env = { ...process.env, LOG_LEVEL: 'silent' };

function cli(
  args: string[],
  extraEnv: Record<string, string> = {},
  timeout = 60_000,
): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['bin/ioasid-sandbox.mjs', ...args], {
    encoding: 'utf8',
    env: { ...env, ...extraEnv },
    timeout,
  });
}

/** Exit 2, nothing on stdout (no report), every `names` in the message, and no stack trace. */
function expectRefused(p: SpawnSyncReturns<string>, ...names: string[]): void {
  expect(p.status, p.stderr).toBe(2);
  expect(p.stdout).toBe('');
  for (const name of names) expect(p.stderr).toContain(name);
  expect(p.stderr).not.toMatch(/^\s+at /m);
  expect(p.stderr.trim().split('\n')).toHaveLength(1);
}

function file(name: string, text: string): string {
  const path = join(tmp, name);
  writeFileSync(path, text);
  return path;
}

/** The TopologyError parsing `text` throws (a test failure if it parses). */
function refusal(text: string, run?: RunContext): TopologyError {
  try {
    parseTopology(text, 'hostile.yaml', run);
  } catch (error) {
    if (error instanceof TopologyError) return error;
    throw error;
  }
  throw new Error('expected a TopologyError, the topology parsed');
}

const vm = (name: string, lines: string[]) => `  - name: ${name}\n${lines.map((l) => `    ${l}\n`).join('')}`;
const oneVm = (...lines: string[]) =>
  `name: t\nvms:\n${vm('vm0', ['memoryMiB: 16', 'viommu: vtd', ...lines])}`;
const device = (fields: string) => `devices: [{ name: d, ${fields} }]`;
const idle = 'workload: { kind: idle }';

describe('size and shape: refused before the YAML is composed', () => {
  test('a device, a FIFO or a directory is refused without a read (validate /dev/zero used to hang)', () => {
    expectRefused(cli(['validate', '/dev/zero']), '/dev/zero', 'not a regular file (a character device)');
    const fifo = join(tmp, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Opening a FIFO for reading waits for a writer unless asked not to: the timeout would end it.
    expectRefused(cli(['validate', fifo], {}, 20_000), fifo, 'a FIFO');
    mkdirSync(join(tmp, 'dir'));
    expect(() => loadTopology(join(tmp, 'dir'))).toThrow(/not a regular file \(a directory\)/);
    expect(fsSpy.bytesRead).toBe(0);
  });

  test('a file larger than 1 MiB is refused by its size, unread', () => {
    const big = file('big.yaml', `name: t\n#${'x'.repeat(MAX_TOPOLOGY_BYTES)}\n`);
    expectRefused(cli(['run', big]), big, `larger than ${MAX_TOPOLOGY_BYTES} bytes`);
    expect(() => loadTopology(big)).toThrow(/larger than 1048576 bytes/);
    expect(fsSpy.bytesRead).toBe(0);
  });

  test('a file whose size reads 0 (as procfs reports) is still read no further than the cap', () => {
    const big = file('lies.yaml', `name: t\n#${'x'.repeat(3 * MAX_TOPOLOGY_BYTES)}\n`);
    fsSpy.sizeLies = true;
    expect(() => loadTopology(big)).toThrow(/larger than 1048576 bytes/);
    expect(fsSpy.bytesRead).toBe(MAX_TOPOLOGY_BYTES + 1);
  });

  test('nesting deeper than the cap is refused with its path and line, in flow and in block style', () => {
    const flow = refusal(`name: t\nvms: ${'['.repeat(200_000)}`);
    expect(flow.reason).toMatch(`nested deeper than ${MAX_TOPOLOGY_DEPTH} levels`);
    expect(flow.yamlPath).toMatch(/^vms\[0\]\[0\]/);
    expect(flow.line).toBe(2);
    const maps = refusal(`name: t\nvms:\n  - iommu: ${'{ a: '.repeat(100)}`);
    expect(maps.yamlPath).toMatch(/^vms\[0\]\.iommu\.a\.a/);
    expect(maps.line).toBe(3);
    const dashes = refusal(`name: t\nvms:\n${'- '.repeat(100_000)}x\n`);
    expect(dashes.reason).toMatch(/nested deeper/);
    expect(dashes.yamlPath).toMatch(/^vms\[0\]\[0\]/);
    let indented = 'name: t\nvms:\n';
    for (let i = 1; i <= 40; i++) indented += `${' '.repeat(i)}k${i}:\n`;
    expect(refusal(indented).reason).toMatch(/nested deeper/);
  });

  test('a map or list of more entries than the cap is refused (yaml compares keys pairwise)', () => {
    const keys = Array.from({ length: 20_000 }, (_, i) => `  k${i}: ${i}`).join('\n');
    const started = performance.now();
    const e = refusal(`name: t\niommu:\n${keys}\n`);
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(e.yamlPath).toBe('iommu');
    expect(e.reason).toMatch(`more than ${MAX_COLLECTION_ENTRIES} entries`);
    expect(refusal(`name: t\nvms: [${'1, '.repeat(1000)}1]\n`).yamlPath).toBe('vms');
  });

  test('an alias bomb is refused at its first alias, with exit 2 and no stack trace', () => {
    const levels = 'abcdefghij'.split('');
    let bomb = `${levels[0]}: &${levels[0]} [x, x, x, x, x, x, x, x, x]\n`;
    for (let i = 1; i < levels.length; i++)
      bomb += `${levels[i]}: &${levels[i]} [${Array(9)
        .fill(`*${levels[i - 1]}`)
        .join(', ')}]\n`;
    const path = file('bomb.yaml', bomb);
    expectRefused(cli(['validate', path]), `${path}:2: b[0]:`, `maxAliasCount (${MAX_ALIAS_COUNT})`);
    // An alias used as intended: a device list shared by two VMs.
    const shared = `name: t\nvms:\n  - { name: a, memoryMiB: 16, viommu: vtd, devices: &devs [{ name: d, pri: true, pasids: [1] }], workload: { kind: idle } }\n  - { name: b, memoryMiB: 16, viommu: vtd, devices: *devs, workload: { kind: idle } }\n`;
    expect(parseTopology(shared).vms[1].devices[0].name).toBe('d');
    expect(refusal('name: *nowhere\n').reason).toMatch(/not valid YAML: Unresolved alias/);
  });
});

describe('cross-field rules', () => {
  test('an injector PASID the device does not hold is refused (it used to end in exit 3)', () => {
    const path = file(
      'foreign-pasid.yaml',
      oneVm(device('pri: true, pasids: [1], inject: { ratePerSec: 100, pasid: 7 }'), idle),
    );
    expectRefused(cli(['run', path]), `${path}:6: vms[0].devices[0].inject.pasid:`, 'PASID 7');
    // Left out, the PASID defaults to 1: a device without PASIDs may inject on its RID only.
    const defaulted = refusal(oneVm(device('pri: true, inject: { ratePerSec: 100 }'), idle));
    expect(defaulted.reason).toMatch(/PASID 1 is not one of the device's pasids \[\].*\(0 \(the RID\)\)/);
    expect(() =>
      parseTopology(oneVm(device('pri: true, inject: { ratePerSec: 100, pasid: 0 }'), idle)),
    ).not.toThrow();
  });

  test("on a shared function only the RID holder may inject on PASID 0; the others' interfaces own their pasids", () => {
    const iface = (pasids: string, inject = '') =>
      device(`function: f, pri: true, pasids: [${pasids}]${inject}`);
    const holderInjects = `name: t\nvms:\n${vm('vm0', ['memoryMiB: 16', 'viommu: vtd', iface('1', ', inject: { ratePerSec: 100, pasid: 0 }'), idle])}${vm('vm1', ['memoryMiB: 16', 'viommu: vtd', iface('2'), idle])}`;
    expect(() => parseTopology(holderInjects)).not.toThrow();
    const otherInjects = `name: t\nvms:\n${vm('vm0', ['memoryMiB: 16', 'viommu: vtd', iface('1'), idle])}${vm('vm1', ['memoryMiB: 16', 'viommu: vtd', iface('2', ', inject: { ratePerSec: 100, pasid: 0 }'), idle])}`;
    const e = refusal(otherInjects);
    expect(e.yamlPath).toBe('vms[1].devices[0].inject.pasid');
    expect(e.reason).toMatch(/PASID 0 is the RID of function "f", which vm0 holds.*\(2\)/);
    const neighbours = refusal(otherInjects.replace('pasid: 0', 'pasid: 1'));
    expect(neighbours.reason).toMatch(/PASID 1 is not one of the device's pasids \[2\]/);
  });

  test('an injector group larger than the PRI credits is refused (it used to raise nothing)', () => {
    const path = file(
      'big-group.yaml',
      oneVm(
        device('pri: true, pasids: [1], priCredits: 4, inject: { ratePerSec: 100, pasid: 1, groupSize: 8 }'),
        idle,
      ),
    );
    expectRefused(cli(['run', path]), `${path}:6: vms[0].devices[0].inject.groupSize:`, 'priCredits 4');
    // Events need no credit.
    expect(() =>
      parseTopology(
        oneVm(
          device(
            'pri: false, pasids: [1], priCredits: 4, inject: { kind: event, ratePerSec: 100, pasid: 1, groupSize: 8 }',
          ),
          idle,
        ),
      ),
    ).not.toThrow();
  });

  test('every workload kind fits its guest RAM: a stray-dma table larger than RAM is refused', () => {
    const path = file(
      'stray.yaml',
      oneVm(device('pri: true, pasids: [1]'), 'workload: { kind: stray-dma, pages: 1048576 }'),
    );
    expectRefused(cli(['validate', path]), `${path}:7: vms[0].workload.pages:`, 'for stray-dma in 16 MiB');
    for (const kind of ['sva-stream', 'fault-storm', 'map-churn', 'stray-dma']) {
      const e = refusal(
        oneVm(device('pri: true, pasids: [1]'), `workload: { kind: ${kind}, pages: 1048576 }`),
      );
      const most = Number(/at most (\d+) pages/.exec(e.reason)?.[1]);
      // The figure given is exact: that many fit, one more does not.
      expect(() =>
        parseTopology(oneVm(device('pri: true, pasids: [1]'), `workload: { kind: ${kind}, pages: ${most} }`)),
      ).not.toThrow();
      expect(
        refusal(oneVm(device('pri: true, pasids: [1]'), `workload: { kind: ${kind}, pages: ${most + 1} }`))
          .yamlPath,
      ).toBe('vms[0].workload.pages');
    }
  });

  test("the VMs' guest RAM and queues fit half the host's RAM, and the message says the figures", () => {
    const vms = Array.from({ length: 64 }, (_, i) =>
      vm(`vm${i}`, ['memoryMiB: 4096', 'viommu: vtd', device('pri: true, pasids: [1]'), idle]),
    ).join('');
    const path = file('huge.yaml', `name: t\nvms:\n${vms}`);
    expectRefused(cli(['validate', path]), `${path}:3: vms:`, 'a run may use at most 50% of it');
    const e = refusal(`name: t\nvms:\n${vms}`, { hostMemoryBytes: 64 * 2 ** 30 });
    expect(e.reason).toMatch(/take 26\d{4} MiB; this host has 65536 MiB .* at most 50% of it \(32768 MiB\)/);
    // The queues count too: a small VM with the largest queues on a small host.
    const queues = oneVm(
      device('pri: true, pasids: [1]'),
      idle,
      'queues: { priqLog2: 19, evtqLog2: 19, cmdqLog2: 19, dmaQueueLog2: 12 }',
    );
    expect(refusal(queues, { hostMemoryBytes: 64 * 2 ** 20 }).yamlPath).toBe('vms');
    expect(() => parseTopology(queues, 'ok.yaml', { hostMemoryBytes: 256 * 2 ** 20 })).not.toThrow();
  });

  test("a teardown's atMs past the run's duration is refused, naming --duration or the default", () => {
    const path = file(
      'late-teardown.yaml',
      oneVm(device('pri: true, pasids: [1]'), idle, 'teardown: { atMs: 5000, op: detach }'),
    );
    expectRefused(
      cli(['run', path, '--duration', '1000']),
      `${path}:8: vms[0].teardown.atMs:`,
      '(--duration 1000)',
    );
    expectRefused(cli(['validate', path, '--duration', '5000']), 'vms[0].teardown.atMs', '--duration 5000');
    expect(cli(['validate', path]).status).toBe(0);
    const late = oneVm(device('pri: true, pasids: [1]'), idle, 'teardown: { atMs: 40000, op: detach }');
    expect(refusal(late, { durationMs: 30_000 }).reason).toMatch(/the default duration, 30000 ms/);
  });
});

describe('the environment and flags', () => {
  test('a bad LOG_LEVEL exits 2 on every command and lists the valid levels (it used to crash them all)', () => {
    for (const args of [
      ['validate', 'configs/default.yaml'],
      ['fail-nth', '--scenario', 'plain-ioas'],
    ]) {
      expectRefused(
        cli(args, { LOG_LEVEL: 'loud' }),
        'LOG_LEVEL=loud',
        'fatal, error, warn, info, debug, trace, silent',
      );
    }
  });

  test('a malformed IOASID_SANDBOX_PLANT exits 2 before the run', () => {
    expectRefused(
      cli(['run', 'configs/default.yaml'], { IOASID_SANDBOX_PLANT: 'drop-response=soon' }),
      'IOASID_SANDBOX_PLANT',
      'drop-response=soon',
    );
  });

  test('--trace to a path that cannot be written exits 2 before the run, and leaves nothing behind', () => {
    const missingDir = join(tmp, 'no-such-dir', 'trace.json');
    expectRefused(cli(['run', 'configs/default.yaml', '--trace', missingDir]), missingDir, 'ENOENT');
    expectRefused(cli(['run', 'configs/default.yaml', '--trace', tmp]), tmp, 'not a regular file');
    const underAFile = join(file('plain', ''), 'trace.json');
    expectRefused(cli(['run', 'configs/default.yaml', '--trace', underAFile]), 'ENOTDIR');
  });
});

describe('--duration is a promise', () => {
  // The run's own measure: from its start to its report, less the guests' launch.
  const afterLaunch = (r: { durationMs: number; launchMs: number }) => r.durationMs - r.launchMs;
  const DURATION_MS = 1000;
  /** The guests' grace for in-flight DMA, the host's wait for their answers, and its teardown. */
  const STOP_MS = DEFAULT_GRACE_MS + STOP_ANSWER_SLACK_MS + 500;

  const fastEvents = file(
    'fast-events.yaml',
    `name: fast
vms:
${vm('vm0', [
  'memoryMiB: 16',
  'viommu: vtd',
  'devices:',
  ...['d0', 'd1'].map(
    (d) =>
      `  - { name: ${d}, pri: false, pasids: [1], inject: { kind: event, ratePerSec: 1000000, groupSize: 16, pasid: 1 } }`,
  ),
  'workload: { kind: sva-stream, pages: 64 }',
])}${vm('vm1', [
  'memoryMiB: 16',
  'viommu: smmuv3',
  device('pri: false, pasids: [1], inject: { kind: event, ratePerSec: 1000000, groupSize: 16, pasid: 1 }'),
  idle,
])}`,
  );

  for (const transport of ['sab', 'postmessage']) {
    test(`a fast event injector (${transport}): paced against the clock, the run ends at its duration plus grace`, () => {
      const p = cli([
        'run',
        fastEvents,
        '--duration',
        String(DURATION_MS),
        '--transport',
        transport,
        '--json',
      ]);
      expect(p.status, p.stderr).toBe(0);
      const r = JSON.parse(p.stdout);
      expect(afterLaunch(r)).toBeLessThan(DURATION_MS + STOP_MS);
      expect(r.vms[0].injectedEvents).toBeGreaterThan(0);
      expect(r.vms[1].injectedEvents).toBeGreaterThan(0);
    });
  }

  test('a guest that hangs holding a fault does not hold the run past its duration plus grace', () => {
    const hang = file(
      'hang.yaml',
      oneVm(
        device('pri: true, pasids: [1]'),
        'workload: { kind: sva-stream, pages: 64 }',
        'misbehave: [hang]',
      ),
    );
    const p = cli(['run', hang, '--duration', String(DURATION_MS), '--json']);
    const r = JSON.parse(p.stdout);
    expect(afterLaunch(r)).toBeLessThan(DURATION_MS + STOP_MS);
    expect(r.vms[0].crashed).toBe(true);
    expect(r.vms[0].crashReason).toMatch(/did not stop/);
  });
});
