/**
 * The FAULT object (iommufd eventq.c; iommufd-model.md 6): the queue through which userspace sees the
 * I/O page-fault groups of the HWPTs that name it, and answers them.
 *
 * A group is in exactly one place: undelivered (FIFO, waiting for read()), awaiting a response (in
 * the response table under its cookie), or retired (answered and forgotten). Cookies are handed out
 * when a group is read, not when it arrives, lowest free value from 1 (the kernel's XA_FLAGS_ALLOC1
 * xarray). Every group is answered exactly once: by userspace through write(), or INVALID on its
 * behalf when its attachment ends or the object is destroyed.
 */
import { IommufdError } from './errors.ts';
import {
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  newPgfaultFields,
  PAGE_RESPONSE_BYTES,
  type PageResponse,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  readPageResponseInto,
  recordView,
  writePgfaultFrom,
} from './eventq-records.ts';
import type { FaultInjector } from './fault-injector.ts';
import { IommufdObject } from './object.ts';

const TWO_32 = 0x1_0000_0000;
/** Cookies are u32 (xa_limit_32b). */
const MAX_COOKIE = 0xffff_ffff;

/** A complete page-request group (partial grouping already happened in the IOMMU core). */
export interface FaultGroup {
  /** The iommufd DEVICE id. */
  readonly devId: number;
  /** The physical StreamID (RID) whose requests formed the group: host knowledge, not in the uAPI. */
  readonly streamId: number;
  readonly pasid: number;
  readonly pasidValid: boolean;
  readonly grpid: number;
  /** Number of page requests in the group (>= 1). */
  readonly count: number;
  /** Page address of request i (i < count), a plain number < 2^53. */
  readonly addresses: Float64Array;
  /** Perm bits of request i: 1 read, 2 write, 4 exec, 8 priv (same as PERM_*). */
  readonly accesses: Uint8Array;
  /** Identity of the (device, pasid) attachment that raised it. */
  readonly attachment: object;
  /** Send the response to the device; the FAULT object calls it exactly once per group. */
  respond(code: number): void;
}

export interface FaultStats {
  /** Groups handed to `report()`. */
  reported: number;
  /** Groups copied out by read() (each got a cookie). */
  read: number;
  /** Groups answered by userspace through write(). */
  responded: number;
  /** Groups answered INVALID on userspace's behalf: attachment ended, or object destroyed. */
  autoResponded: number;
}

/** The fd returned by IOMMU_FAULT_QUEUE_ALLOC. */
export interface FaultFd {
  /** Copy whole groups out as `iommu_hwpt_pgfault` records; returns bytes copied. */
  read(buf: Uint8Array): number;
  /** Consume `iommu_hwpt_page_response` records; returns bytes consumed. */
  write(buf: Uint8Array): number;
  close(): void;
  /** poll() EPOLLIN: undelivered groups exist. */
  readonly readable: boolean;
  /** poll() EPOLLOUT: a fault fd always accepts responses. */
  readonly writable: boolean;
  /**
   * Not part of the uAPI: the physical StreamID of the group awaiting a response under `cookie`
   * (-1 if none), so that the sandbox's oracle can judge where a group really came from.
   */
  originOf(cookie: number): number;
}

/** Who watches groups cross the fault fd (the sandbox's trace); not part of the uAPI. */
export interface FaultTracer {
  /** The VMM read the group. */
  read(group: FaultGroup): void;
  /** The VMM wrote the group's response. */
  responded(group: FaultGroup): void;
}

export class FaultObject extends IommufdObject {
  readonly type = 'FAULT';
  readonly stats: FaultStats = { reported: 0, read: 0, responded: 0, autoResponded: 0 };
  tracer: FaultTracer | undefined;

  /** Undelivered FIFO: live entries are [head, length). */
  private undelivered: (FaultGroup | undefined)[] = [];
  private head = 0;
  private readonly responses = new ResponseTable();
  /** Reused by read(): one record's fields, so composing a record allocates nothing. */
  private readonly record = newPgfaultFields();
  /** Reused by write(). */
  private readonly response: PageResponse = { cookie: 0, code: 0 };

  constructor(private readonly injector: FaultInjector) {
    super();
  }

  get undeliveredCount(): number {
    return this.undelivered.length - this.head;
  }

  get awaitingCount(): number {
    return this.responses.size;
  }

  /** The IOMMU core hands over a complete group (iommufd_fault_iopf_handler): queue it, never fail. */
  report(group: FaultGroup): void {
    this.stats.reported++;
    this.undelivered.push(group);
  }

