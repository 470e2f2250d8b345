import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { IommufdError } from '../../../host/iommufd/errors.ts';
import {
  decodePageResponse,
  decodePgfault,
  decodeVeventHeader,
  encodePageResponse,
  encodePgfault,
  encodeVeventHeader,
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  IOMMUFD_PAGE_RESP_TERMINATE,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  PERM_EXEC,
  PERM_PRIV,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  type PgfaultRecord,
  pgfaultAddress,
  readPgfaultInto,
  recordView,
  VEVENT_HEADER_BYTES,
  writePgfaultFrom,
} from '../../../host/iommufd/eventq-records.ts';
import { type FaultGroup, FaultObject } from '../../../host/iommufd/fault.ts';
import { FaultInjector } from '../../../host/iommufd/fault-injector.ts';
import { IommufdObject } from '../../../host/iommufd/object.ts';
import { ObjectTable } from '../../../host/iommufd/object-table.ts';
import { VeventqObject } from '../../../host/iommufd/veventq.ts';
import { errnoOf } from '../../support/iommufd-errors.ts';

const INT_MAX = 0x7fff_ffff;

// --- FAULT helpers ---------------------------------------------------------------------------------

interface TestGroup extends FaultGroup {
  /** Codes passed to respond(), in order (exactly one expected over the group's life). */
  readonly answers: number[];
}

const attachmentA = { name: 'dev 1 pasid 0' };
const attachmentB = { name: 'dev 2 pasid 5' };

/** A complete group; respond() records its code and refuses a second answer outright. */
function group(
  grpid: number,
  requests: { addr: number; perm: number }[] = [{ addr: 0x1000, perm: PERM_READ }],
  opts: { devId?: number; pasid?: number; pasidValid?: boolean; attachment?: object; stall?: boolean } = {},
): TestGroup {
  const answers: number[] = [];
  return {
    devId: opts.devId ?? 1,
    streamId: 0x42,
    pasid: opts.pasid ?? 0,
    pasidValid: opts.pasidValid ?? false,
    grpid,
    count: requests.length,
    addresses: Float64Array.from(requests, (r) => r.addr),
    accesses: Uint8Array.from(requests, (r) => r.perm),
    attachment: opts.attachment ?? attachmentA,
    stall: opts.stall,
    generation: 0,
    answers,
    respond(code: number) {
      if (answers.length > 0) throw new Error(`group ${grpid} answered twice (${answers[0]}, then ${code})`);
      answers.push(code);
      return true;
    },
  };
}

function sized(grpid: number, records: number, attachment: object = attachmentA): TestGroup {
  const requests = Array.from({ length: records }, (_, i) => ({ addr: 0x1000 * (i + 1), perm: PERM_READ }));
  return group(grpid, requests, { attachment });
}

function setupFault() {
  const injector = new FaultInjector();
  const fault = new FaultObject(injector);
  const fd = fault.openFd();
  return { injector, fault, fd };
}

/** Read with a buffer of `records` records; returns the decoded records. */
function readRecords(fd: { read(buf: Uint8Array): number }, records: number): PgfaultRecord[] {
  const buf = new Uint8Array(records * PGFAULT_BYTES);
  const n = fd.read(buf);
  expect(n % PGFAULT_BYTES).toBe(0);
  return Array.from({ length: n / PGFAULT_BYTES }, (_, i) => decodePgfault(buf, i * PGFAULT_BYTES));
}

function responses(...entries: [cookie: number, code: number][]): Uint8Array {
  const buf = new Uint8Array(entries.length * PAGE_RESPONSE_BYTES);
  entries.forEach(([cookie, code], i) => {
    encodePageResponse(buf, i * PAGE_RESPONSE_BYTES, { cookie, code });
  });
  return buf;
}

/** Cookies of the groups in a read, one per group (the record with LAST_PAGE). */
function groupCookies(records: PgfaultRecord[]): number[] {
  return records.filter((r) => (r.flags & PGFAULT_FLAGS_LAST_PAGE) !== 0).map((r) => r.cookie);
}

// --- VEVENTQ helpers -------------------------------------------------------------------------------

class Viommu extends IommufdObject {
  readonly type = 'VIOMMU';
}

/** A queue whose sequence counter can be started near INT_MAX (2^31 reports are not practical). */
class SeededVeventq extends VeventqObject {
  startSequenceAt(sequence: number): void {
    this.sequence = sequence;
  }
}

const SELFTEST_VEVENTQ = 0xbeefbeef;

