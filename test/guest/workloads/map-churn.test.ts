// map-churn (guest/workloads/map-churn.ts): a buffer read round and round while the guest unmaps
// pages under it; an unmapped page goes back to the allocator, scrubbed, only once the SMMU has
// completed the sync that covers its invalidation. The test plays the device and the SMMU's sync.
import { describe, expect, test, vi } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { MAP_CHURN_BASE, MapChurn } from '../../../guest/workloads/map-churn.ts';
import type { WorkloadConfig } from '../../../shared/control.ts';
import { PAGE_SIZE, PAGE_WORDS } from '../../../shared/guest-memory.ts';
import { dmaDevice, guestMm } from '../../support/dma-device.ts';

const PASID = 1;

function setup(pages: number, queueDepth: number) {
  const g = guestMm();
  g.spaces.installDevice(0, [PASID]);
  const device = dmaDevice({ log2Size: 6, pasid: PASID });
  const stats = emptyStats();
  const cfg: WorkloadConfig = { kind: 'map-churn', pages, seed: 5, queueDepth };
  const workload = new MapChurn(cfg, device.queues, g.mm, stats);
  workload.start();
  /** GPA of each buffer page, paged in as a page request would. */
  const gpas = Array.from({ length: pages }, (_, p) => {
    g.pager.pageIn(PASID, MAP_CHURN_BASE + p * PAGE_SIZE);
    return g.spaces.table(PASID).lookup(MAP_CHURN_BASE + p * PAGE_SIZE);
  });
  const release = vi.spyOn(g.pages, 'release');
  return { ...g, device, stats, workload, gpas, release };
}

describe('map-churn', () => {
  test('reads its buffer round four times, one page per descriptor', () => {
    const { device, workload } = setup(4, 64);
    workload.poll();
    const all = device.take();
    expect(all.map((d) => d.tag)).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(all.map((d) => (d.va - MAP_CHURN_BASE) / PAGE_SIZE)).toEqual([
      0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
    ]);
    expect(all.every((d) => d.length === PAGE_SIZE)).toBe(true);
  });

  test('every 4 reads it unmaps a page and invalidates it; the page is freed, scrubbed, only after its sync', () => {
    const { device, workload, tlb, spaces, memory, gpas, release, stats } = setup(8, 4);
    workload.poll(); // 4 reads, then an unmap
    expect(device.take()).toHaveLength(4);
    expect(tlb.invalidations).toHaveLength(1);
    const [pasid, va] = tlb.invalidations[0];
    expect(pasid).toBe(PASID);
    const gpa = gpas[(va - MAP_CHURN_BASE) / PAGE_SIZE];
    expect(spaces.table(PASID).lookup(va)).toBe(-1);
    expect(stats.unmaps).toBe(1);

    const scrubbed = () => memory.words.subarray(gpa >>> 2, (gpa >>> 2) + PAGE_WORDS).every((w) => w === 0);
    workload.poll();
    expect(release).not.toHaveBeenCalled(); // sync 1 not completed: the device may still use it
    expect(scrubbed()).toBe(false);

    tlb.completed = 1;
    workload.poll();
    expect(release).toHaveBeenCalledExactlyOnceWith(gpa);
    expect(scrubbed()).toBe(true);
  });

  test('an unmap whose invalidation found the command queue full is never freed', () => {
    const { device, workload, tlb, release, stats } = setup(8, 4);
    tlb.refuse = true;
    workload.poll();
    device.take();
    expect(stats.unmaps).toBe(1);
    tlb.refuse = false;
    tlb.completed = 1_000;
    device.complete();
    workload.poll();
    expect(release).not.toHaveBeenCalled();
  });
});
