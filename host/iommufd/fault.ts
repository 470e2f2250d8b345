/**
 * The FAULT object (iommufd eventq.c; docs/registry.md): the queue through which userspace sees the
 * I/O page-fault groups of the HWPTs that name it, and answers them.
 *
 * A group is in exactly one place: undelivered (FIFO, waiting for read()), awaiting a response (in
 * the response table under its cookie), or retired (answered and forgotten). Cookies are handed out
 * when a group is read, not when it arrives, lowest free value from 1 (the kernel's XA_FLAGS_ALLOC1
 * xarray). Every group is answered exactly once: by userspace through write(), or INVALID on its
 * behalf when its attachment ends or the object is destroyed.
 *
 * Groups are pooled by the IOMMU core, so the object keeps the generation each group had when it
 * arrived and checks it at every touch: a group that was freed behind the object's back (the 2026
 * detach race: one group on two lists) is counted in `staleTouches` and never read or answered.
 */
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import {
  IOMMUFD_PAGE_RESP_INVALID,
  IOMMUFD_PAGE_RESP_SUCCESS,
  IOMMUFD_PAGE_RESP_TERMINATE,
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
import type { FaultGroup } from './fault-group.ts';
import type { FaultInjector } from './fault-injector.ts';
import { IommufdObject } from './object.ts';
import { ResponseTable } from './response-table.ts';

export type { FaultGroup } from './fault-group.ts';

const TWO_32 = 0x1_0000_0000;

export interface FaultStats {
  /** Groups handed to `report()`. */
  reported: number;
  /** Groups copied out by read() (each got a cookie). */
  read: number;
  /** Groups answered by userspace through write(). */
  responded: number;
  /** Groups answered INVALID on userspace's behalf: attachment ended, or object destroyed. */
  autoResponded: number;
  /** Responses refused because no group awaits their cookie (late: answered meanwhile; or bogus). */
  refusedResponses: number;
  /**
   * Responses accepted whose group a teardown answered INVALID while the response was being
   * applied: not sent (a silent, counted no-op).
   */
  lateResponses: number;
  /** Groups taken back by the IOMMU core: their response deadline passed, or their stall went away. */
  revoked: number;
  /** Touches of a held group whose generation had moved on: must stay 0 (the oracle). */
  staleTouches: number;
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
  readonly stats: FaultStats = {
    reported: 0,
    read: 0,
    responded: 0,
    autoResponded: 0,
    refusedResponses: 0,
    lateResponses: 0,
    revoked: 0,
    staleTouches: 0,
  };
  tracer: FaultTracer | undefined;
  /**
   * Runs while a response is being applied: its cookie is erased and the device has not got it
   * yet (tests place a teardown there: stage "answered but not yet applied").
   */
  onApplying: ((group: FaultGroup) => void) | undefined;

  /** The group whose response write() is applying now, and its generation. */
  private applying: FaultGroup | undefined;
  private applyingGeneration = 0;

  /** Undelivered FIFO: live entries are [head, length), each with the generation it arrived with. */
  private undelivered: (FaultGroup | undefined)[] = [];
  private undeliveredGeneration: number[] = [];
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
    this.undeliveredGeneration.push(group.generation);
  }

  /**
   * The IOMMU core takes a group back unanswered (its deadline passed, or its stall went away; the
   * core answers it): it leaves the queue or the response table, and a response to its cookie is
   * refused from now on.
   */
  revoke(group: FaultGroup): void {
    for (let i = this.head; i < this.undelivered.length; i++) {
      if (this.undelivered[i] !== group || this.undeliveredGeneration[i] !== group.generation) continue;
      this.undelivered.splice(i, 1);
      this.undeliveredGeneration.splice(i, 1);
      this.stats.revoked++;
      return;
    }
    if (this.responses.eraseGroup(group)) this.stats.revoked++;
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
      const generation = this.undeliveredGeneration[this.head];
      if (group.generation !== generation) {
        // Freed while queued here: never copy a record out of it.
        this.stats.staleTouches++;
        this.undelivered[this.head] = undefined;
        this.head++;
        continue;
      }
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
        cookie = this.responses.insert(group, generation, this.injector);
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
      let generation = 0;
      if (
        code !== IOMMUFD_PAGE_RESP_SUCCESS &&
        code !== IOMMUFD_PAGE_RESP_INVALID &&
        code !== IOMMUFD_PAGE_RESP_TERMINATE
      ) {
        failure = new IommufdError(
          'EINVAL',
          `response at byte ${done}: code ${code} is not SUCCESS or INVALID`,
        );
      } else if (code === IOMMUFD_PAGE_RESP_TERMINATE && this.responses.peek(cookie)?.stall !== true) {
        failure = new IommufdError(
          'EINVAL',
          `response at byte ${done}: code ${code} (TERMINATE) answers only a stalled transaction; ` +
            'answer a page-request group SUCCESS or INVALID',
        );
      } else {
        generation = this.responses.generationOf(cookie);
        group = this.responses.erase(cookie);
        if (group === undefined) {
          failure = new IommufdError(
            'EINVAL',
            `response at byte ${done}: cookie ${cookie} awaits no response`,
          );
        }
      }
      if (group === undefined) {
        this.stats.refusedResponses++;
        // Responses already consumed stand; the error is reported only if none was.
        if (done === 0) throw failure;
        break;
      }
      done += PAGE_RESPONSE_BYTES;
      if (group.generation !== generation) {
        // Freed behind the table's back: the response is consumed but touches nothing.
        this.stats.staleTouches++;
        continue;
      }
      this.stats.responded++;
      this.tracer?.responded(group);
      this.applying = group;
      this.applyingGeneration = generation;
      this.onApplying?.(group);
      this.applying = undefined;
      // A teardown in the window answered the group INVALID: this response is late.
      if (group.generation !== generation) this.stats.lateResponses++;
      else group.respond(code, generation);
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
    const generations: number[] = [];
    let kept = 0;
    for (let i = this.head; i < this.undelivered.length; i++) {
      const group = this.undelivered[i] as FaultGroup;
      const generation = this.undeliveredGeneration[i];
      if (group.attachment === attachment || group.generation !== generation) {
        answered.push(group);
        generations.push(generation);
      } else {
        this.undeliveredGeneration[kept] = generation;
        this.undelivered[kept++] = group;
      }
    }
    this.undelivered.length = kept;
    this.undeliveredGeneration.length = kept;
    this.head = 0;
    this.responses.eraseWhere((group) => group.attachment === attachment, answered, generations);
    this.takeApplying((group) => group.attachment === attachment, answered, generations);
    // Answer only once the queue is consistent again: a device may react to INVALID at once.
    this.answerInvalid(answered, generations);
    return answered.length;
  }

  /** The last reference is gone: nobody can answer the remaining groups any more, so answer INVALID. */
  override destroy(): void {
    const answered: FaultGroup[] = [];
    const generations: number[] = [];
    for (let i = this.head; i < this.undelivered.length; i++) {
      answered.push(this.undelivered[i] as FaultGroup);
      generations.push(this.undeliveredGeneration[i]);
    }
    this.undelivered = [];
    this.undeliveredGeneration = [];
    this.head = 0;
    this.responses.eraseWhere(() => true, answered, generations);
    this.takeApplying(() => true, answered, generations);
    this.answerInvalid(answered, generations);
  }

  /** A response being applied right now is outstanding too: the teardown answers it first. */
  private takeApplying(
    match: (group: FaultGroup) => boolean,
    into: FaultGroup[],
    generations: number[],
  ): void {
    const group = this.applying;
    if (group === undefined || group.generation !== this.applyingGeneration || !match(group)) return;
    this.applying = undefined;
    into.push(group);
    generations.push(this.applyingGeneration);
  }

  private answerInvalid(groups: FaultGroup[], generations: number[]): void {
    for (let i = 0; i < groups.length; i++) {
      const group = groups[i];
      if (group.generation !== generations[i]) {
        this.stats.staleTouches++;
        continue;
      }
      this.stats.autoResponded++;
      group.respond(IOMMUFD_PAGE_RESP_INVALID, generations[i]);
    }
  }

  /** Drop the consumed prefix of the FIFO once it is worth the copy. */
  private compactUndelivered(): void {
    if (this.head === this.undelivered.length) {
      this.undelivered.length = 0;
      this.undeliveredGeneration.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.undelivered.length) {
      this.undelivered.splice(0, this.head);
      this.undeliveredGeneration.splice(0, this.head);
      this.head = 0;
    }
  }
}

/** IOMMU_FAULT_QUEUE_ALLOC (eventq.c): a FAULT object and the fd userspace reads and answers it on. */
export function faultQueueAllocIoctl(
  ctx: IommufdCtx,
  _cmd: { flags: number },
): { faultId: number; faultFd: FaultFd } {
  let fd: FaultFd | undefined;
  const fault = ctx.table.create(() => {
    const object = new FaultObject(ctx.injector);
    fd = ctx.wrapFd(object.openFd());
    return object;
  });
  return { faultId: fault.id, faultFd: fd as FaultFd };
}
