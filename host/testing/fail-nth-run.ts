/**
 * One run of a fail-nth scenario (fail-nth.ts): the state a scenario builds up on a fresh Iommufd,
 * the steps it is made of, and what a caller could tell apart about the registry (its snapshot)
 * and what close() left behind.
 */
import { DeviceObject } from '../iommufd/device.ts';
import { type FaultFd, FaultObject } from '../iommufd/fault.ts';
import type { FailPoint } from '../iommufd/fault-injector.ts';
import { HwptPaging } from '../iommufd/hwpt.ts';
import { type Area, Ioas } from '../iommufd/ioas.ts';
import { Iommufd } from '../iommufd/iommufd.ts';
import { type VeventqFd, VeventqObject } from '../iommufd/veventq.ts';
import { ViommuObject } from '../iommufd/viommu.ts';

// --- one scenario run -----------------------------------------------------------------------------

/** A step's own check failed (the scenario saw a result it did not expect). */
export class StepCheckError extends Error {}

export function check(ok: boolean, message: string): void {
  if (!ok) throw new StepCheckError(message);
}

/** State a scenario builds up: the registry, ids by name, open fds. */
export class Run {
  readonly fd = new Iommufd();
  readonly openFds = new Set<FaultFd | VeventqFd>();
  buffer = 0n;
  faultFd: FaultFd | undefined;
  veventqFd: VeventqFd | undefined;
  private readonly ids = new Map<string, number>();

  set(name: string, id: number): void {
    this.ids.set(name, id);
  }

  id(name: string): number {
    const id = this.ids.get(name);
    if (id === undefined) throw new StepCheckError(`the scenario has no ${name} yet`);
    return id;
  }

  openFault(fd: FaultFd): void {
    this.faultFd = fd;
    this.openFds.add(fd);
  }

  openVeventq(fd: VeventqFd): void {
    this.veventqFd = fd;
    this.openFds.add(fd);
  }

  close(fd: FaultFd | VeventqFd | undefined): void {
    if (!fd) throw new StepCheckError('no such fd');
    fd.close();
    this.openFds.delete(fd);
  }
}

export interface Step {
  readonly name: string;
  /** The one fail point whose failure the call may absorb instead of reporting it. */
  readonly absorbs?: FailPoint;
  run(r: Run): void;
}

export interface Scenario {
  readonly name: string;
  readonly description: string;
  readonly steps: readonly Step[];
  readonly points: readonly FailPoint[];
}

export const step = (name: string, run: (r: Run) => void, absorbs?: FailPoint): Step => ({
  name,
  run,
  absorbs,
});

/** User address an area starts at (its offset counts from the page holding the map's user_va). */
const areaVa = (a: Area) => a.pages.base + a.offset;

export const hex = (v: bigint) => `0x${v.toString(16)}`;

/** Everything a userspace caller (or the selftest's checks) could tell apart. */
export function snapshot(fd: Iommufd): Record<string, unknown> {
  const objects: Record<number, unknown> = {};
  for (const o of fd.objects()) {
    const s: Record<string, unknown> = { type: o.type, users: o.users };
    if (o instanceof Ioas) {
      s.areas = o.areas.map((a) => `${hex(a.start)}-${hex(a.last)}@${hex(areaVa(a))}`);
      s.reserved = o.reserved.map((x) => `${hex(x.start)}-${hex(x.last)}`).sort();
      s.allowed = o.allowed.map((x) => `${hex(x.start)}-${hex(x.last)}`);
      s.alignment = o.iovaAlignment;
      s.domains = o.domains.length;
    }
    if (o instanceof HwptPaging) s.mappedBytes = o.domain.mappedBytes;
    if (o instanceof DeviceObject) {
      s.attachments = [...o.attachments].map(([pasid, a]) => `${pasid}->${a.hwpt.id}`);
      if (o.vdevice) s.vdevice = o.vdevice.id;
    }
    if (o instanceof FaultObject) s.groups = `${o.undeliveredCount}/${o.awaitingCount}`;
    if (o instanceof ViommuObject) s.vdevices = [...o.vdevices.keys()].map(String);
    if (o instanceof VeventqObject) s.events = `${o.length}${o.hasLostMarker ? '+lost' : ''}`;
    objects[o.id] = s;
  }
  return {
    objects,
    reservedIds: fd.reservedIds,
    pinnedPages: fd.memory.pinnedPages,
    pendingFaultGroups: fd.pendingFaultGroups,
    iopfPending: fd.mock.iopf.pending,
  };
}

const show = (v: unknown) =>
  v === undefined ? 'absent' : JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? hex(x) : x));

/** The first place where `actual` differs from `expected`, or undefined if they are equal. */
export function difference(expected: unknown, actual: unknown, path: string): string | undefined {
  if (Object.is(expected, actual)) return undefined;
  if (
    typeof expected !== 'object' ||
    typeof actual !== 'object' ||
    expected === null ||
    actual === null ||
    Array.isArray(expected) !== Array.isArray(actual)
  ) {
    return `${path} is ${show(actual)}, not ${show(expected)}`;
  }
  const e = expected as Record<string, unknown>;
  const a = actual as Record<string, unknown>;
  for (const key of new Set([...Object.keys(e), ...Object.keys(a)])) {
    const d = difference(e[key], a[key], Array.isArray(expected) ? `${path}[${key}]` : `${path}.${key}`);
    if (d !== undefined) return d;
  }
  return undefined;
}

/** What close() left behind, empty if nothing. */
export function leftovers(fd: Iommufd): string[] {
  const left: string[] = [];
  const objects = fd.objects();
  if (objects.length > 0) left.push(`objects ${objects.map((o) => `${o.id}:${o.type}`).join(', ')}`);
  if (fd.reservedIds > 0) left.push(`${fd.reservedIds} reserved id(s)`);
  if (fd.memory.pinnedPages > 0) left.push(`${fd.memory.pinnedPages} pinned page(s)`);
  if (fd.pendingFaultGroups > 0) left.push(`${fd.pendingFaultGroups} pending fault group(s)`);
  if (fd.mock.iopf.pending > 0) left.push(`${fd.mock.iopf.pending} unanswered page request(s)`);
  return left;
}
