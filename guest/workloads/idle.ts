import type { Workload } from './workload.ts';

/** A guest that boots its devices and does nothing: faults never come from it. */
export class Idle implements Workload {
  readonly inFlight = 0;
  readonly done = true;
  start(): void {}
  poll(): number {
    return 0;
  }
  quiesce(): void {}
}
