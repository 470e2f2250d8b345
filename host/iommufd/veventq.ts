/**
 * The VEVENTQ object (iommufd eventq.c; docs/registry.md): a vIOMMU's queue of driver events of
 * one type, read by userspace as `iommufd_vevent_header` + data, in order.
 *
 * Every report takes the next sequence number, queued or not. A report that finds the queue full
 * (`depth` normal events) or cannot allocate is dropped; the queue's single lost-events marker then
 * goes to the tail carrying the dropped report's sequence number. The marker is always the last
 * element: a normal event queued behind it removes it, since the gap in sequence numbers already
 * tells userspace how many were lost.
 */
import type { IommufdCtx } from './context.ts';
import { IommufdError } from './errors.ts';
import { encodeVeventHeader, IOMMU_VEVENTQ_FLAG_LOST_EVENTS, VEVENT_HEADER_BYTES } from './eventq-records.ts';
import type { FaultInjector } from './fault-injector.ts';
import { IommufdObject } from './object.ts';
import type { ViommuObject } from './viommu.ts';

/** The deepest queue VEVENTQ_ALLOC accepts (IOMMU_VEVENTQ_MAX_DEPTH). */
export const VEVENTQ_MAX_DEPTH = 1 << 19;

/** Sequence numbers are an int: after INT_MAX comes 0. */
const SEQUENCE_MASK = 0x7fff_ffff;
const NO_DATA = new Uint8Array(0);

/** One queued event: its header fields and its data (empty for the lost-events marker). */
interface Vevent {
  readonly flags: number;
  sequence: number;
  readonly data: Uint8Array;
}

/** The fd returned by IOMMU_VEVENTQ_ALLOC. */
export interface VeventqFd {
  /** Copy whole events out as header + data; returns bytes copied. */
  read(buf: Uint8Array): number;
  /** There is no write() on a VEVENTQ fd: always EINVAL. */
  write(buf: Uint8Array): number;
  close(): void;
  /** poll() EPOLLIN: anything queued, the marker included. */
  readonly readable: boolean;
  /** poll() EPOLLOUT: never, the fd takes no writes. */
  readonly writable: boolean;
}

export class VeventqObject extends IommufdObject {
  readonly type = 'VEVENTQ';

  /** Queued events in order: live entries are [head, length); the marker, if queued, is last. */
  private entries: (Vevent | undefined)[] = [];
  private head = 0;
  /** The one marker of this queue (the kernel's embedded lost_events_header), moved, never copied. */
  private readonly lostEvents: Vevent = { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 0, data: NO_DATA };
  private markerQueued = false;
  /** Normal events queued: only these count against `depth`. */
  private numEvents = 0;
  /** The sequence number the next report takes. */
  protected sequence = 0;

  constructor(
    /** The vIOMMU; its `veventqs` (one queue per type), if it keeps them, loses this queue on destroy. */
    readonly viommu: IommufdObject & { readonly veventqs?: Map<number, VeventqObject> },
    readonly veventqType: number,
    readonly depth: number,
    private readonly injector: FaultInjector,
  ) {
    super();
    viommu.hold();
  }

  /** Normal events queued (the marker is not one). */
  get length(): number {
    return this.numEvents;
  }

  get hasLostMarker(): boolean {
    return this.markerQueued;
  }

  /** The marker is queued and is the last element (it must be, whenever it is queued). */
  get markerIsLast(): boolean {
    return this.markerQueued && this.entries[this.entries.length - 1] === this.lostEvents;
  }

  get nextSequence(): number {
    return this.sequence;
  }

  /** A driver reports an event of this queue's type; never fails, a lost event leaves the marker. */
  report(data: Uint8Array): void {
    let vevent = this.lostEvents;
    if (this.numEvents < this.depth) {
      try {
        // Each event is its own allocation in the kernel (GFP_ATOMIC); failing it loses the event.
        this.injector.check('object-alloc');
        vevent = { flags: 0, sequence: 0, data: data.slice() };
        this.numEvents++;
      } catch (error) {
        if (!(error instanceof IommufdError)) throw error;
      }
    }
    // A marker that is last goes away first: either it is moved to the tail with a new number, or
    // a normal event follows it and the sequence gap now says what was lost.
    if (this.markerIsLast) {
      this.entries.pop();
      this.markerQueued = false;
    }
    vevent.sequence = this.sequence;
    this.sequence = (this.sequence + 1) & SEQUENCE_MASK;
    this.entries.push(vevent);
    if (vevent === this.lostEvents) this.markerQueued = true;
  }

