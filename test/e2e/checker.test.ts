// The checker catches what it claims: bugs planted in the host through the test-only hook
// (host/vmm/plant.ts) each end in their named violation, and the CLI exits 3.
import { spawnSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { parsePlantedBugs } from '../../host/vmm/plant.ts';
import { runTopology } from '../../host/vmm/sandbox.ts';
import { loadTopology, parseTopology } from '../../host/vmm/topology.ts';

const churn = (viommu: string) =>
  parseTopology(`name: churn
vms:
  - name: vm0
    memoryMiB: 16
    viommu: ${viommu}
    devices: [{ name: d, pri: true, pasids: [1] }]
    workload: { kind: map-churn, pages: 64, seed: 3, queueDepth: 8 }
`);

describe('planted host bugs are caught by name', () => {
  test('a healthy run trips none of the rules', async () => {
    const r = await runTopology(loadTopology('configs/default.yaml'), { plant: {} });
    expect(r.invariants.counts).toEqual({});
  });

  test('a page response lost on its way to the device: group-unanswered, naming the VM and device', async () => {
    const r = await runTopology(loadTopology('configs/default.yaml'), {
      plant: { dropResponse: 5 },
      durationMs: 1500,
      graceMs: 200,
    });
    expect(r.invariants.counts['group-unanswered']).toBe(1);
    const v = r.invariants.violations.find((x) => x.rule === 'group-unanswered');
    expect(v?.vm).toMatch(/^vm[01]$/);
    expect(v?.device).toBe(`${v?.vm}/dev0`);
    expect(v?.detail).toMatch(/1 page-request group\(s\) \(1 requests\) never got a response/);
  });

  test('a group routed to another stream: fault-delivered-to-non-owner in the VM that got it', async () => {
    // The misrouted group can take the PRG index of one of the receiving VM's own groups there, so
    // that VM may wait on a group until the run's end: keep the run short.
    const r = await runTopology(loadTopology('configs/default.yaml'), {
      plant: { misrouteFault: 3 },
      durationMs: 2000,
      graceMs: 200,
    });
    expect(r.invariants.counts['fault-delivered-to-non-owner']).toBe(1);
    const [v] = r.invariants.violations;
    expect(v.rule).toBe('fault-delivered-to-non-owner');
    expect(v.detail).toMatch(/is owned by vm[01]/);
    expect(v.detail).not.toContain(`owned by ${v.vm}`);
    // It is an isolation failure, not a lost group: the wrong VM's answer still reached the device.
    expect(r.faults.lost).toBe(0);
  });

  test.each(['smmuv3', 'vtd'])(
    'invalidations that do not take effect (%s): DMA reads stale pages, dma-data-mismatch',
    async (viommu) => {
      const r = await runTopology(churn(viommu), { plant: { staleTranslation: 1 } });
      expect(r.invariants.counts['dma-data-mismatch']).toBeGreaterThan(0);
      expect(r.vms[0].staleTranslationUses).toBe(r.invariants.counts['dma-data-mismatch']);
      expect(r.invariants.violations[0]).toMatchObject({
        rule: 'dma-data-mismatch',
        vm: 'vm0',
        device: 'vm0/d',
      });
    },
  );

  test('the CLI takes the plant from IOASID_SANDBOX_PLANT and exits 3', () => {
    const p = spawnSync(
      process.execPath,
      ['bin/ioasid-sandbox.mjs', 'run', 'configs/default.yaml', '--json', '--duration', '2000'],
      {
        encoding: 'utf8',
        env: { ...process.env, LOG_LEVEL: 'silent', IOASID_SANDBOX_PLANT: 'misroute-fault=2' },
        timeout: 60_000,
      },
    );
    expect(p.status).toBe(3);
    const counts = JSON.parse(p.stdout).invariants.counts;
    expect(counts['fault-delivered-to-non-owner']).toBe(1);
    // If the misrouted group still waits in the other VM's fault queue when its own device is
    // unbound, its answer arrives after PRI was disabled and the device never gets one (whether it
    // does depends on timing). Nothing else may break.
    const consequences = ['group-unanswered', 'response-after-pri-disabled'];
    for (const rule of Object.keys(counts))
      expect(['fault-delivered-to-non-owner', ...consequences]).toContain(rule);
  });

  test('a bad plant is refused with the names it knows', () => {
    expect(parsePlantedBugs('drop-response=2,stale-translation=1')).toEqual({
      dropResponse: 2,
      staleTranslation: 1,
    });
    expect(() => parsePlantedBugs('drop-everything=1')).toThrow(
      /one of drop-response, misroute-fault, stale-translation/,
    );
    expect(() => parsePlantedBugs('drop-response=0')).toThrow(/IOASID_SANDBOX_PLANT/);
  });
});
