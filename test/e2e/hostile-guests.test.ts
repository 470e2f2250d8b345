// Hostile guests (topology `misbehave`): each behaviour is real guest code in a worker (guest/misbehave.ts)
// running beside well-behaved VMs of both flavours. The host must not throw, must count and name the
// damage, and must give every other VM exactly what it gets in the same run without the misbehaviour.
import { pino } from 'pino';
import { describe, expect, test } from 'vitest';
import type { GuestDamage } from '../../host/vmm/damage.ts';
import type { RunReport, VmReport } from '../../host/vmm/report.ts';
import { runTopology, Sandbox } from '../../host/vmm/sandbox.ts';
import { parseTopology, type Topology } from '../../host/vmm/topology.ts';
import type { Misbehaviour } from '../../shared/control.ts';

const PAGE = 4096;
const PAGES = 128;
const RUN_CAP_MS = 15_000;

interface VmShape {
  name: string;
  viommu: 'smmuv3' | 'vtd';
  seed: number;
  misbehave?: Misbehaviour[];
  /** A second device that stalls instead of using PRI (SMMUv3 only). */
  stall?: boolean;
  priqLog2?: number;
  responseTimeoutMs?: number;
}

/** A topology through the real schema: small VMs streaming PAGES demand-paged pages per device. */
function topology(vms: VmShape[]): Topology {
  const lines = ['name: hostile', 'vms:'];
  for (const vm of vms) {
    const devices = ['{ name: d, pri: true, pasids: [1] }'];
    if (vm.stall) devices.push('{ name: s, pri: false, stall: true, pasids: [2] }');
    lines.push(
      `  - name: ${vm.name}`,
      '    memoryMiB: 16',
      `    viommu: ${vm.viommu}`,
      `    devices: [${devices.join(', ')}]`,
      `    workload: { kind: sva-stream, pages: ${PAGES}, seed: ${vm.seed} }`,
      `    misbehave: [${(vm.misbehave ?? []).join(', ')}]`,
    );
    if (vm.priqLog2 !== undefined) lines.push(`    queues: { priqLog2: ${vm.priqLog2} }`);
    if (vm.responseTimeoutMs !== undefined) lines.push(`    responseTimeoutMs: ${vm.responseTimeoutMs}`);
  }
  return parseTopology(`${lines.join('\n')}\n`);
}

interface HostileRun {
  report: RunReport;
  /** Per VM, in topology order. */
  damage: GuestDamage[];
  vm(name: string): VmReport;
}

/**
 * Read from each VM's vIOMMU model (host/vmm/damage.ts) until the run report carries
 * `duplicateResponses` and `corruptIndices` per VM.
 */
function damageOf(sandbox: Sandbox): GuestDamage[] {
  return sandbox.report().vms.map((vm) => vm.damage);
}

/** runTopology, keeping the sandbox to read the damage. */
async function runHostile(t: Topology): Promise<HostileRun> {
  const sandbox = new Sandbox(t);
  await sandbox.launch();
  const deadline = performance.now() + RUN_CAP_MS;
  try {
    while (performance.now() < deadline && !(await sandbox.workloadsDone())) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  } finally {
    await sandbox.stop();
  }
  return withDamage(sandbox.report(), damageOf(sandbox));
}

function withDamage(report: RunReport, damage: GuestDamage[]): HostileRun {
  return {
    report,
    damage,
    vm: (name) => {
      const vm = report.vms.find((v) => v.name === name);
      if (!vm) throw new Error(`no VM ${name} in the report`);
      return vm;
    },
  };
}

/** The same topology with every VM well behaved. */
function baselineRun(t: Topology): Promise<RunReport> {
  return runTopology(
    { ...t, vms: t.vms.map((vm) => ({ ...vm, misbehave: [] })) },
    { durationMs: RUN_CAP_MS },
  );
}

