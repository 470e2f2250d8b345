/**
 * Fail-nth sweep of the iommufd registry (host/testing/fail-nth.ts; the kernel's iommufd_fail_nth
 * selftest; docs/registry.md, fail-nth and invariants): every scenario sweeps clean and reaches the fail
 * points it exists for, and the sweep's checks catch bugs planted in the registry.
 */
import { afterEach, describe, expect, test, vi } from 'vitest';
import { IommufdError } from '../../../host/iommufd/errors.ts';
import { Iommufd } from '../../../host/iommufd/iommufd.ts';
import { FAIL_NTH_SCENARIOS, type FailNthReport, runFailNthSweep } from '../../../host/testing/fail-nth.ts';

/** Fewest fail points an unfailed run of each scenario consults; fewer means calls went missing. */
const MIN_POINTS: Record<string, number> = {
  'plain-ioas': 8,
  'mock-device': 35,
  'nested-fault': 20,
  'viommu-veventq': 18,
};

const checksBroken = (report: FailNthReport) => new Set(report.failures.map((f) => f.check));

describe('fail-nth: every injected failure is clean, and close() leaves nothing (docs/registry.md)', () => {
  test('every scenario has a minimum number of fail points here', () => {
    expect(Object.keys(MIN_POINTS)).toEqual([...FAIL_NTH_SCENARIOS]);
  });

  for (const name of FAIL_NTH_SCENARIOS) {
    test(`${name}: each fail point fails with ENOMEM and changes nothing`, () => {
      const report = runFailNthSweep({ scenarios: [name] });
      expect(report.failures).toEqual([]);
      const [s] = report.scenarios;
      expect(s.name).toBe(name);
      expect(s.points).toBeGreaterThanOrEqual(MIN_POINTS[name]);
      // N = 1..points each failed one call; N = points + 1 failed nothing and ended the sweep.
      expect(s.tried).toBe(s.points + 1);
      expect(Object.values(s.failedAt).reduce((a, b) => a + b, 0)).toBe(s.points);
      expect(s.teardown).toEqual({ runs: s.points + 1, passed: s.points + 1 });
      expect(s.resume).toEqual({ runs: s.points, passed: s.points });
      expect(s.runs).toBe(1 + s.teardown.runs + s.resume.runs);
      expect(report.runs).toBe(s.runs);
      expect(s.requiredPoints).toContain('id-reserve');
      for (const point of s.requiredPoints) expect(s.failedAt[point], `fails at ${point}`).toBeGreaterThan(0);
    });
  }

  test('an unknown scenario name is refused with the known names', () => {
    expect(() => runFailNthSweep({ scenarios: ['plain-ioas', 'nope'] })).toThrow(
      /unknown fail-nth scenario "nope"; known scenarios: plain-ioas, mock-device/,
    );
  });
});

describe('fail-nth: the sweep reports bugs planted in the registry', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  test('a map that pins its pages and leaves them pinned on the error path', () => {
    const ioasMap = Iommufd.prototype.ioasMap;
    vi.spyOn(Iommufd.prototype, 'ioasMap').mockImplementation(function (this: Iommufd, args) {
      try {
        return ioasMap.call(this, args);
      } catch (error) {
        this.memory.pin(args.userVa, args.length);
        throw error;
      }
    });
    const report = runFailNthSweep({ scenarios: ['plain-ioas'] });
    const [s] = report.scenarios;
    expect(s.failures).toBe(report.failures.length);
    expect(checksBroken(report)).toEqual(new Set(['unchanged', 'teardown', 'resume']));
    expect(s.teardown.passed).toBeLessThan(s.teardown.runs);
    expect(s.resume.passed).toBeLessThan(s.resume.runs);
    const unchanged = report.failures.filter((f) => f.check === 'unchanged');
    for (const f of unchanged) {
      expect(f).toMatchObject({ scenario: 'plain-ioas', failedPoint: 'interval-alloc' });
      expect(f.step).toMatch(/^map/);
      expect(f.message).toMatch(/left a change: state\.pinnedPages is \d+, not 0/);
    }
    expect(report.failures).toContainEqual(
      expect.objectContaining({
        check: 'teardown',
        mode: 'teardown',
        message: expect.stringMatching(/pinned/),
      }),
    );
  });

  test('a call that reports its injected failure as EINVAL', () => {
    const hwptAlloc = Iommufd.prototype.hwptAlloc;
    vi.spyOn(Iommufd.prototype, 'hwptAlloc').mockImplementation(function (this: Iommufd, args) {
      try {
        return hwptAlloc.call(this, args);
      } catch (error) {
        if (error instanceof IommufdError && error.errno === 'ENOMEM')
          throw new IommufdError('EINVAL', 'bad');
        throw error;
      }
    });
    const report = runFailNthSweep({ scenarios: ['mock-device'] });
    expect(checksBroken(report)).toEqual(new Set(['errno']));
    expect(report.failures[0]).toMatchObject({
      scenario: 'mock-device',
      step: 'hwpt hwpt2',
      check: 'errno',
      message: expect.stringMatching(/failed with EINVAL .* instead of the injected ENOMEM/),
    });
  });

  test('a call that swallows its injected failure', () => {
    const addReserved = Iommufd.prototype.testAddReserved;
    vi.spyOn(Iommufd.prototype, 'testAddReserved').mockImplementation(function (this: Iommufd, args) {
      try {
        addReserved.call(this, args);
      } catch {}
    });
    const report = runFailNthSweep({ scenarios: ['plain-ioas'] });
    expect(report.failures).toContainEqual({
      scenario: 'plain-ioas',
      n: expect.any(Number),
      mode: 'teardown',
      step: 'add reserved ioas2',
      failedPoint: 'interval-alloc',
      check: 'absorbed',
      message: 'succeeded although its call at interval-alloc failed',
    });
    // ioas2 is destroyed later on, so the lost reservation leaves no other trace.
    expect(checksBroken(report)).toEqual(new Set(['absorbed']));
    expect(report.failures.map((f) => f.mode)).toEqual(['teardown', 'resume']);
  });
});
