// stray-dma (guest/workloads/stray-dma.ts): a buffer mapped in stage 1 onto guest-physical addresses
// past the VM's RAM, read by whole unverified pages.
import { describe, expect, test } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { STRAY_DMA_BASE, StrayDma } from '../../../guest/workloads/stray-dma.ts';
import type { WorkloadConfig } from '../../../shared/control.ts';
import { PAGE_SIZE } from '../../../shared/guest-memory.ts';
import { LEVELS, PTE_ADDR_LOW_MASK, PTE_HIGH_ADDR_MASK, PTE_VALID } from '../../../shared/stage1-format.ts';
import { dmaDevice, guestMm } from '../../support/dma-device.ts';

const PASID = 1;
const cfg: WorkloadConfig = { kind: 'stray-dma', pages: 6, seed: 1, queueDepth: 16 };

describe('stray-dma', () => {
  test('start maps every page of the buffer past the end of guest RAM, where the IOAS maps nothing', () => {
    const { mm, spaces, memory } = guestMm();
    const workload = new StrayDma(cfg, dmaDevice({ pasid: PASID }).queues, spaces, memory.size, emptyStats());
    workload.start();
    // The guest's own lookup refuses such a page; the leaf entry itself names it.
    const table = spaces.table(PASID);
    for (let p = 0; p < cfg.pages; p++) {
      const va = STRAY_DMA_BASE + p * PAGE_SIZE;
      const { slot, level } = table.openSlot(va);
      expect(level).toBe(LEVELS - 1);
      const low = memory.words[slot >>> 2];
      const high = memory.words[(slot >>> 2) + 1];
      expect(low & PTE_VALID).toBe(PTE_VALID);
      expect(((low & PTE_ADDR_LOW_MASK) >>> 0) + (high & PTE_HIGH_ADDR_MASK) * 2 ** 32).toBe(
        memory.size + p * PAGE_SIZE,
      );
      expect(table.lookup(va)).toBe(-1);
    }
    expect(mm.ramSize).toBe(memory.size);
  });

  test('its descriptors read whole pages and ask for no verification: no byte should ever move', () => {
    const { spaces, memory } = guestMm();
    const device = dmaDevice({ pasid: PASID });
    const workload = new StrayDma(cfg, device.queues, spaces, memory.size, emptyStats());
    workload.start();
    workload.poll();
    const all = device.take();
    expect(all.map((d) => [d.va, d.length, d.flags])).toEqual(
      Array.from({ length: cfg.pages }, (_, p) => [STRAY_DMA_BASE + p * PAGE_SIZE, PAGE_SIZE, 0]),
    );
  });
});
