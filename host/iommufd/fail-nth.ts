/**
 * Fail-nth sweep of the registry (the kernel's iommufd_fail_nth selftest; iommufd-model.md sections
 * 2 and 12). Each scenario is a fixed sequence of registry calls. For N = 1, 2, ... it runs on a
 * fresh Iommufd with the injector armed to fail its N-th consulted point, until a whole run no
 * longer reaches N points. At the call that fails, the error must be the injected ENOMEM and the
 * call must have left no visible change. The run is then either torn down at once (close() must
 * leave no object, reserved id, pinned page or pending fault group) or resumed: the failed call is
 * retried disarmed and the rest of the scenario must end exactly like an unfailed run.
 *
 * Broken checks do not stop the sweep: each one becomes a failure in the report.
 */
import { DeviceObject } from './device.ts';
import { IommufdError } from './errors.ts';
import {
  decodePgfault,
  decodeVeventHeader,
  encodePageResponse,
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
  IOMMUFD_PAGE_RESP_SUCCESS,
  PAGE_RESPONSE_BYTES,
  PERM_READ,
  PERM_WRITE,
  PGFAULT_BYTES,
  PGFAULT_FLAGS_LAST_PAGE,
  PGFAULT_FLAGS_PASID_VALID,
  VEVENT_HEADER_BYTES,
} from './eventq-records.ts';
import { type FaultFd, FaultObject } from './fault.ts';
import type { FailPoint } from './fault-injector.ts';
import {
  HwptPaging,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_ALLOC_PASID,
  IOMMU_HWPT_FAULT_ID_VALID,
} from './hwpt.ts';
import {
  type Area,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  Ioas,
} from './ioas.ts';
import { Iommufd } from './iommufd.ts';
import { U64_MAX } from './iova.ts';
import {
  IOMMU_HWPT_DATA_SELFTEST,
  IOMMU_VEVENTQ_TYPE_SELFTEST,
  IOMMU_VIOMMU_TYPE_SELFTEST,
  MOCK_APERTURE_START,
  MOCK_FLAGS_DEVICE_PASID,
} from './selftest.ts';
import { type VeventqFd, VeventqObject } from './veventq.ts';
import { ViommuObject } from './viommu.ts';

// --- the report -----------------------------------------------------------------------------------

/** teardown: close() right after the failed call; resume: retry it disarmed and finish the scenario. */
export type FailNthMode = 'teardown' | 'resume';

/** The check a failure broke. */
export type FailNthCheck =
  /** the failed call did not report the injected ENOMEM */
  | 'errno'
  /** the failed call left a change a caller can see */
  | 'unchanged'
  /** a call swallowed an injected failure that it must report */
  | 'absorbed'
  /** a step failed with no injected failure (a registry error or the step's own check) */
  | 'step'
  /** close() left an object, reserved id, pinned page or pending fault group */
  | 'teardown'
  /** a resumed run ended unlike the unfailed run */
  | 'resume'
  /** an armed run that failed nothing reached another number of points than the unfailed run */
  | 'points'
  /** the scenario never failed at a fail point kind it exists to exercise */
  | 'coverage'
  /** the scenario still reached new fail points at the sweep's limit */
  | 'termination';

export interface FailNthFailure {
  scenario: string;
  /** The armed fail point (1-based); 0 for the unfailed run and for the sweep as a whole. */
  n: number;
  /** null for the unfailed run and for the sweep as a whole. */
  mode: FailNthMode | null;
  /** The step that was running, if any. */
  step: string | null;
  /** The fail point the injector failed in this run, if it did. */
  failedPoint: FailPoint | null;
  check: FailNthCheck;
  message: string;
}

export interface FailNthModeResult {
  runs: number;
  /** Runs that broke no check. */
  passed: number;
}

export interface FailNthScenarioResult {
  name: string;
  description: string;
  /** Fail points an unfailed run consults. */
  points: number;
  /** N went from 1 to `tried`; the last N checks that a run armed past the end fails nothing. */
  tried: number;
  /** Per fail point kind, how many values of N failed a call there. */
  failedAt: Partial<Record<FailPoint, number>>;
  /** Kinds the sweep must fail at least once (the scenario exists to exercise them). */
  requiredPoints: FailPoint[];
  teardown: FailNthModeResult;
  resume: FailNthModeResult;
  /** Every registry run: the unfailed one, then the teardown and resumed runs. */
  runs: number;
  /** Failures of this scenario (listed in the report's `failures`). */
  failures: number;
}

