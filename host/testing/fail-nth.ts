/**
 * Fail-nth sweep of the registry (the kernel's iommufd_fail_nth selftest; docs/registry.md,
 * Invariants). Each scenario is a fixed sequence of registry calls. For N = 1, 2, ... it runs on a
 * fresh Iommufd with the injector armed to fail its N-th consulted point, until a whole run no
 * longer reaches N points. At the call that fails, the error must be the injected ENOMEM and the
 * call must have left no visible change. The run is then either torn down at once (close() must
 * leave no object, reserved id, pinned page or pending fault group) or resumed: the failed call is
 * retried disarmed and the rest of the scenario must end exactly like an unfailed run.
 *
 * Broken checks do not stop the sweep: each one becomes a failure in the report.
 *
 * A test harness, not part of the registry: this file is the sweep and its report; the scenarios
 * are fail-nth-scenarios.ts, and one run's state, snapshot and leftovers fail-nth-run.ts.
 */
import { IommufdError } from '../iommufd/errors.ts';
import type { FailPoint } from '../iommufd/fault-injector.ts';
import { difference, leftovers, Run, type Scenario, type Step, snapshot } from './fail-nth-run.ts';
import { FAIL_NTH_SCENARIOS, SCENARIOS } from './fail-nth-scenarios.ts';

export { FAIL_NTH_SCENARIOS };

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

// --- the sweep ------------------------------------------------------------------------------------

/** Give up on a scenario that never stops reaching new fail points. */
const MAX_N = 1000;

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
