import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import type { IopfGroup, IopfHandler } from '../../../host/iommu/iopf.ts';
import { PRG_FAILURE, PRG_INVALID, PRG_SUCCESS } from '../../../host/iommu/page-request.ts';
import { ACCESS_EXEC, ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE } from '../../../host/iommu/stage1-walker.ts';
import {
  NO_STAG,
  newStalledTransaction,
  type StallEndpoint,
  type StallFault,
  StallModel,
  type StallModelOptions,
  type StallOutcome,
} from '../../../host/iommu/stall.ts';
import { STALL_RESP_TERMINATE, StallIopfBridge } from '../../../host/iommu/stall-iopf-bridge.ts';
import {
  C_BAD_CD,
  CLASS_CD,
  CLASS_IN,
  F_PERMISSION,
  F_TRANSLATION,
} from '../../../shared/records/event-types.ts';

const S1_FAULT: StallFault = { fault: F_TRANSLATION, stage2: false, faultClass: CLASS_IN, fetchAddress: 0 };
const S2_FAULT: StallFault = {
  fault: F_TRANSLATION,
  stage2: true,
  faultClass: CLASS_IN,
  fetchAddress: 0x9000,
};

/** Records each outcome as [token, outcome]; `then` runs inside the callback. */
function endpoint(then?: (token: number, outcome: StallOutcome) => void) {
  const outcomes: [number, StallOutcome][] = [];
  const ep: StallEndpoint = {
    stallResolved(token, outcome) {
      outcomes.push([token, outcome]);
      then?.(token, outcome);
    },
  };
  return { outcomes, ep };
}

function setup(options: StallModelOptions = {}, streams = [1]) {
  const model = new StallModel(options);
  const { outcomes, ep } = endpoint();
  for (const sid of streams) model.bindEndpoint(sid, ep);
  /** Stall a read of `address` on stream `sid`; returns [stag, suppressed]. */
  const stall = (sid: number, address: number, token: number, access = ACCESS_READ, ssid?: number) => {
    const r = model.stall(sid, ssid, address, access, S1_FAULT, token);
    return [r.stag, r.suppressed] as const;
  };
  return { model, outcomes, stall };
}