export interface FailNthReport {
  scenarios: FailNthScenarioResult[];
  runs: number;
  failures: FailNthFailure[];
}

export interface FailNthOptions {
  /** Scenario names to sweep (default all, in FAIL_NTH_SCENARIOS order). */
  scenarios?: readonly string[];
}

export class UnknownScenarioError extends Error {
  constructor(readonly scenario: string) {
    super(`unknown fail-nth scenario "${scenario}"; known scenarios: ${FAIL_NTH_SCENARIOS.join(', ')}`);
    this.name = 'UnknownScenarioError';
  }
}

// --- one scenario run -----------------------------------------------------------------------------

const AP = MOCK_APERTURE_START;
const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
const FIXED = IOMMU_IOAS_MAP_FIXED_IOVA;
/** The kernel selftest helpers' page request: pasid 0x1, grpid 0x2, perm R|W, addr 0xdeadbeaf. */
const IOPF = { pasid: 1, grpid: 2, perm: PERM_READ | PERM_WRITE, addr: 0xdeadbeafn };
const VIRT_ID = 0x99n;
/** Give up on a scenario that never stops reaching new fail points. */
const MAX_N = 1000;

/** A step's own check failed (the scenario saw a result it did not expect). */
class StepCheckError extends Error {}

function check(ok: boolean, message: string): void {
  if (!ok) throw new StepCheckError(message);
}

