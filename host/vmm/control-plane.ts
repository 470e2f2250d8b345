/**
 * The host's end of a guest's control plane: comlink calls into the guest worker's GuestControl
 * (boot, start, stats, stop). Every call is bounded twice, by a timeout and by the worker's exit,
 * so a call to a hung or dead guest rejects instead of hanging the host.
 *
 * Over `sab` the guest's data plane is a synchronous loop that may be blocked in Atomics.wait:
 * each message posted to it also raises CONTROL on its doorbell, so that it returns to its event
 * loop and reads the message. Over `postmessage` the guest already wakes on every message.
 */
import type { Worker } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import type { GuestControl } from '../../shared/control.ts';
import type { Doorbell } from '../../shared/doorbell.ts';

/** A control-plane call that takes longer than this means the guest is hung. */
export const CONTROL_TIMEOUT_MS = 10_000;

/** The guest's GuestControl as the host calls it. */
export type GuestControlRemote = Comlink.Remote<GuestControl>;

export class ControlPlane {
  private readonly remote: GuestControlRemote;
  /** Rejects once the worker fails or exits: every call races it. */
  private readonly exited: Promise<never>;

  /** `controlBell`: the guest's doorbell to ring after each message (`sab`), or none. */
  constructor(
    private readonly guest: string,
    worker: Worker,
    controlBell: Doorbell | undefined,
  ) {
    this.remote = Comlink.wrap<GuestControl>(endpointOf(worker, controlBell));
    this.exited = new Promise<never>((_, reject) => {
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`guest ${guest} exited with code ${code}`)));
    });
    this.exited.catch(() => {});
  }

  /** Run `fn` on the guest's control; rejects when the guest exits or takes longer than `timeoutMs`. */
  async call<T>(fn: (control: GuestControlRemote) => Promise<T>, timeoutMs = CONTROL_TIMEOUT_MS): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`guest ${this.guest} did not answer in ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([fn(this.remote), this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Let go of the comlink proxy (the worker is being ended). */
  release(): void {
    this.remote[Comlink.releaseProxy]();
  }
}

function endpointOf(worker: Worker, controlBell: Doorbell | undefined): Comlink.Endpoint {
  const endpoint = nodeEndpoint(worker);
  if (!controlBell) return endpoint;
  return {
    ...endpoint,
    postMessage(message: unknown, transfer?: Parameters<Comlink.Endpoint['postMessage']>[1]) {
      endpoint.postMessage(message, transfer);
      controlBell.ringControl();
    },
  };
}
