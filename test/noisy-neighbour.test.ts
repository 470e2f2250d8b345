// Noisy neighbours: VMs whose devices share one physical IOMMU's PRI queue, and the same VMs behind
// IOMMUs of their own. Real worker threads, real rings; the figures are the run report's.
import { describe, expect, test } from 'vitest';
import { runTopology } from '../host/vmm/sandbox.ts';
import { iommuIndexOf, loadTopology, parseTopology, physicalIommus } from '../host/vmm/topology.ts';
import { topologyErrorOf } from './support/topology-errors.ts';

const PAGE = 4096;

function vm(name: string, device: string, extra = ''): string {
  return `  - { name: ${name}, memoryMiB: 16, viommu: vtd, devices: [{ name: d, pri: true, pasids: [1]${device} }], workload: { kind: sva-stream, pages: 16 }${extra} }\n`;
}

describe('physical IOMMUs in a topology', () => {
  test('without `iommus` the host has one IOMMU, iommu0, with the `iommu` section IOTLB and a 2^12-entry PRI queue', () => {
    const t = parseTopology(
      `name: t\niommu: { iotlbEntries: 256, iotlbWays: 2 }\nvms:\n${vm('vm0', ', iommu: iommu0')}`,
    );
    expect(physicalIommus(t)).toEqual([{ name: 'iommu0', priqLog2: 12, iotlbEntries: 256, iotlbWays: 2 }]);
    expect(iommuIndexOf(t, t.vms[0].devices[0])).toBe(0);
  });

  test('each device sits behind the IOMMU it names, by default the first; unset IOTLB sizes come from `iommu`', () => {
    const t = parseTopology(
      `name: t\niommus:\n  - { name: a, priqLog2: 4 }\n  - { name: b, priqLog2: 6, iotlbEntries: 64 }\nvms:\n${vm('vm0', '')}${vm('vm1', ', iommu: b')}`,
    );
    expect(physicalIommus(t)).toEqual([
      { name: 'a', priqLog2: 4, iotlbEntries: 4096, iotlbWays: 4 },
      { name: 'b', priqLog2: 6, iotlbEntries: 64, iotlbWays: 4 },
    ]);
    expect(t.vms.map((v) => iommuIndexOf(t, v.devices[0]))).toEqual([0, 1]);
  });

  test('a device naming an IOMMU the topology does not have is refused at its path', () => {
    const e = topologyErrorOf(
      `name: t\niommus: [{ name: a, priqLog2: 4 }]\nvms:\n${vm('vm0', ', iommu: b')}`,
    );
    expect(e.yamlPath).toBe('vms[0].devices[0].iommu');
    expect(e.reason).toBe(`no physical IOMMU named "b" (the topology's \`iommus\` are "a")`);
    expect(topologyErrorOf(`name: t\nvms:\n${vm('vm0', ', iommu: smmu0')}`).reason).toMatch(
      /without `iommus` the only one is "iommu0"/,
    );
  });

  test('IOMMU names are distinct, and each has a PRI queue size', () => {
    const dup = topologyErrorOf(
      `name: t\niommus: [{ name: a, priqLog2: 4 }, { name: a, priqLog2: 5 }]\nvms:\n${vm('vm0', '')}`,
    );
    expect(dup.yamlPath).toBe('iommus[1].name');
    expect(dup.reason).toBe('duplicate IOMMU name "a"');
    expect(topologyErrorOf(`name: t\niommus: [{ name: a }]\nvms:\n${vm('vm0', '')}`).yamlPath).toBe(
      'iommus[0].priqLog2',
    );
    expect(
      topologyErrorOf(`name: t\niommus: [{ name: a, priqLog2: 20 }]\nvms:\n${vm('vm0', '')}`).yamlPath,
    ).toBe('iommus[0].priqLog2');
    expect(
      topologyErrorOf(
        `name: t\niommus: [{ name: a, priqLog2: 4, iotlbEntries: 8, iotlbWays: 16 }]\nvms:\n${vm('vm0', '')}`,
      ).yamlPath,
    ).toBe('iommus[0].iotlbWays');
  });

  test('the interfaces of a shared function sit behind one IOMMU', () => {
    const e = topologyErrorOf(
      `name: t\niommus: [{ name: a, priqLog2: 4 }, { name: b, priqLog2: 4 }]\nvms:\n${vm('vm0', ', function: f')}${vm('vm1', ', function: f, iommu: b')}`.replace(
        'pasids: [1], function: f, iommu: b',
        'pasids: [2], function: f, iommu: b',
      ),
    );
    expect(e.yamlPath).toBe('vms[1].devices[0].iommu');
    expect(e.reason).toMatch(/every interface on function "f" sits behind the same physical IOMMU/);
  });
});

