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
Comlink.expose(guest, nodeEndpoint(parentPort));
