// `run`'s progress: drawn for a person at a terminal, never on a pipe or with --json.
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { runProgress, showsProgress } from '../../../host/cli/run-progress.ts';

const env = { ...process.env, LOG_LEVEL: 'silent' };

/** A terminal that keeps what is drawn on it. */
function terminal(): { stream: Writable & { isTTY: boolean; columns: number }; text: () => string } {
  const chunks: string[] = [];
  const stream = Object.assign(
    new Writable({
      write(chunk, _encoding, done) {
        chunks.push(String(chunk));
        done();
      },
    }),
    { isTTY: true, columns: 120 },
  );
  return { stream, text: () => chunks.join('') };
}

/** main() in a child whose stderr claims to be a terminal (it is a pipe the test reads). */
function runAsOnTerminal(...args: string[]) {
  const code = `
    Object.defineProperty(process.stderr, 'isTTY', { value: true });
    const { main } = await import('./host/cli/main.ts');
    process.exitCode = await main(${JSON.stringify(args)});`;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    encoding: 'utf8',
    env,
    timeout: 60_000,
  });
}

describe('run progress', () => {
  test('progress is drawn only on a terminal and never with --json', () => {
    expect(showsProgress({ isTTY: true }, false)).toBe(true);
    expect(showsProgress({ isTTY: true }, true)).toBe(false);
    expect(showsProgress({ isTTY: false }, false)).toBe(false);
    // A pipe's stream has no isTTY at all.
    expect(showsProgress({}, false)).toBe(false);
  });

  test('the bar shows time elapsed over the duration and the faults raised so far', () => {
    const { stream, text } = terminal();
    const progress = runProgress(stream);
    progress.update(500, 2000, 42);
    progress.update(1500, 2000, 99);
    progress.stop();
    expect(text()).toContain('0.5/2.0 s | 42 faults raised');
    expect(text()).toContain('1.5/2.0 s | 99 faults raised');
  });

  test('a run that never reported progress draws nothing', () => {
    const { stream, text } = terminal();
    runProgress(stream).stop();
    expect(text()).toBe('');
  });

  test('run on a terminal draws its progress on stderr; with --json it does not', () => {
    const shown = runAsOnTerminal('run', 'configs/default.yaml', '--duration', '20000');
    expect(shown.status).toBe(0);
    expect(shown.stderr).toMatch(/run \|.*\| \d+\.\d\/20\.0 s \| \d+ faults raised/);
    expect(shown.stdout).toMatch(/^invariants: ok$/m);
    const json = runAsOnTerminal('run', 'configs/default.yaml', '--json');
    expect(json.status).toBe(0);
    expect(json.stderr).toBe('');
    expect(JSON.parse(json.stdout).invariants.ok).toBe(true);
  });

  test('run on a pipe prints no progress', () => {
    const p = spawnSync(process.execPath, ['bin/ioasid-sandbox.mjs', 'run', 'configs/default.yaml'], {
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/^invariants: ok$/m);
    expect(p.stderr).toBe('');
  });
});