/** What a well-behaved VM does is fixed by its seed, whatever its neighbours do. */
function expectUnchanged(run: RunReport, baseline: RunReport, names: string[]): void {
  for (const name of names) {
    const now = run.vms.find((v) => v.name === name);
    const before = baseline.vms.find((v) => v.name === name);
    expect(now?.crashed, name).toBe(false);
    expect(now?.workloadDone, name).toBe(true);
    const pick = (vm: VmReport | undefined) => ({
      dmaOps: vm?.dmaOps,
      dmaCompleted: vm?.dmaCompleted,
      pageRequests: vm?.pageRequests,
      bytesVerified: vm?.bytesVerified,
      faultsDelivered: vm?.faultsDelivered,
    });
    expect(pick(now), name).toEqual(pick(before));
    expect(now?.bytesVerified, name).toBe(PAGES * PAGE);
  }
}

/** Nothing the host must never do happened (no host-exception above all), and no group was lost. */
function expectHostSurvived(r: RunReport): void {
  expect(r.invariants.counts['host-exception']).toBeUndefined();
  expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
  expect(r.faults.lost).toBe(0);
  for (const vm of r.vms) expect(vm.iommufdObjects, vm.name).toBe(0);
}

/**
 * The host's error log, read as it is written: `ended(vm)` resolves when the host declares that VM's
 * guest dead (vm.ts logs "guest crashed" as it gives up), with the reason and the time it did.
 */
function guestDeaths() {
  const deaths = new Map<string, { reason: string; at: number }>();
  const waiting = new Map<string, (death: { reason: string; at: number }) => void>();
  const log = pino(
    { level: 'error' },
    {
      write(line: string) {
        const { msg, vm, reason } = JSON.parse(line) as { msg: string; vm?: string; reason?: string };
        if (msg !== 'guest crashed' || vm === undefined || deaths.has(vm)) return;
        const death = { reason: reason ?? '', at: performance.now() };
        deaths.set(vm, death);
        waiting.get(vm)?.(death);
      },
    },
  );
  const ended = (vm: string) =>
    new Promise<{ reason: string; at: number }>((resolve) => {
      const death = deaths.get(vm);
      if (death) resolve(death);
      else waiting.set(vm, resolve);
    });
  return { log, ended };
}

/** Two hostile guests (one per flavour) and a well-behaved bystander of the given flavour. */
function trio(misbehave: Misbehaviour, bystander: 'smmuv3' | 'vtd', extra: Partial<VmShape> = {}): Topology {
  return topology([
    { name: 'bad-smmu', viommu: 'smmuv3', seed: 1, misbehave: [misbehave], ...extra },
    { name: 'bad-vtd', viommu: 'vtd', seed: 2, misbehave: [misbehave], ...extra, stall: false },
    { name: 'bystander', viommu: bystander, seed: 3 },
  ]);
}

