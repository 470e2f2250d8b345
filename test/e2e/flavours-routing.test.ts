// The VT-d flavour end to end, shared functions, and the routing question: real worker threads,
// real SharedArrayBuffers and Atomics, no mocks.
import { describe, expect, test } from 'vitest';
import type { RunReport } from '../../host/vmm/report.ts';
import { runTopology, Sandbox } from '../../host/vmm/sandbox.ts';
import { loadTopology, parseTopology } from '../../host/vmm/topology.ts';

const PAGE = 4096;

function vtdVm(body: string): string {
  return `name: t\nvms:\n  - name: vm0\n    memoryMiB: 16\n    viommu: vtd\n${body}`;
}

describe('the VT-d flavour', () => {
  test('sva-stream: each page faults once through the page request queue, answered by a page group response', async () => {
    const r = await runTopology(
      parseTopology(
        vtdVm(
          `    devices: [{ name: d, pri: true, pasids: [1] }]\n    workload: { kind: sva-stream, pages: 128, seed: 5 }\n`,
        ),
      ),
    );
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.flavour).toBe('vtd');
    expect(vm.faultsByKind).toEqual({ pageRequest: 128, stall: 0, terminate: 0 });
    expect(vm.responses).toEqual({ success: 128, invalid: 0, failure: 0 });
    expect(vm.faultQueue).toMatchObject({ read: 128, responded: 128, autoResponded: 0, staleTouches: 0 });
    expect(vm.bytesVerified).toBe(128 * PAGE);
    expect(r.faults.lost).toBe(0);
  });

  test('map-churn: every unmap is a PASID-based IOTLB invalidation plus a wait; no DMA uses a stale translation', async () => {
    const r = await runTopology(
      parseTopology(
        vtdVm(
          `    devices: [{ name: d, pri: true, pasids: [1] }]\n    workload: { kind: map-churn, pages: 128, seed: 3, queueDepth: 8 }\n`,
        ),
      ),
    );
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.unmaps).toBeGreaterThan(10);
    expect(vm.invalidations).toBe(vm.unmaps);
    expect(vm.illegalCommands).toBe(0);
    expect(vm.staleTranslationUses).toBe(0);
    expect(vm.bytesVerified).toBe(512 * PAGE);
    expect(r.faults.lost).toBe(0);
  });

  test('topology checks: no stall model on VT-d', () => {
    expect(() =>
      parseTopology(
        vtdVm(`    devices: [{ name: d, pri: false, stall: true }]\n    workload: { kind: idle }\n`),
      ),
    ).toThrow(/vms\[0\]\.devices\[0\]\.stall: VT-d has no stall model/);
  });
});