/** State a scenario builds up: the registry, ids by name, open fds. */
class Run {
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

interface Step {
  readonly name: string;
  /** The one fail point whose failure the call may absorb instead of reporting it. */
  readonly absorbs?: FailPoint;
  run(r: Run): void;
}

interface Scenario {
  readonly name: string;
  readonly description: string;
  readonly steps: readonly Step[];
  readonly points: readonly FailPoint[];
}

const step = (name: string, run: (r: Run) => void, absorbs?: FailPoint): Step => ({ name, run, absorbs });

/** User address an area starts at (its offset counts from the page holding the map's user_va). */
const areaVa = (a: Area) => a.pages.base + a.offset;

const hex = (v: bigint) => `0x${v.toString(16)}`;

/** Everything a userspace caller (or the selftest's checks) could tell apart. */
function snapshot(fd: Iommufd): Record<string, unknown> {
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
function difference(expected: unknown, actual: unknown, path: string): string | undefined {
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
function leftovers(fd: Iommufd): string[] {
  const left: string[] = [];
  const objects = fd.objects();
  if (objects.length > 0) left.push(`objects ${objects.map((o) => `${o.id}:${o.type}`).join(', ')}`);
  if (fd.reservedIds > 0) left.push(`${fd.reservedIds} reserved id(s)`);
  if (fd.memory.pinnedPages > 0) left.push(`${fd.memory.pinnedPages} pinned page(s)`);
  if (fd.pendingFaultGroups > 0) left.push(`${fd.pendingFaultGroups} pending fault group(s)`);
  if (fd.mock.iopf.pending > 0) left.push(`${fd.mock.iopf.pending} unanswered page request(s)`);
  return left;
}

// --- the sweep ------------------------------------------------------------------------------------

/** Where a run stopped: the index of the step the injector failed, -1 if none, or aborted. */
type Stop = { failed: number } | { aborted: true };

/** The checks of one run; every broken one becomes a failure. */
class RunChecks {
  private readonly start: number;

  constructor(
    private readonly failures: FailNthFailure[],
    private readonly scenario: string,
    private readonly n: number,
    private readonly mode: FailNthMode | null,
    readonly run: Run,
  ) {
    this.start = failures.length;
  }

  get passed(): boolean {
    return this.failures.length === this.start;
  }

  fail(check: FailNthCheck, step: string | null, message: string): void {
    this.failures.push({
      scenario: this.scenario,
      n: this.n,
      mode: this.mode,
      step,
      failedPoint: this.run.fd.injector.failedAt ?? null,
      check,
      message,
    });
  }

  /**
   * Run `steps` from `from` on; with an armed injector, stop at the first call the injector fails
   * after checking that it failed cleanly.
   */
  runSteps(steps: readonly Step[], from: number, armed: boolean): Stop {
    const r = this.run;
    const { injector } = r.fd;
    for (let i = from; i < steps.length; i++) {
      const s = steps[i];
      const before = armed ? snapshot(r.fd) : undefined;
      const waiting = armed && injector.failedAt === undefined;
      try {
        s.run(r);
      } catch (error) {
        if (!waiting || injector.failedAt === undefined) {
          this.fail('step', s.name, `failed without an injected failure: ${explain(error)}`);
          return { aborted: true };
        }
        if (!(error instanceof IommufdError) || error.errno !== 'ENOMEM') {
          this.fail('errno', s.name, `failed with ${explain(error)} instead of the injected ENOMEM`);
        }
        const changed = difference(before, snapshot(r.fd), 'state');
        if (changed !== undefined)
          this.fail('unchanged', s.name, `the failed call left a change: ${changed}`);
        return { failed: i };
      }
      if (waiting && injector.failedAt !== undefined && injector.failedAt !== s.absorbs) {
        this.fail('absorbed', s.name, `succeeded although its call at ${injector.failedAt} failed`);
      }
    }
    return { failed: -1 };
  }

  /** close() with every fd closed first: nothing may be left (section 2 teardown, section 12). */
  closeAndCheck(): void {
    const r = this.run;
    r.fd.injector.disarm();
    try {
      for (const fd of [...r.openFds]) r.close(fd);
      r.fd.close();
    } catch (error) {
      this.fail('teardown', null, `close failed: ${explain(error)}`);
      return;
    }
    const left = leftovers(r.fd);
    if (left.length > 0) this.fail('teardown', null, `close() left ${left.join('; ')}`);
  }
}

function explain(error: unknown): string {
  if (error instanceof IommufdError) return `${error.errno} (${error.message})`;
  return error instanceof Error ? error.message : String(error);
}

function sweep(scenario: Scenario, failures: FailNthFailure[]): FailNthScenarioResult {
  const { name, steps } = scenario;
  const start = failures.length;
  const result: FailNthScenarioResult = {
    name,
    description: scenario.description,
    points: 0,
    tried: 0,
    failedAt: {},
    requiredPoints: [...scenario.points],
    teardown: { runs: 0, passed: 0 },
    resume: { runs: 0, passed: 0 },
    runs: 1,
    failures: 0,
  };
  const done = () => {
    result.runs = 1 + result.teardown.runs + result.resume.runs;
    result.failures = failures.length - start;
    return result;
  };
  const sweepFailure = (check: FailNthCheck, message: string) =>
    failures.push({ scenario: name, n: 0, mode: null, step: null, failedPoint: null, check, message });

  // The unfailed run: what every resumed run must end as.
  const base = new RunChecks(failures, name, 0, null, new Run());
  const baseStop = base.runSteps(steps, 0, false);
  const final = snapshot(base.run.fd);
  result.points = base.run.fd.injector.reached;
  base.closeAndCheck();
  if ('aborted' in baseStop) return done();

  for (let n = 1; ; n++) {
    if (n > MAX_N) {
      sweepFailure('termination', `still reaching fail points at N=${MAX_N}`);
      break;
    }
    result.tried = n;

    // Fail, then tear down at once.
    const torn = new RunChecks(failures, name, n, 'teardown', new Run());
    torn.run.fd.injector.arm(n);
    const stop = torn.runSteps(steps, 0, true);
    const { reached, failedAt } = torn.run.fd.injector;
    torn.closeAndCheck();
    if (reached < n && !('aborted' in stop) && (reached !== result.points || n !== result.points + 1)) {
      torn.fail(
        'points',
        null,
        `the run failed nothing and reached ${reached} fail points; the unfailed run reached ${result.points}`,
      );
    }
    result.teardown.runs++;
    if (torn.passed) result.teardown.passed++;
    if (failedAt !== undefined) result.failedAt[failedAt] = (result.failedAt[failedAt] ?? 0) + 1;
    if (reached < n) break;

    // Fail, then retry the failed call and finish: the end state must be the unfailed one.
    const resumed = new RunChecks(failures, name, n, 'resume', new Run());
    resumed.run.fd.injector.arm(n);
    let resumeStop = resumed.runSteps(steps, 0, true);
    resumed.run.fd.injector.disarm();
    if ('failed' in resumeStop && resumeStop.failed >= 0) {
      resumeStop = resumed.runSteps(steps, resumeStop.failed, false);
    }
    if (!('aborted' in resumeStop)) {
      const differs = difference(final, snapshot(resumed.run.fd), 'state');
      if (differs !== undefined)
        resumed.fail('resume', null, `the resumed run ended unlike the unfailed one: ${differs}`);
    }
    resumed.closeAndCheck();
    result.resume.runs++;
    if (resumed.passed) result.resume.passed++;
  }

  for (const point of scenario.points) {
    if (result.failedAt[point] === undefined) {
      sweepFailure('coverage', `no value of N made a call fail at ${point}`);
    }
  }
  return done();
}

/** Sweep the named scenarios (default all). Throws UnknownScenarioError for a name it does not know. */
export function runFailNthSweep(options: FailNthOptions = {}): FailNthReport {
  const names = options.scenarios ?? FAIL_NTH_SCENARIOS;
  const chosen = names.map((name) => {
    const scenario = SCENARIOS.find((s) => s.name === name);
    if (!scenario) throw new UnknownScenarioError(name);
    return scenario;
  });
  const failures: FailNthFailure[] = [];
  const scenarios = chosen.map((scenario) => sweep(scenario, failures));
  return { scenarios, runs: scenarios.reduce((n, s) => n + s.runs, 0), failures };
}

/** The report as a short table (scenario, fail points, runs, failures), then one line per failure. */
export function formatFailNth(report: FailNthReport): string {
  const width = Math.max('scenario'.length, ...report.scenarios.map((s) => s.name.length));
  const row = (name: string, points: unknown, runs: unknown, failures: unknown) =>
    `${name.padEnd(width)}  ${String(points).padStart(6)}  ${String(runs).padStart(5)}  ${String(failures).padStart(8)}`;
  const lines = [
    row('scenario', 'points', 'runs', 'failures'),
    ...report.scenarios.map((s) => row(s.name, s.points, s.runs, s.failures)),
    `${report.scenarios.length} scenario(s), ${report.runs} runs, ${report.failures.length} failure(s)`,
  ];
  for (const f of report.failures) {
    const where = [f.mode, f.step && `"${f.step}"`, f.failedPoint && `at ${f.failedPoint}`].filter(Boolean);
    lines.push(`  ${f.scenario} N=${f.n} ${where.join(' ')}: ${f.check}: ${f.message}`);
  }
  return `${lines.join('\n')}\n`;
}

// --- scenario building blocks ---------------------------------------------------------------------

function mmap(length: bigint): Step {
  return step('mmap', (r) => {
    r.buffer = r.fd.mmap(length);
  });
}

function map(ioas: string, offset: bigint, length: bigint, iova?: bigint, name = 'map'): Step {
  return step(`${name} ${ioas} +${hex(offset)} ${iova === undefined ? 'auto' : hex(iova)}`, (r) => {
    const out = r.fd.ioasMap({
      flags: RW | (iova === undefined ? 0 : FIXED),
      ioasId: r.id(ioas),
      userVa: r.buffer + offset,
      length,
      iova,
    });
    if (iova !== undefined) check(out.iova === iova, `mapped at ${hex(out.iova)}, not at ${hex(iova)}`);
  });
}

function alloc(name: string): Step {
  return step(`alloc ${name}`, (r) => r.set(name, r.fd.ioasAlloc().ioasId));
}

function mockDomain(name: string, target: string, flags = 0): Step {
  return step(`mock domain ${name} on ${target}`, (r) => {
    const out = r.fd.testMockDomain({ id: r.id(target), flags });
    r.set(`${name}.stdev`, out.stdevId);
    r.set(`${name}.dev`, out.idevId);
    r.set(`${name}.hwpt`, out.hwptId);
  });
}

function hwptAlloc(
  name: string,
  dev: string,
  pt: string,
  opts: { flags?: number; nested?: boolean; fault?: string } = {},
): Step {
  return step(`hwpt ${name}`, (r) => {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, 0xbadbeef, true);
    const out = r.fd.hwptAlloc({
      flags: (opts.flags ?? 0) | (opts.fault ? IOMMU_HWPT_FAULT_ID_VALID : 0),
      devId: r.id(dev),
      ptId: r.id(pt),
      dataType: opts.nested ? IOMMU_HWPT_DATA_SELFTEST : 0,
      data: opts.nested ? data : undefined,
      faultId: opts.fault ? r.id(opts.fault) : undefined,
    });
    r.set(name, out.hwptId);
  });
}

function faultAlloc(name: string): Step {
  return step(`fault ${name}`, (r) => {
    const out = r.fd.faultQueueAlloc();
    r.set(name, out.faultId);
    r.openFault(out.faultFd);
  });
}

function triggerIopf(dev: string, pasid: number): Step {
  return step(`trigger iopf ${dev} pasid ${pasid}`, (r) => {
    r.fd.testTriggerIopf({ devId: r.id(dev), pasid, grpid: IOPF.grpid, perm: IOPF.perm, addr: IOPF.addr });
  });
}

/** read() one 40-byte record, check it, and answer it with an 8-byte response. */
function iopfRoundTrip(dev: string, pasid: number): Step[] {
  let cookie = 0;
  return [
    step(`read fault record of ${dev}`, (r) => {
      const buf = new Uint8Array(PGFAULT_BYTES);
      const n = (r.faultFd as FaultFd).read(buf);
      check(n === PGFAULT_BYTES, `read() returned ${n} bytes, not one ${PGFAULT_BYTES}-byte record`);
      const record = decodePgfault(buf, 0);
      const wrong = difference(
        {
          flags: PGFAULT_FLAGS_LAST_PAGE | (pasid !== 0 ? PGFAULT_FLAGS_PASID_VALID : 0),
          devId: r.id(dev),
          pasid,
          grpid: IOPF.grpid,
          perm: IOPF.perm,
          addr: IOPF.addr,
          length: 0,
        },
        { ...record, cookie: undefined },
        'record',
      );
      check(wrong === undefined, `fault record: ${wrong}`);
      cookie = record.cookie;
    }),
    step(`respond to ${dev}`, (r) => {
      const buf = new Uint8Array(PAGE_RESPONSE_BYTES);
      encodePageResponse(buf, 0, { cookie, code: IOMMUFD_PAGE_RESP_SUCCESS });
      const n = (r.faultFd as FaultFd).write(buf);
      check(n === PAGE_RESPONSE_BYTES, `write() took ${n} bytes, not ${PAGE_RESPONSE_BYTES}`);
    }),
  ];
}

function veventqAlloc(): Step {
  return step('veventq alloc', (r) => {
    const out = r.fd.veventqAlloc({
      viommuId: r.id('viommu'),
      type: IOMMU_VEVENTQ_TYPE_SELFTEST,
      veventqDepth: 2,
    });
    r.set('veventq', out.veventqId);
    r.openVeventq(out.veventqFd);
  });
}

/** A vEVENT whose allocation fails is lost, not reported (section 8): the queue marks the loss. */
function triggerVevent(): Step {
  return step('trigger vevent', (r) => r.fd.testTriggerVevent({ devId: r.id('m1.dev') }), 'object-alloc');
}

/**
 * read() the vEVENT: header + virt_id. If its allocation was the injected failure, the queue holds
 * the lost-events marker instead (section 8), a bare header with the same sequence number.
 */
function readVevent(): Step {
  return step('read vevent', (r) => {
    const buf = new Uint8Array(VEVENT_HEADER_BYTES + 4);
    const n = (r.veventqFd as VeventqFd).read(buf);
    const header = decodeVeventHeader(buf, 0);
    if (n === VEVENT_HEADER_BYTES) {
      const wrong = difference({ flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 0 }, header, 'header');
      check(wrong === undefined, `lost-events marker: ${wrong}`);
      return;
    }
    check(n === VEVENT_HEADER_BYTES + 4, `read() returned ${n} bytes, not a header and a virt_id`);
    const wrong = difference({ flags: 0, sequence: 0 }, header, 'header');
    check(wrong === undefined, `vEVENT: ${wrong}`);
    const virtId = BigInt(new DataView(buf.buffer).getUint32(VEVENT_HEADER_BYTES, true));
    check(virtId === VIRT_ID, `vEVENT virt_id is ${hex(virtId)}, not ${hex(VIRT_ID)}`);
  });
}

// --- the scenarios --------------------------------------------------------------------------------

const plainIoas: Scenario = {
  name: 'plain-ioas',
  description: 'IOAS work without any domain: allocation, maps, copies, allowed IOVAs, reserved, unmaps',
  points: ['id-reserve', 'interval-alloc'],
  steps: [
    alloc('ioas'),
    alloc('ioas2'),
    mmap(0x10000n),
    map('ioas', 0n, 0x4000n, AP),
    map('ioas', 0x4000n, 0x2000n),
    step('allow iovas ioas2', (r) =>
      r.fd.ioasAllowIovas({ ioasId: r.id('ioas2'), allowedIovas: [{ start: AP, last: AP + 0xfffffn }] }),
    ),
    map('ioas2', 0x6000n, 0x2000n),
    step('copy ioas -> ioas2 auto', (r) => {
      const out = r.fd.ioasCopy({
        flags: RW,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas2'),
        srcIova: AP,
        length: 0x4000n,
      });
      check(
        out.dstIova >= AP && out.dstIova <= AP + 0xfffffn,
        `copied to ${hex(out.dstIova)}, outside the allowed IOVAs`,
      );
    }),
    step('copy ioas -> ioas fixed', (r) =>
      r.fd.ioasCopy({
        flags: RW | FIXED,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas'),
        srcIova: AP,
        length: 0x4000n,
        dstIova: AP + 0x100000n,
      }),
    ),
    step('add reserved ioas2', (r) =>
      r.fd.testAddReserved({ ioasId: r.id('ioas2'), start: AP + 0x200000n, length: 0x1000n }),
    ),
    step('unmap one area', (r) => {
      const { length } = r.fd.ioasUnmap({ ioasId: r.id('ioas'), iova: AP, length: 0x4000n });
      check(length === 0x4000n, `unmapped ${hex(length)} bytes, not 0x4000`);
    }),
    step('unmap all ioas2', (r) => {
      const { length } = r.fd.ioasUnmap({ ioasId: r.id('ioas2'), iova: 0n, length: U64_MAX });
      check(length === 0x6000n, `unmapped ${hex(length)} bytes, not 0x6000`);
    }),
    step('destroy ioas2', (r) => r.fd.destroy({ id: r.id('ioas2') })),
    map('ioas', 0x8000n, 0x1000n, undefined, 'map again'),
  ],
};

const mockDevice: Scenario = {
  name: 'mock-device',
  description: 'a mock device: maps before and after it attaches, a second HWPT_PAGING, a replace',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill'],
  steps: [
    alloc('ioas'),
    mmap(0x20000n),
    map('ioas', 0n, 0x4000n, AP, 'map before'),
    step('allow iovas', (r) =>
      r.fd.ioasAllowIovas({ ioasId: r.id('ioas'), allowedIovas: [{ start: AP, last: AP + 0xfffffn }] }),
    ),
    map('ioas', 0x4000n, 0x2000n, undefined, 'map before'),
    mockDomain('m1', 'ioas'),
    map('ioas', 0x8000n, 0x4000n, AP + 0x80000n, 'map after'),
    map('ioas', 0xc000n, 0x2000n, undefined, 'map after'),
    hwptAlloc('hwpt2', 'm1.dev', 'ioas'),
    map('ioas', 0x10000n, 0x2000n, undefined, 'map after second hwpt'),
    step('copy within ioas', (r) =>
      r.fd.ioasCopy({
        flags: RW,
        srcIoasId: r.id('ioas'),
        dstIoasId: r.id('ioas'),
        srcIova: AP,
        length: 0x4000n,
      }),
    ),
    step('unmap one area', (r) => r.fd.ioasUnmap({ ioasId: r.id('ioas'), iova: AP, length: 0x4000n })),
    mockDomain('m2', 'hwpt2'),
    alloc('ioas2'),
    step('replace m1 onto ioas2', (r) => {
      r.set('m1.hwpt', r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('ioas2') }).ptId);
    }),
    map('ioas2', 0x12000n, 0x2000n, AP, 'map into ioas2'),
    step('destroy m2', (r) => r.fd.destroy({ id: r.id('m2.stdev') })),
    step('destroy hwpt2', (r) => r.fd.destroy({ id: r.id('hwpt2') })),
  ],
};

