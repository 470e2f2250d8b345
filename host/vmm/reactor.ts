/**
 * The reactor: the host's one data plane. A single loop serves, pass after pass, every VM whose
 * pending bit is set (its command queue, its devices' descriptor queues and retries, its fault
 * and event queues), the physical IOMMUs' IRQ threads that asked for a turn, and the deadlines
 * that are due. There is no loop per VM: one wake-up serves every VM that rang meanwhile.
 *
 * With the `sab` transport the loop is synchronous: it passes while passes find work, spins about
 * one wake-up's length when one finds nothing, then blocks in `Atomics.wait` on the host signal's
 * doorbell (shared/host-signal.ts). It returns to the event loop (comlink, the library's calls,
 * JS timers) after at most `sliceMs` of passes, after every blocking wait (which lasts at most
 * `blockMs`, less when a deadline is nearer), and as soon as a guest posted a control-plane
 * message (the guest raises CONTROL on the doorbell). A control-plane message therefore waits at
 * most `sliceMs + blockMs` for the host's thread (docs/reactor.md).
 *
 * With the `postmessage` transport records arrive as messages, so the loop cannot hold the thread:
 * it sleeps in `Atomics.waitAsync` and yields every few busy passes (and after `sliceMs` of them),
 * as the comparison requires.
 *
 * Deadlines (teardown `atMs`, response deadlines, watchdogs, injector pacing) are tickers checked
 * against the monotonic clock at the start of each pass; none has a JS timer of its own.
 */
import type { TransportKind } from '../../shared/channel-side.ts';
import { Doorbell } from '../../shared/doorbell.ts';
import { hostSignalBytes, pendingWords, VmSignal } from '../../shared/host-signal.ts';
import { stageClock } from '../../shared/stage-clock.ts';

/** What the reactor needs of a VM. */
export interface ReactorClient {
  /** One pass over everything of the VM; returns records handled (0: nothing to do). */
  pump(): number;
  /** Something of the VM can move without a new signal (checked before the reactor sleeps). */
  hasWork(): boolean;
}

export interface ReactorOptions {
  vms: number;
  transport: TransportKind;
  /** How long a pass that found nothing spins on the doorbell before the loop sleeps. */
  spinNs: number;
  /** Longest stretch of busy passes before the loop returns to the event loop (default 1 ms). */
  sliceMs?: number;
  /** Longest blocking wait before the loop returns to the event loop (default 1 ms). */
  blockMs?: number;
  /** An exception a ticker or a deferred turn threw (a VM's pump counts its own). */
  onError(error: unknown): void;
}

export interface ReactorStats {
  /** Passes, and those that found work. */
  passes: number;
  busyPasses: number;
  /** Wall time spent in passes that found work, ms. */
  busyMs: number;
  /** Records the busy passes handled (the sum of the VMs' pump results). */
  records: number;
  /** Blocking waits, and those a ring ended (the others timed out). */
  sleeps: number;
  wokenSleeps: number;
  /** Spins that saw the doorbell ring. */
  spinHits: number;
  /** Returns to the event loop. */
  yields: number;
  /** Of those, the ones a guest's control-plane message asked for. */
  controlYields: number;
  /** VMs found with work by the sweep before sleeping, that no pending bit had named. */
  sweepFinds: number;
}

/** A deadline the loop checks: once at `due`, or every `periodMs` from then on. */
export interface Ticker {
  due: number;
  periodMs: number;
  run: (now: number) => void;
  cancelled: boolean;
}

const DEFAULT_SLICE_MS = 1;
const DEFAULT_BLOCK_MS = 1;
/** postmessage: busy passes between visits to the event loop, where the link's messages arrive. */
const ASYNC_YIELD_EVERY = 32;
/** postmessage: longest asynchronous sleep when no deadline is nearer. */
const ASYNC_SLEEP_MS = 100;

export class Reactor {
  /** The host signal: shared with every guest over `sab`, the host's own otherwise. */
  readonly buffer: SharedArrayBuffer;
  readonly stats: ReactorStats = {
    passes: 0,
    busyPasses: 0,
    busyMs: 0,
    records: 0,
    sleeps: 0,
    wokenSleeps: 0,
    spinHits: 0,
    yields: 0,
    controlYields: 0,
    sweepFinds: 0,
  };
  private readonly bell: Doorbell;
  private readonly pending: Int32Array;
  private readonly signals: VmSignal[];
  private readonly clients: (ReactorClient | undefined)[];
  private readonly sync: boolean;
  private readonly sliceMs: number;
  private readonly blockMs: number;
  /** IRQ thread turns asked for during a pass, run at the start of the next. */
  private deferred: (() => void)[] = [];
  /** The turns being run now: the two arrays swap, so a turn deferred meanwhile waits a pass. */
  private runningTurns: (() => void)[] = [];
  private readonly tickers: Ticker[] = [];
  private nextDue = Number.POSITIVE_INFINITY;
  private state: 'new' | 'running' | 'stopping' | 'stopped' = 'new';
  private scheduled = false;
  /**
   * The last sleep ran out with nothing: spin again only once work comes back, so that an idle
   * host wakes once a millisecond without spinning each time.
   */
  private quiet = false;
  private stopped: Promise<void> | undefined;
  private resolveStopped: (() => void) | undefined;

