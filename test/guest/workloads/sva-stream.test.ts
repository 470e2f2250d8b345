// sva-stream and fault-storm (guest/workloads/sva-stream.ts): a demand-paged buffer read from start
// to end, on real rings with the test as the device and a real demand pager behind it.
import { describe, expect, test } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { PAGE_IN_INVALID, PAGE_IN_OK } from '../../../guest/mm/demand-pager.ts';
import { FaultStorm, SVA_STREAM_BASE, SvaStream } from '../../../guest/workloads/sva-stream.ts';
import type { WorkloadConfig } from '../../../shared/control.ts';
import { PAGE_SIZE, PAGE_WORDS } from '../../../shared/guest-memory.ts';
import { verifyWords } from '../../../shared/pattern.ts';
import { DMA_FLAG_VERIFY, type DmaDescriptor } from '../../../shared/records/dma-descriptor.ts';
import { dmaDevice, guestMm } from '../../support/dma-device.ts';

const PASID = 1;

function config(fields: Partial<WorkloadConfig> = {}): WorkloadConfig {
  return { kind: 'sva-stream', pages: 60, seed: 11, queueDepth: 512, ...fields };
}

/** Every descriptor the workload submits in one poll (the ring holds them all). */
function descriptors(make: typeof SvaStream, cfg: WorkloadConfig, index = 0): DmaDescriptor[] {
  const { mm } = guestMm();
  const device = dmaDevice({ log2Size: 8, index, pasid: PASID });
  const workload = new make(cfg, device.queues, mm.pager, emptyStats());
  workload.start();
  workload.poll();
  return device.take();
}

describe('sva-stream', () => {
  test("start backs the buffer in the pager: a page of it is paged in with the seed's pattern, one past it is not", () => {
    const { mm, spaces, memory } = guestMm();
    spaces.installDevice(0, [PASID]);
    const workload = new SvaStream(
      config({ pages: 4 }),
      dmaDevice({ pasid: PASID }).queues,
      mm.pager,
      emptyStats(),
    );
    workload.start();
    const last = SVA_STREAM_BASE + 3 * PAGE_SIZE;
    expect(mm.pager.pageIn(PASID, last)).toBe(PAGE_IN_OK);
    expect(mm.pager.pageIn(PASID, last + PAGE_SIZE)).toBe(PAGE_IN_INVALID);
    expect(mm.pager.pageIn(PASID + 1, last)).toBe(PAGE_IN_INVALID);
    const gpa = spaces.table(PASID).lookup(last);
    expect(verifyWords(memory.words, gpa >>> 2, PAGE_WORDS, 11, last, 0)).toBe(-1);
  });

  test('descriptors of 1 to 4 pages cover the buffer once, in order, each verified by the oracle', () => {
    const all = descriptors(SvaStream, config());
    let page = 0;
    for (const d of all) {
      expect(d.tag).toBe(page);
      expect(d.va).toBe(SVA_STREAM_BASE + page * PAGE_SIZE);
      expect(d.flags).toBe(DMA_FLAG_VERIFY);
      page += d.length / PAGE_SIZE;
    }
    expect(page).toBe(60);
    expect(new Set(all.map((d) => d.length / PAGE_SIZE))).toEqual(new Set([1, 2, 3, 4]));
  });

  test('the seed draws the descriptors: the same seed the same ones, another device its own', () => {
    const lengths = (cfg: WorkloadConfig, index = 0) =>
      descriptors(SvaStream, cfg, index).map((d) => d.length);
    expect(lengths(config())).toEqual(lengths(config()));
    expect(lengths(config())).not.toEqual(lengths(config({ seed: 12 })));
    expect(lengths(config())).not.toEqual(lengths(config(), 1));
  });

  test('dmaBytes: one page per descriptor, its first dmaBytes bytes', () => {
    const all = descriptors(SvaStream, config({ pages: 10, dmaBytes: 64 }));
    expect(all.map((d) => [d.tag, d.length, d.flags])).toEqual(
      Array.from({ length: 10 }, (_, i) => [i, 64, DMA_FLAG_VERIFY]),
    );
  });
});

describe('fault-storm', () => {
  test('one whole page per descriptor: every descriptor in flight is a page request in flight', () => {
    const all = descriptors(FaultStorm, config({ kind: 'fault-storm', pages: 30 }));
    expect(all.map((d) => d.length)).toEqual(new Array(30).fill(PAGE_SIZE));
    expect(all.map((d) => d.tag)).toEqual(Array.from({ length: 30 }, (_, i) => i));
  });
});