describe('SMMUv3 stall model', () => {
  test('resume retry retries the stalled transaction', () => {
    const { model, outcomes, stall } = setup();
    const [stag, suppressed] = stall(1, 0x4000, 7);
    expect(stag).not.toBe(NO_STAG);
    expect(suppressed).toBe(false);
    expect(outcomes).toEqual([]); // a stalled transaction gets no response
    expect(model.held).toBe(1);
    expect(model.resume(1, stag, true, false)).toBe(true);
    expect(outcomes).toEqual([[7, 'retry']]);
    expect(model.held).toBe(0);
    expect(model.stagsInUse(1)).toBe(0);
  });

  test('resume terminate aborts it (Ab=1) or RAZ/WI (Ab=0)', () => {
    const { model, outcomes, stall } = setup();
    const [a] = stall(1, 0x1000, 1);
    const [b] = stall(1, 0x2000, 2);
    model.resume(1, a, false, true);
    model.resume(1, b, false, false);
    expect(outcomes).toEqual([
      [1, 'abort'],
      [2, 'raz'],
    ]);

    // IDR0.TERM_MODEL=1: no RAZ/WI, Ab is ignored.
    const abortOnly = setup({ abortOnly: true });
    const [c] = abortOnly.stall(1, 0x1000, 3);
    abortOnly.model.resume(1, c, false, false);
    expect(abortOnly.outcomes).toEqual([[3, 'abort']]);
    // Retry wins over Ab.
    const [d] = abortOnly.stall(1, 0x1000, 4);
    abortOnly.model.resume(1, d, true, true);
    expect(abortOnly.outcomes[1]).toEqual([4, 'retry']);
  });

  test('a resume that matches no (StreamID, STAG) is a no-op', () => {
    const { model, outcomes, stall } = setup({}, [1, 2]);
    const [stag] = stall(1, 0x1000, 1);
    // The same STAG on another stream names nothing: STAG alone is never trusted.
    expect(model.resume(2, stag, true, false)).toBe(false);
    expect(model.resume(1, stag + 1, true, false)).toBe(false);
    expect(model.resume(1, -1, true, false)).toBe(false);
    expect(outcomes).toEqual([]);
    expect(model.held).toBe(1);
    expect(model.stats.unmatchedResumes).toBe(3);
    // A second RESUME of an acknowledged STAG is also a no-op.
    expect(model.resume(1, stag, false, true)).toBe(true);
    expect(model.resume(1, stag, true, false)).toBe(false);
    expect(outcomes).toEqual([[1, 'abort']]);
    expect(model.stats.unmatchedResumes).toBe(4);
  });

  test('a STAG is not reused until acknowledged', () => {
    const { model, outcomes, stall } = setup({ stags: 4 }, [1, 2]);
    const stags = [0, 1, 2, 3].map((n) => stall(1, n * 0x1000, n)[0]);
    expect(new Set(stags).size).toBe(4);
    // Stream 1 is out of STAGs: the next transaction terminates instead of stalling.
    expect(stall(1, 0x8000, 99)).toEqual([NO_STAG, false]);
    expect(outcomes).toEqual([[99, 'abort']]);
    expect(model.stats.stagsExhausted).toBe(1);
    // STAGs are per stream: stream 2 still has all of its own.
    expect(stall(2, 0x8000, 5)[0]).not.toBe(NO_STAG);
    // Acknowledging one frees exactly that value.
    model.resume(1, stags[2], true, false);
    expect(stall(1, 0x9000, 6)[0]).toBe(stags[2]);
    expect(model.stagsInUse(1)).toBe(4);
  });

  test('a transaction that finds every stall slot taken terminates with abort', () => {
    const { model, outcomes, stall } = setup({ capacity: 2 });
    stall(1, 0x1000, 1);
    stall(1, 0x2000, 2);
    expect(stall(1, 0x3000, 3)).toEqual([NO_STAG, false]);
    expect(outcomes).toEqual([[3, 'abort']]);
    expect(model.stats.slotsExhausted).toBe(1);
  });

  test('only the four translation faults can stall', () => {
    const { model, outcomes } = setup();
    const badCd: StallFault = { fault: C_BAD_CD, stage2: false, faultClass: CLASS_CD, fetchAddress: 0 };
    expect(model.stall(1, undefined, 0x1000, ACCESS_READ, badCd, 8).stag).toBe(NO_STAG);
    expect(outcomes).toEqual([[8, 'abort']]);
    expect(model.stats.notStallable).toBe(1);
    const permission: StallFault = {
      fault: F_PERMISSION,
      stage2: false,
      faultClass: CLASS_IN,
      fetchAddress: 0,
    };
    expect(model.stall(1, undefined, 0x1000, ACCESS_WRITE, permission, 9).stag).not.toBe(NO_STAG);
    expect(model.stall(1, undefined, 0x2000, ACCESS_READ, S2_FAULT, 10).stag).not.toBe(NO_STAG);
  });

  test("STALL_TERM terminates the stream's current stalls and not later ones", () => {
    const model = new StallModel();
    let restalled = -1;
    // The endpoint stalls again on stream 1 from inside the first outcome, i.e. after the command.
    const { outcomes, ep } = endpoint((token) => {
      if (token === 1) restalled = model.stall(1, undefined, 0x7000, ACCESS_READ, S1_FAULT, 10).stag;
    });
    model.bindEndpoint(1, ep);
    model.bindEndpoint(2, ep);
    const a = model.stall(1, undefined, 0x1000, ACCESS_READ, S1_FAULT, 1).stag;
    model.stall(1, undefined, 0x1000, ACCESS_READ, S1_FAULT, 2); // suppressed behind a
    const b = model.stall(1, undefined, 0x2000, ACCESS_READ, S1_FAULT, 3).stag;
    const other = model.stall(2, undefined, 0x1000, ACCESS_READ, S1_FAULT, 4).stag;

    expect(model.stallTerm(1)).toBe(3);
    expect(outcomes.map(([token]) => token).sort()).toEqual([1, 2, 3]);
    expect(outcomes.every(([, outcome]) => outcome === 'abort')).toBe(true);
    // Their STAGs are free: a RESUME naming them now does nothing.
    expect(model.resume(1, a, true, false)).toBe(false);
    expect(model.resume(1, b, true, false)).toBe(false);
    // The stall that arose after the command is still held, and so is stream 2's.
    expect(restalled).not.toBe(NO_STAG);
    expect(model.held).toBe(2);
    expect(model.resume(1, restalled, true, false)).toBe(true);
    expect(model.resume(2, other, true, false)).toBe(true);
    expect(outcomes.slice(3)).toEqual([
      [10, 'retry'],
      [4, 'retry'],
    ]);
  });

  test('SMMUEN -> 0 terminates every stall and frees every STAG', () => {
    const { model, outcomes, stall } = setup({ stags: 2 }, [1, 2]);
    stall(1, 0x1000, 1);
    stall(1, 0x2000, 2);
    stall(2, 0x1000, 3);
    stall(2, 0x1000, 4); // suppressed
    expect(model.disable()).toBe(4);
    expect(outcomes.map(([token]) => token).sort()).toEqual([1, 2, 3, 4]);
    expect(outcomes.every(([, outcome]) => outcome === 'abort')).toBe(true);
    expect(model.held).toBe(0);
    expect(model.stagsInUse(1)).toBe(0);
    expect(model.stagsInUse(2)).toBe(0);
    expect(stall(1, 0x3000, 5)[0]).not.toBe(NO_STAG);
    expect(stall(1, 0x4000, 6)[0]).not.toBe(NO_STAG);
  });

  test('duplicate stalls are suppressed and resumed together', () => {
    const { model, outcomes, stall } = setup();
    const [first] = stall(1, 0x5010, 1, ACCESS_READ, 3);
    // Same page, PnU, InD, RnW and SubstreamID: held behind the first, no record of its own.
    expect(stall(1, 0x5ff0, 2, ACCESS_READ, 3)).toEqual([first, true]);
    // Any difference makes a new recorded stall.
    expect(stall(1, 0x5010, 3, ACCESS_WRITE, 3)[1]).toBe(false);
    expect(stall(1, 0x5010, 4, ACCESS_READ | ACCESS_PRIV, 3)[1]).toBe(false);
    expect(stall(1, 0x5010, 5, ACCESS_READ | ACCESS_EXEC, 3)[1]).toBe(false);
    expect(stall(1, 0x5010, 6, ACCESS_READ, 4)[1]).toBe(false);
    expect(stall(1, 0x5010, 7, ACCESS_READ)[1]).toBe(false);
    expect(stall(1, 0x6010, 8, ACCESS_READ, 3)[1]).toBe(false);
    expect(model.stats).toMatchObject({ stalled: 7, suppressed: 1 });
    const t = newStalledTransaction();
    expect(model.find(1, first, t)).toBe(true);
    expect(t.duplicates).toBe(1);

    expect(model.resume(1, first, true, false)).toBe(true);
    expect(outcomes).toEqual([
      [1, 'retry'],
      [2, 'retry'],
    ]);
    // Once the first is resumed, the same access stalls and records afresh.
    expect(stall(1, 0x5010, 9, ACCESS_READ, 3)[1]).toBe(false);

    // Terminating the recorded one terminates its duplicates the same way.
    const [again] = stall(1, 0xa000, 10);
    stall(1, 0xa008, 11);
    model.resume(1, again, false, false);
    expect(outcomes.slice(2)).toEqual([
      [10, 'raz'],
      [11, 'raz'],
    ]);
  });

  test('with suppression off every duplicate stall is recorded with its own STAG', () => {
    const { model, outcomes, stall } = setup({ suppressDuplicates: false });
    const [a, aSuppressed] = stall(1, 0x5000, 1);
    const [b, bSuppressed] = stall(1, 0x5000, 2);
    expect([aSuppressed, bSuppressed]).toEqual([false, false]);
    expect(b).not.toBe(a);
    model.resume(1, a, true, false);
    expect(outcomes).toEqual([[1, 'retry']]);
    expect(model.held).toBe(1);
  });
});

