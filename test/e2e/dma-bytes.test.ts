// The workload key `dmaBytes`: descriptors that read the first bytes of one page each.
import { describe, expect, test } from 'vitest';
import { runTopology } from '../../host/vmm/sandbox.ts';
import { parseTopology } from '../../host/vmm/topology.ts';
import { topologyErrorOf } from '../support/topology-errors.ts';

const vm = (name: string, viommu: string, workload: string) => `
  - name: ${name}
    memoryMiB: 16
    viommu: ${viommu}
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: ${workload}`;

describe('workload dmaBytes', () => {
  test('a size that is not a multiple of 4, or past a page, is refused with its YAML path', () => {
    for (const bytes of [6, 8192, 0]) {
      const e = topologyErrorOf(
        `name: t\nvms:${vm('vm0', 'smmuv3', `{ kind: fault-storm, pages: 8, dmaBytes: ${bytes} }`)}`,
      );
      expect(e.yamlPath).toBe('vms[0].workload.dmaBytes');
    }
    expect(
      topologyErrorOf(`name: t\nvms:${vm('vm0', 'smmuv3', '{ kind: fault-storm, dmaBytes: 6 }')}`).reason,
    ).toMatch(/multiple of 4/);
  });

  test('only sva-stream and fault-storm take it', () => {
    const e = topologyErrorOf(
      `name: t\nvms:${vm('vm0', 'smmuv3', '{ kind: map-churn, pages: 8, dmaBytes: 64 }')}`,
    );
    expect(e.yamlPath).toBe('vms[0].workload.dmaBytes');
    const t = parseTopology(`name: t\nvms:${vm('vm0', 'smmuv3', '{ kind: sva-stream, pages: 8 }')}`);
    expect(t.vms[0].workload.dmaBytes).toBeUndefined();
  });

  test('fault-storm with dmaBytes 64: a fault and a page-in per page, 64 bytes of it read and verified', async () => {
    const pages = 96;
    const topology = parseTopology(
      `name: t\nvms:${vm('vm0', 'smmuv3', `{ kind: fault-storm, pages: ${pages}, seed: 9, queueDepth: 16, dmaBytes: 64 }`)}${vm(
        'vm1',
        'vtd',
        `{ kind: sva-stream, pages: ${pages}, seed: 10, queueDepth: 16, dmaBytes: 4 }`,
      )}\n`,
    );
    const r = await runTopology(topology);
    expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
    expect(r.faults).toMatchObject({ raised: 2 * pages, lost: 0 });
    for (const [i, bytes] of [64, 4].entries()) {
      const v = r.vms[i];
      expect(v.crashed).toBe(false);
      expect(v.workloadDone).toBe(true);
      expect(v.dmaOps).toBe(pages);
      expect(v.dmaCompleted).toBe(pages);
      expect(v.dmaFailed).toBe(0);
      expect(v.pagesMapped).toBe(pages);
      expect(v.faultsDelivered).toBe(pages);
      expect(v.staleTranslationUses).toBe(0);
      expect(v.bytesMoved).toBe(bytes * pages);
      expect(v.bytesVerified).toBe(bytes * pages);
    }
    expect(r.dma.bytesVerified).toBe((64 + 4) * pages);
  });
});
