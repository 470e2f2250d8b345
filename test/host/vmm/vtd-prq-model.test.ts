import { once } from 'node:events';
import { describe, expect, test } from 'vitest';
import { VtdPrqDriver } from '../../../guest/vtd-prq.ts';
import { VtdPageRequestQueue, type VtdPrqStats } from '../../../host/vmm/vtd-prq-model.ts';
import { DOORBELL_BYTES, Doorbell } from '../../../shared/doorbell.ts';
import {
  decodeVtdPageGroupResponse,
  decodeVtdPageRequest,
  encodeVtdPageGroupResponse,
  encodeVtdPageRequest,
  invalidationDescriptorType,
  isVtdStopMarker,
  newVtdPageGroupResponse,
  newVtdPageRequest,
  pageRequestType,
  QI_RESP_FAILURE,
  VTD_PAGE_GROUP_RESPONSE_TYPE,
  VTD_PAGE_REQUEST_TYPE,
  VTD_PRQ_ENTRY_WORDS,
  type VtdPageGroupResponse,
  type VtdPageRequest,
} from '../../../shared/records/vtd-prq-entry.ts';
import {
  PRS_PPR,
  PRS_PRO,
  VTD_PRQ_REGISTER_BYTES,
  vtdPrqBytes,
  vtdPrqConsumer,
} from '../../../shared/vtd-prq-registers.ts';
import { spawnWorker } from '../../../shared/worker-spawn.ts';
import { StoreRecorder } from '../../support/store-recorder.ts';

/** Bit `n` of the 64-bit qword `q` of the descriptor at word 0 of `words`. */
function bit(words: Int32Array, q: number, n: number): number {
  return n < 32 ? (words[2 * q] >>> n) & 1 : (words[2 * q + 1] >>> (n - 32)) & 1;
}

describe('VT-d page request descriptor', () => {
  test('fields sit at the VT-d bit positions and qw2/qw3 are zero', () => {
    const words = new Int32Array(VTD_PRQ_ENTRY_WORDS).fill(-1);
    const r: VtdPageRequest = {
      rid: 0x12_34,
      pasidPresent: true,
      pasid: 0xabcde,
      execRequested: true,
      privilegedRequested: true,
      read: true,
      write: false,
      lpig: true,
      prgIndex: 0x1ab,
      address: 0x7e00_1234_5000,
    };
    encodeVtdPageRequest(words, 0, r);
    expect(pageRequestType(words, 0)).toBe(VTD_PAGE_REQUEST_TYPE); // qw0 [7:0]
    expect(words[0] & 0xff).toBe(0x1);
    expect(bit(words, 0, 8)).toBe(1); // [8] PASID present
    expect((words[0] >>> 9) & 0x7f).toBe(0); // [15:9] reserved
    expect(words[0] >>> 16).toBe(0x1234); // [31:16] RID
    expect(words[1] & 0xfffff).toBe(0xabcde); // [51:32] PASID
    expect(bit(words, 0, 52)).toBe(1); // exec requested
    expect(bit(words, 0, 53)).toBe(1); // privileged-mode requested
    expect(words[1] >>> 22).toBe(0); // [63:54] reserved
    expect(bit(words, 1, 0)).toBe(1); // qw1 [0] read
    expect(bit(words, 1, 1)).toBe(0); // [1] write
    expect(bit(words, 1, 2)).toBe(1); // [2] LPIG
    expect((words[2] >>> 3) & 0x1ff).toBe(0x1ab); // [11:3] PRG index
    expect(words[2] >>> 12).toBe(0x12345); // [31:12] page address
    expect(words[3]).toBe(0x7e00); // [63:32] page address
    expect(Array.from(words.subarray(4))).toEqual([0, 0, 0, 0]); // qw2, qw3
  });

  test('decode inverts encode, and a stop marker is LPIG without read or write', () => {
    const words = new Int32Array(2 * VTD_PRQ_ENTRY_WORDS);
    const r = newVtdPageRequest();
    Object.assign(r, { rid: 0xffff, pasidPresent: true, pasid: 0xfffff, lpig: true, prgIndex: 0x1ff });
    r.address = 0xf_ffff_ffff_f000;
    encodeVtdPageRequest(words, VTD_PRQ_ENTRY_WORDS, r);
    const out = decodeVtdPageRequest(words, VTD_PRQ_ENTRY_WORDS, newVtdPageRequest());
    expect(out).toEqual(r);
    expect(isVtdStopMarker(out)).toBe(true);
    out.write = true;
    expect(isVtdStopMarker(out)).toBe(false);
  });
});

