// What every DMA workload shares (guest/workloads/descriptor-workload.ts), on real rings with the
// test as the device: the queue-depth bound, the reaping of completions, quiesce and done.
import { describe, expect, test, vi } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { Misbehaviour } from '../../../guest/misbehave.ts';
import { DEVICE_STRIDE, DescriptorWorkload } from '../../../guest/workloads/descriptor-workload.ts';
import type { DeviceQueues } from '../../../guest/workloads/workload.ts';
import type { GuestStats, WorkloadConfig } from '../../../shared/control.ts';
import { GuestMemory, PAGE_SIZE } from '../../../shared/guest-memory.ts';
import { DMA_OP_READ, DMA_STATUS_FAULT, type DmaDescriptor } from '../../../shared/records/dma-descriptor.ts';
import { dmaDevice } from '../../support/dma-device.ts';

const BASE = 0x4000_0000_0000;

/** The smallest workload: one page per descriptor over a buffer at BASE. */
class OnePagePerDescriptor extends DescriptorWorkload {
  constructor(config: WorkloadConfig, device: DeviceQueues, stats: GuestStats) {
    super(config, device, stats, BASE);
  }
  start(): void {}
  protected fill(d: DmaDescriptor): number {
    d.length = PAGE_SIZE;
    d.flags = 0;
    return 1;
  }
}

function setup(pages: number, queueDepth: number, log2Size = 4) {
  const device = dmaDevice({ log2Size });
  const stats = emptyStats();
  const config: WorkloadConfig = { kind: 'sva-stream', pages, seed: 1, queueDepth };
  const workload = new OnePagePerDescriptor(config, device.queues, stats);
  workload.start();
  return { device, stats, workload };
}

describe('DescriptorWorkload', () => {
  test('never more than queueDepth descriptors in flight, however the device completes them', () => {
    const { device, workload } = setup(40, 3);
    let most = 0;
    for (let turn = 0; !workload.done; turn++) {
      workload.poll();
      device.take();
      most = Math.max(most, device.held.length);
      expect(workload.inFlight).toBe(device.held.length);
      expect(workload.inFlight).toBeLessThanOrEqual(3);
      device.complete(1 + (turn % 2)); // one or two at a time
      expect(turn).toBeLessThan(100);
    }
    expect(most).toBe(3);
    // Every page read once, in order: the tag is the page number.
    expect(device.seen.map((d) => d.tag)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(device.seen.every((d, i) => d.va === BASE + i * PAGE_SIZE && d.opcode === DMA_OP_READ)).toBe(true);
  });

  test('a full submission ring ends the submit loop; the next poll goes on where it stopped', () => {
    const { device, workload } = setup(40, 64, 2);
    expect(workload.poll()).toBe(4);
    expect(workload.poll()).toBe(0); // the device took none: no room
    device.take();
    expect(workload.poll()).toBe(4);
    expect(workload.inFlight).toBe(8);
    expect(device.take().map((d) => d.tag)).toEqual([4, 5, 6, 7]);
  });

  test('completions are reaped and counted by status; each records its cycle', () => {
    const { device, stats, workload } = setup(8, 8);
    workload.poll();
    device.take();
    device.complete(5);
    device.complete(3, DMA_STATUS_FAULT);
    expect(workload.poll()).toBe(8);
    expect(stats).toMatchObject({ dmaSubmitted: 8, dmaCompleted: 5, dmaFailed: 3 });
    expect(device.queues.cycles.count).toBe(8);
    expect(workload.inFlight).toBe(0);
  });

  test('quiesce stops submitting; the work in flight still completes, and then it is done', () => {
    const { device, stats, workload } = setup(40, 4);
    workload.poll();
    device.take();
    workload.quiesce();
    device.complete(1);
    expect(workload.poll()).toBe(1); // one reaped, none submitted
    expect(device.take()).toEqual([]);
    expect(workload.done).toBe(false);
    device.complete();
    workload.poll();
    expect(workload.done).toBe(true);
    expect(stats.dmaSubmitted).toBe(4);
  });

  test('done once every page is read and completed, not before', () => {
    const { device, workload } = setup(3, 8);
    workload.poll();
    device.take();
    expect(workload.done).toBe(false);
    device.complete(2);
    workload.poll();
    expect(workload.done).toBe(false);
    device.complete();
    workload.poll();
    expect(workload.done).toBe(true);
    expect(workload.poll()).toBe(0);
  });

  test('each device of a VM reads its own buffer, DEVICE_STRIDE apart', () => {
    const device = dmaDevice({ index: 2 });
    const config: WorkloadConfig = { kind: 'sva-stream', pages: 1, seed: 1, queueDepth: 1 };
    new OnePagePerDescriptor(config, device.queues, emptyStats()).poll();
    expect(device.take()[0].va).toBe(BASE + 2 * DEVICE_STRIDE);
  });

  test("a hostile guest's hook names the PASID of every descriptor", () => {
    const misbehave = new Misbehaviour(['foreign-pasid-dma'], 1, 9, GuestMemory.allocate(1));
    const asked = vi.spyOn(misbehave, 'dmaPasid');
    const device = dmaDevice({ pasid: 7, misbehave });
    const config: WorkloadConfig = { kind: 'sva-stream', pages: 8, seed: 1, queueDepth: 8 };
    new OnePagePerDescriptor(config, device.queues, emptyStats()).poll();
    const pasids = device.take().map((d) => d.pasid);
    expect(asked).toHaveBeenCalledTimes(8);
    expect(asked.mock.calls.every(([own]) => own === 7)).toBe(true);
    expect(pasids).toEqual(asked.mock.results.map((r) => r.value));
    expect(pasids.filter((_, i) => (i + 1) % 4 !== 0)).toEqual([7, 7, 7, 7, 7, 7]);
  });
});
