import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { loadTopology, topologyJsonSchema } from '../../../host/vmm/topology.ts';
import { topologyErrorOf } from '../../support/topology-errors.ts';

const vm = (extra = '') => `
  - name: vm0
    memoryMiB: 64
    viommu: smmuv3
    devices:
      - name: dev0
        pri: true
        pasids: [1]
    workload: { kind: sva-stream, pages: 16, seed: 1 }${extra}`;

describe('topology files', () => {
  test('configs/default.yaml loads with two PRI-capable VMs and defaults filled in', () => {
    const t = loadTopology('configs/default.yaml');
    expect(t.routing).toBe('ioasid-owner');
    expect(t.vms.map((v) => v.name)).toEqual(['vm0', 'vm1']);
    expect(t.vms.every((v) => v.devices[0].pri && v.workload.kind === 'sva-stream')).toBe(true);
    expect(t.vms[0].queues.priqLog2).toBe(8);
  });

  test('a field of the wrong type names its YAML path, its line, and what was expected', () => {
    const e = topologyErrorOf(`name: t\nvms:${vm().replace('memoryMiB: 64', 'memoryMiB: lots')}`);
    expect(e.yamlPath).toBe('vms[0].memoryMiB');
    expect(e.line).toBe(4);
    expect(e.message).toMatch(/^bad\.yaml:4: vms\[0\]\.memoryMiB: .*expected number, received string/);
  });

  test('a nested bad field names the whole path', () => {
    const e = topologyErrorOf(`name: t\nvms:${vm().replace('pasids: [1]', 'pasids: [1, x]')}`);
    expect(e.yamlPath).toBe('vms[0].devices[0].pasids[1]');
  });

  test('an unknown key is named', () => {
    const e = topologyErrorOf(`name: t\nvms:${vm('\n    colour: blue')}`);
    expect(e.yamlPath).toBe('vms[0]');
    expect(e.reason).toMatch(/unknown key.*"colour"/);
  });

  test('an unknown routing policy lists the accepted ones', () => {
    const e = topologyErrorOf(`name: t\nrouting: nearest\nvms:${vm()}`);
    expect(e.yamlPath).toBe('routing');
    expect(e.reason).toMatch(/ioasid-owner.*device-owner/);
  });

  test('duplicate VM names are refused at the second one', () => {
    const e = topologyErrorOf(`name: t\nvms:${vm()}${vm()}`);
    expect(e.yamlPath).toBe('vms[1].name');
  });

  test('a workload larger than guest RAM is refused', () => {
    const e = topologyErrorOf(`name: t\nvms:${vm().replace('pages: 16', 'pages: 100000')}`);
    expect(e.yamlPath).toBe('vms[0].workload.pages');
  });

  test('an IOTLB size that is not a power of two is refused', () => {
    const e = topologyErrorOf(`name: t\niommu: { iotlbEntries: 1000 }\nvms:${vm()}`);
    expect(e.yamlPath).toBe('iommu.iotlbEntries');
    expect(e.reason).toMatch(/power of two/);
  });

  test('broken YAML is reported with its line', () => {
    const e = topologyErrorOf('name: t\nvms: [\n');
    expect(e.reason).toMatch(/not valid YAML/);
    expect(e.line).toBeGreaterThan(0);
  });

  test('a missing file is a TopologyError, not a crash', () => {
    expect(() => loadTopology('configs/no-such-file.yaml')).toThrow(/cannot read the file \(ENOENT\)/);
  });

  test('configs/topology.schema.json is the schema the code validates with', () => {
    const committed = JSON.parse(readFileSync('configs/topology.schema.json', 'utf8'));
    expect(committed).toEqual(topologyJsonSchema());
  });
});
