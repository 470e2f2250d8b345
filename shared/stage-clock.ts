/**
 * Where a data-plane thread's time goes, by stage: the host's reactor charges every stretch of its
 * busy passes to the stage running at the time (the device model, the IOMMU's translation, the
 * IOPF path, the registry's fault queue, the vIOMMU model, the oracle, or the reactor itself).
 *
 * Off, each `enter`/`leave` is one load and a branch. On (`bench --profile`), each is also a
 * `performance.now()`, so a profiled run is slower than an unprofiled one: its shares, not its
 * totals, are the figure. Stages nest: entering one pauses the one around it.
 */

export const STAGE_REACTOR = 0;
export const STAGE_DEVICE = 1;
export const STAGE_IOMMU = 2;
export const STAGE_IOPF = 3;
export const STAGE_REGISTRY = 4;
export const STAGE_VIOMMU = 5;
export const STAGE_ORACLE = 6;

export const STAGE_NAMES = ['reactor', 'device', 'iommu', 'iopf', 'registry', 'viommu', 'oracle'] as const;
export type StageName = (typeof STAGE_NAMES)[number];

const MAX_DEPTH = 32;

export class StageClock {
  /** Milliseconds charged to each stage in passes that found work. */
  readonly ms = new Float64Array(STAGE_NAMES.length);
  private on = false;
  /** This pass's charges, kept only if the pass found work. */
  private readonly pass = new Float64Array(STAGE_NAMES.length);
  private readonly stack = new Int32Array(MAX_DEPTH);
  private depth = 0;
  private since = 0;

  get enabled(): boolean {
    return this.on;
  }

  /** Start charging (and forget what was charged before). */
  enable(): void {
    this.ms.fill(0);
    this.on = true;
  }

  disable(): void {
    this.on = false;
  }

  beginPass(): void {
    if (!this.on) return;
    this.pass.fill(0);
    this.depth = 0;
    this.stack[0] = STAGE_REACTOR;
    this.since = performance.now();
  }

  /** End a pass: its charges count only if it found work. */
  endPass(work: number): void {
    if (!this.on) return;
    this.charge();
    if (work === 0) return;
    for (let s = 0; s < this.ms.length; s++) this.ms[s] += this.pass[s];
  }

  enter(stage: number): void {
    if (!this.on || this.depth + 1 >= MAX_DEPTH) return;
    this.charge();
    this.stack[++this.depth] = stage;
  }

  leave(): void {
    if (!this.on || this.depth === 0) return;
    this.charge();
    this.depth--;
  }

  /** Each stage's share of the charged time, and the total, in milliseconds. */
  summary(): { totalMs: number; ms: Record<StageName, number> } {
    let totalMs = 0;
    const ms = {} as Record<StageName, number>;
    STAGE_NAMES.forEach((name, s) => {
      ms[name] = this.ms[s];
      totalMs += this.ms[s];
    });
    return { totalMs, ms };
  }

  private charge(): void {
    const now = performance.now();
    this.pass[this.stack[this.depth]] += now - this.since;
    this.since = now;
  }
}

/** The host's one clock: the reactor and the models it runs charge it (a single JS thread). */
export const stageClock = new StageClock();
