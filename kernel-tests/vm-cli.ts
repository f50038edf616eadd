/**
 * Run one command inside the test VM and stream its console:
 *   node dist/kernel-tests/vm-cli.js [--timeout SECONDS] -- COMMAND [ARGS…]
 * Exit status: the command's, or 1 if the VM failed. Used by `npm run demo` on machines
 * whose kernel lacks EROFS over fscache on-demand.
 */
import { runInVm, findKernel } from './vm';

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.indexOf('--') < 0) {
    process.stdout.write('usage: vm-cli [--timeout SECONDS] -- COMMAND [ARGS…]\nRuns COMMAND inside the QEMU test VM (the guest sees the host root) and streams its console.\n');
    return argv.includes('--help') ? 0 : 2;
  }
  const sep = argv.indexOf('--');
  const t = argv.indexOf('--timeout');
  const timeoutMs = (t >= 0 && t < sep ? Number(argv[t + 1]) : 900) * 1000;
  const command = argv.slice(sep + 1);
  const kernel = findKernel();
  const r = await runInVm({
    kernel, command, timeoutMs, cwd: process.cwd(),
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('NYDUS_TS_')) as [string, string][]),
    onConsole: (line) => {
      if (!/^\[\s*\d+\.\d+\]/.test(line) && !line.startsWith('[qemu]')) process.stdout.write(line + '\n');
    },
  });
  if (r.timedOut) process.stderr.write('vm-cli: the VM timed out\n');
  return r.exitCode < 0 ? 1 : r.exitCode;
}

main().then((c) => (process.exitCode = c), (e) => {
  process.stderr.write(`vm-cli: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
