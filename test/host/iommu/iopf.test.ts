import { describe, expect, test } from 'vitest';
import { PriCapability } from '../../../host/devices/pri-capability.ts';
import { type IopfGroup, type IopfHandler, IopfQueue } from '../../../host/iommu/iopf.ts';
import {
  newPageRequest,
  PRG_INVALID,
  PRG_SUCCESS,
  type PriEndpoint,
} from '../../../host/iommu/page-request.ts';

function setup(withHandler = true) {
  const responses: { prgIndex: number; code: number }[] = [];
  const endpoint: PriEndpoint = {
    prgResponse: (_p, _s, prgIndex, code) => responses.push({ prgIndex, code }),
  };
  const groups: IopfGroup[] = [];
  const handler: IopfHandler = { handleGroup: (group) => groups.push(group) };
  const iopf = new IopfQueue({
    handlerOf: () => (withHandler ? handler : undefined),
    endpointOf: () => endpoint,
  });
  const request = (prgIndex: number, last: boolean, address = 0x1000) => {
    const r = newPageRequest();
    Object.assign(r, { streamId: 1, pasid: 1, ssv: true, prgIndex, last, read: true, address });
    iopf.report(r);
  };
  return { iopf, responses, groups, request };
}

describe('IOPF groups', () => {
  test('requests without Last wait as a partial group; Last hands over the whole group once', () => {
    const { groups, request } = setup();
    request(5, false, 0x1000);
    request(5, false, 0x2000);
    expect(groups).toHaveLength(0);
    request(5, true, 0x3000);
    expect(groups).toHaveLength(1);
    expect(groups[0].count).toBe(3);
    expect([...groups[0].addresses.subarray(0, 3)]).toEqual([0x1000, 0x2000, 0x3000]);
  });

  test('a group is answered exactly once: a second answer is a counted no-op', () => {
    const { iopf, responses, groups, request } = setup();
    request(1, true);
    const group = groups[0];
    group.respond(PRG_SUCCESS);
    expect(responses).toEqual([{ prgIndex: 1, code: PRG_SUCCESS }]);
    group.respond(PRG_SUCCESS);
    expect(responses).toHaveLength(1);
    expect(iopf.stats.duplicateAnswers).toBe(1);
    expect(iopf.pending).toBe(0);
  });

  test('a stale holder never answers the group that reused the pooled object', () => {
    const { iopf, responses, groups, request } = setup();
    request(1, true);
    const first = groups[0];
    const staleGeneration = first.generation;
    first.respond(PRG_SUCCESS);
    request(2, true);
    expect(groups[1]).toBe(first); // the pool reused the object
    expect(iopf.respond(first, staleGeneration, PRG_INVALID)).toBe(false);
    expect(responses).toEqual([{ prgIndex: 1, code: PRG_SUCCESS }]);
    expect(iopf.pending).toBe(1);
  });

  test('a group with no handler is answered INVALID at once', () => {
    const { responses, request, iopf } = setup(false);
    request(9, true);
    expect(responses).toEqual([{ prgIndex: 9, code: PRG_INVALID }]);
    expect(iopf.stats.answeredWithoutHandler).toBe(1);
    expect(iopf.pending).toBe(0);
  });

  test("discardPartial drops a stream's partial groups without answering them", () => {
    const { iopf, responses, groups, request } = setup();
    request(3, false);
    expect(iopf.discardPartial(1)).toBe(1);
    request(3, true);
    expect(groups[0].count).toBe(1);
    expect(responses).toHaveLength(0);
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
