// The sandbox's DMA oracle: per-device slots, per-VM counts, exact pattern checks.
import { describe, expect, test } from 'vitest';
import type { PciFunction } from '../../../host/devices/pci-function.ts';
import { DmaOracle } from '../../../host/vmm/dma-oracle.ts';
import { InvariantChecker } from '../../../host/vmm/invariants.ts';
import { LatencyHistogram } from '../../../host/vmm/latency.ts';
import { fillPage } from '../../../shared/pattern.ts';

const VA = 0x7e00_0000_0000;
const device = (name: string) => ({ name, observerSlot: -1 }) as unknown as PciFunction;

describe('DmaOracle', () => {
  test('counts verified bytes and stale reads per VM, as the Maps the report reads', () => {
    const invariants = new InvariantChecker();
    const oracle = new DmaOracle(invariants, new LatencyHistogram());
    const [a, b, c] = [device('a'), device('b'), device('c')];
    oracle.watch(a, { vm: 'vm0', seed: 1 });
    oracle.watch(b, { vm: 'vm1', seed: 0xffff_fff0 });
    oracle.watch(c, { vm: 'vm0', seed: 1 });
    expect([a, b, c].map((d) => d.observerSlot)).toEqual([0, 1, 2]);
    const page0 = new Int32Array(1024);
    const page1 = new Int32Array(1024);
    fillPage(page0, 0, 1, VA);
    fillPage(page1, 0, 0xffff_fff0, VA + 4096);
    oracle.dmaRead(a, 1, VA + 64, page0, 16, 16);
    oracle.dmaRead(c, 1, VA, page0, 0, 1024);
    oracle.dmaRead(b, 1, VA + 4096 + 4092, page1, 1023, 1);
    expect(oracle.bytesVerified).toBe(64 + 4096 + 4);
    expect(oracle.verifiedByVm).toEqual(
      new Map([
        ['vm0', 4096 + 64],
        ['vm1', 4],
      ]),
    );
    expect(oracle.staleByVm).toEqual(new Map());
    // vm1's device reads vm0's page at its own VA: the bytes of another translation.
    oracle.dmaRead(b, 1, VA + 4096, page0, 0, 1024);
    expect(oracle.staleByVm).toEqual(new Map([['vm1', 1]]));
    expect(oracle.bytesVerified).toBe(64 + 4096 + 4);
    expect(invariants.violations).toMatchObject([{ rule: 'dma-data-mismatch', vm: 'vm1', device: 'b' }]);
    // An unwatched device is not judged.
    oracle.dmaRead(device('x'), 1, VA + 4096, page0, 0, 1024);
    expect(invariants.violations).toHaveLength(1);
  });

  test('a RAZ/WI read is counted per VM and never judged a data mismatch', () => {
    const invariants = new InvariantChecker();
    const oracle = new DmaOracle(invariants, new LatencyHistogram());
    const [a, b] = [device('a'), device('b')];
    oracle.watch(a, { vm: 'vm0', seed: 1 });
    oracle.watch(b, { vm: 'vm1', seed: 1 });
    oracle.razRead(a, 1, VA, 4096);
    oracle.razRead(a, 1, VA + 4096, 4096);
    oracle.razRead(b, 1, VA, 64);
    expect(oracle.razReads).toBe(3);
    expect(oracle.razReadsByVm).toEqual(
      new Map([
        ['vm0', 2],
        ['vm1', 1],
      ]),
    );
    expect(oracle.bytesVerified).toBe(0);
    expect(invariants.violations).toEqual([]);
  });

  test('a device watched by two oracles is checked by both', () => {
    const d = device('d');
    const first = new DmaOracle(new InvariantChecker(), new LatencyHistogram());
    const second = new DmaOracle(new InvariantChecker(), new LatencyHistogram());
    second.watch(device('other'), { vm: 'vm9', seed: 3 });
    first.watch(d, { vm: 'vm0', seed: 7 });
    second.watch(d, { vm: 'vm1', seed: 7 });
    const page = new Int32Array(1024);
    fillPage(page, 0, 7, VA);
    first.dmaRead(d, 1, VA, page, 0, 1024);
    second.dmaRead(d, 1, VA, page, 0, 1024);
    expect(first.verifiedByVm).toEqual(new Map([['vm0', 4096]]));
    expect(second.verifiedByVm).toEqual(new Map([['vm1', 4096]]));
  });
});