  constructor(private readonly options: ReactorOptions) {
    this.buffer = new SharedArrayBuffer(hostSignalBytes(options.vms));
    this.bell = new Doorbell(this.buffer, 0);
    this.pending = pendingWords(this.buffer);
    this.signals = Array.from({ length: options.vms }, (_, vm) => new VmSignal(this.buffer, vm));
    this.clients = new Array(options.vms).fill(undefined);
    this.sync = options.transport === 'sab';
    this.sliceMs = options.sliceMs ?? DEFAULT_SLICE_MS;
    this.blockMs = options.blockMs ?? DEFAULT_BLOCK_MS;
  }

  /** VM `vm`'s line to the host: what its guest's producers (and the host's wakes) ring. */
  signalOf(vm: number): VmSignal {
    return this.signals[vm];
  }

  /** Serve VM `vm` from now on. */
  serve(vm: number, client: ReactorClient): void {
    this.clients[vm] = client;
    this.signals[vm].mark();
  }

  /** Stop serving VM `vm` (its shutdown pumps what is left itself). */
  retire(vm: number): void {
    this.clients[vm] = undefined;
  }

  /**
   * Something of VM `vm` became runnable on the host's own thread (a response, a teardown, an
   * IRQ thread's hand-on): its bit, no notify, since the only sleeper is this thread.
   */
  wake(vm: number): void {
    this.signals[vm]?.mark();
  }

  /** An IRQ thread's next turn: at the start of the next pass. */
  readonly defer = (turn: () => void): void => {
    this.deferred.push(turn);
  };

  /** Run `run` once at `due` (performance.now() time); returns the ticker, to cancel. */
  at(due: number, run: (now: number) => void): Ticker {
    return this.add({ due, periodMs: 0, run, cancelled: false });
  }

  /** Run `run` every `periodMs`, first `periodMs` from now. */
  every(periodMs: number, run: (now: number) => void): Ticker {
    return this.add({ due: performance.now() + periodMs, periodMs, run, cancelled: false });
  }

  cancel(ticker: Ticker | undefined): void {
    if (ticker) ticker.cancelled = true;
  }

  start(): void {
    if (this.state !== 'new') throw new Error('a reactor is started once');
    this.state = 'running';
    this.stopped = new Promise((resolve) => {
      this.resolveStopped = resolve;
    });
    if (this.sync) this.schedule();
    else void this.runAsync();
  }

  /** End the loop; resolves once it has returned to the event loop for good. */
  async stop(): Promise<void> {
    if (this.state === 'new') {
      this.state = 'stopped';
      return;
    }
    if (this.state === 'running') this.state = 'stopping';
    this.bell.ring();
    await this.stopped;
  }