describe('noisy neighbours', () => {
  test('a topology without `iommus` runs as before: one PRI queue that never fills, nothing lost by anyone', async () => {
    const r = await runTopology(parseTopology(`name: t\nvms:\n${vm('vm0', '')}${vm('vm1', '')}`));
    expect(r.invariants.ok).toBe(true);
    expect(r.physicalIommus).toHaveLength(1);
    expect(r.physicalIommus[0]).toMatchObject({ name: 'iommu0', priqLog2: 12, vms: ['vm0', 'vm1'] });
    expect(r.physicalIommus[0]).toMatchObject({ written: 32, consumed: 32, discarded: 0, overflows: 0 });
    for (const v of r.vms) {
      expect(v.isolation).toMatchObject({ iommus: ['iommu0'], lostToOthers: 0, lostOwn: 0, faultsTimed: 16 });
      expect(v.isolation.latencyP99Us).toBeGreaterThanOrEqual(v.isolation.latencyP50Us);
    }
    expect(r.faults).toMatchObject({ raised: 32, responded: 32, autoResponded: 0, dropped: 0, lost: 0 });
  });

  test('noisy-neighbour.yaml: the storm overflows the shared PRI queue and the quiet VMs lose requests to it, yet nothing is lost', async () => {
    const r = await runTopology(loadTopology('configs/noisy-neighbour.yaml'));
    const [storm, ...quiet] = r.vms;
    expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
    expect(r.faults.lost).toBe(0);
    const [smmu0] = r.physicalIommus;
    expect(r.physicalIommus).toHaveLength(1);
    expect(smmu0).toMatchObject({ name: 'smmu0', priqLog2: 4, vms: ['storm', 'quiet0', 'quiet1'] });
    // Overflowed, every overflow acknowledged once drained, every discarded Last answered Success.
    expect(smmu0.overflows).toBeGreaterThan(0);
    expect(smmu0.acknowledged).toBe(smmu0.overflows);
    expect(smmu0.highWater).toBe(16);
    expect(smmu0.autoResponded).toBe(smmu0.discarded);
    expect(smmu0.consumed).toBe(smmu0.written);
    // Every discard is someone's: the storm's own, or lost to the storm by a quiet VM.
    expect(storm.isolation.lostOwn).toBeGreaterThan(0);
    expect(storm.isolation.lostToOthers).toBe(0);
    for (const v of quiet) {
      expect(v.isolation.iommus).toEqual(['smmu0']);
      expect(v.isolation.lostToOthers).toBeGreaterThan(0);
      expect(v.isolation.lostOwn).toBe(0);
    }
    expect(r.vms.reduce((n, v) => n + v.isolation.lostOwn + v.isolation.lostToOthers, 0)).toBe(
      smmu0.discarded,
    );
    // The discarded groups count as raised and answered by the host; every page still arrived.
    expect(r.faults.responded + r.faults.autoResponded).toBe(r.faults.raised);
    expect(r.faults.dropped).toBeGreaterThanOrEqual(smmu0.discarded);
    for (const v of r.vms) {
      expect(v.workloadDone).toBe(true);
      expect(v.dmaFailed).toBe(0);
      expect(v.isolation.faultsTimed).toBe(v.faultsByKind.pageRequest);
      expect(v.isolation.latencyP99Us).toBeGreaterThan(0);
      expect(v.isolation.latencyMaxUs).toBeGreaterThanOrEqual(v.isolation.latencyP99Us);
    }
    expect(storm.bytesVerified).toBe(2 * 2048 * PAGE);
    expect(quiet.map((v) => v.bytesVerified)).toEqual([256 * PAGE, 256 * PAGE]);
  });

  test('noisy-neighbour-per-vm-iommu.yaml: behind IOMMUs of their own the storm loses only its own requests', async () => {
    const r = await runTopology(loadTopology('configs/noisy-neighbour-per-vm-iommu.yaml'));
    const [storm, ...quiet] = r.vms;
    expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
    expect(r.faults.lost).toBe(0);
    expect(r.physicalIommus.map((i) => [i.name, i.vms])).toEqual([
      ['smmu0', ['storm']],
      ['smmu1', ['quiet0']],
      ['smmu2', ['quiet1']],
    ]);
    expect(r.vms.map((v) => v.isolation.lostToOthers)).toEqual([0, 0, 0]);
    expect(storm.isolation.lostOwn).toBe(r.physicalIommus[0].discarded);
    expect(storm.isolation.lostOwn).toBeGreaterThan(0);
    // Four requests in flight cannot fill a 16-entry queue.
    for (const [i, v] of quiet.entries()) {
      expect(v.isolation.lostOwn).toBe(0);
      expect(r.physicalIommus[i + 1]).toMatchObject({ overflows: 0, discarded: 0 });
    }
    expect(r.faults.responded + r.faults.autoResponded).toBe(r.faults.raised);
    for (const v of r.vms) {
      expect(v.workloadDone).toBe(true);
      expect(v.dmaFailed).toBe(0);
    }
    expect(r.dma.bytesVerified).toBe((2 * 2048 + 2 * 256) * PAGE);
  });
});
