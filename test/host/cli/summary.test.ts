// The text summary `run` prints without --json, checked on report objects.
import { describe, expect, test } from 'vitest';
import { summary } from '../../../host/cli/summary.ts';
import type { RunReport, VmReport } from '../../../host/vmm/report.ts';

function vmReport(name: string, figures: Partial<VmReport> = {}): VmReport {
  return {
    name,
    flavour: 'smmuv3',
    faultsByKind: { pageRequest: 0, stall: 0, terminate: 0 },
    bytesVerified: 0,
    staleTranslationUses: 0,
    unmaps: 0,
    invalidations: 0,
    faultsDelivered: 0,
    responses: { success: 0, invalid: 0, failure: 0 },
    dmaOps: 0,
    crashed: false,
    iommufdObjects: 0,
    damage: {
      corruptIndices: { pageRequestQueue: 0, eventQueue: 0, commandQueue: 0 },
      unknownResponses: 0,
      duplicateResponses: 0,
      illegalCommands: 0,
    },
    pageRequests: 0,
    pagesMapped: 0,
    dmaCompleted: 0,
    dmaCycleUs: { p50: 0, p99: 0, max: 0, count: 0 },
    dmaFailed: 0,
    badDescriptors: 0,
    foreignPasidDescriptors: 0,
    dropped: 0,
    overflows: 0,
    unknownResponses: 0,
    illegalCommands: 0,
    commandErrorsAcknowledged: 0,
    workloadDone: true,
    overflowsAcknowledged: 0,
    unrecoverableFaults: { stage1: 0, stage2: 0 },
    eventsDelivered: 0,
    eventsDropped: 0,
    eventsHandled: 0,
    eventOverflowsAcknowledged: 0,
    stallsDelivered: 0,
    resumes: 0,
    injected: 0,
    injectedEvents: 0,
    bytesMoved: 0,
    razReads: 0,
    faultQueue: {
      read: 0,
      responded: 0,
      autoResponded: 0,
      refusedResponses: 0,
      lateResponses: 0,
      revoked: 0,
      staleTouches: 0,
    },
    iopfTimeouts: 0,
    refaults: { refaults: 0, pagesRefaulted: 0, maxFaults: 0, hottest: undefined },
    isolation: {
      iommus: ['iommu0'],
      lostToOthers: 0,
      lostOwn: 0,
      latencyP50Us: 0,
      latencyP99Us: 0,
      latencyMaxUs: 0,
      faultsTimed: 0,
    },
    ...figures,
  };
}

function runReport(figures: Partial<RunReport> = {}): RunReport {
  return {
    topology: 'storm',
    routing: 'ioasid-owner',
    transport: 'postmessage',
    seed: 42,
    durationMs: 1000,
    launchMs: 100,
    vms: [vmReport('vm0')],
    faults: {
      raised: 0,
      delivered: 0,
      responded: 0,
      autoResponded: 0,
      dropped: 0,
      lost: 0,
      iopfTimeouts: 0,
      unrouted: 0,
    },
    dma: { ops: 0, completed: 0, failed: 0, bytesVerified: 0, razReads: 0, unrecoverableFaults: 0 },
    latencyUs: { p50: 0, p99: 0, max: 0, count: 0 },
    iommu: {
      translations: 0,
      iotlbHits: 0,
      iotlbMisses: 0,
      walks: 0,
      stage1Faults: 0,
      stage2Faults: 0,
      invalidations: 0,
      eventsRecorded: 0,
      eventsForwarded: 0,
      eventsHostOnly: 0,
    },
    physicalIommus: [],
    invariants: { ok: true, violations: [], counts: {} },
    ...figures,
  };
}

describe('run summary', () => {
  test('injected events and page requests are named, per VM and in all', () => {
    const report = runReport({
      vms: [
        vmReport('events', { injectedEvents: 100_000_000, eventsDelivered: 4096, eventsDropped: 99_995_904 }),
        vmReport('requests', { injected: 5000 }),
      ],
    });
    const text = summary(report);
    expect(text).toMatch(
      /^ {2}events: 0 faults delivered, .*, 100000000 fault events injected, 4096 fault events delivered to the guest, 99995904 dropped/m,
    );
    expect(text).toMatch(/^ {2}requests: .*, 5000 page-request groups injected/m);
    expect(text).toMatch(/^injected: 5000 page-request groups, 100000000 fault events$/m);
  });

  test('a run without injectors prints no injected line', () => {
    expect(summary(runReport())).not.toMatch(/inject/);
  });

  test('the first line names the transport and the seed, or that the topology gave the seeds', () => {
    expect(summary(runReport()).split('\n')[0]).toBe(
      'topology storm (routing ioasid-owner, transport postmessage, seed 42) ran 1000 ms',
    );
    expect(summary(runReport({ seed: null, transport: 'sab' })).split('\n')[0]).toBe(
      "topology storm (routing ioasid-owner, transport sab, the topology's seeds) ran 1000 ms",
    );
  });

  test('the trace file written is named, and only when one was written', () => {
    expect(summary(runReport(), { trace: '/tmp/run.json' })).toMatch(
      /^trace: written to \/tmp\/run\.json \(open it in https:\/\/ui\.perfetto\.dev\)$/m,
    );
    expect(summary(runReport())).not.toMatch(/^trace:/m);
  });

  test('a truncated violation list says how many more there were, and the counts per rule', () => {
    const violations = Array.from({ length: 100 }, (_, i) => ({
      rule: 'group-lost',
      vm: 'vm0',
      detail: `group ${i} ended the run unanswered`,
    }));
    const text = summary(
      runReport({
        invariants: { ok: false, violations, counts: { 'group-lost': 250, 'credits-exceeded': 7 } },
      }),
    );
    expect(text).toMatch(/^invariants: VIOLATED \(group-lost 250, credits-exceeded 7\)$/m);
    expect(text).toMatch(/^ {2}group-lost \[vm0\]: group 99 ended the run unanswered$/m);
    expect(text).toMatch(/^ {2}\.\.\. and 157 more violations \(the report keeps the first 100\)$/m);
  });

  test('a complete violation list has no "more" line', () => {
    const text = summary(
      runReport({
        invariants: {
          ok: false,
          violations: [{ rule: 'group-lost', detail: 'one group' }],
          counts: { 'group-lost': 1 },
        },
      }),
    );
    expect(text).toMatch(/^ {2}group-lost: one group$/m);
    expect(text).not.toMatch(/more violations/);
  });
});