describe('hostile guests', () => {
  test('corrupt-ring-indices: impossible CONS and PROD values are counted per queue and never followed', async () => {
    // An 8-entry PRI queue makes the host re-read the guest's CONS often enough to meet the garbage.
    const t = trio('corrupt-ring-indices', 'vtd', { priqLog2: 3 });
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const [i, name] of ['bad-smmu', 'bad-vtd'].entries()) {
      const { corruptIndices } = run.damage[i];
      expect(corruptIndices.pageRequestQueue, name).toBeGreaterThan(0);
      expect(corruptIndices.commandQueue, name).toBeGreaterThan(0);
      const vm = run.vm(name);
      // A CONS claiming more than the ring holds reads as a full queue: requests were dropped and
      // answered Success, the devices retried, and every page still arrived.
      expect(vm.dropped, name).toBeGreaterThan(0);
      expect(vm.overflows, name).toBeGreaterThan(0);
      expect(vm.crashed, name).toBe(false);
      expect(vm.bytesVerified, name).toBe(PAGES * PAGE);
    }
    expect(run.damage[2].corruptIndices).toEqual({ pageRequestQueue: 0, eventQueue: 0, commandQueue: 0 });
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('unknown-responses: answers to groups never delivered are counted and dropped', async () => {
    const t = trio('unknown-responses', 'smmuv3', { stall: true });
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const [i, name] of ['bad-smmu', 'bad-vtd'].entries()) {
      const vm = run.vm(name);
      // Two forged answers per real one; a forged random PRG index may hit a group that is really
      // outstanding, which then counts as answered and its real answer as unknown.
      expect(run.damage[i].unknownResponses, name).toBeGreaterThanOrEqual(vm.faultsDelivered);
      expect(vm.unknownResponses, name).toBe(run.damage[i].unknownResponses);
      expect(run.damage[i].illegalCommands, name).toBe(0);
      // Forged answers say Success: at worst a device retries early and faults again.
      expect(vm.dmaFailed, name).toBe(0);
      expect(vm.bytesVerified, name).toBe((name === 'bad-smmu' ? 2 : 1) * PAGES * PAGE);
    }
    // bad-smmu's stalling device got CMD_RESUMEs for STAGs that hold no stall.
    expect(run.vm('bad-smmu').faultsByKind.stall).toBeGreaterThanOrEqual(PAGES);
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('duplicate-responses: every second answer is named a duplicate, and only the first reaches the device', async () => {
    const t = trio('duplicate-responses', 'vtd', { stall: true });
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const [i, name] of ['bad-smmu', 'bad-vtd'].entries()) {
      const vm = run.vm(name);
      const answers = vm.responses.success + vm.responses.invalid + vm.responses.failure;
      expect(answers, name).toBe(vm.faultsDelivered);
      expect(run.damage[i].duplicateResponses, name).toBe(answers);
      expect(run.damage[i].unknownResponses, name).toBe(answers);
      // Each group reached its device once: the fault queue took one answer per group.
      expect(vm.faultQueue.responded, name).toBe(vm.faultQueue.read);
      expect(vm.dmaFailed, name).toBe(0);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('response-flood: dozens of bogus commands per fault are refused or dropped, and signalled', async () => {
    const t = trio('response-flood', 'smmuv3', { stall: true });
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const [i, name] of ['bad-smmu', 'bad-vtd'].entries()) {
      const vm = run.vm(name);
      const d = run.damage[i];
      expect(d.unknownResponses, name).toBeGreaterThan(5 * vm.faultsDelivered);
      expect(d.duplicateResponses, name).toBeGreaterThan(vm.faultsDelivered);
      // Reserved response codes: refused (CMDQ_ERR / IQE), and the guest's driver saw the error.
      expect(d.illegalCommands, name).toBeGreaterThan(vm.faultsDelivered);
      expect(vm.illegalCommands, name).toBe(d.illegalCommands);
      expect(vm.commandErrorsAcknowledged, name).toBeGreaterThan(0);
      // The real answers still went through first.
      expect(vm.workloadDone, name).toBe(true);
      expect(vm.dmaFailed, name).toBe(0);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('never-respond: faults held past responseTimeoutMs end the guest; the host answers them INVALID', async () => {
    const t = trio('never-respond', 'vtd', { responseTimeoutMs: 300 });
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const name of ['bad-smmu', 'bad-vtd']) {
      const vm = run.vm(name);
      expect(vm.crashed, name).toBe(true);
      expect(vm.crashReason, name).toMatch(/answered none of \d+ fault\(s\) .*\(responseTimeoutMs 300\)/);
      expect(vm.faultsDelivered, name).toBeGreaterThan(0);
      expect(vm.responses, name).toEqual({ success: 0, invalid: 0, failure: 0 });
      // Every group it held was answered by the host when it gave up on the guest.
      expect(vm.faultQueue.responded, name).toBe(0);
      expect(vm.faultQueue.autoResponded, name).toBe(vm.faultQueue.read);
      expect(vm.dmaFailed, name).toBeGreaterThan(0);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('wild-page-tables: entries outside RAM, cycles and reserved bits fault in the walker, never translate', async () => {
    const t = trio('wild-page-tables', 'smmuv3');
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    // No dma-data-mismatch, no dma-outside-ioas: no wild entry ever gave a translation.
    expectHostSurvived(run.report);
    for (const name of ['bad-smmu', 'bad-vtd']) {
      const vm = run.vm(name);
      // Reserved bits: an address size fault; outside guest RAM: a stage-2 fault, the host's.
      expect(vm.unrecoverableFaults.stage1, name).toBeGreaterThan(0);
      expect(vm.unrecoverableFaults.stage2, name).toBeGreaterThan(0);
      expect(vm.dmaFailed, name).toBe(vm.unrecoverableFaults.stage1 + vm.unrecoverableFaults.stage2);
      // Every wild entry was answered Success and mapped nothing: more page requests than pages.
      expect(vm.responses.invalid, name).toBe(0);
      expect(vm.pageRequests, name).toBeGreaterThan(vm.pagesMapped);
      expect(vm.staleTranslationUses, name).toBe(0);
      expect(vm.workloadDone, name).toBe(true);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('crash-mid-fault: an uncaught exception in the guest worker is a guest death, torn down at once', async () => {
    const t = trio('crash-mid-fault', 'vtd');
    const [run, baseline] = [await runHostile(t), await baselineRun(t)];
    expectHostSurvived(run.report);
    for (const name of ['bad-smmu', 'bad-vtd']) {
      const vm = run.vm(name);
      expect(vm.crashed, name).toBe(true);
      expect(vm.crashReason, name).toMatch(/^uncaught exception in the guest: .*crash-mid-fault/);
      // It died handling its 8th fault; what it held was answered by the host (the answers it had
      // published but the host had not read yet went with its queues).
      expect(vm.faultsDelivered, name).toBeGreaterThanOrEqual(8);
      expect(vm.faultQueue.autoResponded, name).toBeGreaterThan(0);
      expect(vm.faultQueue.responded + vm.faultQueue.autoResponded, name).toBe(vm.faultQueue.read);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });

  test('hang: a guest spinning in its fault handler answers nothing, not even its control plane, until the host ends it', async () => {
    const t = trio('hang', 'smmuv3', { responseTimeoutMs: 300 });
    const baseline = await baselineRun(t);
    const deaths = guestDeaths();
    const sandbox = new Sandbox(t, { log: deaths.log });
    const launched = performance.now();
    await sandbox.launch();
    const ended = deaths.ended('bad-smmu');
    // Stats calls one after another: once the guest spins in its handler it answers none, and the
    // call in flight then settles only when the watchdog has ended the guest.
    let inFlight: Promise<boolean>;
    do inFlight = sandbox.workloadsDone();
    while ((await Promise.race([inFlight.then(() => 'answered'), ended.then(() => 'ended')])) === 'answered');
    await inFlight;
    expect(sandbox.report().vms[0].crashed).toBe(true);
    // Ended by the watchdog, and not before the guest had held its faults unanswered for 300 ms.
    const { reason, at } = await ended;
    const held = /^answered none of [1-9]\d* fault\(s\) for (\d+) ms \(responseTimeoutMs 300\)$/.exec(reason);
    expect(held, reason).not.toBeNull();
    expect(Number(held?.[1])).toBeGreaterThanOrEqual(300);
    expect(at - launched).toBeGreaterThanOrEqual(300);
    await deaths.ended('bad-vtd');
    const deadline = performance.now() + RUN_CAP_MS;
    while (performance.now() < deadline && !(await sandbox.workloadsDone())) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const run = withDamage(await sandbox.stop(), damageOf(sandbox));
    expectHostSurvived(run.report);
    for (const name of ['bad-smmu', 'bad-vtd']) {
      const vm = run.vm(name);
      expect(vm.crashed, name).toBe(true);
      expect(vm.crashReason, name).toMatch(/\(responseTimeoutMs 300\)/);
      expect(vm.responses, name).toEqual({ success: 0, invalid: 0, failure: 0 });
      expect(vm.faultQueue.autoResponded, name).toBe(vm.faultQueue.read);
    }
    expectUnchanged(run.report, baseline, ['bystander']);
  });
});