function setupVeventq(depth = 4) {
  const injector = new FaultInjector();
  const viommu = new Viommu();
  const veventq = new SeededVeventq(viommu, SELFTEST_VEVENTQ, depth, injector);
  const fd = veventq.openFd();
  return { injector, viommu, veventq, fd };
}

/** The selftest's event data: `{u32 virt_id}`, so 12 bytes per event with its header. */
function virtId(id: number): Uint8Array {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, id, true);
  return data;
}

interface ReadEvent {
  flags: number;
  sequence: number;
  virtId?: number;
}

/** Parse a veventq read of selftest events: marker = bare header, normal = header + u32. */
function parseEvents(buf: Uint8Array, n: number): ReadEvent[] {
  const events: ReadEvent[] = [];
  let at = 0;
  while (at < n) {
    const h = decodeVeventHeader(buf, at);
    at += VEVENT_HEADER_BYTES;
    if (h.flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS) {
      events.push({ flags: h.flags, sequence: h.sequence });
    } else {
      events.push({
        flags: h.flags,
        sequence: h.sequence,
        virtId: new DataView(buf.buffer).getUint32(at, true),
      });
      at += 4;
    }
  }
  expect(at).toBe(n);
  return events;
}

function readEvents(fd: { read(buf: Uint8Array): number }, bytes = 4096): ReadEvent[] {
  const buf = new Uint8Array(bytes);
  return parseEvents(buf, fd.read(buf));
}

// --- records ---------------------------------------------------------------------------------------