const nestedFault: Scenario = {
  name: 'nested-fault',
  description: 'nested HWPTs with a fault queue: an IOPF round trip through the RID and through a PASID',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill', 'fd-create', 'cookie-insert'],
  steps: [
    alloc('ioas'),
    mmap(0x4000n),
    map('ioas', 0n, 0x4000n, AP),
    mockDomain('m1', 'ioas'),
    hwptAlloc('parent', 'm1.dev', 'ioas', { flags: IOMMU_HWPT_ALLOC_NEST_PARENT }),
    faultAlloc('fault'),
    hwptAlloc('nested', 'm1.dev', 'parent', { nested: true, fault: 'fault' }),
    step('replace m1 onto nested', (r) =>
      r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('nested') }),
    ),
    triggerIopf('m1.dev', IOPF.pasid),
    ...iopfRoundTrip('m1.dev', IOPF.pasid),
    // The PASID route: a PASID-capable device on PASID-compatible HWPTs.
    hwptAlloc('parent.pasid', 'm1.dev', 'ioas', {
      flags: IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID,
    }),
    mockDomain('m2', 'parent.pasid', MOCK_FLAGS_DEVICE_PASID),
    hwptAlloc('nested.pasid', 'm2.dev', 'parent.pasid', {
      flags: IOMMU_HWPT_ALLOC_PASID,
      nested: true,
      fault: 'fault',
    }),
    step('attach pasid of m2', (r) =>
      r.fd.testPasidAttach({ stdevId: r.id('m2.stdev'), pasid: IOPF.pasid, ptId: r.id('nested.pasid') }),
    ),
    triggerIopf('m2.dev', IOPF.pasid),
    ...iopfRoundTrip('m2.dev', IOPF.pasid),
    // Left pending: teardown must answer it.
    triggerIopf('m1.dev', IOPF.pasid),
  ],
};

