/**
 * ioasid-sandbox: the command-line interface.
 * Exit codes: 0 run completed and invariants hold; 1 internal error; 2 bad input; 3 an invariant
 * was violated.
 */
import { randomInt } from 'node:crypto';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { makeLogger } from '../../shared/logger.ts';
import { runBench } from '../bench/bench-report.ts';
import { formatCampaign, progressBar, runCampaign, type Shard, shardIndices } from '../stress/campaign.ts';
import { FAIL_NTH_SCENARIOS, formatFailNth, runFailNthSweep } from '../testing/fail-nth.ts';
import { runTopology } from '../vmm/sandbox.ts';
import { loadTopology, TopologyError } from '../vmm/topology-file.ts';
import { formatBench } from './bench.ts';
import { checkEnvironment, checkTraceTarget, PreflightError, runContext } from './preflight.ts';
import { runProgress, showsProgress } from './run-progress.ts';
import { summary } from './summary.ts';
import { packageVersion } from './version.ts';

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_BAD_INPUT = 2;
export const EXIT_INVARIANT = 3;

function integer(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer in ${min}..${max}`);
    }
    return n;
  };
}

/** `--shard i/n`: the i-th (1-based) of n slices. */
function shard(value: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(value);
  const index = Number(m?.[1]);
  const count = Number(m?.[2]);
  if (!m || count < 1 || count > 1_000_000 || index < 1 || index > count) {
    throw new InvalidArgumentError('--shard must be i/n with 1 <= i <= n, e.g. 2/4');
  }
  return { index, count };
}

/** Thrown by the preAction hook of a parse-only run: the line parsed, and nothing runs. */
class ParsedOnly extends Error {}

/**
 * `parseOnly`: check the command line against the commands and their flags, and run nothing
 * (how the tests check the command lines of the README and docs/).
 */
export async function main(argv: string[], options: { parseOnly?: boolean } = {}): Promise<number> {
  let exitCode = EXIT_OK;
  const program = new Command()
    .name('ioasid-sandbox')
    .description('Multi-VM sandbox for the I/O-page-fault path of virtualised IOMMUs')
    .version(packageVersion(), '-V, --version', 'print the version')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('run')
    .description('launch a topology, run its workloads, and report what happened')
    .argument('<topology>', 'topology file (YAML), e.g. configs/default.yaml')
    .option(
      '--duration <ms>',
      'longest the workloads may run (ends earlier when all are done)',
      integer('--duration', 1, 86_400_000),
    )
    .option('--seed <n>', 'derive every workload seed from this seed', integer('--seed', 0, 0xffff_ffff))
    .option(
      '--transport <kind>',
      "queue transport, overriding the topology's: sab (shared-memory rings) or postmessage",
      (value: string) => {
        if (value !== 'sab' && value !== 'postmessage')
          throw new InvalidArgumentError('expected sab or postmessage');
        return value;
      },
    )
    .option(
      '--trace <file>',
      "write a Chrome trace-event file of every fault's life (open it in Perfetto UI)",
    )
    .option('--json', 'print exactly one JSON object on stdout')
    .action(
      async (
        file: string,
        opts: {
          duration?: number;
          seed?: number;
          transport?: 'sab' | 'postmessage';
          trace?: string;
          json?: boolean;
        },
      ) => {
        const topology = loadTopology(file, runContext(opts.duration));
        if (opts.trace !== undefined) checkTraceTarget(opts.trace);
        const progress = showsProgress(process.stderr, opts.json === true) ? runProgress() : undefined;
        const report = await runTopology(topology, {
          transport: opts.transport,
          trace: opts.trace,
          durationMs: opts.duration,
          seed: opts.seed,
          log: makeLogger({ side: 'host' }),
          onProgress: progress?.update,
        }).finally(() => progress?.stop());
        process.stdout.write(
          opts.json ? `${JSON.stringify(report)}\n` : summary(report, { trace: opts.trace }),
        );
        exitCode = report.invariants.ok ? EXIT_OK : EXIT_INVARIANT;
      },
    );

  program
    .command('validate')
    .description('check a topology file without running it')
    .argument('<topology>', 'topology file (YAML)')
    .option(
      '--duration <ms>',
      "check against this run duration (the teardowns' atMs), as `run --duration` would",
      integer('--duration', 1, 86_400_000),
    )
    .option('--json', 'print the topology with its defaults filled in, as JSON')
    .action((file: string, opts: { duration?: number; json?: boolean }) => {
      const topology = loadTopology(file, runContext(opts.duration));
      const devices = topology.vms.reduce((n, vm) => n + vm.devices.length, 0);
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(topology)}\n`
          : `${file}: valid: topology ${topology.name}, ${topology.vms.length} VM(s), ${devices} device(s), routing ${topology.routing}\n`,
      );
    });

  program
    .command('bench')
    .description(
      'measure speed figures side by side in one run: floors, faults per transport, translation, scale',
    )
    .option('--quick', 'short measurement windows (noisier)')
    .option('--profile', "add where the host's time per fault goes, by stage (one more run)")
    .option('--json', 'print exactly one JSON object on stdout')
    .action(async (opts: { quick?: boolean; profile?: boolean; json?: boolean }) => {
      const report = await runBench(opts.quick ?? false, opts.profile ?? false);
      process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatBench(report));
    });

  program
    .command('fail-nth')
    .description("sweep the /dev/ioasid registry's fail-nth fault injection over its scenarios")
    .option(
      '--scenario <name...>',
      'sweep only these scenarios (default all)',
      (name, names: string[] = []) => {
        if (!FAIL_NTH_SCENARIOS.includes(name)) {
          throw new InvalidArgumentError(
            `unknown scenario; known scenarios: ${FAIL_NTH_SCENARIOS.join(', ')}`,
          );
        }
        return [...names, name];
      },
    )
    .option('--json', 'print exactly one JSON object on stdout')
    .action((opts: { scenario?: string[]; json?: boolean }) => {
      const report = runFailNthSweep({ scenarios: opts.scenario });
      process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatFailNth(report));
      exitCode = report.failures.length === 0 ? EXIT_OK : EXIT_INVARIANT;
    });

  program
    .command('stress')
    .description('a campaign of independent seeded runs of random topologies on a worker pool')
    .option('--runs <n>', 'runs in the campaign', integer('--runs', 1, 1_000_000), 100)
    .option(
      '--seed <s>',
      'campaign seed; run 0 has this seed (default: random)',
      integer('--seed', 0, 0xffff_ffff),
    )
    .option('--workers <k>', 'pool threads (default: available parallelism)', integer('--workers', 1, 1024))
    .option('--shard <i/n>', 'run only the runs with index % n === i - 1', shard)
    .option('--json', 'print exactly one JSON object on stdout')
    .action(
      async (opts: { runs: number; seed?: number; workers?: number; shard?: Shard; json?: boolean }) => {
        const seed = opts.seed ?? randomInt(0, 0x1_0000_0000);
        const total = shardIndices(opts.runs, opts.shard).length;
        const bar = !opts.json && process.stderr.isTTY ? progressBar(total) : undefined;
        const report = await runCampaign({ ...opts, seed, onRun: bar?.onRun }).finally(() => bar?.stop());
        process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatCampaign(report));
        exitCode = report.failed === 0 ? EXIT_OK : EXIT_INVARIANT;
      },
    );

  if (options.parseOnly) {
    program.hook('preAction', () => {
      throw new ParsedOnly();
    });
  }

  program.hook('preAction', () => checkEnvironment());

  try {
    await program.parseAsync(argv, { from: 'user' });
    return exitCode;
  } catch (error) {
    if (error instanceof ParsedOnly) return EXIT_OK;
    if (error instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      return error.exitCode === 0 ? EXIT_OK : EXIT_BAD_INPUT;
    }
    if (error instanceof TopologyError) {
      process.stderr.write(`ioasid-sandbox: bad topology: ${error.message}\n`);
      return EXIT_BAD_INPUT;
    }
    if (error instanceof PreflightError) {
      process.stderr.write(`ioasid-sandbox: ${error.message}\n`);
      return EXIT_BAD_INPUT;
    }
    process.stderr.write(`ioasid-sandbox: internal error: ${(error as Error).stack ?? error}\n`);
    return EXIT_INTERNAL;
  }
}

if (
  import.meta.url === new URL(process.argv[1] ?? '', 'file://').href ||
  process.env.IOASID_SANDBOX_BIN === '1'
) {
  process.exitCode = await main(process.argv.slice(2));
}
