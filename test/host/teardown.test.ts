// Teardown at every stage of a fault's life: six operations, each injected at each of six stages,
// on the real IOMMU model (physical PRI queue, IRQ thread, IOPF layer) and the real registry. The
// test plays the two ends a host does not own: the device's PRI side and the VMM on the fault fd.
import { describe, expect, test } from 'vitest';
import { PriCapability } from '../../host/devices/pri-capability.ts';
import { Iommu } from '../../host/iommu/iommu.ts';
import type { IopfGroup } from '../../host/iommu/iopf.ts';
import { newPageRequest, PRG_INVALID, PRG_SUCCESS, type PriEndpoint } from '../../host/iommu/page-request.ts';
import { Smmuv3Ops } from '../../host/iommu/smmuv3-ops.ts';
import {
  decodePgfault,
  encodePageResponse,
  IOMMUFD_PAGE_RESP_SUCCESS,
  PAGE_RESPONSE_BYTES,
  PGFAULT_BYTES,
} from '../../host/iommufd/eventq-records.ts';
import type { FaultFd, FaultObject } from '../../host/iommufd/fault.ts';
import { IOMMU_HWPT_FAULT_ID_VALID } from '../../host/iommufd/hwpt.ts';
import { Iommufd } from '../../host/iommufd/iommufd.ts';
import { errnoOf } from '../support/iommufd-errors.ts';

const SID = 0x40;
const PAGE = 0x1000;

/**
 * The function's PRI side: it sends page requests while PRI is enabled and keeps every response
 * per PRG index. A response to an index with no group outstanding is the double answer the
 * teardown must never produce.
 */
class PriDevice implements PriEndpoint {
  readonly pri = new PriCapability(64);
  /** Codes received per PRG index, in order. */
  readonly answers = new Map<number, number[]>();
  /** PRG indices whose Last was sent (a response is owed for each). */
  readonly owed = new Set<number>();
  responsesAfterDisable = 0;

  constructor(private readonly iommu: Iommu) {}

  /** Send one page request of group `prgIndex`; false when PRI is disabled. */
  send(prgIndex: number, last: boolean, page = 1): boolean {
    if (!this.pri.enabled) return false;
    const r = newPageRequest();
    Object.assign(r, { streamId: SID, prgIndex, last, read: true, address: page * PAGE });
    if (last) this.owed.add(prgIndex);
    this.iommu.pageRequest(r);
    return true;
  }

  prgResponse(_pasid: number, _ssv: boolean, prgIndex: number, code: number): void {
    if (!this.pri.enabled) {
      this.responsesAfterDisable++;
      return;
    }
    const codes = this.answers.get(prgIndex) ?? [];
    codes.push(code);
    this.answers.set(prgIndex, codes);
  }

  disablePri(): void {
    this.pri.enabled = false;
  }

  answersOf(prgIndex: number): number[] {
    return this.answers.get(prgIndex) ?? [];
  }
}

/** A VMM's registry with one PRI device attached to HWPT A; HWPT B (its own fault queue) waits. */
function rig() {
  const iommu = new Iommu({ instances: [{ name: 'iommu0', priqLog2: 4 }] });
  const ops = new Smmuv3Ops(iommu);
  const fd = new Iommufd();
  const { ioasId } = fd.ioasAlloc();
  const { devId } = fd.bindDevice({ device: ops.device(SID, 0) });
  const queueA = fd.faultQueueAlloc();
  const queueB = fd.faultQueueAlloc();
  const hwpt = (faultId: number) =>
    fd.hwptAlloc({ flags: IOMMU_HWPT_FAULT_ID_VALID, devId, ptId: ioasId, faultId }).hwptId;
  const hwptA = hwpt(queueA.faultId);
  const hwptB = hwpt(queueB.faultId);
  fd.attachDevice({ devId, ptId: hwptA });
  const device = new PriDevice(iommu);
  iommu.bindEndpoint(SID, device);
  return {
    iommu,
    fd,
    devId,
    hwptA,
    hwptB,
    device,
    thread: iommu.instances[0].thread,
    a: { fd: queueA.faultFd, object: fd.lookup<FaultObject>(queueA.faultId, 'FAULT'), open: true },
    b: { fd: queueB.faultFd, object: fd.lookup<FaultObject>(queueB.faultId, 'FAULT'), open: true },
    ctxOpen: true,
    bound: true,
  };
}
type Rig = ReturnType<typeof rig>;

/** Read whole groups from a fault fd: [prgIndex, cookie] of each. */
function readGroups(fd: FaultFd): [grpid: number, cookie: number][] {
  const buf = new Uint8Array(16 * PGFAULT_BYTES);
  const n = fd.read(buf);
  const out: [number, number][] = [];
  for (let at = 0; at < n; at += PGFAULT_BYTES) {
    const r = decodePgfault(buf, at);
    if (r.flags & 2) out.push([r.grpid, r.cookie]);
  }
  return out;
}

function response(cookie: number, code = IOMMUFD_PAGE_RESP_SUCCESS): Uint8Array {
  const buf = new Uint8Array(PAGE_RESPONSE_BYTES);
  encodePageResponse(buf, 0, { cookie, code });
  return buf;
}