describe('event queue records', () => {
  test('iommu_hwpt_pgfault is 40 little-endian bytes at the uapi offsets', () => {
    const buf = new Uint8Array(PGFAULT_BYTES + 8).fill(0xaa);
    const rec: PgfaultRecord = {
      flags: PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE,
      devId: 0x11223344,
      pasid: 0xfffff,
      grpid: 0x1ff,
      perm: PERM_READ | PERM_WRITE | PERM_EXEC | PERM_PRIV,
      addr: 0x0123_4567_89ab_c000n,
      length: 0,
      cookie: 0xfedcba98,
    };
    encodePgfault(buf, 8, rec);
    const view = new DataView(buf.buffer);
    expect(view.getUint32(8, true)).toBe(3);
    expect(view.getUint32(12, true)).toBe(0x11223344);
    expect(view.getUint32(16, true)).toBe(0xfffff);
    expect(view.getUint32(20, true)).toBe(0x1ff);
    expect(view.getUint32(24, true)).toBe(15);
    expect(view.getUint32(28, true)).toBe(0); // __reserved
    expect(view.getBigUint64(32, true)).toBe(0x0123_4567_89ab_c000n);
    expect(view.getUint32(40, true)).toBe(0);
    expect(view.getUint32(44, true)).toBe(0xfedcba98);
    expect(Array.from(buf.subarray(0, 8))).toEqual(new Array(8).fill(0xaa));
    expect(decodePgfault(buf, 8)).toEqual(rec);
  });

  test('the hot-path pgfault reader and writer agree with the BigInt codec', () => {
    const buf = new Uint8Array(PGFAULT_BYTES);
    const view = recordView(buf);
    const f = newPgfaultFields();
    Object.assign(f, { flags: 2, devId: 7, pasid: 1, grpid: 2, perm: 3, length: 0, cookie: 9 });
    f.addrLow = 0xdeadb000;
    f.addrHigh = 0x1f;
    writePgfaultFrom(view, 0, f);
    expect(decodePgfault(buf, 0).addr).toBe(0x1f_dead_b000n);
    const out = readPgfaultInto(view, 0, newPgfaultFields());
    expect(out).toEqual(f);
    expect(pgfaultAddress(out)).toBe(0x1f_dead_b000);
  });

  test('page response and vevent header are 8 bytes: two u32', () => {
    const buf = new Uint8Array(PAGE_RESPONSE_BYTES);
    encodePageResponse(buf, 0, { cookie: 0x01020304, code: IOMMUFD_PAGE_RESP_INVALID });
    expect(Array.from(buf)).toEqual([4, 3, 2, 1, 1, 0, 0, 0]);
    expect(decodePageResponse(buf, 0)).toEqual({ cookie: 0x01020304, code: 1 });
    const hdr = new Uint8Array(VEVENT_HEADER_BYTES);
    encodeVeventHeader(hdr, 0, { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: INT_MAX });
    expect(Array.from(hdr)).toEqual([1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
    expect(decodeVeventHeader(hdr, 0)).toEqual({ flags: 1, sequence: INT_MAX });
  });
});

// --- FAULT -----------------------------------------------------------------------------------------

describe('FAULT object', () => {
  test('cookies are assigned at read, lowest free from 1', () => {
    const { fault, fd } = setupFault();
    const g = [group(10), group(11), group(12)];
    for (const x of g) fault.report(x);
    expect(fault.awaitingCount).toBe(0); // arrival assigns nothing
    expect(groupCookies(readRecords(fd, 1))).toEqual([1]);
    expect(groupCookies(readRecords(fd, 2))).toEqual([2, 3]);
    expect(fd.write(responses([2, IOMMUFD_PAGE_RESP_SUCCESS]))).toBe(8);
    const late = [group(13), group(14)];
    for (const x of late) fault.report(x);
    // 2 is the lowest free value, then the allocator continues past 3.
    expect(groupCookies(readRecords(fd, 2))).toEqual([2, 4]);
    expect(fd.write(responses([1, 0], [3, 0], [4, 0], [2, 0]))).toBe(32);
    fault.report(group(15));
    expect(groupCookies(readRecords(fd, 1))).toEqual([1]);
  });

  test('all records of a group carry its cookie; LAST_PAGE on the last only; PASID_VALID per group', () => {
    const { fault, fd } = setupFault();
    const high = 0x7fff_dead_b000; // above 2^32: both address words matter
    fault.report(
      group(
        0x1ff,
        [
          { addr: 0x1000, perm: PERM_READ },
          { addr: high, perm: PERM_WRITE | PERM_PRIV },
          { addr: 0x3000, perm: PERM_EXEC },
        ],
        { devId: 42, pasid: 0x1, pasidValid: true },
      ),
    );
    fault.report(group(2, [{ addr: 0xdeadb000, perm: PERM_READ | PERM_WRITE }], { devId: 43, pasid: 0 }));
    const records = readRecords(fd, 4);
    expect(records).toEqual([
      { flags: 1, devId: 42, pasid: 1, grpid: 0x1ff, perm: 1, addr: 0x1000n, length: 0, cookie: 1 },
      { flags: 1, devId: 42, pasid: 1, grpid: 0x1ff, perm: 10, addr: BigInt(high), length: 0, cookie: 1 },
      { flags: 3, devId: 42, pasid: 1, grpid: 0x1ff, perm: 4, addr: 0x3000n, length: 0, cookie: 1 },
      { flags: 2, devId: 43, pasid: 0, grpid: 2, perm: 3, addr: 0xdeadb000n, length: 0, cookie: 2 },
    ]);
    expect(fault.stats).toMatchObject({ reported: 2, read: 2 });
  });

  test('a read count that is not a multiple of 40 is ESPIPE, even on an empty queue', () => {
    const { fault, fd } = setupFault();
    expect(errnoOf(() => fd.read(new Uint8Array(39)))).toBe('ESPIPE');
    fault.report(group(1));
    expect(errnoOf(() => fd.read(new Uint8Array(41)))).toBe('ESPIPE');
    expect(errnoOf(() => fd.read(new Uint8Array(8)))).toBe('ESPIPE');
    expect(fault.undeliveredCount).toBe(1);
  });

  test('a read of an empty queue returns 0 at once', () => {
    const { fd } = setupFault();
    expect(fd.read(new Uint8Array(0))).toBe(0);
    expect(fd.read(new Uint8Array(PGFAULT_BYTES))).toBe(0);
  });

  test('a read smaller than the first group is EINVAL and leaves the group undelivered', () => {
    const { fault, fd } = setupFault();
    fault.report(sized(1, 2));
    expect(errnoOf(() => fd.read(new Uint8Array(PGFAULT_BYTES)))).toBe('EINVAL');
    // count 0 does not fit a group either (NEW kernels; OLD returned 0).
    expect(errnoOf(() => fd.read(new Uint8Array(0)))).toBe('EINVAL');
    expect(fault.undeliveredCount).toBe(1);
    expect(fault.awaitingCount).toBe(0);
    expect(groupCookies(readRecords(fd, 2))).toEqual([1]);
  });

  test('groups are copied whole in FIFO order; the read stops at the first group that does not fit', () => {
    const { fault, fd } = setupFault();
    fault.report(sized(1, 1));
    fault.report(sized(2, 3));
    fault.report(sized(3, 1));
    // Room for 3 records: group 1 fits, group 2 (3 records) does not, group 3 must wait behind it.
    const first = readRecords(fd, 3);
    expect(first.map((r) => r.grpid)).toEqual([1]);
    expect(fault.undeliveredCount).toBe(2);
    const rest = readRecords(fd, 4);
    expect(rest.map((r) => r.grpid)).toEqual([2, 2, 2, 3]);
    expect(fault.undeliveredCount).toBe(0);
    expect(fault.awaitingCount).toBe(3);
  });

  test('a cookie-insert failure keeps the group at the head: bytes so far, or the errno if none', () => {
    const { injector, fault, fd } = setupFault();
    fault.report(group(1));
    fault.report(group(2));
    injector.arm(1);
    expect(errnoOf(() => fd.read(new Uint8Array(2 * PGFAULT_BYTES)))).toBe('ENOMEM');
    expect(injector.failedAt).toBe('cookie-insert');
    expect(fault.undeliveredCount).toBe(2);
    expect(fault.awaitingCount).toBe(0);
    injector.arm(2);
    const partial = readRecords(fd, 2);
    expect(partial.map((r) => [r.grpid, r.cookie])).toEqual([[1, 1]]);
    expect(fault.undeliveredCount).toBe(1);
    injector.disarm();
    expect(readRecords(fd, 1).map((r) => [r.grpid, r.cookie])).toEqual([[2, 2]]);
  });

  test('a write count that is not a multiple of 8 is ESPIPE', () => {
    const { fault, fd } = setupFault();
    const g = group(1);
    fault.report(g);
    readRecords(fd, 1);
    expect(errnoOf(() => fd.write(new Uint8Array(7)))).toBe('ESPIPE');
    expect(errnoOf(() => fd.write(new Uint8Array(12)))).toBe('ESPIPE');
    expect(g.answers).toEqual([]);
    expect(fd.write(new Uint8Array(0))).toBe(0);
  });

  test('a response code other than SUCCESS or INVALID is EINVAL and answers nothing', () => {
    const { fault, fd } = setupFault();
    const g = group(1);
    fault.report(g);
    readRecords(fd, 1);
    expect(errnoOf(() => fd.write(responses([1, 2])))).toBe('EINVAL');
    expect(errnoOf(() => fd.write(responses([1, 0xf])))).toBe('EINVAL');
    expect(g.answers).toEqual([]);
    expect(fault.awaitingCount).toBe(1);
  });

  test('TERMINATE (a sandbox extension) answers a stalled transaction only: a page-request group refuses it', () => {
    const { fault, fd } = setupFault();
    const pri = group(1);
    const stalled = group(2, undefined, { stall: true });
    fault.report(pri);
    fault.report(stalled);
    readRecords(fd, 2);
    expect(errnoOf(() => fd.write(responses([1, IOMMUFD_PAGE_RESP_TERMINATE])))).toBe('EINVAL');
    expect(pri.answers).toEqual([]);
    expect(fd.write(responses([2, IOMMUFD_PAGE_RESP_TERMINATE]))).toBe(8);
    expect(stalled.answers).toEqual([IOMMUFD_PAGE_RESP_TERMINATE]);
    expect(fault.awaitingCount).toBe(1);
  });

  test('a cookie not awaiting a response is EINVAL: never issued, unread, or already answered', () => {
    const { fault, fd } = setupFault();
    const read = group(1);
    const unread = group(2);
    fault.report(read);
    fault.report(unread);
    readRecords(fd, 1);
    expect(errnoOf(() => fd.write(responses([0, 0])))).toBe('EINVAL');
    expect(errnoOf(() => fd.write(responses([2, 0])))).toBe('EINVAL'); // unread group has no cookie yet
    expect(errnoOf(() => fd.write(responses([0xffff_ffff, 0])))).toBe('EINVAL');
    expect(fd.write(responses([1, IOMMUFD_PAGE_RESP_INVALID]))).toBe(8);
    expect(errnoOf(() => fd.write(responses([1, 0])))).toBe('EINVAL');
    expect(read.answers).toEqual([IOMMUFD_PAGE_RESP_INVALID]);
    expect(unread.answers).toEqual([]);
  });

  test('write stops at the first bad response and returns the bytes consumed', () => {
    const { fault, fd } = setupFault();
    const g = [group(1), group(2), group(3)];
    for (const x of g) fault.report(x);
    readRecords(fd, 3);
    expect(fd.write(responses([1, 0], [9, 0], [3, 0]))).toBe(8);
    expect(fd.write(responses([2, 1], [3, 5], [3, 0]))).toBe(8);
    expect(g.map((x) => x.answers)).toEqual([[0], [1], []]);
    expect(fault.awaitingCount).toBe(1);
    expect(fd.write(responses([3, 0]))).toBe(8);
    expect(fault.stats.responded).toBe(3);
  });

  test('a response retires the whole group: one answer to the device, whatever its size', () => {
    const { fault, fd } = setupFault();
    const g = sized(1, 5);
    fault.report(g);
    expect(readRecords(fd, 5).every((r) => r.cookie === 1)).toBe(true);
    expect(fd.write(responses([1, IOMMUFD_PAGE_RESP_SUCCESS]))).toBe(8);
    expect(g.answers).toEqual([IOMMUFD_PAGE_RESP_SUCCESS]);
    expect(fault.awaitingCount).toBe(0);
  });

  test('auto-respond answers undelivered and awaiting groups of the attachment INVALID', () => {
    const { fault, fd } = setupFault();
    const a1 = sized(1, 1, attachmentA);
    const b1 = sized(2, 1, attachmentB);
    const a2 = sized(3, 1, attachmentA);
    const b2 = sized(4, 1, attachmentB);
    const a3 = sized(5, 1, attachmentA);
    for (const x of [a1, b1, a2, b2]) fault.report(x);
    readRecords(fd, 3); // a1 -> 1, b1 -> 2, a2 -> 3 awaiting; b2 undelivered
    fault.report(a3);
    expect(fault.autoRespond(attachmentA)).toBe(3);
    for (const x of [a1, a2, a3]) expect(x.answers).toEqual([IOMMUFD_PAGE_RESP_INVALID]);
    expect(b1.answers).toEqual([]);
    expect(b2.answers).toEqual([]);
    expect(fault.undeliveredCount).toBe(1);
    expect(fault.awaitingCount).toBe(1);
    // Their cookies are gone: answering them now is EINVAL and reaches no device.
    expect(errnoOf(() => fd.write(responses([1, 0])))).toBe('EINVAL');
    expect(errnoOf(() => fd.write(responses([3, 0])))).toBe('EINVAL');
    expect(groupCookies(readRecords(fd, 1))).toEqual([1]); // b2 takes the freed lowest cookie
    expect(fd.write(responses([2, 0], [1, 0]))).toBe(16);
    expect(fault.autoRespond(attachmentA)).toBe(0);
    expect(fault.stats).toEqual({
      reported: 5,
      read: 4,
      responded: 2,
      autoResponded: 3,
      refusedResponses: 2,
      lateResponses: 0,
      revoked: 0,
      staleTouches: 0,
    });
  });

  test('destroy answers every remaining group INVALID', () => {
    const injector = new FaultInjector();
    const table = new ObjectTable(injector);
    const fault = table.create(() => new FaultObject(injector));
    const fd = fault.openFd();
    const g = [group(1), group(2), group(3)];
    for (const x of g) fault.report(x);
    readRecords(fd, 1);
    expect(fd.write(responses([1, 0]))).toBe(8);
    readRecords(fd, 1);
    fd.close();
    table.destroy(fault.id);
    expect(g.map((x) => x.answers)).toEqual([[0], [1], [1]]);
    expect(fault.undeliveredCount + fault.awaitingCount).toBe(0);
    expect(fault.stats.autoResponded).toBe(2);
  });

  test('poll: readable while undelivered groups exist, always writable', () => {
    const { fault, fd } = setupFault();
    expect(fd.readable).toBe(false);
    expect(fd.writable).toBe(true);
    fault.report(group(1));
    expect(fd.readable).toBe(true);
    readRecords(fd, 1);
    expect(fd.readable).toBe(false); // awaiting a response is not readable
  });

  test('the open fd holds the object: destroy is EBUSY until close', () => {
    const injector = new FaultInjector();
    const table = new ObjectTable(injector);
    const fault = table.create(() => new FaultObject(injector));
    const fd = fault.openFd();
    expect(fault.users).toBe(2);
    expect(errnoOf(() => table.destroy(fault.id))).toBe('EBUSY');
    fd.close();
    expect(fault.users).toBe(1);
    table.destroy(fault.id);
    expect(table.find(fault.id)).toBeUndefined();
  });

  test('read/write/close after close is EBADF-or-EINVAL', () => {
    const { fault, fd } = setupFault();
    fault.report(group(1));
    fd.close();
    expect(errnoOf(() => fd.read(new Uint8Array(PGFAULT_BYTES)))).toBe('EBADF');
    expect(errnoOf(() => fd.write(new Uint8Array(PAGE_RESPONSE_BYTES)))).toBe('EBADF');
    expect(errnoOf(() => fd.close())).toBe('EBADF');
    expect(fd.readable).toBe(false);
    expect(fault.users).toBe(1); // the second close did not drop another reference
  });

  test('fd-create failure leaves no reference', () => {
    const injector = new FaultInjector();
    const fault = new FaultObject(injector);
    injector.arm(1);
    expect(errnoOf(() => fault.openFd())).toBe('ENOMEM');
    expect(injector.failedAt).toBe('fd-create');
    expect(fault.users).toBe(1);
  });

  test('a group is in exactly one place and is answered exactly once, whatever userspace does', () => {
    type Op =
      | { kind: 'report'; records: number; attachment: number }
      | { kind: 'read'; records: number; failNth: number }
      | { kind: 'write'; pick: number[]; code: number }
      | { kind: 'detach'; attachment: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({
        kind: fc.constant('report' as const),
        records: fc.integer({ min: 1, max: 4 }),
        attachment: fc.integer({ min: 0, max: 2 }),
      }),
      fc.record({
        kind: fc.constant('read' as const),
        records: fc.integer({ min: 0, max: 8 }),
        failNth: fc.integer({ min: 0, max: 3 }),
      }),
      fc.record({
        kind: fc.constant('write' as const),
        pick: fc.array(fc.integer({ min: 0, max: 12 }), { maxLength: 4 }),
        code: fc.integer({ min: 0, max: 2 }),
      }),
      fc.record({ kind: fc.constant('detach' as const), attachment: fc.integer({ min: 0, max: 2 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const { injector, fault, fd } = setupFault();
        const attachments = [{}, {}, {}];
        const all: TestGroup[] = [];
        /** Model: cookie -> group awaiting a response. */
        const awaiting = new Map<number, TestGroup>();
        for (const o of ops) {
          if (o.kind === 'report') {
            const g = sized(all.length, o.records, attachments[o.attachment]);
            all.push(g);
            fault.report(g);
          } else if (o.kind === 'read') {
            injector.arm(o.failNth);
            try {
              for (const r of readRecords(fd, o.records)) {
                const g = all[r.grpid];
                if (r.flags & PGFAULT_FLAGS_LAST_PAGE) {
                  // Lowest free cookie from 1.
                  let lowest = 1;
                  while (awaiting.has(lowest)) lowest++;
                  expect(r.cookie).toBe(lowest);
                  awaiting.set(r.cookie, g);
                }
              }
            } catch (error) {
              if (!(error instanceof IommufdError)) throw error;
              expect(['EINVAL', 'ENOMEM']).toContain(error.errno);
            } finally {
              injector.disarm();
            }
          } else if (o.kind === 'write') {
            for (const cookie of o.pick) {
              const g = awaiting.get(cookie);
              const valid = g !== undefined && o.code <= 1;
              if (valid) {
                expect(fd.write(responses([cookie, o.code]))).toBe(8);
                expect(g.answers).toEqual([o.code]);
                awaiting.delete(cookie);
              } else {
                expect(errnoOf(() => fd.write(responses([cookie, o.code])))).toBe('EINVAL');
              }
            }
          } else {
            const target = attachments[o.attachment];
            const before = all.filter((g) => g.attachment === target && g.answers.length === 0).length;
            expect(fault.autoRespond(target)).toBe(before);
            for (const [cookie, g] of awaiting) if (g.attachment === target) awaiting.delete(cookie);
          }
          const retired = all.filter((g) => g.answers.length === 1).length;
          expect(fault.undeliveredCount + fault.awaitingCount + retired).toBe(all.length);
          expect(fault.awaitingCount).toBe(awaiting.size);
        }
        fd.close();
        fault.destroy();
        expect(all.every((g) => g.answers.length === 1)).toBe(true);
      }),
      { numRuns: 200 },
    );
  });
});

// --- VEVENTQ ---------------------------------------------------------------------------------------

describe('VEVENTQ object', () => {
  test('the queue holds its vIOMMU until destroyed', () => {
    const injector = new FaultInjector();
    const viommu = new Viommu();
    const veventq = new VeventqObject(viommu, SELFTEST_VEVENTQ, 2, injector);
    expect(viommu.users).toBe(2);
    expect(veventq.veventqType).toBe(SELFTEST_VEVENTQ);
    veventq.destroy();
    expect(viommu.users).toBe(1);
  });

  test('events are read in order as header + data, sequence numbers from 0', () => {
    const { veventq, fd } = setupVeventq();
    veventq.report(virtId(0x10));
    veventq.report(virtId(0x20));
    expect(veventq.length).toBe(2);
    expect(readEvents(fd)).toEqual([
      { flags: 0, sequence: 0, virtId: 0x10 },
      { flags: 0, sequence: 1, virtId: 0x20 },
    ]);
    expect(veventq.length).toBe(0);
    expect(veventq.nextSequence).toBe(2);
  });

  test('the reported data is copied at report time', () => {
    const { veventq, fd } = setupVeventq();
    const data = virtId(7);
    veventq.report(data);
    data.fill(0);
    expect(readEvents(fd)).toEqual([{ flags: 0, sequence: 0, virtId: 7 }]);
  });

  test('a read count below 8 is EINVAL, even on an empty queue', () => {
    const { veventq, fd } = setupVeventq();
    expect(errnoOf(() => fd.read(new Uint8Array(0)))).toBe('EINVAL');
    expect(errnoOf(() => fd.read(new Uint8Array(7)))).toBe('EINVAL');
    veventq.report(virtId(1));
    expect(errnoOf(() => fd.read(new Uint8Array(7)))).toBe('EINVAL');
    expect(veventq.length).toBe(1);
  });

  test('a read of an empty queue returns 0 at once', () => {
    const { fd } = setupVeventq();
    expect(fd.read(new Uint8Array(64))).toBe(0);
  });

  test('a read smaller than the first event is EINVAL and leaves the event queued', () => {
    const { veventq, fd } = setupVeventq();
    veventq.report(virtId(1));
    expect(errnoOf(() => fd.read(new Uint8Array(11)))).toBe('EINVAL');
    expect(veventq.length).toBe(1);
    expect(readEvents(fd, 12)).toEqual([{ flags: 0, sequence: 0, virtId: 1 }]);
  });

  test('a read stops at the first event that does not fit and returns the bytes so far', () => {
    const { veventq, fd } = setupVeventq();
    veventq.report(virtId(1));
    veventq.report(virtId(2));
    const buf = new Uint8Array(12 + 11);
    expect(fd.read(buf)).toBe(12);
    expect(veventq.length).toBe(1);
    // Less than a header left over after an event: stop there too.
    veventq.report(virtId(3));
    expect(fd.read(new Uint8Array(12 + 4))).toBe(12);
    expect(readEvents(fd).map((e) => e.virtId)).toEqual([3]);
  });

  test('the lost-events marker is one, last, and renumbered', () => {
    const { veventq, fd } = setupVeventq(2);
    for (let i = 0; i < 5; i++) veventq.report(virtId(i));
    // Reports 2, 3 and 4 were dropped; the one marker carries the last of them.
    expect(veventq.length).toBe(2);
    expect(veventq.hasLostMarker).toBe(true);
    expect(veventq.markerIsLast).toBe(true);
    expect(veventq.nextSequence).toBe(5);
    expect(readEvents(fd)).toEqual([
      { flags: 0, sequence: 0, virtId: 0 },
      { flags: 0, sequence: 1, virtId: 1 },
      { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 4 },
    ]);
    // Read once, the marker is gone.
    expect(veventq.hasLostMarker).toBe(false);
    expect(fd.read(new Uint8Array(64))).toBe(0);
  });

  test('a normal event queued behind the marker removes it; the sequence gap shows the loss', () => {
    const { veventq, fd } = setupVeventq(1);
    veventq.report(virtId(1)); // seq 0
    veventq.report(virtId(2)); // seq 1, dropped: marker
    expect(readEvents(fd, 12)).toEqual([{ flags: 0, sequence: 0, virtId: 1 }]);
    expect(veventq.markerIsLast).toBe(true);
    veventq.report(virtId(3)); // seq 2, room again: marker removed
    expect(veventq.hasLostMarker).toBe(false);
    expect(readEvents(fd)).toEqual([{ flags: 0, sequence: 2, virtId: 3 }]);
  });

  test('only normal events count against depth; the marker is a bare 8-byte header', () => {
    const { veventq, fd } = setupVeventq(1);
    veventq.report(virtId(1));
    veventq.report(virtId(2)); // marker
    expect(veventq.length).toBe(1);
    expect(readEvents(fd, 12 + 8)).toEqual([
      { flags: 0, sequence: 0, virtId: 1 },
      { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 1 },
    ]);
    veventq.report(virtId(3));
    veventq.report(virtId(4)); // marker again, behind a queue of depth events
    // An 8-byte read cannot hold the event at the head: EINVAL, nothing moves.
    expect(errnoOf(() => fd.read(new Uint8Array(8)))).toBe('EINVAL');
    expect(readEvents(fd, 12)).toEqual([{ flags: 0, sequence: 2, virtId: 3 }]);
    // The marker alone fits in exactly one header.
    expect(readEvents(fd, 8)).toEqual([{ flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 3 }]);
  });

  test('an allocation failure drops the event and leaves the marker', () => {
    const { injector, veventq, fd } = setupVeventq(4);
    veventq.report(virtId(1));
    injector.arm(1);
    veventq.report(virtId(2));
    expect(injector.failedAt).toBe('object-alloc');
    injector.disarm();
    expect(veventq.length).toBe(1);
    expect(veventq.markerIsLast).toBe(true);
    expect(readEvents(fd)).toEqual([
      { flags: 0, sequence: 0, virtId: 1 },
      { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 1 },
    ]);
  });

  test('sequence wraps at INT_MAX', () => {
    const { veventq, fd } = setupVeventq(8);
    veventq.startSequenceAt(INT_MAX - 1);
    for (let i = 0; i < 3; i++) veventq.report(virtId(i));
    expect(readEvents(fd).map((e) => e.sequence)).toEqual([INT_MAX - 1, INT_MAX, 0]);
    expect(veventq.nextSequence).toBe(1);
  });

  test('a dropped report consumes a sequence number too, and the marker wraps with it', () => {
    const { veventq, fd } = setupVeventq(1);
    veventq.startSequenceAt(INT_MAX);
    veventq.report(virtId(1)); // INT_MAX
    veventq.report(virtId(2)); // 0, dropped
    expect(readEvents(fd)).toEqual([
      { flags: 0, sequence: INT_MAX, virtId: 1 },
      { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 0 },
    ]);
    expect(veventq.nextSequence).toBe(1);
  });

  test('poll: readable while anything is queued, the marker included; never writable', () => {
    const { veventq, fd } = setupVeventq(1);
    expect(fd.readable).toBe(false);
    expect(fd.writable).toBe(false);
    veventq.report(virtId(1));
    veventq.report(virtId(2));
    readEvents(fd, 12);
    expect(veventq.length).toBe(0);
    expect(fd.readable).toBe(true);
  });

  test('write is EINVAL: the fd has no write', () => {
    const { fd } = setupVeventq();
    expect(errnoOf(() => fd.write(new Uint8Array(8)))).toBe('EINVAL');
  });

  test('read/write/close after close is EBADF-or-EINVAL', () => {
    const { veventq, fd } = setupVeventq();
    expect(veventq.users).toBe(2);
    fd.close();
    expect(veventq.users).toBe(1);
    expect(errnoOf(() => fd.read(new Uint8Array(64)))).toBe('EBADF');
    expect(errnoOf(() => fd.write(new Uint8Array(8)))).toBe('EBADF');
    expect(errnoOf(() => fd.close())).toBe('EBADF');
    expect(veventq.users).toBe(1);
  });

  test('fd-create failure leaves no reference', () => {
    const injector = new FaultInjector();
    const viommu = new Viommu();
    const veventq = new VeventqObject(viommu, SELFTEST_VEVENTQ, 1, injector);
    injector.arm(1);
    expect(errnoOf(() => veventq.openFd())).toBe('ENOMEM');
    expect(injector.failedAt).toBe('fd-create');
    expect(veventq.users).toBe(1);
    veventq.abort();
    expect(viommu.users).toBe(1);
  });

  test('the open fd holds the queue and the queue holds the vIOMMU: destroy order is enforced', () => {
    const injector = new FaultInjector();
    const table = new ObjectTable(injector);
    const viommu = table.create(() => new Viommu());
    const veventq = table.create(() => new VeventqObject(viommu, SELFTEST_VEVENTQ, 1, injector));
    const fd = veventq.openFd();
    expect(errnoOf(() => table.destroy(viommu.id))).toBe('EBUSY');
    expect(errnoOf(() => table.destroy(veventq.id))).toBe('EBUSY');
    fd.close();
    table.destroy(veventq.id);
    table.destroy(viommu.id);
    expect(table.objects()).toEqual([]);
  });

  test('the queue never holds more than depth normal events plus one marker, always last', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.oneof(fc.constant(-1), fc.constant(-2), fc.integer({ min: 8, max: 64 })), {
          maxLength: 60,
        }),
        (depth, ops) => {
          const { injector, veventq, fd } = setupVeventq(depth);
          let reported = 0;
          let lastSeen = -1;
          for (const o of ops) {
            if (o === -1) {
              veventq.report(virtId(reported++));
            } else if (o === -2) {
              injector.arm(1);
              veventq.report(virtId(reported++));
              injector.disarm();
            } else {
              const buf = new Uint8Array(o);
              let n = 0;
              try {
                n = fd.read(buf);
              } catch (error) {
                if (!(error instanceof IommufdError) || error.errno !== 'EINVAL') throw error;
              }
              // Sequence numbers only go up, and a marker never precedes the event after it.
              for (const e of parseEvents(buf, n)) {
                expect(e.sequence).toBeGreaterThan(lastSeen);
                lastSeen = e.sequence;
              }
            }
            expect(veventq.length).toBeLessThanOrEqual(depth);
            expect(veventq.hasLostMarker).toBe(veventq.markerIsLast);
            expect(veventq.nextSequence).toBe(reported);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
