/**
 * The translation benchmark: IOTLB hits, misses that walk, full nested walks and stage-1-only walks,
 * each in operations per second, on a VM built as the sandbox builds one (guest tables from
 * guest/mm, an IOAS over the guest RAM, a nested HWPT from the guest's vSTE).
 */
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import { Iommu } from '../iommu/iommu.ts';
import { Smmuv3Ops } from '../iommu/smmuv3-ops.ts';
import { ACCESS_READ, newWalkResult, type Stage1Context, walkStage1 } from '../iommu/stage1-walker.ts';
import { VmIommu } from '../vmm/vm-iommu.ts';

export interface BenchFigure {
  name: string;
  unit: string;
  value: number;
}

const SID = 1;
const BASE_VA = 0x7e00_0000_0000;

/** Run `step` in batches until `ms` have passed; returns operations per second. */
function rate(ms: number, batch: number, step: (i: number) => void): number {
  let ops = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < batch; i++) step(ops + i);
    ops += batch;
    now = performance.now();
  }
  return (ops * 1000) / (now - start);
}

/**
 * A VM as the sandbox builds it: guest RAM registered as host memory, an IOAS mapping it at GPA 0,
 * a nested HWPT from the guest's vSTE, so every translation walks stage 1 through real stage-2
 * tables. The guest maps `pages` pages of a buffer.
 */
function nestedVm(iotlbEntries: number, pages: number) {
  const iommu = new Iommu({ iotlbEntries });
  const memory = GuestMemory.allocate(256);
  memory.touch();
  const spaces = new AddressSpaces(memory, new PageAllocator(memory));
  const ctx = spaces.installDevice(0, [1]);
  const table = spaces.table(1);
  for (let p = 0; p < pages; p++)
    table.map(BASE_VA + p * PAGE_SIZE, (p % (memory.pages - 4096)) * PAGE_SIZE + 0x100_0000);
  const vm = new VmIommu(new Smmuv3Ops(iommu), memory, [{ streamId: SID, hasPasids: true, stall: false }]);
  vm.installContexts([ctx]);
  return { iommu, memory, ctx, stage1: iommu.contextOf(SID) as Stage1Context };
}

/** Translation: IOTLB hits, misses that walk, full nested walks, and stage-1-only walks. */
export function translationFigures(ms: number): BenchFigure[] {
  const pages = 32768;
  const out = newWalkResult();
  let sink = 0;

  const hot = nestedVm(4096, pages);
  const hotPages = 1024;
  const hits = rate(ms, 4096, (i) => {
    hot.iommu.translate(SID, 1, BASE_VA + (i % hotPages) * PAGE_SIZE + 64, ACCESS_READ, out);
    sink += out.offset;
  });

  // A stride through 32768 pages with a 64-entry IOTLB: (nearly) every translation walks.
  const cold = nestedVm(64, pages);
  const misses = rate(ms, 4096, (i) => {
    cold.iommu.translate(SID, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });

  const nested = rate(ms, 4096, (i) => {
    walkStage1(cold.stage1, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });

  // The same guest tables reached by identity: what stage 2 costs on top.
  const identity = { memory: cold.memory, cdTableGpa: cold.ctx.cdTableGpa, cdLog2: cold.ctx.cdLog2 };
  const stage1Only = rate(ms, 4096, (i) => {
    walkStage1(identity, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.offset;
  });
  if (sink === -1) process.stdout.write('');
  return [
    { name: 'translate, IOTLB hit', unit: 'translations/s', value: Math.round(hits) },
    { name: 'translate, IOTLB miss (nested walk + fill)', unit: 'translations/s', value: Math.round(misses) },
    {
      name: 'full nested walk (CD + 4 levels, each through 4 S2 levels)',
      unit: 'walks/s',
      value: Math.round(nested),
    },
    { name: 'stage-1 walk, stage 2 by identity', unit: 'walks/s', value: Math.round(stage1Only) },
  ];
}
