// Multi-VM integration: real worker threads, real SharedArrayBuffers and Atomics, no mocks.
import { describe, expect, test } from 'vitest';
import { runTopology, vmSeed } from '../../host/vmm/sandbox.ts';
import { loadTopology, parseTopology } from '../../host/vmm/topology.ts';

const PAGE = 4096;

function oneVm(vm: string, extra = ''): string {
  return `name: t${extra}\nvms:\n  - name: vm0\n    memoryMiB: 16\n    viommu: smmuv3\n${vm}`;
}

describe('running a topology', () => {
  test('default: both VMs page in every buffer page through the guest, none lost, every byte checked', async () => {
    const topology = loadTopology('configs/default.yaml');
    const r = await runTopology(topology);
    expect(r.invariants).toEqual({ ok: true, violations: [], counts: {} });
    for (const vm of r.vms) {
      expect(vm.crashed).toBe(false);
      expect(vm.workloadDone).toBe(true);
      // Nothing is mapped up front: each of the 256 pages takes exactly one fault, answered Success.
      expect(vm.faultsDelivered).toBe(256);
      expect(vm.responses).toEqual({ success: 256, invalid: 0, failure: 0 });
      expect(vm.pagesMapped).toBe(256);
      expect(vm.dmaFailed).toBe(0);
      expect(vm.overflowsAcknowledged).toBe(0);
      // Every group came out of the VM's iommufd fault queue and went back into it by cookie.
      expect(vm.faultQueue).toMatchObject({ read: 256, responded: 256, autoResponded: 0, staleTouches: 0 });
    }
    expect(r.faults).toEqual({
      raised: 512,
      delivered: 512,
      responded: 512,
      autoResponded: 0,
      dropped: 0,
      lost: 0,
      iopfTimeouts: 0,
      unrouted: 0,
    });
    expect(r.dma.bytesVerified).toBe(2 * 256 * PAGE);
    expect(r.dma.completed).toBe(r.dma.ops);
    expect(r.latencyUs.count).toBe(512);
    expect(r.latencyUs.p50).toBeGreaterThan(0);
    expect(r.latencyUs.p99).toBeGreaterThanOrEqual(r.latencyUs.p50);
  });

  test('a 2-entry PRI queue overflows: entries are dropped and answered Success, devices retry, nothing is lost', async () => {
    const topology = parseTopology(
      oneVm(
        `    queues: { priqLog2: 1, cmdqLog2: 4, dmaQueueLog2: 6 }
    devices: [{ name: d, pri: true, pasids: [1], priCredits: 64 }]
    workload: { kind: sva-stream, pages: 512, seed: 3, queueDepth: 64 }\n`,
      ),
    );
    const r = await runTopology(topology);
    expect(r.invariants.ok).toBe(true);
    expect(r.faults.dropped).toBeGreaterThan(0);
    expect(r.vms[0].overflowsAcknowledged).toBeGreaterThan(0);
    expect(r.faults.autoResponded).toBeGreaterThan(0);
    expect(r.faults.lost).toBe(0);
    // Every group was answered once: by the guest or by the overflow rule, all through the fault queue.
    expect(r.faults.responded + r.faults.autoResponded).toBe(r.faults.raised);
    expect(r.vms[0].faultQueue.read).toBe(r.faults.raised);
    expect(r.vms[0].faultQueue.responded).toBe(r.faults.raised);
    expect(r.vms[0].pagesMapped).toBe(512);
    expect(r.dma.bytesVerified).toBe(512 * PAGE);
    expect(r.dma.failed).toBe(0);
  });

  test('without PRI a stage-1 miss is unrecoverable: DMA fails, no page request is raised', async () => {
    const topology = parseTopology(
      oneVm(
        `    devices: [{ name: d, pri: false, pasids: [1] }]\n    workload: { kind: sva-stream, pages: 8, seed: 1 }\n`,
      ),
    );
    const r = await runTopology(topology);
    expect(r.invariants.ok).toBe(true);
    expect(r.faults.raised).toBe(0);
    expect(r.dma.ops).toBeGreaterThan(0);
    expect(r.dma.failed).toBe(r.dma.ops);
    expect(r.dma.unrecoverableFaults).toBe(r.dma.ops);
    expect(r.vms[0].workloadDone).toBe(true);
    // Terminate model: each faulted transaction is one event record (CD.R is set), reported to the
    // vIOMMU's vEVENTQ, read by the VMM into the guest's event queue, and drained by its driver.
    expect(r.iommu.eventsRecorded).toBe(r.dma.ops);
    expect(r.iommu.eventsForwarded).toBe(r.dma.ops);
    expect(r.vms[0].eventsDelivered).toBe(r.dma.ops);
    expect(r.vms[0].eventsHandled).toBe(r.dma.ops);
  });

  test('a 2-entry event queue overflows: the newest records are discarded, the driver acknowledges', async () => {
    const topology = parseTopology(
      oneVm(
        `    queues: { priqLog2: 4, evtqLog2: 1, cmdqLog2: 4, dmaQueueLog2: 6 }
    devices: [{ name: d, pri: false, pasids: [1] }]
    workload: { kind: sva-stream, pages: 128, seed: 1, queueDepth: 32 }\n`,
      ),
    );
    const r = await runTopology(topology);
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.eventsDropped).toBeGreaterThan(0);
    expect(vm.eventOverflowsAcknowledged).toBeGreaterThan(0);
    // Every forwarded record was either written into the guest's queue or counted as dropped.
    expect(vm.eventsDelivered + vm.eventsDropped).toBe(r.iommu.eventsForwarded);
    expect(vm.eventsHandled).toBe(vm.eventsDelivered);
  });

  test('--seed reseeds every workload, and the guest and the oracle still agree on every byte', async () => {
    const topology = parseTopology(
      oneVm(
        `    devices: [{ name: d, pri: true, pasids: [2] }]\n    workload: { kind: sva-stream, pages: 32, seed: 1 }\n`,
      ),
    );
    const r = await runTopology(topology, { seed: 12345 });
    expect(r.seed).toBe(12345);
    expect(vmSeed(12345, 1, 0)).not.toBe(1);
    expect(vmSeed(12345, 1, 0)).not.toBe(vmSeed(12345, 1, 1));
    expect(r.invariants.ok).toBe(true);
    expect(r.dma.bytesVerified).toBe(32 * PAGE);
  });

  test('an idle VM beside a busy one handles no faults and does not hold the run up', async () => {
    const topology = parseTopology(`name: t
vms:
  - { name: busy, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: true, pasids: [1] }], workload: { kind: sva-stream, pages: 64 } }
  - { name: quiet, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: true, pasids: [1] }], workload: { kind: idle } }
`);
    const r = await runTopology(topology, { durationMs: 20_000 });
    expect(r.durationMs).toBeLessThan(20_000);
    expect(r.vms.map((vm) => vm.faultsDelivered)).toEqual([64, 0]);
    expect(r.invariants.ok).toBe(true);
  });

  test("stray-dma: DMA outside the VM's IOAS faults at stage 2, counted by the host, seen by no guest, moving no bytes", async () => {
    const r = await runTopology(loadTopology('configs/stray-dma.yaml'));
    const [streamer, stray] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(r.iommu.stage2Faults).toBe(64);
    expect(stray.unrecoverableFaults).toEqual({ stage1: 0, stage2: 64 });
    expect(stray.dmaFailed).toBe(64);
    expect(stray.bytesMoved).toBe(0);
    // Stage-2 faults are never page requests, never events in any guest's queues.
    expect(stray.pageRequests).toBe(0);
    expect(r.iommu.eventsHostOnly).toBe(64);
    expect(r.iommu.eventsForwarded).toBe(0);
    expect(r.vms.map((vm) => vm.eventsDelivered)).toEqual([0, 0]);
    expect(r.vms.reduce((n, vm) => n + vm.faultsDelivered, 0)).toBe(streamer.faultsDelivered);
    expect(stray.faultQueue.read).toBe(0);
    // The neighbour is unaffected: every page faulted in once and every byte checked.
    expect(streamer.faultsDelivered).toBe(128);
    expect(streamer.unrecoverableFaults).toEqual({ stage1: 0, stage2: 0 });
    expect(r.dma.bytesVerified).toBe(128 * PAGE);
  });

  test('stall model: each miss stalls, the guest pages in and answers CMD_RESUME retry, every byte arrives', async () => {
    const topology = parseTopology(
      oneVm(`    devices: [{ name: d, pri: false, stall: true, pasids: [1] }]
    workload: { kind: sva-stream, pages: 64, seed: 5, queueDepth: 32 }
    queues: { priqLog2: 4, evtqLog2: 1, cmdqLog2: 4, dmaQueueLog2: 6 }\n`),
    );
    const r = await runTopology(topology);
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    // A 2-entry event queue, 32 transactions in flight: stall records wait for room, never dropped.
    expect(vm.stallsDelivered).toBe(64);
    expect(vm.eventsDropped).toBe(0);
    expect(vm.resumes).toBe(64);
    expect(vm.responses).toEqual({ success: 64, invalid: 0, failure: 0 });
    expect(vm.pageRequests).toBe(0);
    expect(r.faults).toMatchObject({ raised: 64, delivered: 64, responded: 64, lost: 0 });
    expect(r.dma.failed).toBe(0);
    expect(r.dma.bytesVerified).toBe(64 * PAGE);
  });

  test('a device cannot both use PRI and stall', () => {
    expect(() =>
      parseTopology(
        oneVm(`    devices: [{ name: d, pri: true, stall: true }]\n    workload: { kind: idle }\n`),
      ),
    ).toThrow(/vms\[0\]\.devices\[0\]\.stall: a device recovers with PRI/);
  });

  test('overflow.yaml: tiny queues under a fault storm drop by their rules, answer every dropped Last, lose nothing', async () => {
    const r = await runTopology(loadTopology('configs/overflow.yaml'));
    const [pri, terminate, vtd] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(r.faults.lost).toBe(0);
    // PRI queue: discarded entries, each dropped Last answered Success, the device retried; every page arrived.
    expect(r.faults.dropped).toBeGreaterThan(0);
    expect(r.faults.autoResponded).toBeGreaterThanOrEqual(r.faults.dropped);
    expect(r.faults.responded + r.faults.autoResponded).toBe(r.faults.raised);
    expect(pri.overflowsAcknowledged).toBeGreaterThan(0);
    expect(pri.faultsByKind).toEqual({ pageRequest: 2048, stall: 0, terminate: 0 });
    expect(pri.bytesVerified).toBe(2048 * PAGE);
    // Event queue: kept writing, the newest records were dropped, the guest acknowledged.
    expect(terminate.eventsDropped).toBeGreaterThan(0);
    expect(terminate.eventOverflowsAcknowledged).toBeGreaterThan(0);
    expect(terminate.faultsByKind.terminate + terminate.eventsDropped).toBe(r.iommu.eventsForwarded);
    expect(terminate.flavour).toBe('smmuv3');
    // VT-d page request queue: PRO set on a full queue, every request dropped until the driver
    // drained and cleared it; dropped LPIG requests answered; every page still arrived.
    expect(vtd.flavour).toBe('vtd');
    expect(vtd.dropped).toBeGreaterThan(0);
    expect(vtd.overflows).toBeGreaterThan(0);
    expect(vtd.overflowsAcknowledged).toBe(vtd.overflows);
    expect(vtd.faultsByKind.pageRequest).toBe(2048);
    expect(vtd.bytesVerified).toBe(2048 * PAGE);
    expect(pri.overflows).toBeGreaterThan(0);
  });

  test('map-churn: pages unmapped under DMA are invalidated before reuse; no DMA uses a stale translation', async () => {
    const topology = parseTopology(
      oneVm(
        `    devices: [{ name: d, pri: true, pasids: [1] }]\n    workload: { kind: map-churn, pages: 128, seed: 3, queueDepth: 8 }\n`,
      ),
    );
    const r = await runTopology(topology);
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.unmaps).toBeGreaterThan(10);
    // Every unmap sent CMD_TLBI_NH_VA through the vIOMMU (HWPT_INVALIDATE), then CMD_SYNC.
    expect(vm.invalidations).toBe(vm.unmaps);
    expect(vm.staleTranslationUses).toBe(0);
    // Four rounds over the buffer: IOTLB hits, and unmapped pages faulted back in.
    expect(r.dma.ops).toBe(512);
    expect(r.iommu.iotlbHits).toBeGreaterThan(0);
    expect(r.faults.raised).toBeGreaterThan(128);
    expect(r.faults.lost).toBe(0);
    expect(vm.bytesVerified).toBe(512 * PAGE);
  });

  test('an injector raises multi-request groups on its own; each is answered once, with Last on the final request', async () => {
    const topology = parseTopology(
      oneVm(`    devices: [{ name: d, pri: true, pasids: [1], priCredits: 64, inject: { ratePerSec: 2000, groupSize: 4, pasid: 1 } }]
    workload: { kind: idle }\n`),
    );
    const r = await runTopology(topology, { durationMs: 300 });
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.injected).toBeGreaterThan(0);
    // One group of four requests each; the guest's driver answers a group only after its Last.
    expect(vm.pageRequests).toBe(4 * vm.injected);
    expect(r.faults).toMatchObject({
      raised: vm.injected,
      delivered: vm.injected,
      responded: vm.injected,
      lost: 0,
    });
    // An idle guest backs no memory: every group is an Invalid Request.
    expect(vm.responses).toEqual({ success: 0, invalid: vm.injected, failure: 0 });
  });

  test('an event injector raises terminate-model events at its rate, no PRI needed', async () => {
    const topology = parseTopology(
      oneVm(`    devices: [{ name: d, pri: false, pasids: [1], inject: { kind: event, ratePerSec: 1000, groupSize: 2, pasid: 1 } }]
    workload: { kind: idle }\n`),
    );
    const r = await runTopology(topology, { durationMs: 200 });
    const [vm] = r.vms;
    expect(r.invariants.ok).toBe(true);
    expect(vm.injectedEvents).toBeGreaterThan(0);
    expect(vm.injectedEvents % 2).toBe(0);
    // The 64-entry event queue may drop some under its overflow rule; every one is accounted for.
    expect(vm.faultsByKind.terminate + vm.eventsDropped).toBe(vm.injectedEvents);
    expect(r.faults.raised).toBe(0);
  });

  test('a page-request injector needs a PRI-capable device', () => {
    expect(() =>
      parseTopology(
        oneVm(
          `    devices: [{ name: d, pri: false, inject: { ratePerSec: 10 } }]\n    workload: { kind: idle }\n`,
        ),
      ),
    ).toThrow(/vms\[0\]\.devices\[0\]\.inject: an injector of page requests needs pri: true/);
  });

  test('many-vms.yaml: 16 VMs with every workload kind on one host IOMMU, none crashed, nothing lost', async () => {
    const r = await runTopology(loadTopology('configs/many-vms.yaml'));
    expect(r.vms).toHaveLength(16);
    expect(new Set(r.vms.map((vm) => vm.flavour))).toEqual(new Set(['smmuv3', 'vtd']));
    expect(r.invariants.ok).toBe(true);
    expect(r.faults.lost).toBe(0);
    expect(r.vms.every((vm) => !vm.crashed && vm.workloadDone)).toBe(true);
    expect(r.vms.every((vm) => vm.staleTranslationUses === 0)).toBe(true);
    // Stage-2 faults stay with the host: the stray-dma VMs see no fault of theirs.
    for (const vm of r.vms.filter((v) => v.unrecoverableFaults.stage2 > 0)) {
      expect(vm.faultsDelivered + vm.eventsDelivered).toBe(0);
    }
    expect(r.iommu.stage2Faults).toBeGreaterThan(0);
  }, 120_000);
});