describe('VT-d page group response descriptor', () => {
  test('type, PASID present, response code, RID, PASID, LPIG and PRG index at the VT-d positions', () => {
    const words = new Int32Array(VTD_PRQ_ENTRY_WORDS).fill(-1);
    const r: VtdPageGroupResponse = {
      rid: 0xbeef,
      pasidPresent: true,
      pasid: 0x54321,
      code: QI_RESP_FAILURE,
      lpig: true,
      prgIndex: 0x155,
    };
    encodeVtdPageGroupResponse(words, 0, r);
    expect(invalidationDescriptorType(words, 0)).toBe(VTD_PAGE_GROUP_RESPONSE_TYPE);
    expect(words[0] & 0xf).toBe(0x9); // qw0 [3:0] type
    expect(bit(words, 0, 4)).toBe(1); // [4] PASID present
    expect((words[0] >>> 5) & 0x7f).toBe(0); // [11:5] reserved
    expect((words[0] >>> 12) & 0xf).toBe(0xf); // [15:12] response code
    expect(words[0] >>> 16).toBe(0xbeef); // [31:16] RID
    expect(words[1]).toBe(0x54321); // [51:32] PASID, [63:52] reserved
    expect(words[2]).toBe((1 << 2) | (0x155 << 3)); // qw1 [2] LPIG, [11:3] PRG index, rest 0
    expect(Array.from(words.subarray(3))).toEqual([0, 0, 0, 0, 0]);
    expect(decodeVtdPageGroupResponse(words, 0, newVtdPageGroupResponse())).toEqual(r);
  });
});

function makePrq(log2Size = 3) {
  const buffer = new SharedArrayBuffer(DOORBELL_BYTES + vtdPrqBytes(log2Size));
  const bell = new Doorbell(buffer, 0);
  const host = new VtdPageRequestQueue(buffer, DOORBELL_BYTES, log2Size, bell);
  const guest = new VtdPrqDriver(buffer, DOORBELL_BYTES, log2Size);
  // A bare consumer on the same queue, for tests that drain without the driver's PRO handling.
  const raw = vtdPrqConsumer(buffer, DOORBELL_BYTES, log2Size).ring;
  const request = newVtdPageRequest();
  request.pasidPresent = true;
  request.read = true;
  const write = (n: number, lpig = false) => {
    request.prgIndex = n;
    request.lpig = lpig;
    request.address = n * 4096;
    return host.write(request);
  };
  const received: number[] = [];
  const onRequest = (r: VtdPageRequest) => {
    received.push(r.prgIndex);
  };
  const drainRaw = () => {
    const n = raw.poll();
    for (let i = 0; i < n; i++) received.push(decodeVtdPageRequest(raw.words, raw.at(i), request).prgIndex);
    raw.release(n);
    return n;
  };
  return { buffer, bell, host, guest, write, received, onRequest, drainRaw };
}