  /**
   * VEVENTQ_ALLOC's fd. Creating the file is the step that can fail, and it comes before the fd
   * takes its reference, so a failure leaves the object's `users` untouched.
   */
  openFd(): VeventqFd {
    this.injector.check('fd-create');
    this.hold();
    // The getters below have their own `this`; the fd always means this object.
    const veventq = this;
    let open = true;
    const checkOpen = (op: string): void => {
      if (!open) throw new IommufdError('EBADF', `${op} on a closed VEVENTQ fd (veventq ${veventq.id})`);
    };
    return {
      read: (buf) => {
        checkOpen('read');
        return veventq.readEvents(buf);
      },
      write: () => {
        checkOpen('write');
        throw new IommufdError('EINVAL', `a VEVENTQ fd has no write (veventq ${veventq.id})`);
      },
      close: () => {
        checkOpen('close');
        open = false;
        veventq.put();
      },
      get readable() {
        return open && veventq.head < veventq.entries.length;
      },
      get writable() {
        return false;
      },
    };
  }

  /** The last reference is gone: drop what is queued, free the type slot, let go of the vIOMMU. */
  override destroy(): void {
    if (this.viommu.veventqs?.get(this.veventqType) === this) this.viommu.veventqs.delete(this.veventqType);
    this.entries = [];
    this.head = 0;
    this.markerQueued = false;
    this.numEvents = 0;
    this.viommu.put();
  }

  /** read() on the fd; `buf.length` is the count (there is no offset argument). */
  private readEvents(buf: Uint8Array): number {
    // Anything smaller cannot hold even the marker (NEW kernels; older ones returned 0).
    if (buf.length < VEVENT_HEADER_BYTES) {
      throw new IommufdError(
        'EINVAL',
        `read count ${buf.length} is smaller than a ${VEVENT_HEADER_BYTES}-byte header`,
      );
    }
    let done = 0;
    while (this.head < this.entries.length) {
      const vevent = this.entries[this.head] as Vevent;
      const room = buf.length - done;
      if (room < VEVENT_HEADER_BYTES) break;
      // Events go out whole; one that does not fit stays at the head for the next read.
      const bytes = VEVENT_HEADER_BYTES + vevent.data.length;
      if (bytes > room) {
        if (done === 0) {
          throw new IommufdError(
            'EINVAL',
            `read count ${buf.length} is below the first event (${bytes} bytes, sequence ${vevent.sequence})`,
          );
        }
        break;
      }
      encodeVeventHeader(buf, done, vevent);
      buf.set(vevent.data, done + VEVENT_HEADER_BYTES);
      done += bytes;
      this.entries[this.head] = undefined;
      this.head++;
      // The marker is read once and disappears; only normal events free a slot of `depth`.
      if (vevent === this.lostEvents) this.markerQueued = false;
      else this.numEvents--;
    }
    this.compactEntries();
    return done;
  }

  /** Drop the consumed prefix of the queue once it is worth the copy. */
  private compactEntries(): void {
    if (this.head === this.entries.length) {
      this.entries.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.entries.length) {
      this.entries.splice(0, this.head);
      this.head = 0;
    }
  }
}

export interface VeventqAllocCmd {
  flags: number;
  viommuId: number;
  type: number;
  veventqDepth: number;
}

/**
 * IOMMU_VEVENTQ_ALLOC (eventq.c): a vIOMMU's queue for the events of one type, and the fd
 * userspace reads them on; a second queue of a type is EEXIST.
 */
export function veventqAllocIoctl(
  ctx: IommufdCtx,
  cmd: VeventqAllocCmd,
): { veventqId: number; veventqFd: VeventqFd } {
  const { type } = cmd;
  const viommu = ctx.table.get<ViommuObject>(cmd.viommuId, 'VIOMMU');
  if (viommu.veventqs.has(type))
    throw new IommufdError('EEXIST', `the vIOMMU already has a vEVENTQ of type 0x${type.toString(16)}`);
  let fd: VeventqFd | undefined;
  const veventq = ctx.table.create(() => {
    const object = new VeventqObject(viommu, type, cmd.veventqDepth, ctx.injector);
    try {
      fd = ctx.wrapFd(object.openFd());
    } catch (error) {
      object.destroy();
      throw error;
    }
    return object;
  });
  viommu.veventqs.set(type, veventq);
  return { veventqId: veventq.id, veventqFd: fd as VeventqFd };
}