  /**
   * FAULT_QUEUE_ALLOC's fd. Creating the file is the step that can fail, and it comes before the fd
   * takes its reference, so a failure leaves the object's `users` untouched.
   */
  openFd(): FaultFd {
    this.injector.check('fd-create');
    this.hold();
    // The getters below have their own `this`; the fd always means this object.
    const fault = this;
    let open = true;
    const checkOpen = (op: string): void => {
      if (!open) throw new IommufdError('EBADF', `${op} on a closed FAULT fd (fault ${fault.id})`);
    };
    return {
      read: (buf) => {
        checkOpen('read');
        return fault.readGroups(buf);
      },
      write: (buf) => {
        checkOpen('write');
        return fault.writeResponses(buf);
      },
      close: () => {
        checkOpen('close');
        open = false;
        fault.put();
      },
      get readable() {
        return open && fault.undeliveredCount > 0;
      },
      get writable() {
        return open;
      },
      originOf: (cookie) => fault.responses.peek(cookie)?.streamId ?? -1,
    };
  }

  /** read() on the fd; `buf.length` is the count (there is no offset argument). */
  private readGroups(buf: Uint8Array): number {
    if (buf.length % PGFAULT_BYTES !== 0) {
      throw new IommufdError('ESPIPE', `read count ${buf.length} is not a multiple of ${PGFAULT_BYTES}`);
    }
    // An empty queue never blocks and is not an error, whatever the count.
    if (this.head === this.undelivered.length) return 0;
    const view = recordView(buf);
    const out = this.record;
    let done = 0;
    while (this.head < this.undelivered.length) {
      const group = this.undelivered[this.head] as FaultGroup;
      const bytes = group.count * PGFAULT_BYTES;
      // Groups go out whole; one that does not fit stays at the head for the next read.
      if (bytes > buf.length - done) {
        if (done === 0) {
          throw new IommufdError(
            'EINVAL',
            `read count ${buf.length} is below the first group (${group.count} records, ${bytes} bytes)`,
          );
        }
        break;
      }
      let cookie: number;
      try {
        cookie = this.responses.insert(group, this.injector);
      } catch (error) {
        // The group stays undelivered; what was already copied is still returned.
        if (done === 0) throw error;
        break;
      }
      this.undelivered[this.head] = undefined;
      this.head++;
      out.devId = group.devId;
      out.pasid = group.pasid;
      out.grpid = group.grpid;
      out.length = 0;
      out.cookie = cookie;
      const pasidFlag = group.pasidValid ? PGFAULT_FLAGS_PASID_VALID : 0;
      const last = group.count - 1;
      for (let i = 0; i <= last; i++) {
        const addr = group.addresses[i];
        // The IOMMU core sets LAST_PAGE on the request that closed the group, the last one.
        out.flags = i === last ? pasidFlag | PGFAULT_FLAGS_LAST_PAGE : pasidFlag;
        out.perm = group.accesses[i];
        out.addrLow = addr >>> 0;
        out.addrHigh = Math.floor(addr / TWO_32) >>> 0;
        writePgfaultFrom(view, done, out);
        done += PGFAULT_BYTES;
      }
      this.stats.read++;
      this.tracer?.read(group);
    }
    this.compactUndelivered();
    return done;
  }

  /** write() on the fd: responses in order, stopping at the first bad one. */
  private writeResponses(buf: Uint8Array): number {
    if (buf.length % PAGE_RESPONSE_BYTES !== 0) {
      throw new IommufdError(
        'ESPIPE',
        `write count ${buf.length} is not a multiple of ${PAGE_RESPONSE_BYTES}`,
      );
    }
    const view = recordView(buf);
    const response = this.response;
    let done = 0;
    while (done < buf.length) {
      const { cookie, code } = readPageResponseInto(view, done, response);
      let failure: IommufdError | undefined;
      let group: FaultGroup | undefined;
      if (code !== IOMMUFD_PAGE_RESP_SUCCESS && code !== IOMMUFD_PAGE_RESP_INVALID) {
        failure = new IommufdError(
          'EINVAL',
          `response at byte ${done}: code ${code} is not SUCCESS or INVALID`,
        );
      } else {
        group = this.responses.erase(cookie);
        if (group === undefined) {
          failure = new IommufdError(
            'EINVAL',
            `response at byte ${done}: cookie ${cookie} awaits no response`,
          );
        }
      }
      if (group === undefined) {
        // Responses already consumed stand; the error is reported only if none was.
        if (done === 0) throw failure;
        break;
      }
      done += PAGE_RESPONSE_BYTES;
      this.stats.responded++;
      this.tracer?.responded(group);
      group.respond(code);
    }
    return done;
  }