describe('VT-d page request queue model', () => {
  test('the VT-d queue keeps one slot empty', () => {
    const { host, guest, write, received, onRequest } = makePrq(3);
    expect(host.capacity).toBe(7);
    for (let i = 0; i < 7; i++) expect(write(i)).toBe('written');
    expect(host.free).toBe(0);
    // Full: (PQT + 32) mod size == PQH, as both sides see it.
    expect((host.tail + 32) % 256).toBe(host.head);
    expect((guest.tail + 32) % 256).toBe(guest.head);
    expect(guest.pending()).toBe(7);
    expect(write(7, true)).toBe('dropped');
    expect(host.stats.dropped.full).toBe(1);
    expect(guest.pending()).toBe(7); // the eighth slot was never filled
    // Across the wrap, with PQH no longer 0, the queue again holds exactly 7.
    guest.service(onRequest);
    for (let i = 10; i < 17; i++) expect(write(i)).toBe('written');
    expect(write(17)).toBe('dropped');
    expect(guest.head).toBe(7 * 32);
    expect(guest.tail).toBe(6 * 32);
    guest.service(onRequest);
    expect(received).toEqual([0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16]);
    expect(host.stats.written).toBe(14);
  });

  test('PRO is sticky and drops every request until software clears it', () => {
    const { host, write, received, drainRaw } = makePrq(3);
    for (let i = 0; i < 7; i++) write(i);
    expect(write(7, true)).toBe('dropped');
    expect(host.status.read() & PRS_PRO).toBe(PRS_PRO);
    expect(drainRaw()).toBe(7); // the queue is empty now, but PRO stays
    const interrupts = host.stats.interrupts;
    for (let i = 20; i < 25; i++) expect(write(i, i === 24)).toBe('dropped');
    expect(host.stats.dropped).toEqual({ full: 1, overflowPending: 5 });
    expect(host.stats.interrupts).toBe(interrupts); // no event for these drops
    host.status.write(PRS_PPR); // clearing PPR leaves PRO alone
    host.status.write(0); // a 0 bit in a RW1C write changes nothing
    expect(host.status.read()).toBe(PRS_PRO);
    expect(write(30)).toBe('dropped');
    host.status.write(PRS_PRO);
    expect(host.status.read() & PRS_PRO).toBe(0);
    expect(write(31)).toBe('written');
    drainRaw();
    // Dropped requests (the LPIG ones included) are simply gone: no record, no automatic answer.
    expect(received).toEqual([0, 1, 2, 3, 4, 5, 6, 31]);
  });

  test('the page request interrupt fires only when neither PPR nor PRO was set', () => {
    const { bell, host, write, drainRaw } = makePrq(3);
    const interrupts = () => {
      expect(bell.sequence()).toBe(host.stats.interrupts);
      return host.stats.interrupts;
    };
    write(0);
    expect(host.status.read()).toBe(PRS_PPR);
    expect(interrupts()).toBe(1);
    write(1);
    expect(interrupts()).toBe(1); // PPR already set
    host.status.write(PRS_PPR);
    write(2);
    expect(interrupts()).toBe(2); // PPR was cleared: a new edge
    for (let i = 3; i < 7; i++) write(i);
    expect(write(7)).toBe('dropped'); // PRO set while PPR is set: no event
    expect(host.status.read()).toBe(PRS_PPR | PRS_PRO);
    expect(interrupts()).toBe(2);
    host.status.write(PRS_PPR);
    expect(write(8)).toBe('dropped'); // PRO alone still holds the aggregate
    expect(interrupts()).toBe(2);
    drainRaw();
    host.status.write(PRS_PRO);
    for (let i = 10; i < 17; i++) write(i);
    expect(interrupts()).toBe(3);
    host.status.write(PRS_PPR); // software cleared PPR but has not drained yet
    expect(write(17)).toBe('dropped');
    expect(host.status.read()).toBe(PRS_PRO);
    expect(interrupts()).toBe(4); // setting PRO with PPR clear is an edge too
  });

  test('PQT advances before PPR is set, so PPR never announces a request the guest cannot see yet', () => {
    const { host, guest, write } = makePrq(3);
    const visibleAtPpr: number[] = [];
    const set = host.status.set.bind(host.status);
    // Whatever the guest would read at the instant PPR becomes visible.
    host.status.set = (bits: number) => {
      if (bits & PRS_PPR) visibleAtPpr.push(guest.pending());
      return set(bits);
    };
    write(0);
    host.status.write(PRS_PPR);
    write(1);
    write(2); // PPR already set: no second update
    host.status.write(PRS_PPR);
    write(3);
    expect(visibleAtPpr).toEqual([1, 2, 4]);
  });

  test('PRO is never observable before the requests written ahead of it (recorded PQT and PRS stores)', () => {
    const stores = new StoreRecorder();
    const buffer = new SharedArrayBuffer(vtdPrqBytes(3));
    const host = new VtdPageRequestQueue(buffer, 0, 3, undefined, stores);
    const request = newVtdPageRequest();
    for (let i = 0; i < 7; i++) {
      request.prgIndex = i;
      expect(host.write(request)).toBe('written');
    }
    request.lpig = true;
    expect(host.write(request)).toBe('dropped');
    // The order the other side sees: every PQT store of the seven requests, and only then PRO.
    const order = stores.stores.filter((s) => s.kind === 'prod' || s.kind === 'or');
    const pro = order.findIndex((s) => s.kind === 'or' && (s.value & PRS_PRO) !== 0);
    expect(pro).toBeGreaterThan(0);
    const tails = order.slice(0, pro).filter((s) => s.kind === 'prod');
    expect(tails.map((s) => (s.kind === 'prod' ? s.index : -1))).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(order.slice(pro + 1).some((s) => s.kind === 'prod')).toBe(false);
  });

  test('the handler clears PPR before it reads, so a request landing mid-drain raises a new interrupt', () => {
    const { bell, host, guest, write, received } = makePrq(3);
    write(0);
    expect(bell.sequence()).toBe(1);
    let injected = false;
    guest.service((r) => {
      received.push(r.prgIndex);
      if (!injected) {
        injected = true;
        expect(write(1)).toBe('written'); // after this pass read PQT
      }
    });
    expect(received).toEqual([0]);
    expect(guest.pending()).toBe(1);
    expect(bell.sequence()).toBe(2); // the late request is signalled, not stranded
    expect(host.stats.interrupts).toBe(2);
    guest.service((r) => received.push(r.prgIndex));
    expect(received).toEqual([0, 1]);
  });

  test('after an overflow the handler drains to head == tail before it clears PRO', () => {
    const { host, guest, write, received, onRequest } = makePrq(3);
    let cleared = 0;
    const onCleared = () => {
      cleared++;
      expect(guest.pending()).toBe(0);
      expect(guest.status.read() & PRS_PRO).toBe(PRS_PRO);
    };
    // Requests arrive while the handler is busy with the first three: the queue fills and overflows.
    for (let i = 0; i < 3; i++) write(i);
    let burst = false;
    const handled = guest.service((r) => {
      onRequest(r);
      if (burst) return;
      burst = true;
      for (let i = 3; i < 7; i++) expect(write(i)).toBe('written');
      expect(write(7, true)).toBe('dropped');
    }, onCleared);
    expect(handled).toBe(3);
    // Four requests that predate the overflow are still queued: PRO must stay set.
    expect(guest.pending()).toBe(4);
    expect(guest.status.read() & PRS_PRO).toBe(PRS_PRO);
    expect(cleared).toBe(0);
    expect(guest.status.read() & PRS_PPR).toBe(PRS_PPR); // and the next pass is signalled
    expect(guest.service(onRequest, onCleared)).toBe(4);
    expect(cleared).toBe(1);
    expect(guest.stats.overflowsCleared).toBe(1);
    expect(guest.status.read()).toBe(0);
    expect(write(8)).toBe('written');
    guest.service(onRequest, onCleared);
    expect(received).toEqual([0, 1, 2, 3, 4, 5, 6, 8]);
    expect(host.stats.dropped.full).toBe(1);
    expect(cleared).toBe(1);
  });

  test('a guest PQH that claims an impossible fill level reads as a full queue', () => {
    const { buffer, host, write } = makePrq(3);
    const ringWords = new Int32Array(buffer, DOORBELL_BYTES + VTD_PRQ_REGISTER_BYTES, 64);
    Atomics.store(ringWords, 16, 5); // CONS 5 ahead of PROD 0: 11 of 8 slots "in use"
    expect(write(0)).toBe('dropped');
    expect(host.stats.dropped.full).toBe(1);
    expect(host.status.read() & PRS_PRO).toBe(PRS_PRO);
  });

  test('a host thread and a guest handler move 50,000 requests in bursts with none lost and no interrupt missed', async () => {
    const log2Size = 4;
    const total = 50_000;
    const { buffer, bell, guest } = makePrq(log2Size);
    const worker = spawnWorker(new URL('../../fixtures/vtd-prq-producer.worker.ts', import.meta.url), {
      workerData: { buffer, offset: DOORBELL_BYTES, log2Size, total },
    });
    const exited = once(worker, 'exit');
    expect((await once(worker, 'message'))[0]).toBe('ready');
    const reported = once(worker, 'message');
    let expected = 0;
    let mismatches = 0;
    let timeouts = 0;
    const onRequest = (r: VtdPageRequest) => {
      if (
        r.address !== expected * 4096 ||
        r.prgIndex !== (expected & 0x1ff) ||
        r.rid !== (expected & 0xffff)
      ) {
        mismatches++;
      }
      expected++;
    };
    // Interrupt-driven only: sleep on the sequence read before the pass, never poll PQT to decide.
    while (expected < total && timeouts < 3) {
      const seen = bell.sequence();
      guest.service(onRequest);
      if (expected >= total) break;
      bell.arm();
      if (bell.wait(seen, 5000) === 'timed-out') timeouts++;
    }
    const [stats] = (await reported) as [VtdPrqStats];
    const [code] = await exited;
    expect(code).toBe(0);
    expect(timeouts).toBe(0);
    expect(mismatches).toBe(0);
    expect(expected).toBe(total);
    expect(stats.written).toBe(total);
    expect(stats.dropped).toEqual({ full: 0, overflowPending: 0 });
    expect(stats.interrupts).toBeGreaterThan(0);
    expect(stats.interrupts).toBeLessThanOrEqual(guest.stats.passes);
    expect(guest.stats.handled).toBe(total);
  });
});
