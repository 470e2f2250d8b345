/**
 * `ioasid-sandbox bench`'s table: the BenchReport (host/bench/bench-report.ts measures it) as one
 * line per figure, ratio and target.
 */
import type { BenchReport, RoundTrip } from '../bench/bench-report.ts';

export function formatBench(report: BenchReport): string {
  const rt = (r: RoundTrip) => `p50 ${r.p50} us, p99 ${r.p99} us`;
  const n = (v: number) => v.toLocaleString('en-US');
  const rows: [string, string][] = [
    ['floor.spinUs', `${report.floor.spinUs.toFixed(3)} us`],
    ['floor.sleepUs', `${report.floor.sleepUs.toFixed(1)} us`],
    ['floor.ringRecordsPerS', n(report.floor.ringRecordsPerS)],
    ['fault.busyUs (ring)', rt(report.fault.busyUs)],
    ['fault.idleUs (ring)', rt(report.fault.idleUs)],
    ['fault.cycleUs (ring)', rt(report.fault.cycleUs)],
    ['fault.perS (ring, 64 B per fault)', n(report.fault.perS)],
    ['fault.perS4k (ring, 4 KiB per fault)', n(report.fault.perS4k)],
    ['fault.hostBusyUsPerFault', `${report.fault.hostBusyUsPerFault} us`],
    ['postMessage.fault.busyUs', rt(report.postMessage.fault.busyUs)],
    ['postMessage.fault.idleUs', rt(report.postMessage.fault.idleUs)],
    ['postMessage.fault.perS', n(report.postMessage.fault.perS)],
    ['translation.iotlbHitsPerS', n(report.translation.iotlbHitsPerS)],
    ['translation.nestedWalksPerS', n(report.translation.nestedWalksPerS)],
    [
      'scale.vms1PerS / vms4PerS / vms16PerS',
      `${n(report.scale.vms1PerS)} / ${n(report.scale.vms4PerS)} / ${n(report.scale.vms16PerS)}`,
    ],
    [`scale.launchMs (${report.scale.launchVms} VMs)`, `${n(report.scale.launchMs)} ms`],
    ['scale.rssPerVmMB', `${report.scale.rssPerVmMB} MB`],
  ];
  for (const f of report.figures) rows.push([f.name, `${n(f.value)} ${f.unit}`]);
  for (const [name, value] of Object.entries(report.ratios)) {
    const t = report.targets[name];
    rows.push([`ratio ${name}`, `${value}${t ? ` (target ${t.target}: ${t.met ? 'met' : 'NOT met'})` : ''}`]);
  }
  for (const name of [
    'faultPerS',
    'faultPerS4k',
    'hostBusyUsPerFault',
    'iotlbHitsPerS',
    'nestedWalksPerS',
    'launchMs',
    'rssPerVmMB',
  ]) {
    const t = report.targets[name];
    rows.push([`target ${name}`, `${n(t.value)} (${t.target}: ${t.met ? 'met' : 'NOT met'})`]);
  }
  if (report.profile) {
    const p = report.profile;
    rows.push([
      'profile (host busy time per fault, stage clock on)',
      `${p.hostBusyUsPerFault} us over ${n(p.faults)} faults (${n(p.perS)}/s while profiled)`,
    ]);
    for (const [stage, { usPerFault, share }] of Object.entries(p.stages)) {
      rows.push([`  ${stage}`, `${usPerFault} us (${(share * 100).toFixed(1)}%)`]);
    }
  }
  for (const warning of report.warnings) rows.push(['warning', warning]);
  const width = Math.max(...rows.map(([name]) => name.length));
  const head = `bench${report.quick ? ' --quick' : ''}: median of ${report.repetitions} repetitions (${(report.elapsedMs / 1000).toFixed(0)} s)`;
  return `${[head, ...rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`)].join('\n')}\n`;
}
