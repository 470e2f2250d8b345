import { describe, expect, test } from 'vitest';
import { PriCapability } from '../host/devices/pri-capability.ts';
import { IopfQueue } from '../host/iommu/iopf.ts';
import { newPageRequest, PRG_INVALID, PRG_SUCCESS, type PriEndpoint } from '../host/iommu/page-request.ts';
import { IommufdError } from '../host/iommufd/errors.ts';
import { FaultQueue, PAGE_RESP_INVALID, PAGE_RESP_SUCCESS } from '../host/iommufd/fault-queue.ts';

function setup(withHandler = true) {
  const responses: { prgIndex: number; code: number }[] = [];
  const endpoint: PriEndpoint = {
    prgResponse: (_p, _s, prgIndex, code) => responses.push({ prgIndex, code }),
  };
  const delivered: { cookie: number; prgIndex: number; count: number }[] = [];
  let queue: FaultQueue | undefined;
  const iopf = new IopfQueue(
    () => (withHandler ? queue : undefined),
    () => endpoint,
  );
  queue = new FaultQueue(iopf, (cookie, group) =>
    delivered.push({ cookie, prgIndex: group.prgIndex, count: group.count }),
  );
  const request = (prgIndex: number, last: boolean, address = 0x1000) => {
    const r = newPageRequest();
    Object.assign(r, { streamId: 1, pasid: 1, ssv: true, prgIndex, last, read: true, address });
    iopf.report(r);
  };
  return { iopf, queue, responses, delivered, request };
}

describe('IOPF groups and the fault queue', () => {
  test('requests without Last wait as a partial group; Last delivers the whole group once', () => {
    const { delivered, request } = setup();
    request(5, false, 0x1000);
    request(5, false, 0x2000);
    expect(delivered).toHaveLength(0);
    request(5, true, 0x3000);
    expect(delivered).toEqual([{ cookie: expect.any(Number), prgIndex: 5, count: 3 }]);
  });

  test('every group is answered exactly once: a second response to its cookie is EINVAL', () => {
    const { queue, responses, delivered, request, iopf } = setup();
    request(1, true);
    queue.respond(delivered[0].cookie, PAGE_RESP_SUCCESS);
    expect(responses).toEqual([{ prgIndex: 1, code: PRG_SUCCESS }]);
    expect(() => queue.respond(delivered[0].cookie, PAGE_RESP_SUCCESS)).toThrow(IommufdError);
    expect(responses).toHaveLength(1);
    expect(iopf.pending).toBe(0);
  });

  test('a stale cookie never answers the group that reused its slot', () => {
    const { queue, responses, delivered, request } = setup();
    request(1, true);
    const stale = delivered[0].cookie;
    queue.respond(stale, PAGE_RESP_SUCCESS);
    request(2, true);
    expect(delivered[1].cookie & 0xffff).toBe(stale & 0xffff); // same slot, new generation
    expect(delivered[1].cookie).not.toBe(stale);
    expect(() => queue.respond(stale, PAGE_RESP_INVALID)).toThrow(/names no pending fault group/);
    expect(responses).toHaveLength(1);
    expect(queue.pending).toBe(1);
  });

  test('only SUCCESS and INVALID are accepted as response codes', () => {
    const { queue, delivered, request } = setup();
    request(1, true);
    try {
      queue.respond(delivered[0].cookie, 0xf);
      expect.unreachable();
    } catch (error) {
      expect((error as IommufdError).errno).toBe('EINVAL');
    }
    expect(queue.pending).toBe(1);
  });

  test('abortAll answers every pending group INVALID and counts them', () => {
    const { queue, responses, request, iopf } = setup();
    request(1, true);
    request(2, true);
    expect(queue.abortAll()).toBe(2);
    expect(responses.map((r) => r.code)).toEqual([PRG_INVALID, PRG_INVALID]);
    expect(queue.stats.autoResponded).toBe(2);
    expect(iopf.pending).toBe(0);
  });

  test('a group with no handler is answered INVALID at once', () => {
    const { responses, request, iopf } = setup(false);
    request(9, true);
    expect(responses).toEqual([{ prgIndex: 9, code: PRG_INVALID }]);
    expect(iopf.stats.answeredWithoutHandler).toBe(1);
    expect(iopf.pending).toBe(0);
  });
});

describe('PRI capability', () => {
  test('credits bound outstanding requests and come back with responses', () => {
    const pri = new PriCapability(2);
    const a = pri.allocate();
    const b = pri.allocate();
    expect(a).not.toBe(b);
    expect(pri.canRequest()).toBe(false);
    expect(pri.complete(a, false)).toBe(true);
    expect(pri.canRequest()).toBe(true);
  });

  test('a response for an index with no outstanding group is ignored and latches UPRGI', () => {
    const pri = new PriCapability(4);
    expect(pri.complete(17, false)).toBe(false);
    expect(pri.unexpectedPrgIndex).toBe(true);
    expect(pri.outstanding).toBe(0);
  });

  test('Response Failure latches RF and stops page requests until reset', () => {
    const pri = new PriCapability(4);
    pri.complete(pri.allocate(), true);
    expect(pri.responseFailure).toBe(true);
    expect(pri.canRequest()).toBe(false);
    pri.reset();
    expect(pri.canRequest()).toBe(true);
  });
});