/**
 * A handler that keeps (group, generation) for each group it is given, as an iommufd fault object
 * does: groups are pooled, so a holder answers the generation it was handed.
 */
function keeper() {
  const groups: IopfGroup[] = [];
  const generations: number[] = [];
  /** Generation of each group taken back by revoke, at the moment it was taken. */
  const revoked: number[] = [];
  const handler: IopfHandler = {
    handleGroup(group) {
      groups.push(group);
      generations.push(group.generation);
    },
    revoke(group) {
      revoked.push(group.generation);
    },
  };
  return { groups, generations, revoked, handler };
}

function bridged(options: StallModelOptions = {}, withHandler = true) {
  const { model, outcomes, stall } = setup(options);
  const { groups, generations, revoked, handler } = keeper();
  const bridge = new StallIopfBridge(model, { handlerOf: () => (withHandler ? handler : undefined) });
  /** The handler answers the n-th group it was given. */
  const answer = (n: number, code: number) => bridge.iopf.respond(groups[n], generations[n], code);
  return { model, outcomes, stall, groups, generations, revoked, bridge, answer };
}

describe('stall to IOPF bridge', () => {
  test('a stall becomes a one-request IOPF group answered exactly once', () => {
    const { model, outcomes, stall, groups, bridge, answer } = bridged();
    const [stag] = stall(1, 0x12345, 5, ACCESS_WRITE | ACCESS_PRIV, 9);
    expect(bridge.toIopf(1, stag)).toBe(true);
    expect(groups).toHaveLength(1);
    const group = groups[0];
    expect(group).toMatchObject({ streamId: 1, pasid: 9, ssv: true, grpid: stag, count: 1 });
    expect(group.addresses[0]).toBe(0x12000);
    expect(group.accesses[0]).toBe(2 | 8); // write, privileged
    // A second toIopf while the group is pending raises nothing.
    expect(bridge.toIopf(1, stag)).toBe(false);
    expect(bridge.pending).toBe(1);

    expect(answer(0, PRG_SUCCESS)).toBe(true);
    expect(outcomes).toEqual([[5, 'retry']]);
    expect(answer(0, PRG_SUCCESS)).toBe(false);
    expect(answer(0, PRG_INVALID)).toBe(false);
    expect(outcomes).toHaveLength(1);
    expect(bridge.iopf.stats.duplicateAnswers).toBe(2);
    expect(model.held).toBe(0);
    expect(bridge.pending).toBe(0);
  });

  test('INVALID and FAILURE answers abort the stall, as does no handler at all', () => {
    const { outcomes, stall, bridge, answer } = bridged();
    const [a] = stall(1, 0x1000, 1);
    const [b] = stall(1, 0x2000, 2);
    bridge.toIopf(1, a);
    bridge.toIopf(1, b);
    answer(0, PRG_INVALID);
    answer(1, PRG_FAILURE);
    expect(outcomes).toEqual([
      [1, 'abort'],
      [2, 'abort'],
    ]);

    const orphan = bridged({}, false);
    const [c] = orphan.stall(1, 0x1000, 3);
    expect(orphan.bridge.toIopf(1, c)).toBe(true);
    expect(orphan.outcomes).toEqual([[3, 'abort']]);
    expect(orphan.bridge.iopf.stats.answeredWithoutHandler).toBe(1);
  });

  test('a TERMINATE answer ends the stall RAZ/WI under TERM_MODEL=0 and with abort under 1', () => {
    const { outcomes, stall, groups, bridge, answer } = bridged();
    const [a] = stall(1, 0x1000, 1);
    bridge.toIopf(1, a);
    expect(groups[0].stall).toBe(true);
    answer(0, STALL_RESP_TERMINATE);
    expect(outcomes).toEqual([[1, 'raz']]);
    expect(bridge.stats).toMatchObject({ terminated: 1, aborted: 0, retried: 0 });

    const abortOnly = bridged({ abortOnly: true });
    const [b] = abortOnly.stall(1, 0x1000, 2);
    abortOnly.bridge.toIopf(1, b);
    abortOnly.answer(0, STALL_RESP_TERMINATE);
    expect(abortOnly.outcomes).toEqual([[2, 'abort']]);
  });

  test("a late IOPF answer never resumes a newer stall that reused the group's STAG", () => {
    const { model, outcomes, stall, groups, bridge, answer } = bridged({ stags: 1 });
    const [stag] = stall(1, 0x1000, 1);
    bridge.toIopf(1, stag);
    model.stallTerm(1);
    expect(outcomes).toEqual([[1, 'abort']]);
    expect(bridge.stats.cancelled).toBe(1);
    // The only STAG is free again and goes to a new stall, raised as a second group.
    expect(stall(1, 0x2000, 2)[0]).toBe(stag);
    bridge.toIopf(1, stag);
    // The handler answers the first group late: nothing happens to the new stall.
    expect(groups).toHaveLength(2);
    expect(answer(0, PRG_SUCCESS)).toBe(false);
    expect(outcomes).toEqual([[1, 'abort']]);
    expect(model.held).toBe(1);
    answer(1, PRG_SUCCESS);
    expect(outcomes).toEqual([
      [1, 'abort'],
      [2, 'retry'],
    ]);
  });

  test('a stall that goes away is taken back from its holder before its group is answered', () => {
    // Without this the fault queue keeps a group the bridge frees: one group on two lists.
    const { model, stall, generations, revoked, bridge } = bridged();
    const [stag] = stall(1, 0x1000, 1);
    bridge.toIopf(1, stag);
    model.stallTerm(1);
    expect(revoked).toEqual([generations[0]]);
    expect(bridge.stats.cancelled).toBe(1);
    expect(bridge.pending).toBe(0);
  });

  test('a stall group past its deadline is taken back from the real holder and aborted', () => {
    const { outcomes, stall, generations, revoked, bridge } = bridged();
    bridge.iopf.deadlineMs = 1;
    const [stag] = stall(1, 0x1000, 1);
    bridge.toIopf(1, stag);
    expect(bridge.iopf.expire(performance.now() + 5)).toBe(1);
    expect(revoked).toEqual([generations[0]]);
    expect(outcomes).toEqual([[1, 'abort']]);
    expect(bridge.iopf.stats.timeouts).toBe(1);
  });

  test('a stage-2 stall is not reported as IOPF but aborted', () => {
    const { model, outcomes, groups, bridge } = bridged();
    const stag = model.stall(1, undefined, 0x1000, ACCESS_READ, S2_FAULT, 4).stag;
    expect(bridge.toIopf(1, stag)).toBe(false);
    expect(groups).toHaveLength(0);
    expect(outcomes).toEqual([[4, 'abort']]);
    expect(bridge.stats.stage2Aborted).toBe(1);
  });

  test('suppressed duplicates ride on the group of the recorded stall', () => {
    const { outcomes, stall, groups, bridge, answer } = bridged();
    const [stag] = stall(1, 0x3000, 1);
    stall(1, 0x3004, 2);
    bridge.toIopf(1, stag);
    expect(groups).toHaveLength(1);
    answer(0, PRG_SUCCESS);
    expect(outcomes).toEqual([
      [1, 'retry'],
      [2, 'retry'],
    ]);
  });
});

