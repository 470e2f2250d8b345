/**
 * The run's oracle for rules that must never break. A violation names the rule, and where it can,
 * the VM, the device and the record. Violations are kept up to a cap; every one is counted.
 */
export interface Violation {
  rule: string;
  detail: string;
  vm?: string;
  device?: string;
}

/** Violations kept verbatim per run; the rest are only counted. */
const KEEP = 100;

export class InvariantChecker {
  readonly violations: Violation[] = [];
  readonly counts = new Map<string, number>();

  get ok(): boolean {
    return this.counts.size === 0;
  }

  violation(v: Violation): void {
    this.counts.set(v.rule, (this.counts.get(v.rule) ?? 0) + 1);
    if (this.violations.length < KEEP) this.violations.push(v);
  }
}