describe('a function shared between VMs', () => {
  const twoVms = (a: string, b: string, viommu = 'vtd') =>
    `name: s\nvms:\n  - name: a\n    memoryMiB: 16\n    viommu: ${viommu}\n    devices: [${a}]\n    workload: { kind: idle }\n  - name: b\n    memoryMiB: 16\n    viommu: vtd\n    devices: [${b}]\n    workload: { kind: idle }\n`;

  test('is refused behind SMMUv3, with two VMs claiming one PASID, and without a PASID off the RID', () => {
    const dev = (pasids: string) => `{ name: d, function: f, pri: true, pasids: ${pasids} }`;
    expect(() => parseTopology(twoVms(dev('[1]'), dev('[2]'), 'smmuv3'))).toThrow(
      /vms\[0\]\.devices\[0\]\.function: a shared function needs viommu: vtd/,
    );
    expect(() => parseTopology(twoVms(dev('[1]'), dev('[1]')))).toThrow(
      /vms\[1\]\.devices\[0\]\.pasids: PASID 1 of function "f" is already a's/,
    );
    expect(() => parseTopology(twoVms(dev('[1]'), dev('[]')))).toThrow(
      /vms\[1\]\.devices\[0\]\.pasids: an interface on function "f" without its RID needs at least one PASID/,
    );
  });

  test('shared-device.yaml (ioasid-owner): each VM gets exactly its own PASID faults, nothing lost', async () => {
    const r = await runTopology(loadTopology('configs/shared-device.yaml'));
    expect(r.routing).toBe('ioasid-owner');
    expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
    expect(r.faults.lost).toBe(0);
    for (const vm of r.vms) {
      expect(vm.flavour).toBe('vtd');
      expect(vm.faultsByKind.pageRequest).toBe(256);
      expect(vm.responses).toEqual({ success: 256, invalid: 0, failure: 0 });
      expect(vm.bytesVerified).toBe(256 * PAGE);
      expect(vm.dmaFailed).toBe(0);
    }
    // One function, one StreamID: both VMs' faults came from the same requester.
    expect(r.faults.raised).toBe(512);
  });

  test("a hostile interface naming the RID's or its neighbour's PASID reaches nothing of vm0's", async () => {
    const r = await runTopology(
      parseTopology(`name: foreign
vms:
  - name: vm0
    memoryMiB: 16
    viommu: vtd
    devices: [{ name: d, function: f, pri: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 256, seed: 1 }
  - name: vm1
    memoryMiB: 16
    viommu: vtd
    misbehave: [foreign-pasid-dma]
    devices: [{ name: d, function: f, pri: true, pasids: [2] }]
    workload: { kind: sva-stream, pages: 256, seed: 2 }
`),
    );
    const [vm0, vm1] = r.vms;
    expect(r.invariants.violations).toEqual([]);
    expect(r.faults.lost).toBe(0);
    // Every fourth descriptor of vm1 names another PASID; the function refuses each one.
    expect(vm1.foreignPasidDescriptors).toBeGreaterThan(0);
    expect(vm1.dmaFailed).toBe(vm1.foreignPasidDescriptors);
    expect(vm0.responses).toEqual({ success: 256, invalid: 0, failure: 0 });
    expect(vm0.faultsDelivered).toBe(256);
    expect(vm0.bytesVerified).toBe(256 * PAGE);
    expect(vm0.badDescriptors).toBe(0);
  });

  describe("a PASID whose attachment is gone: answered INVALID, never the RID holder's", () => {
    // vm1's interface keeps raising page requests for its PASID 2 after the VMM detached it.
    const detachedInterface = () =>
      parseTopology(`name: detached
vms:
  - name: vm0
    memoryMiB: 16
    viommu: vtd
    devices: [{ name: d, function: f, pri: true, pasids: [1] }]
    workload: { kind: idle }
  - name: vm1
    memoryMiB: 16
    viommu: vtd
    devices:
      - { name: d, function: f, pri: true, pasids: [2], inject: { ratePerSec: 2000, pasid: 2 } }
    workload: { kind: idle }
`);
    const until = async (sandbox: Sandbox, done: (r: RunReport) => boolean) => {
      const deadline = performance.now() + 15_000;
      while (!done(sandbox.report())) {
        if (performance.now() > deadline) throw new Error('timed out waiting for the sandbox');
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    };

    test('with the fix: counted as unrouted, vm0 sees nothing, no violation', async () => {
      const sandbox = new Sandbox(detachedInterface(), { graceMs: 300 });
      await sandbox.launch();
      expect(sandbox.injectTeardown('vm1', 'detach')).toBe('done');
      await until(sandbox, (r) => r.faults.unrouted >= 5);
      const r = await sandbox.stop();
      expect(r.invariants.violations).toEqual([]);
      expect(r.vms[0].faultsDelivered).toBe(0);
      expect(r.faults.lost).toBe(0);
    });

    test('with the RID fallback planted back: the oracle names fault-delivered-to-non-owner', async () => {
      const sandbox = new Sandbox(detachedInterface(), { graceMs: 300, plant: { ridFallback: 1 } });
      await sandbox.launch();
      sandbox.injectTeardown('vm1', 'detach');
      await until(sandbox, (r) => (r.invariants.counts['fault-delivered-to-non-owner'] ?? 0) >= 1);
      const r = await sandbox.stop();
      expect(r.invariants.violations[0]).toMatchObject({ rule: 'fault-delivered-to-non-owner', vm: 'vm0' });
      expect(r.invariants.violations[0].detail).toMatch(/PASID 2 is owned by vm1/);
      expect(r.vms[0].faultsDelivered).toBeGreaterThan(0);
    });
  });

  test('shared-device-device-owner.yaml: vm1 faults land in vm0, named fault-delivered-to-non-owner', async () => {
    const r = await runTopology(loadTopology('configs/shared-device-device-owner.yaml'));
    const [owner, other] = r.vms;
    expect(r.routing).toBe('device-owner');
    expect(r.invariants.ok).toBe(false);
    expect(r.invariants.counts['fault-delivered-to-non-owner']).toBe(other.pageRequests);
    expect(r.invariants.violations[0]).toMatchObject({ rule: 'fault-delivered-to-non-owner', vm: 'vm0' });
    expect(r.invariants.violations[0].detail).toMatch(/PASID 2 is owned by vm1/);
    // vm0 got every fault, its own 256 and vm1's; it has no tables for PASID 2 and answers INVALID.
    expect(owner.faultsByKind.pageRequest).toBe(256 + other.pageRequests);
    expect(owner.responses).toEqual({ success: 256, invalid: other.pageRequests, failure: 0 });
    expect(owner.bytesVerified).toBe(256 * PAGE);
    expect(other.faultsDelivered).toBe(0);
    expect(other.bytesVerified).toBe(0);
    expect(other.dmaFailed).toBeGreaterThan(0);
    // The violation is an isolation failure, not a lost fault: every group was answered once.
    expect(r.faults.lost).toBe(0);
  });
});
