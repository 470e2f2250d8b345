// Driving a running sandbox from code: launch, inject faults as the host's own act, read live
// stats, stop. Real worker threads behind it.
import { describe, expect, test } from 'vitest';
import { Sandbox } from '../../host/vmm/sandbox.ts';
import { parseTopology } from '../../host/vmm/topology.ts';

const topology = parseTopology(`name: live
vms:
  - { name: quiet, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: true, pasids: [1] }], workload: { kind: idle } }
  - { name: plain, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: false, pasids: [1] }], workload: { kind: idle } }
`);

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('Sandbox (library API)', () => {
  test('injected page requests travel the whole fault path and are answered by the guest', async () => {
    const sandbox = new Sandbox(topology);
    await sandbox.launch();
    try {
      for (let i = 0; i < 5; i++) sandbox.inject('quiet', { pasid: 1, address: 0x1234_5000 + i * 4096 });
      // Nothing backs these addresses in an idle guest: its driver answers Invalid Request.
      await until(() => sandbox.report().vms[0].responses.invalid === 5);
      const live = sandbox.report();
      expect(live.vms[0].faultsDelivered).toBe(5);
      expect(live.vms[1].faultsDelivered).toBe(0);
      expect(() => sandbox.inject('nobody', { pasid: 1, address: 0 })).toThrow(/no VM named nobody/);
      expect(() => sandbox.inject('quiet', { device: 'x', pasid: 1, address: 0 })).toThrow(
        /no device named x/,
      );
      expect(() => sandbox.inject('plain', { pasid: 1, address: 0 })).toThrow(/cannot raise a page request/);
    } finally {
      const final = await sandbox.stop();
      expect(final.faults).toMatchObject({ raised: 5, delivered: 5, responded: 5, lost: 0 });
      expect(final.invariants.ok).toBe(true);
    }
    expect(() => sandbox.inject('quiet', { pasid: 1, address: 0 })).toThrow(/running sandbox/);
  });

  test('injected events reach an SMMUv3 guest through the vEVENTQ and its event queue; VT-d keeps them', async () => {
    const sandbox = new Sandbox(
      parseTopology(`name: events
vms:
  - { name: arm, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: false, pasids: [1] }], workload: { kind: idle } }
  - { name: x86, memoryMiB: 16, viommu: vtd, devices: [{ name: d, pri: false, pasids: [1] }], workload: { kind: idle } }
`),
    );
    await sandbox.launch();
    try {
      for (let i = 0; i < 3; i++)
        sandbox.inject('arm', { kind: 'event', pasid: 1, address: 0x5000 + i * 4096 });
      sandbox.inject('x86', { kind: 'event', pasid: 1, address: 0x5000 });
      await until(() => sandbox.report().vms[0].eventsDelivered === 3);
    } finally {
      const final = await sandbox.stop();
      const [arm, x86] = final.vms;
      expect(arm.faultsByKind).toEqual({ pageRequest: 0, stall: 0, terminate: 3 });
      expect(arm.eventsHandled).toBe(3);
      expect(arm.injectedEvents).toBe(3);
      expect(x86.injectedEvents).toBe(1);
      expect(x86.eventsDelivered).toBe(0);
      expect(final.iommu.eventsForwarded).toBe(3);
      expect(final.iommu.eventsHostOnly).toBe(1);
      // No page request was involved.
      expect(final.faults.raised).toBe(0);
    }
  });
});