  /**
   * The attachment's (device, pasid) attach ended by detach or replace: every group it raised,
   * undelivered or read and unanswered, is answered INVALID and forgotten, so its cookie stops being
   * valid. Returns how many groups were answered.
   */
  autoRespond(attachment: object): number {
    const answered: FaultGroup[] = [];
    let kept = 0;
    for (let i = this.head; i < this.undelivered.length; i++) {
      const group = this.undelivered[i] as FaultGroup;
      if (group.attachment === attachment) answered.push(group);
      else this.undelivered[kept++] = group;
    }
    this.undelivered.length = kept;
    this.head = 0;
    this.responses.eraseWhere((group) => group.attachment === attachment, answered);
    // Answer only once the queue is consistent again: a device may react to INVALID at once.
    this.answerInvalid(answered);
    return answered.length;
  }

  /** The last reference is gone: nobody can answer the remaining groups any more, so answer INVALID. */
  override destroy(): void {
    const answered: FaultGroup[] = [];
    for (let i = this.head; i < this.undelivered.length; i++)
      answered.push(this.undelivered[i] as FaultGroup);
    this.undelivered = [];
    this.head = 0;
    this.responses.eraseWhere(() => true, answered);
    this.answerInvalid(answered);
  }

  private answerInvalid(groups: FaultGroup[]): void {
    for (const group of groups) {
      this.stats.autoResponded++;
      group.respond(IOMMUFD_PAGE_RESP_INVALID);
    }
  }

  /** Drop the consumed prefix of the FIFO once it is worth the copy. */
  private compactUndelivered(): void {
    if (this.head === this.undelivered.length) {
      this.undelivered.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.undelivered.length) {
      this.undelivered.splice(0, this.head);
      this.head = 0;
    }
  }
}

/**
 * Groups read and not answered yet, by cookie (the kernel's `fault->response` xarray). Cookies are
 * dense, so the table is an array indexed by cookie; freed cookies wait in a min-heap so the next
 * insert takes the lowest free one.
 */
class ResponseTable {
  private readonly groups: (FaultGroup | undefined)[] = [undefined];
  /** Free cookies below `groups.length`, as a binary min-heap. */
  private readonly free: number[] = [];
  size = 0;

  insert(group: FaultGroup, injector: FaultInjector): number {
    // xa_alloc can fail (no memory for the node); the read puts the group back.
    injector.check('cookie-insert');
    let cookie: number;
    if (this.free.length > 0) {
      cookie = this.popFree();
    } else {
      cookie = this.groups.length;
      if (cookie > MAX_COOKIE) throw new IommufdError('EBUSY', 'all u32 cookies are awaiting a response');
      this.groups.push(undefined);
    }
    this.groups[cookie] = group;
    this.size++;
    return cookie;
  }

  /** The group awaiting a response under `cookie`, left in place. */
  peek(cookie: number): FaultGroup | undefined {
    return cookie > 0 && cookie < this.groups.length ? this.groups[cookie] : undefined;
  }

  /** Remove and return the group of `cookie`, or undefined if none awaits a response under it. */
  erase(cookie: number): FaultGroup | undefined {
    if (cookie === 0 || cookie >= this.groups.length) return undefined;
    const group = this.groups[cookie];
    if (group === undefined) return undefined;
    this.groups[cookie] = undefined;
    this.size--;
    if (this.size === 0) {
      // Nothing outstanding: every cookie is free again, starting over from 1.
      this.groups.length = 1;
      this.free.length = 0;
    } else {
      this.pushFree(cookie);
    }
    return group;
  }

  /** Erase every group matching `match`, in cookie order, appending them to `into`. */
  eraseWhere(match: (group: FaultGroup) => boolean, into: FaultGroup[]): void {
    for (let cookie = 1; cookie < this.groups.length; cookie++) {
      const group = this.groups[cookie];
      if (group !== undefined && match(group)) {
        this.erase(cookie);
        into.push(group);
      }
    }
  }

  private pushFree(cookie: number): void {
    const heap = this.free;
    let i = heap.length;
    heap.push(cookie);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent] <= cookie) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = cookie;
  }

  private popFree(): number {
    const heap = this.free;
    const top = heap[0];
    const last = heap.pop() as number;
    const n = heap.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && heap[child + 1] < heap[child]) child++;
        if (heap[child] >= last) break;
        heap[i] = heap[child];
        i = child;
      }
      heap[i] = last;
    }
    return top;
  }
}
