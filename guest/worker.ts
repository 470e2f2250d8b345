/**
 * Entry of a guest VM's worker thread: builds the guest from workerData and serves the comlink
 * control plane on its parent port.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import type { GuestBoot } from '../shared/control.ts';
import { makeLogger } from '../shared/logger.ts';
import { GuestVm } from './guest-vm.ts';

if (!parentPort) throw new Error('guest/worker.ts must run as a worker thread');
const boot = workerData as GuestBoot;
const guest = new GuestVm(boot, makeLogger({ vm: boot.name, side: 'guest' }));
const endpoint = nodeEndpoint(parentPort);
// Every answer to the host also raises CONTROL on its signal: its reactor may be blocked in
// Atomics.wait, and returns to its event loop for the message when it sees the flag.
Comlink.expose(guest, {
  ...endpoint,
  postMessage(message: unknown, transfer?: Parameters<Comlink.Endpoint['postMessage']>[1]) {
    endpoint.postMessage(message, transfer);
    guest.controlPosted();
  },
});
