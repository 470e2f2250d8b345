// The workload table (guest/workloads/workload.ts) and the idle workload.
import { describe, expect, test } from 'vitest';
import { emptyStats } from '../../../guest/guest-vm.ts';
import { Idle } from '../../../guest/workloads/idle.ts';
import { MapChurn } from '../../../guest/workloads/map-churn.ts';
import { StrayDma } from '../../../guest/workloads/stray-dma.ts';
import { FaultStorm, SvaStream } from '../../../guest/workloads/sva-stream.ts';
import { createWorkload } from '../../../guest/workloads/workload.ts';
import type { WorkloadKind } from '../../../shared/control.ts';
import { dmaDevice, guestMm } from '../../support/dma-device.ts';

describe('createWorkload', () => {
  test('builds the workload its kind names', () => {
    const kinds: [WorkloadKind, unknown][] = [
      ['sva-stream', SvaStream],
      ['fault-storm', FaultStorm],
      ['map-churn', MapChurn],
      ['stray-dma', StrayDma],
      ['idle', Idle],
    ];
    for (const [kind, type] of kinds) {
      const w = createWorkload(
        { kind, pages: 4, seed: 1, queueDepth: 4 },
        dmaDevice().queues,
        guestMm().mm,
        emptyStats(),
      );
      expect(w.constructor, kind).toBe(type);
    }
  });

  test('idle is done from the start and never submits', () => {
    const device = dmaDevice();
    const w = createWorkload(
      { kind: 'idle', pages: 4, seed: 1, queueDepth: 4 },
      device.queues,
      guestMm().mm,
      emptyStats(),
    );
    w.start();
    expect(w.done).toBe(true);
    expect(w.poll()).toBe(0);
    expect(w.inFlight).toBe(0);
    expect(device.take()).toEqual([]);
  });
});
