/**
 * Reading a topology file (the format is topology.ts): a bounded read of a regular file, the YAML
 * shape checked before anything recurses into it (nesting depth, collection size, alias bombs),
 * the schema, and what the format cannot know (this host's RAM, the run's duration). Every refusal
 * is a TopologyError naming the YAML path of the bad field and its line, and maps to exit code 2 in
 * the CLI.
 */
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { totalmem } from 'node:os';
import {
  CST,
  type Document,
  isNode,
  isPair,
  isScalar,
  isSeq,
  Lexer,
  LineCounter,
  Parser,
  parseDocument,
  visit,
} from 'yaml';
import { channelLayout } from '../../shared/vm-channel.ts';
import { type Topology, TopologySchema } from './topology.ts';

/** Largest topology file read: a topology is a few KiB, and the file is read whole. */
export const MAX_TOPOLOGY_BYTES = 1 << 20;
/**
 * Deepest nesting of YAML collections (the parser's stack, document included): a topology needs 8.
 * yaml's composer recurses, and a few thousand levels crash the process instead of throwing.
 */
export const MAX_TOPOLOGY_DEPTH = 32;
/**
 * Most entries in one YAML map or sequence (a topology's longest list is its 64 VMs): yaml checks a
 * map's keys for duplicates pairwise, so a map of many thousand keys takes minutes.
 */
export const MAX_COLLECTION_ENTRIES = 256;
/**
 * yaml's `maxAliasCount`: an alias may stand for a repeated device list, but nested aliases that
 * expand exponentially (an alias bomb) are refused before anything walks them.
 */
export const MAX_ALIAS_COUNT = 100;
/** Share of the host's RAM that the VMs' guest RAM and queues may take together. */
export const HOST_MEMORY_SHARE = 0.5;

export class TopologyError extends Error {
  override readonly name = 'TopologyError';

  constructor(
    readonly file: string,
    readonly yamlPath: string,
    readonly line: number | undefined,
    readonly reason: string,
  ) {
    super(`${file}${line === undefined ? '' : `:${line}`}: ${yamlPath || '(top level)'}: ${reason}`);
  }
}

/** `vms[0].devices[1].pasids` from zod's path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    out += typeof key === 'number' ? `[${key}]` : `${out ? '.' : ''}${String(key)}`;
  }
  return out;
}

/**
 * What a topology is checked against besides its own format: this host and this run. The run's
 * duration is known where the CLI reads `--duration`; without one no teardown time is checked.
 */
export interface RunContext {
  /** The run's duration in ms, and whether `--duration` set it (the message names the flag). */
  durationMs?: number;
  durationFromFlag?: boolean;
  /** Bytes of RAM of the host (default: os.totalmem()). */
  hostMemoryBytes?: number;
}

interface Refusal {
  path: (string | number)[];
  reason: string;
}

export function parseTopology(text: string, file = '<topology>', run: RunContext = {}): Topology {
  const shape = misshapen(text);
  if (shape) throw new TopologyError(file, formatPath(shape.path), shape.line, shape.reason);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    const error = doc.errors[0];
    const line = error.linePos?.[0].line ?? lines.linePos(error.pos[0]).line;
    throw new TopologyError(file, '', line, `not valid YAML: ${error.message.split('\n')[0]}`);
  }
  const refuse = ({ path, reason }: Refusal): TopologyError =>
    new TopologyError(file, formatPath(path), lineOf(doc, lines, path), reason);
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (error) {
    // yaml throws a ReferenceError for an alias bomb, and for an alias it cannot resolve.
    if (!(error instanceof ReferenceError)) throw error;
    const bomb = error.message.startsWith('Excessive alias count');
    throw refuse({
      path: firstAliasPath(doc),
      reason: bomb
        ? `aliases expand to more than yaml's maxAliasCount (${MAX_ALIAS_COUNT}) nodes, as an alias bomb does: write the repeated values out`
        : `not valid YAML: ${error.message}`,
    });
  }
  const result = TopologySchema.safeParse(data);
  if (!result.success) {
    const issue = result.error.issues[0];
    let reason = issue.message;
    if (issue.code === 'unrecognized_keys')
      reason = `unknown key(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    throw refuse({ path: issue.path as (string | number)[], reason });
  }
  const misfit = runMisfit(result.data, run);
  if (misfit) throw refuse(misfit);
  return result.data;
}

/** Line of the deepest node on `path` that the document has. */
function lineOf(doc: Document, lines: LineCounter, path: readonly (string | number)[]): number | undefined {
  for (let depth = path.length; depth >= 0; depth--) {
    const node = doc.getIn(path.slice(0, depth), true);
    if (isNode(node) && node.range) return lines.linePos(node.range[0]).line;
  }
  return undefined;
}

/**
 * Where the text nests deeper than MAX_TOPOLOGY_DEPTH or has a collection of more than
 * MAX_COLLECTION_ENTRIES, found with yaml's CST parser, which keeps its own stack and costs a
 * constant per token (the composer recurses and compares keys pairwise: it only sees text that
 * passed).
 */
function misshapen(text: string): { path: (string | number)[]; line: number; reason: string } | undefined {
  const parser = new Parser();
  const at = (reason: string, depth = parser.stack.length) => ({
    path: cstPath(parser.stack.slice(0, depth)),
    line: text.slice(0, parser.offset).split('\n').length,
    reason,
  });
  for (const lexeme of new Lexer().lex(text)) {
    for (const _ of parser.next(lexeme)) {
      // Top-level tokens; parseDocument composes them again once the shape is known to be safe.
    }
    const stack = parser.stack;
    if (stack.length > MAX_TOPOLOGY_DEPTH)
      return at(`nested deeper than ${MAX_TOPOLOGY_DEPTH} levels (a topology needs 8)`);
    const top = stack[stack.length - 1];
    if (top && 'items' in top && top.items.length > MAX_COLLECTION_ENTRIES)
      return at(
        `more than ${MAX_COLLECTION_ENTRIES} entries in one map or list (a topology's longest is its at most 64 VMs)`,
        stack.length - 1,
      );
  }
  return undefined;
}

