// Guest death: a VM whose worker dies (or that stops answering) is answered, detached and torn
// down at once; the other VMs go on untouched. Real worker threads.
import { describe, expect, test } from 'vitest';
import { runTopology, Sandbox } from '../../host/vmm/sandbox.ts';
import { parseTopology } from '../../host/vmm/topology.ts';

const PAGE = 4096;

const pair = (extra = '') =>
  parseTopology(`name: death
vms:
  - name: victim
    memoryMiB: 16
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 2048, seed: 1, queueDepth: 16 }
${extra}
  - name: bystander
    memoryMiB: 16
    viommu: vtd
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 512, seed: 2 }
`);

describe('guest death', () => {
  test('a killed guest: pending groups answered INVALID, objects destroyed, the other VM unaffected', async () => {
    const baseline = await runTopology(pair());
    const sandbox = new Sandbox(pair());
    await sandbox.launch();
    let live = sandbox.report();
    const deadline = performance.now() + 10_000;
    while (live.vms[0].faultsDelivered < 50 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 2));
      live = sandbox.report();
    }
    sandbox.killGuest('victim');
    const dead = sandbox.report().vms[0];
    expect(dead.crashed).toBe(true);
    expect(dead.crashReason).toMatch(/killed by the host/);
    // Torn down at once, not at the end of the run.
    expect(dead.iommufdObjects).toBe(0);
    while (!(await sandbox.workloadsDone())) await new Promise((resolve) => setTimeout(resolve, 10));
    const r = await sandbox.stop();
    const [victim, bystander] = r.vms;
    expect(victim.workloadDone).toBe(false);
    expect(victim.dmaFailed).toBeGreaterThan(0);
    expect(r.faults.lost).toBe(0);
    expect(r.invariants.ok).toBe(true);
    // The bystander did exactly what it does without the death.
    const before = baseline.vms[1];
    for (const key of [
      'dmaOps',
      'dmaCompleted',
      'pageRequests',
      'faultsDelivered',
      'bytesVerified',
    ] as const) {
      expect(bystander[key]).toBe(before[key]);
    }
    expect(bystander.bytesVerified).toBe(512 * PAGE);
  });

  test('responseTimeoutMs: a guest that answers nothing for that long is treated as dead', async () => {
    // The silent guest's driver never answers a page request (a hostile guest, misbehave).
    const r = await runTopology(
      parseTopology(`name: timeout
vms:
  - name: silent
    memoryMiB: 16
    viommu: smmuv3
    misbehave: [never-respond]
    responseTimeoutMs: 100
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 64, seed: 1 }
  - name: fine
    memoryMiB: 16
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 64, seed: 2 }
`),
      { durationMs: 5000 },
    );
    const [silent, fine] = r.vms;
    expect(silent.crashed).toBe(true);
    expect(silent.crashReason).toMatch(
      /answered none of \d+ fault\(s\) for \d+ ms \(responseTimeoutMs 100\)/,
    );
    expect(silent.iommufdObjects).toBe(0);
    expect(fine.crashed).toBe(false);
    expect(fine.bytesVerified).toBe(64 * PAGE);
    expect(r.faults.lost).toBe(0);
    expect(r.invariants.ok).toBe(true);
  });
});
