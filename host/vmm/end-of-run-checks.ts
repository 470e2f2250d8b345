/**
 * The end-of-run checks: the rules that can only be judged once every VM is torn down and the PRI
 * queues are drained, when every page-request group must have had its one answer. Each broken rule
 * is a violation in the run's InvariantChecker.
 */
import type { Iommu } from '../iommu/iommu.ts';
import type { InvariantChecker } from './invariants.ts';
import type { Vm } from './vm.ts';

/** Run every end-of-run check over a torn-down sandbox. */
export function checkEndOfRun(iommu: Iommu, vms: readonly Vm[], invariants: InvariantChecker): void {
  checkGroupsAnswered(iommu, invariants);
  checkDevicesAnswered(vms, invariants);
  checkTeardownOracle(iommu, vms, invariants);
}

/** Page-request groups and stalled transactions both travel as IOPF groups; none may be left. */
function checkGroupsAnswered(iommu: Iommu, invariants: InvariantChecker): void {
  const lost = iommu.iopf.pending + iommu.stallIopf.pending;
  if (lost > 0) {
    invariants.violation({
      rule: 'group-lost',
      detail: `${lost} page-request group(s) ended the run unanswered`,
    });
  }
}

/**
 * Once everything is torn down every group has had its one answer, so no device may still hold
 * a PRG index: one that does sent a group whose answer never reached it.
 */
function checkDevicesAnswered(vms: readonly Vm[], invariants: InvariantChecker): void {
  const seen = new Set<object>();
  for (const vm of vms) {
    for (const device of vm.devices) {
      if (seen.has(device.pri) || device.pri.groups === 0) continue;
      seen.add(device.pri);
      invariants.violation({
        rule: 'group-unanswered',
        vm: vm.name,
        device: device.name,
        detail: `${device.pri.groups} page-request group(s) (${device.pri.outstanding} requests) never got a response at the device`,
      });
    }
  }
}

/**
 * The generation oracle and the PRI rule, once everything is torn down: no pooled group was
 * touched after it was freed, and no response reached a device after its PRI was disabled.
 */
function checkTeardownOracle(iommu: Iommu, vms: readonly Vm[], invariants: InvariantChecker): void {
  const stale = iommu.iopf.stats.staleAnswers + iommu.stallIopf.iopf.stats.staleAnswers;
  if (stale > 0) {
    invariants.violation({
      rule: 'freed-group-touched',
      detail: `${stale} answer(s) named a page-request group generation that had already been freed`,
    });
  }
  for (const vm of vms) {
    const touches = vm.registry.fault.stats.staleTouches;
    if (touches > 0) {
      invariants.violation({
        rule: 'freed-group-touched',
        vm: vm.name,
        detail: `the VM's fault queue held ${touches} group(s) freed behind its back`,
      });
    }
    for (const device of vm.devices) {
      if (device.stats.responsesAfterDisable === 0) continue;
      invariants.violation({
        rule: 'response-after-pri-disabled',
        vm: vm.name,
        device: device.name,
        detail: `${device.stats.responsesAfterDisable} PRG response(s) reached the device after its PRI was disabled`,
      });
    }
  }
}