const OPS = ['detach', 'replace', 'fault-fd-close', 'hwpt-destroy', 'unbind', 'guest-death'] as const;
type Op = (typeof OPS)[number];

/** Ops that end the attachment at once (its groups are answered INVALID by the op itself). */
const ENDS_ATTACHMENT: ReadonlySet<Op> = new Set(['detach', 'replace', 'unbind', 'guest-death']);

const teardown: Record<Op, (r: Rig) => void> = {
  detach: (r) => r.fd.detachDevice({ devId: r.devId }),
  replace: (r) => r.fd.replaceDevice({ devId: r.devId, ptId: r.hwptB }),
  // iommufd's release only drops the fd's reference: the HWPT still holds the object.
  'fault-fd-close': (r) => {
    r.a.fd.close();
    r.a.open = false;
  },
  // An attached HWPT cannot be destroyed: EBUSY, and nothing changes.
  'hwpt-destroy': (r) => expect(errnoOf(() => r.fd.destroy({ id: r.hwptA }))).toBe('EBUSY'),
  unbind: (r) => {
    r.fd.unbindDevice({ devId: r.devId });
    r.bound = false;
  },
  // The VMM process exits: /dev/iommu and every fault fd close.
  'guest-death': (r) => {
    r.fd.close();
    r.ctxOpen = false;
    for (const q of [r.a, r.b]) {
      if (q.open) q.fd.close();
      q.open = false;
    }
  },
};

/** The VMM finishes: it answers what the new HWPT got, detaches, destroys, closes. */
function finish(r: Rig): void {
  if (r.ctxOpen) {
    if (r.b.open) for (const [, cookie] of readGroups(r.b.fd)) r.b.fd.write(response(cookie));
    if (r.bound) {
      r.fd.detachDevice({ devId: r.devId });
      r.fd.unbindDevice({ devId: r.devId });
    }
    r.fd.destroy({ id: r.hwptA });
    r.fd.close();
  }
  for (const q of [r.a, r.b]) if (q.open) q.fd.close();
  r.iommu.drainPageRequests();
}

/** The oracle: every group owed an answer got exactly one; no freed group was touched. */
function checkOracle(r: Rig): void {
  for (const prgIndex of r.device.owed) expect(r.device.answersOf(prgIndex)).toHaveLength(1);
  for (const prgIndex of r.device.answers.keys()) expect(r.device.owed.has(prgIndex)).toBe(true);
  expect(r.device.responsesAfterDisable).toBe(0);
  expect(r.iommu.iopf.pending).toBe(0);
  expect(r.iommu.iopf.partialCount).toBe(0);
  expect(r.iommu.iopf.stats.staleAnswers).toBe(0);
  expect(r.a.object.stats.staleTouches).toBe(0);
  expect(r.b.object.stats.staleTouches).toBe(0);
}

/** Group 1's answers right after the op: INVALID at once if the op ended the attachment. */
function expectAnsweredByOp(r: Rig, op: Op, prgIndex = 1): void {
  expect(r.device.answersOf(prgIndex)).toEqual(ENDS_ATTACHMENT.has(op) ? [PRG_INVALID] : []);
  // Nothing raised under the old attachment may reach the new one.
  expect(r.b.object.stats.reported).toBe(0);
}

