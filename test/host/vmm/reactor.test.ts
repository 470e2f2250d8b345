// The host's reactor (host/vmm/reactor.ts) with real worker threads ringing the host signal: who
// gets pumped, what wakes it, what it does when a bit lies, and its deadlines.
import { describe, expect, test } from 'vitest';
import { Reactor, type ReactorClient } from '../../../host/vmm/reactor.ts';
import { hostSignalBytes, pendingWords, VmSignal } from '../../../shared/host-signal.ts';
import { spawnWorker } from '../../../shared/worker-spawn.ts';

/** A VM stand-in: work is a value in its mailbox word that it has not seen yet. */
class MailboxClient implements ReactorClient {
  readonly mailbox = new SharedArrayBuffer(4);
  pumps = 0;
  handled: number[] = [];
  private readonly words = new Int32Array(this.mailbox);
  private seen = 0;
  private waiter: ((value: number) => void) | undefined;

  pump(): number {
    this.pumps++;
    const value = Atomics.load(this.words, 0);
    if (value === this.seen) return 0;
    this.seen = value;
    this.handled.push(value);
    this.waiter?.(value);
    return 1;
  }

  hasWork(): boolean {
    return Atomics.load(this.words, 0) !== this.seen;
  }

  next(): Promise<number> {
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }
}

function newReactor(vms: number, errors: unknown[] = []): Reactor {
  return new Reactor({ vms, transport: 'sab', spinNs: 0, onError: (e) => errors.push(e) });
}

/** Resolves once `check` holds, looking at every turn of the event loop. */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setImmediate(resolve));
}

function ringFrom(reactor: Reactor, vm: number, client: MailboxClient, value: number, control = false) {
  const worker = spawnWorker(new URL('../../fixtures/host-signal-ringer.worker.ts', import.meta.url), {
    workerData: { buffer: reactor.buffer, vm, mailbox: client.mailbox, value, control },
  });
  return new Promise((resolve) => worker.once('exit', resolve));
}

describe('host signal', () => {
  test("a VM's bit is bit (vm % 32) of word (vm / 32)", () => {
    const buffer = new SharedArrayBuffer(hostSignalBytes(40));
    new VmSignal(buffer, 37).mark();
    new VmSignal(buffer, 3).ring();
    expect(Array.from(pendingWords(buffer))).toEqual([1 << 3, 1 << 5]);
    expect(() => new VmSignal(buffer, 64)).toThrow(RangeError);
  });
});

describe('reactor', () => {
  test('a guest ringing from its own thread wakes the blocked reactor, which pumps that VM only', async () => {
    const reactor = newReactor(40);
    const clients = Array.from({ length: 40 }, () => new MailboxClient());
    clients.forEach((c, vm) => {
      reactor.serve(vm, c);
    });
    reactor.start();
    // Every VM is pumped once when it is first served; then the reactor has nothing and sleeps.
    await until(() => reactor.stats.sleeps > 0 && clients.every((c) => c.pumps > 0));
    const before = clients.map((c) => c.pumps);
    const handled = clients[37].next();
    await ringFrom(reactor, 37, clients[37], 7);
    expect(await handled).toBe(7);
    await reactor.stop();
    expect(clients[37].handled).toEqual([7]);
    clients.forEach((c, vm) => {
      if (vm !== 37) expect(c.pumps, `VM ${vm}`).toBe(before[vm]);
    });
    expect(reactor.stats.busyPasses).toBeGreaterThan(0);
  });

  test('work whose pending bit was cleared is found by the look before sleeping, not lost', async () => {
    const reactor = newReactor(2);
    const victim = new MailboxClient();
    reactor.serve(0, victim);
    reactor.serve(1, new MailboxClient());
    reactor.start();
    await until(() => reactor.stats.sleeps > 0);
    const handled = victim.next();
    // A hostile guest (VM 1) rings as itself after writing VM 0's work: no bit names VM 0.
    await ringFrom(reactor, 1, victim, 9);
    expect(await handled).toBe(9);
    await reactor.stop();
    expect(reactor.stats.sweepFinds).toBeGreaterThan(0);
  });

  test("a guest's CONTROL ring sends the reactor back to the event loop at once", async () => {
    const reactor = newReactor(1);
    const client = new MailboxClient();
    reactor.serve(0, client);
    reactor.start();
    await until(() => reactor.stats.sleeps > 0);
    const yields = reactor.stats.controlYields;
    await ringFrom(reactor, 0, client, 1, true);
    await until(() => reactor.stats.controlYields > yields);
    await reactor.stop();
    expect(client.handled).toEqual([1]);
  });

  test('deadlines run from the loop, in time order, once or periodically; cancelled ones never', async () => {
    const reactor = newReactor(1);
    const order: string[] = [];
    const now = performance.now();
    reactor.at(now + 6, () => order.push('late'));
    reactor.at(now + 2, () => order.push('early'));
    const cancelled = reactor.at(now + 1, () => order.push('cancelled'));
    reactor.cancel(cancelled);
    let ticks = 0;
    const periodic = reactor.every(1, () => {
      ticks++;
    });
    reactor.start();
    await until(() => order.length === 2 && ticks >= 3);
    reactor.cancel(periodic);
    const frozen = ticks;
    const more = reactor.at(performance.now() + 2, () => order.push('after'));
    await until(() => order.length === 3);
    await reactor.stop();
    expect(more.cancelled).toBe(true);
    expect(order).toEqual(['early', 'late', 'after']);
    expect(ticks).toBe(frozen);
  });

  test('an exception in a deadline is reported, and the loop goes on', async () => {
    const errors: unknown[] = [];
    const reactor = newReactor(1, errors);
    reactor.at(performance.now(), () => {
      throw new Error('boom');
    });
    let after = false;
    reactor.at(performance.now() + 1, () => {
      after = true;
    });
    reactor.start();
    await until(() => after);
    await reactor.stop();
    expect(errors).toHaveLength(1);
  });

  test("an IRQ thread's deferred turn runs at the start of the next pass", async () => {
    const reactor = newReactor(1);
    const turns: number[] = [];
    reactor.start();
    reactor.defer(() => {
      turns.push(reactor.stats.passes);
      reactor.defer(() => turns.push(reactor.stats.passes));
    });
    await until(() => turns.length === 2);
    await reactor.stop();
    expect(turns[1]).toBe(turns[0] + 1);
  });

  test('stop() ends the loop: nothing is pumped after it resolves', async () => {
    const reactor = newReactor(1);
    const client = new MailboxClient();
    reactor.serve(0, client);
    reactor.start();
    await until(() => reactor.stats.sleeps > 0);
    await reactor.stop();
    const pumps = client.pumps;
    const passes = reactor.stats.passes;
    reactor.wake(0);
    // A live loop runs at every turn of the event loop (it yields with setImmediate).
    for (let turn = 0; turn < 10; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(client.pumps).toBe(pumps);
    expect(reactor.stats.passes).toBe(passes);
  });
});