type Op =
  | { kind: 'stall'; sid: number; page: number; write: boolean; ssid: number }
  | { kind: 'resume'; sid: number; stag: number; retry: boolean; abort: boolean }
  | { kind: 'term'; sid: number }
  | { kind: 'disable' };

const ops = fc.array(
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('stall' as const),
        sid: fc.integer({ min: 0, max: 3 }),
        page: fc.integer({ min: 0, max: 7 }),
        write: fc.boolean(),
        ssid: fc.integer({ min: -1, max: 1 }),
      }),
    },
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('resume' as const),
        sid: fc.integer({ min: 0, max: 3 }),
        stag: fc.integer({ min: 0, max: 9 }),
        retry: fc.boolean(),
        abort: fc.boolean(),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('term' as const), sid: fc.integer({ min: 0, max: 3 }) }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('disable' as const) }) },
  ),
  { minLength: 20, maxLength: 300, size: 'max' },
);

describe('stall model against a reference', () => {
  test('every transaction gets exactly one outcome, and only the commands that name it resolve it', () => {
    fc.assert(
      fc.property(ops, fc.boolean(), (sequence: Op[], suppress) => {
        const capacity = 24;
        const stags = 10;
        const { model, outcomes, stall } = setup(
          { capacity, stags, suppressDuplicates: suppress },
          [0, 1, 2, 3],
        );
        /** Reference: held stalls by "sid/stag", each with its duplicate key and tokens in arrival order. */
        const held = new Map<string, { key: string; tokens: number[] }>();
        const heldCount = () => [...held.values()].reduce((n, s) => n + s.tokens.length, 0);
        const expected: [number, StallOutcome][] = [];
        let token = 0;
        for (const op of sequence) {
          if (op.kind === 'stall') {
            token++;
            const key = `${op.sid}/${op.ssid}/${op.page}/${op.write}`;
            const access = op.write ? ACCESS_WRITE : ACCESS_READ;
            const duplicate = suppress ? [...held.values()].find((s) => s.key === key) : undefined;
            const streamStags = [...held.keys()].filter((k) => k.startsWith(`${op.sid}/`)).length;
            const [stag, suppressed] = stall(
              op.sid,
              op.page * 0x1000 + 8,
              token,
              access,
              op.ssid < 0 ? undefined : op.ssid,
            );
            if (heldCount() === capacity || (!duplicate && streamStags === stags)) {
              expect(stag).toBe(NO_STAG);
              expected.push([token, 'abort']);
            } else if (duplicate) {
              expect(suppressed).toBe(true);
              duplicate.tokens.push(token);
            } else {
              expect(suppressed).toBe(false);
              expect(held.has(`${op.sid}/${stag}`)).toBe(false); // not reused while held
              held.set(`${op.sid}/${stag}`, { key, tokens: [token] });
            }
          } else if (op.kind === 'resume') {
            const s = held.get(`${op.sid}/${op.stag}`);
            expect(model.resume(op.sid, op.stag, op.retry, op.abort)).toBe(s !== undefined);
            if (s) {
              held.delete(`${op.sid}/${op.stag}`);
              const outcome = op.retry ? 'retry' : op.abort ? 'abort' : 'raz';
              for (const t of s.tokens) expected.push([t, outcome]);
            }
          } else {
            for (const [k, s] of held) {
              if (op.kind === 'term' && !k.startsWith(`${op.sid}/`)) continue;
              held.delete(k);
              for (const t of s.tokens) expected.push([t, 'abort']);
            }
            if (op.kind === 'term') model.stallTerm(op.sid);
            else model.disable();
          }
          expect(model.held).toBe(heldCount());
        }
        model.disable();
        for (const s of held.values()) for (const t of s.tokens) expected.push([t, 'abort']);
        const sort = (list: [number, StallOutcome][]) => [...list].sort((a, b) => a[0] - b[0]);
        expect(sort(outcomes)).toEqual(sort(expected));
        expect(outcomes).toHaveLength(token);
      }),
      { numRuns: 200 },
    );
  });
});