/** The field path to where the CST parser stands: the key of each open map, the index in each open sequence. */
function cstPath(stack: readonly CST.Token[]): (string | number)[] {
  const path: (string | number)[] = [];
  for (const token of stack) {
    if (token.type !== 'block-map' && token.type !== 'block-seq' && token.type !== 'flow-collection')
      continue;
    const mapping =
      token.type === 'block-map' || (token.type === 'flow-collection' && token.start.source === '{');
    if (!mapping) {
      path.push(Math.max(0, token.items.length - 1));
      continue;
    }
    const key = token.items[token.items.length - 1]?.key;
    path.push(CST.isScalar(key) ? String(CST.resolveAsScalar(key).value) : '?');
  }
  return path;
}

/** The field path of the document's first alias. */
function firstAliasPath(doc: Document): (string | number)[] {
  let found: (string | number)[] = [];
  visit(doc, {
    Alias(_key, node, ancestors) {
      const chain = [...ancestors, node];
      found = [];
      for (let i = 1; i < chain.length; i++) {
        const parent = chain[i - 1];
        if (isPair(parent) && parent.value === chain[i])
          found.push(isScalar(parent.key) ? String(parent.key.value) : '?');
        else if (isSeq(parent)) found.push(parent.items.indexOf(chain[i] as never));
      }
      return visit.BREAK;
    },
  });
  return found;
}

/**
 * What the topology's format cannot know: whether its VMs fit this host's RAM (guest RAM and
 * queues, at most HOST_MEMORY_SHARE of it), and whether its teardowns fall within the run.
 */
function runMisfit(t: Topology, run: RunContext): Refusal | undefined {
  const hostBytes = run.hostMemoryBytes ?? totalmem();
  const allowedMiB = Math.floor((hostBytes * HOST_MEMORY_SHARE) / 2 ** 20);
  let neededMiB = 0;
  for (const vm of t.vms) {
    const channel = channelLayout({ flavour: vm.viommu, ...vm.queues, devices: vm.devices.length });
    neededMiB += vm.memoryMiB + channel.bytes / 2 ** 20;
  }
  if (neededMiB > allowedMiB)
    return {
      path: ['vms'],
      reason: `the VMs' guest RAM and queues take ${Math.ceil(neededMiB)} MiB; this host has ${Math.floor(hostBytes / 2 ** 20)} MiB and a run may use at most ${HOST_MEMORY_SHARE * 100}% of it (${allowedMiB} MiB): fewer VMs, or less memoryMiB or smaller queues per VM`,
    };
  const durationMs = run.durationMs;
  if (durationMs === undefined) return undefined;
  const index = t.vms.findIndex((vm) => vm.teardown && vm.teardown.atMs >= durationMs);
  if (index < 0) return undefined;
  const duration = run.durationFromFlag
    ? `--duration ${durationMs}`
    : `the default duration, ${durationMs} ms`;
  return {
    path: ['vms', index, 'teardown', 'atMs'],
    reason: `${t.vms[index].teardown?.atMs} ms is not within the run (${duration}), so the teardown would never happen: lower atMs or raise --duration`,
  };
}

/**
 * The file's text, read with a bound: only a regular file (a device, a FIFO or a directory is
 * refused before any read), of at most MAX_TOPOLOGY_BYTES, and no more than that is ever read even
 * when the size it reports is wrong (procfs reports 0).
 */
function readTopologyFile(file: string): string {
  const refuse = (reason: string) => new TopologyError(file, '', undefined, reason);
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; O_NOCTTY: a terminal stays free.
    fd = openSync(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0) | (constants.O_NOCTTY ?? 0));
  } catch (error) {
    throw refuse(`cannot read the file (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw refuse(`not a regular file (${fileKind(stat)}): a topology is a YAML file`);
    const tooBig = `larger than ${MAX_TOPOLOGY_BYTES} bytes (1 MiB): a topology is a few KiB`;
    if (stat.size > MAX_TOPOLOGY_BYTES) throw refuse(`${stat.size} bytes is ${tooBig}`);
    const buffer = Buffer.alloc(MAX_TOPOLOGY_BYTES + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > MAX_TOPOLOGY_BYTES) throw refuse(tooBig);
    }
    return buffer.toString('utf8', 0, length);
  } catch (error) {
    if (error instanceof TopologyError) throw error;
    throw refuse(`cannot read the file (${(error as NodeJS.ErrnoException).code ?? error})`);
  } finally {
    closeSync(fd);
  }
}

function fileKind(stat: Stats): string {
  if (stat.isDirectory()) return 'a directory';
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isSocket()) return 'a socket';
  return 'not a file';
}

export function loadTopology(file: string, run: RunContext = {}): Topology {
  return parseTopology(readTopologyFile(file), file, run);
}
