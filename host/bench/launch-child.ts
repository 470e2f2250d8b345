/**
 * The launch figure in a process of its own: `node launch-child.js <vms>` launches that many VMs
 * (launchMany) and prints its LaunchFigures as one JSON line. Resident memory only means something
 * in a fresh process: in the bench's own, threads and buffers of the earlier figures are still
 * being returned to the system while the VMs launch.
 */
import { launchMany } from './sandbox-bench.ts';

const vms = Number(process.argv[2]);
if (!Number.isInteger(vms) || vms < 1) {
  process.stderr.write(`launch-child: expected a VM count, got ${process.argv[2]}\n`);
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(await launchMany(vms))}\n`);
process.exit(0);