const viommuVeventq: Scenario = {
  name: 'viommu-veventq',
  description: 'a vIOMMU with a vDEVICE and a vEVENTQ; the queue is destroyed and allocated again',
  points: ['id-reserve', 'interval-alloc', 'pin', 'domain-fill', 'fd-create', 'object-alloc'],
  steps: [
    alloc('ioas'),
    mmap(0x4000n),
    map('ioas', 0n, 0x4000n, AP),
    mockDomain('m1', 'ioas'),
    hwptAlloc('parent', 'm1.dev', 'ioas', { flags: IOMMU_HWPT_ALLOC_NEST_PARENT }),
    step('viommu alloc', (r) =>
      r.set(
        'viommu',
        r.fd.viommuAlloc({ type: IOMMU_VIOMMU_TYPE_SELFTEST, devId: r.id('m1.dev'), hwptId: r.id('parent') })
          .viommuId,
      ),
    ),
    step('vdevice alloc', (r) =>
      r.set(
        'vdevice',
        r.fd.vdeviceAlloc({ viommuId: r.id('viommu'), devId: r.id('m1.dev'), virtId: VIRT_ID }).vdeviceId,
      ),
    ),
    hwptAlloc('nested', 'm1.dev', 'viommu', { nested: true }),
    step('replace m1 onto nested', (r) =>
      r.fd.testMockDomainReplace({ stdevId: r.id('m1.stdev'), ptId: r.id('nested') }),
    ),
    veventqAlloc(),
    triggerVevent(),
    readVevent(),
    step('close and destroy veventq', (r) => {
      r.close(r.veventqFd);
      r.fd.destroy({ id: r.id('veventq') });
    }),
    veventqAlloc(),
    triggerVevent(),
    readVevent(),
  ],
};

const SCENARIOS: readonly Scenario[] = [plainIoas, mockDevice, nestedFault, viommuVeventq];

/** Scenario names, in the order a full sweep runs them. */
export const FAIL_NTH_SCENARIOS: readonly string[] = SCENARIOS.map((s) => s.name);