  private add(ticker: Ticker): Ticker {
    this.tickers.push(ticker);
    if (ticker.due < this.nextDue) this.nextDue = ticker.due;
    return ticker;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.turn);
  }

  /** One stretch of the synchronous loop, from a turn of the event loop back to the next. */
  private readonly turn = (): void => {
    this.scheduled = false;
    if (this.finishIfStopping()) return;
    const bell = this.bell;
    const stats = this.stats;
    const sliceEnd = performance.now() + this.sliceMs;
    for (;;) {
      const seen = bell.sequence();
      const start = performance.now();
      const work = this.pass(start);
      const end = performance.now();
      if (work > 0) {
        this.quiet = false;
        stats.busyPasses++;
        stats.busyMs += end - start;
        stats.records += work;
        if (end >= sliceEnd) break;
        continue;
      }
      if (this.state !== 'running') break;
      if (bell.takeControl()) {
        stats.controlYields++;
        break;
      }
      if (end >= sliceEnd) break;
      if (!this.quiet && bell.spin(seen, this.options.spinNs)) {
        stats.spinHits++;
        continue;
      }
      bell.arm();
      if (this.runnable()) {
        bell.disarm();
        continue;
      }
      const timeout = Math.max(0, Math.min(this.blockMs, this.nextDue - performance.now()));
      stats.sleeps++;
      if (bell.wait(seen, timeout) === 'timed-out') {
        this.quiet = true;
        break;
      }
      this.quiet = false;
      stats.wokenSleeps++;
    }
    stats.yields++;
    this.schedule();
  };

  /** The postmessage transport's loop: the same passes, asleep in waitAsync between them. */
  private async runAsync(): Promise<void> {
    const bell = this.bell;
    let busy = 0;
    let stretchEnd = performance.now() + this.sliceMs;
    while (!this.finishIfStopping()) {
      const seen = bell.sequence();
      const start = performance.now();
      const work = this.pass(start);
      if (work > 0) {
        const end = performance.now();
        this.stats.busyPasses++;
        this.stats.busyMs += end - start;
        this.stats.records += work;
        // Back to the event loop every few passes, and after sliceMs of them however few: the
        // link's messages and the control plane wait there, as over `sab`.
        if (++busy % ASYNC_YIELD_EVERY === 0 || end >= stretchEnd) {
          await this.yieldToEventLoop();
          stretchEnd = performance.now() + this.sliceMs;
        }
        continue;
      }
      if (this.state !== 'running') continue;
      bell.arm();
      if (this.runnable()) {
        bell.disarm();
        await this.yieldToEventLoop();
        continue;
      }
      const timeout = Math.max(0, Math.min(ASYNC_SLEEP_MS, this.nextDue - performance.now()));
      this.stats.sleeps++;
      if ((await bell.waitAsync(seen, timeout)) !== 'timed-out') this.stats.wokenSleeps++;
    }
  }

  private yieldToEventLoop(): Promise<void> {
    this.stats.yields++;
    return new Promise((resolve) => setImmediate(resolve));
  }

  /** Once stopping, the loop ends at its next return to the event loop. */
  private finishIfStopping(): boolean {
    if (this.state === 'running') return false;
    if (this.state === 'stopping') {
      this.state = 'stopped';
      this.resolveStopped?.();
    }
    return true;
  }

  /**
   * One pass: due deadlines, deferred IRQ thread turns, then every VM whose bit is set, each
   * drained in one pump. A VM whose pump found work is marked again, so that the loop comes back
   * to it until a pump finds nothing (a ring's budget, or work its own pump made runnable).
   */
  private pass(now: number): number {
    this.stats.passes++;
    stageClock.beginPass();
    const work = this.serveAll(now);
    stageClock.endPass(work);
    return work;
  }

  private serveAll(now: number): number {
    let work = 0;
    if (now >= this.nextDue) this.runTickers(now);
    if (this.deferred.length > 0) work += this.runDeferred();
    const pending = this.pending;
    for (let w = 0; w < pending.length; w++) {
      if (Atomics.load(pending, w) === 0) continue;
      let bits = Atomics.exchange(pending, w, 0);
      while (bits !== 0) {
        const bit = bits & -bits;
        bits ^= bit;
        const vm = (w << 5) + 31 - Math.clz32(bit);
        const client = this.clients[vm];
        if (!client) continue;
        const moved = client.pump();
        if (moved > 0) {
          work += moved;
          this.signals[vm].mark();
        }
      }
    }
    return work;
  }

  private runDeferred(): number {
    const turns = this.deferred;
    this.deferred = this.runningTurns;
    this.runningTurns = turns;
    for (let i = 0; i < turns.length; i++) {
      try {
        turns[i]();
      } catch (error) {
        this.options.onError(error);
      }
    }
    const ran = turns.length;
    turns.length = 0;
    return ran;
  }

  private runTickers(now: number): void {
    let next = Number.POSITIVE_INFINITY;
    const tickers = this.tickers;
    for (let i = 0; i < tickers.length; i++) {
      const ticker = tickers[i];
      if (!ticker.cancelled && ticker.due <= now) {
        if (ticker.periodMs > 0) ticker.due = Math.max(ticker.due + ticker.periodMs, now);
        else ticker.cancelled = true;
        try {
          ticker.run(now);
        } catch (error) {
          this.options.onError(error);
        }
      }
      if (ticker.cancelled) {
        tickers[i] = tickers[tickers.length - 1];
        tickers.pop();
        i--;
        continue;
      }
      if (ticker.due < next) next = ticker.due;
    }
    this.nextDue = next;
  }

  /**
   * The last look before sleeping: a pending bit, a deferred turn, or a VM with work that no bit
   * names (a guest may have cleared another's bit: the sweep is what makes that harmless).
   */
  private runnable(): boolean {
    if (this.deferred.length > 0) return true;
    const pending = this.pending;
    for (let w = 0; w < pending.length; w++) if (Atomics.load(pending, w) !== 0) return true;
    let found = false;
    for (let vm = 0; vm < this.clients.length; vm++) {
      const client = this.clients[vm];
      if (client?.hasWork()) {
        this.signals[vm].mark();
        this.stats.sweepFinds++;
        found = true;
      }
    }
    return found;
  }
}
