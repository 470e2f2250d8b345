// Teardown, response deadlines and the re-fault gauge in a running sandbox: real worker threads,
// real rings, the real host. The victim never answers, so when a teardown is injected every one
// of its faults in flight is delivered and unanswered (stage e) and must be answered exactly once.
import { describe, expect, test } from 'vitest';
import { Sandbox } from '../../host/vmm/sandbox.ts';
import { parseTopology, TEARDOWN_OPS, type TeardownOp } from '../../host/vmm/topology.ts';

const PAGE = 4096;
const IN_FLIGHT = 8;

const topology = (flavour: 'smmuv3' | 'vtd', extra = '') =>
  parseTopology(`name: teardown
${extra}
vms:
  - name: victim
    memoryMiB: 16
    viommu: ${flavour}
    misbehave: [never-respond]
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 512, seed: 1, queueDepth: ${IN_FLIGHT} }
  - name: bystander
    memoryMiB: 16
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 256, seed: 2 }
`);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(_sandbox: Sandbox, done: () => boolean): Promise<void> {
  const deadline = performance.now() + 15_000;
  while (!done()) {
    if (performance.now() > deadline) throw new Error('timed out waiting for the sandbox');
    await sleep(2);
  }
}

/** Ops that end the attachment: the victim's unanswered groups are answered by the op itself. */
const ENDS: ReadonlySet<TeardownOp> = new Set(['detach', 'replace', 'unbind', 'guest-death']);

describe.each(TEARDOWN_OPS.map((op, i) => [op, i % 2 === 0 ? 'smmuv3' : 'vtd'] as const))(
  'teardown by %s in a running sandbox (%s victim)',
  (op, flavour) => {
    test('every fault in flight answered exactly once; the bystander untouched', async () => {
      const sandbox = new Sandbox(topology(flavour), { graceMs: 300 });
      await sandbox.launch();
      await until(sandbox, () => sandbox.report().vms[0].faultsDelivered >= IN_FLIGHT);
      const before = sandbox.report().vms[0];
      const outcome = sandbox.injectTeardown('victim', op);
      expect(outcome).toBe(op === 'hwpt-destroy' ? 'EBUSY' : 'done');
      const after = sandbox.report().vms[0];
      expect(after.teardown).toMatchObject({ op, outcome });
      // Never answered by the guest, so each delivered group is still waiting: the op answers all.
      const answeredByOp = after.faultQueue.autoResponded - before.faultQueue.autoResponded;
      expect(answeredByOp).toBe(ENDS.has(op) ? before.faultsDelivered : 0);
      if (op === 'guest-death') expect(after.crashed).toBe(true);
      if (op === 'replace') {
        // The device goes on through the new HWPT: its next faults reach the guest again.
        await until(sandbox, () => sandbox.report().vms[0].faultsDelivered > before.faultsDelivered);
      }
      await until(sandbox, () => sandbox.report().vms[1].bytesVerified === 256 * PAGE);
      const r = await sandbox.stop();
      const [victim, bystander] = r.vms;
      expect(r.faults.lost).toBe(0);
      expect(r.invariants.violations).toEqual([]);
      expect(victim.faultQueue.staleTouches).toBe(0);
      expect(victim.iommufdObjects).toBe(0);
      // Every group the victim was given got exactly one answer, from the host.
      expect(victim.faultQueue.responded).toBe(0);
      expect(victim.faultQueue.autoResponded + victim.iopfTimeouts).toBe(victim.faultQueue.read);
      expect(bystander.workloadDone).toBe(true);
      expect(bystander.bytesVerified).toBe(256 * PAGE);
      expect(bystander.crashed).toBe(false);
    });
  },
);

describe('response deadlines', () => {
  test('a silent guest: each group is answered INVALID at its deadline and counted; nothing is lost', async () => {
    const sandbox = new Sandbox(topology('vtd', 'iopfTimeoutMs: 20'), { graceMs: 300 });
    await sandbox.launch();
    await until(sandbox, () => sandbox.report().vms[0].iopfTimeouts >= IN_FLIGHT);
    await until(sandbox, () => sandbox.report().vms[1].bytesVerified === 256 * PAGE);
    const r = await sandbox.stop();
    const [victim, bystander] = r.vms;
    expect(victim.crashed).toBe(false);
    expect(victim.iopfTimeouts).toBeGreaterThanOrEqual(IN_FLIGHT);
    expect(victim.faultQueue.revoked).toBe(victim.iopfTimeouts);
    expect(r.faults.iopfTimeouts).toBe(victim.iopfTimeouts);
    // An expired group's DMA fails; the guest's device goes on with the next ones.
    expect(victim.dmaFailed).toBeGreaterThanOrEqual(victim.iopfTimeouts);
    expect(bystander.iopfTimeouts).toBe(0);
    expect(bystander.bytesVerified).toBe(256 * PAGE);
    expect(r.faults.lost).toBe(0);
    expect(r.invariants.ok).toBe(true);
  });
});

describe('the re-fault gauge', () => {
  test('the same page injected again and again shows as one hot page', async () => {
    const sandbox = new Sandbox(
      parseTopology(`name: refault
vms:
  - name: vm
    memoryMiB: 16
    viommu: smmuv3
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: idle }
`),
    );
    await sandbox.launch();
    const address = 0x4000_0000_0000;
    const times = 6;
    for (let i = 0; i < times; i++) {
      sandbox.inject('vm', { pasid: 1, address });
      await until(sandbox, () => sandbox.report().vms[0].faultQueue.responded === i + 1);
    }
    sandbox.inject('vm', { pasid: 1, address: address + 16 * PAGE });
    await until(sandbox, () => sandbox.report().vms[0].faultQueue.responded === times + 1);
    const r = await sandbox.stop();
    const { refaults } = r.vms[0];
    expect(refaults.maxFaults).toBe(times);
    expect(refaults.hottest).toMatchObject({ pasid: 1, address });
    expect(refaults.refaults).toBe(times - 1);
    expect(refaults.pagesRefaulted).toBe(1);
    expect(r.invariants.ok).toBe(true);
  });
});
