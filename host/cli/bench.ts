/**
 * `ioasid-sandbox bench`: speed figures measured side by side in one process run. Figures move from
 * run to run on a shared machine; compare the ratios printed beside them, not absolute numbers.
 */
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import { Iommu } from '../iommu/iommu.ts';
import { ACCESS_READ, newWalkResult, walkStage1 } from '../iommu/stage1-walker.ts';

export interface BenchFigure {
  name: string;
  unit: string;
  value: number;
}

export interface BenchReport {
  quick: boolean;
  figures: BenchFigure[];
  ratios: Record<string, number>;
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

/** Translation: IOTLB hits, translations that miss and walk, and bare four-level walks. */
function translationFigures(ms: number): BenchFigure[] {
  const memory = GuestMemory.allocate(256);
  memory.touch();
  const spaces = new AddressSpaces(memory, new PageAllocator(memory));
  const ctx = spaces.installDevice(0, [1]);
  const pages = 32768;
  const table = spaces.table(1);
  for (let p = 0; p < pages; p++)
    table.map(BASE_VA + p * PAGE_SIZE, (p % (memory.pages - 4096)) * PAGE_SIZE + 0x100_0000);
  const stage1 = { memory, cdTableGpa: ctx.cdTableGpa, cdLog2: ctx.cdLog2 };
  const out = newWalkResult();
  let sink = 0;

  const hot = new Iommu({ iotlbEntries: 4096 });
  hot.installStream(SID, stage1);
  const hotPages = 1024;
  const hits = rate(ms, 4096, (i) => {
    hot.translate(SID, 1, BASE_VA + (i % hotPages) * PAGE_SIZE + 64, ACCESS_READ, out);
    sink += out.gpa;
  });

  const cold = new Iommu({ iotlbEntries: 64 });
  cold.installStream(SID, stage1);
  // A stride through 32768 pages with a 64-entry IOTLB: (nearly) every translation walks.
  const misses = rate(ms, 4096, (i) => {
    cold.translate(SID, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.gpa;
  });

  const walks = rate(ms, 4096, (i) => {
    walkStage1(stage1, 1, BASE_VA + ((i * 7919) % pages) * PAGE_SIZE, ACCESS_READ, out);
    sink += out.gpa;
  });
  if (sink === -1) process.stdout.write('');
  return [
    { name: 'translate, IOTLB hit', unit: 'translations/s', value: Math.round(hits) },
    { name: 'translate, IOTLB miss (walk + fill)', unit: 'translations/s', value: Math.round(misses) },
    { name: 'stage-1 walk, 4 levels (CD + 4 table reads)', unit: 'walks/s', value: Math.round(walks) },
  ];
}

export function runBench(quick: boolean): BenchReport {
  const ms = quick ? 150 : 1000;
  const figures = translationFigures(ms);
  const [hit, miss, walk] = figures.map((f) => f.value);
  return {
    quick,
    figures,
    ratios: {
      'IOTLB hit / miss': Math.round((hit / miss) * 100) / 100,
      'IOTLB miss / bare walk': Math.round((miss / walk) * 100) / 100,
    },
  };
}

export function formatBench(report: BenchReport): string {
  const width = Math.max(...report.figures.map((f) => f.name.length));
  const lines = report.figures.map(
    (f) => `${f.name.padEnd(width)}  ${f.value.toLocaleString('en-US').padStart(14)} ${f.unit}`,
  );
  for (const [name, value] of Object.entries(report.ratios))
    lines.push(`${name.padEnd(width)}  ${String(value).padStart(14)} x`);
  return `${lines.join('\n')}\n`;
}