describe.each(OPS)('teardown by %s', (op) => {
  test('(a) while the group sits in the physical PRI queue', () => {
    const r = rig();
    r.thread.mask();
    r.device.send(1, true);
    expect(r.iommu.instances[0].priq.occupancy).toBe(1);
    teardown[op](r);
    expectAnsweredByOp(r, op);
    if (ENDS_ATTACHMENT.has(op)) expect(r.iommu.instances[0].priq.empty).toBe(true);
    r.thread.unmask();
    finish(r);
    checkOracle(r);
  });

  test('(b) while the IRQ thread is draining it (holds one entry, one more queued)', () => {
    const r = rig();
    r.thread.mask();
    r.device.send(1, true);
    r.device.send(2, true, 2);
    let ran = false;
    r.thread.onHolding = () => {
      if (r.thread.heldRequest.prgIndex !== 1 || ran) return;
      ran = true;
      teardown[op](r);
      expectAnsweredByOp(r, op, 1);
      expectAnsweredByOp(r, op, 2);
    };
    r.thread.unmask();
    expect(ran).toBe(true);
    r.thread.onHolding = undefined;
    finish(r);
    checkOracle(r);
  });

  test('(c) while the group is parked as partial', () => {
    const r = rig();
    r.device.send(1, false);
    expect(r.iommu.iopf.partialCount).toBe(1);
    teardown[op](r);
    if (ENDS_ATTACHMENT.has(op)) {
      expect(r.iommu.iopf.partialCount).toBe(0);
      expect(r.iommu.iopf.stats.partialsFlushed).toBe(1);
    }
    // No response is owed before the Last; the device sends it if PRI is still enabled.
    expect(r.device.answersOf(1)).toEqual([]);
    const sent = r.device.send(1, true, 2);
    expect(sent).toBe(op !== 'unbind' && op !== 'guest-death');
    finish(r);
    checkOracle(r);
  });

  test('(d) while the group is queued in the fault object', () => {
    const r = rig();
    r.device.send(1, true);
    expect(r.a.object.undeliveredCount).toBe(1);
    teardown[op](r);
    expectAnsweredByOp(r, op);
    expect(r.a.object.undeliveredCount).toBe(ENDS_ATTACHMENT.has(op) ? 0 : 1);
    finish(r);
    checkOracle(r);
    expect(r.a.object.undeliveredCount).toBe(0);
  });

  test('(e) once delivered to the VMM and unanswered: the late response is refused and counted', () => {
    const r = rig();
    r.device.send(1, true);
    const [[grpid, cookie]] = readGroups(r.a.fd);
    expect(grpid).toBe(1);
    teardown[op](r);
    expectAnsweredByOp(r, op);
    const refusedBefore = r.a.object.stats.refusedResponses;
    const late = () => r.a.fd.write(response(cookie));
    if (ENDS_ATTACHMENT.has(op) && r.a.open) {
      expect(errnoOf(late)).toBe('EINVAL');
      expect(r.a.object.stats.refusedResponses).toBe(refusedBefore + 1);
    } else if (!r.a.open) {
      expect(errnoOf(late)).toBe('EBADF');
    } else {
      // hwpt-destroy changed nothing: this is the group's one answer.
      late();
      expect(r.device.answersOf(1)).toEqual([PRG_SUCCESS]);
    }
    finish(r);
    checkOracle(r);
  });

  test('(f) answered by the VMM but not yet applied: the teardown wins, the response is a counted no-op', () => {
    const r = rig();
    r.device.send(1, true);
    const [[, cookie]] = readGroups(r.a.fd);
    let ran = false;
    r.a.object.onApplying = () => {
      ran = true;
      teardown[op](r);
      expectAnsweredByOp(r, op);
    };
    r.a.fd.write(response(cookie));
    expect(ran).toBe(true);
    if (ENDS_ATTACHMENT.has(op)) {
      expect(r.a.object.stats.lateResponses).toBe(1);
      expect(r.device.answersOf(1)).toEqual([PRG_INVALID]);
    } else {
      // The fd's release or a refused destroy does not end the attachment: the response applies.
      expect(r.a.object.stats.lateResponses).toBe(0);
      expect(r.device.answersOf(1)).toEqual([PRG_SUCCESS]);
    }
    finish(r);
    checkOracle(r);
  });
});

describe('the generation oracle', () => {
  test('a group answered behind its holder is a stale touch, never read, never answered again', () => {
    const r = rig();
    r.device.send(1, true);
    // The 2026 race in miniature: the IOPF layer answers (and frees) a group the fault object
    // still holds, as if it sat on two lists.
    // The bug is planted by reaching into the fault object's queue.
    const group = (r.a.object as unknown as { undelivered: IopfGroup[] }).undelivered[0];
    expect(r.iommu.iopf.respond(group, group.generation, PRG_INVALID)).toBe(true);
    expect(readGroups(r.a.fd)).toEqual([]);
    expect(r.a.object.stats.staleTouches).toBe(1);
    expect(r.device.answersOf(1)).toEqual([PRG_INVALID]);
    // The pooled object now serves a new group; the fault object must not confuse the two.
    r.device.send(2, true, 2);
    expect(readGroups(r.a.fd).map(([grpid]) => grpid)).toEqual([2]);
  });

  test('a response deadline takes the group back from its holder and answers INVALID once', () => {
    const r = rig();
    r.iommu.iopf.deadlineMs = 5;
    r.device.send(1, true);
    r.device.send(2, true, 2);
    const [[, cookie]] = readGroups(r.a.fd).filter(([grpid]) => grpid === 1);
    expect(r.a.object.undeliveredCount).toBe(0);
    expect(r.iommu.iopf.expire(performance.now() + 10)).toBe(2);
    expect(r.device.answersOf(1)).toEqual([PRG_INVALID]);
    expect(r.device.answersOf(2)).toEqual([PRG_INVALID]);
    expect(r.iommu.iopf.stats.timeouts).toBe(2);
    expect(r.a.object.stats.revoked).toBe(2);
    expect(r.a.object.awaitingCount).toBe(0);
    expect(errnoOf(() => r.a.fd.write(response(cookie)))).toBe('EINVAL');
    expect(r.iommu.iopf.expire(performance.now() + 1000)).toBe(0);
    finish(r);
    checkOracle(r);
  });

  test('a group answered before its deadline is left alone by it', () => {
    const r = rig();
    r.iommu.iopf.deadlineMs = 5;
    r.device.send(1, true);
    const [[, cookie]] = readGroups(r.a.fd);
    r.a.fd.write(response(cookie));
    expect(r.iommu.iopf.expire(performance.now() + 10)).toBe(0);
    expect(r.iommu.iopf.stats.timeouts).toBe(0);
    expect(r.device.answersOf(1)).toEqual([PRG_SUCCESS]);
    finish(r);
    checkOracle(r);
  });
});
