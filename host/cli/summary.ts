/** The text summary `run` prints without --json: what ran, what each VM saw, what broke. */
import type { RunReport, VmReport } from '../vmm/report.ts';

/** What happened to a VM beyond its fault counts: injectors, events, a teardown, deadlines, a hot page. */
function vmNotes(vm: VmReport): string {
  const notes: string[] = [];
  if (vm.injected > 0) notes.push(`${vm.injected} page-request groups injected`);
  if (vm.injectedEvents > 0) notes.push(`${vm.injectedEvents} fault events injected`);
  if (vm.eventsDelivered + vm.eventsDropped > 0)
    notes.push(`${vm.eventsDelivered} fault events delivered to the guest, ${vm.eventsDropped} dropped`);
  if (vm.teardown) notes.push(`teardown ${vm.teardown.op} at ${vm.teardown.atMs} ms: ${vm.teardown.outcome}`);
  if (vm.iopfTimeouts > 0) notes.push(`${vm.iopfTimeouts} iopf-timeouts`);
  if (vm.badDescriptors > 0)
    notes.push(
      `${vm.badDescriptors} DMA descriptors refused (${vm.foreignPasidDescriptors} naming a PASID not its own)`,
    );
  const { refaults, maxFaults, hottest } = vm.refaults;
  if (refaults > 0 && hottest)
    notes.push(
      `${refaults} refaults, hottest page 0x${hottest.address.toString(16)} faulted ${maxFaults} times`,
    );
  if (vm.crashed) notes.push(`CRASHED (${vm.crashReason})`);
  return notes.map((n) => `, ${n}`).join('');
}

/** The violations the report kept, and how many more it only counted (it keeps the first 100). */
function invariantLines(r: RunReport): string[] {
  if (r.invariants.ok) return ['invariants: ok'];
  const counts = Object.entries(r.invariants.counts);
  const total = counts.reduce((n, [, count]) => n + count, 0);
  const kept = r.invariants.violations;
  const lines = [
    `invariants: VIOLATED (${counts.map(([rule, count]) => `${rule} ${count}`).join(', ')})`,
    ...kept.map((v) => `  ${v.rule}${v.vm ? ` [${v.vm}]` : ''}: ${v.detail}`),
  ];
  if (total > kept.length)
    lines.push(
      `  ... and ${total - kept.length} more violations (the report keeps the first ${kept.length})`,
    );
  return lines;
}

/** `written.trace`: the trace file the run wrote, if any. */
export function summary(r: RunReport, written: { trace?: string } = {}): string {
  const injected = r.vms.reduce((n, vm) => n + vm.injected, 0);
  const injectedEvents = r.vms.reduce((n, vm) => n + vm.injectedEvents, 0);
  const seed = r.seed === null ? "the topology's seeds" : `seed ${r.seed}`;
  const lines = [
    `topology ${r.topology} (routing ${r.routing}, transport ${r.transport}, ${seed}) ran ${r.durationMs} ms`,
    ...r.vms.map(
      (vm) =>
        `  ${vm.name}: ${vm.faultsDelivered} faults delivered, responses ${vm.responses.success} success / ${vm.responses.invalid} invalid / ${vm.responses.failure} failure, ${vm.dmaOps} DMA ops${vmNotes(vm)}`,
    ),
    `faults: ${r.faults.raised} raised, ${r.faults.delivered} delivered, ${r.faults.responded} answered by guests, ${r.faults.autoResponded} answered automatically (${r.faults.iopfTimeouts} at their deadline, ${r.faults.unrouted} for want of a route), ${r.faults.dropped} dropped, ${r.faults.lost} lost`,
    ...(injected + injectedEvents > 0
      ? [`injected: ${injected} page-request groups, ${injectedEvents} fault events`]
      : []),
    `dma: ${r.dma.ops} ops, ${r.dma.completed} completed, ${r.dma.failed} failed, ${r.dma.bytesVerified} bytes verified`,
    `fault round trip: p50 ${r.latencyUs.p50} us, p99 ${r.latencyUs.p99} us, max ${r.latencyUs.max} us (${r.latencyUs.count} faults)`,
    ...(written.trace ? [`trace: written to ${written.trace} (open it in https://ui.perfetto.dev)`] : []),
    ...invariantLines(r),
  ];
  return `${lines.join('\n')}\n`;
}
