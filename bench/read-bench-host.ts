/**
 * Host side of the read benchmark: boots the test VM (kernel-tests/vm.ts, the same kernel and
 * QEMU setup as the kernel tests) and runs bench/read-bench.ts inside it, streaming the guest's
 * report. Every option except the ones below is passed to the guest benchmark.
 *
 *   node dist/bench/read-bench-host.js [--timeout SECONDS] [--memory-mb N] [--disk-mb N]
 *        [--verbose] [GUEST OPTIONS…]
 *
 * --output-json FILE and --cpu-prof DIR are host paths: the guest sees the host's root over 9p
 * and writes them directly (they must not be under /run, /proc, /sys or /dev). The kernel comes
 * from scripts/get-test-kernel.sh ($NYDUS_TS_TEST_KERNEL, the cache, or a build).
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { runInVm, findKernel, guestVisible, repoRoot } from '../kernel-tests/vm';

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  let timeoutS = 1800;
  let memoryMB = 2048;
  let diskMB = 2048;
  let verbose = false;
  const guest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${k} needs a value`);
      return v;
    };
    switch (k) {
      case '--timeout': timeoutS = Number(val()); break;
      case '--memory-mb': memoryMB = Number(val()); break;
      case '--disk-mb': diskMB = Number(val()); break;
      case '--verbose': verbose = true; break;
      case '-h':
      case '--help':
        process.stdout.write(
          'usage: node dist/bench/read-bench-host.js [--timeout S] [--memory-mb N] [--disk-mb N] [--verbose] [GUEST OPTIONS…]\n' +
            'Boots the test VM and runs the read benchmark in it. Guest options:\n\n',
        );
        // the guest's usage, printed here: --help must not boot a VM (or build a kernel)
        process.stdout.write(execFileSync(process.execPath, [path.join(repoRoot(), 'dist', 'bench', 'read-bench.js'), '--help'], { encoding: 'utf8' }));
        return 0;
      case '--output-json':
      case '--cpu-prof': {
        const p = path.resolve(val());
        if (!guestVisible(p)) throw new Error(`${k} ${p}: the guest cannot write there (under /run, /proc, /sys or /dev)`);
        if (k === '--output-json') fs.mkdirSync(path.dirname(p), { recursive: true });
        else fs.mkdirSync(p, { recursive: true });
        guest.push(k, p);
        break;
      }
      default:
        guest.push(k);
    }
  }
  const root = repoRoot();
  const script = path.join(root, 'dist', 'bench', 'read-bench.js');
  if (!fs.existsSync(script)) throw new Error(`${script} is missing: build first (npx tsc -p .)`);
  const kernel = findKernel();
  const t0 = Date.now();
  const r = await runInVm({
    kernel,
    command: [process.execPath, script, ...guest],
    timeoutMs: timeoutS * 1000,
    memoryMB,
    diskMB,
    cwd: root,
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('NYDUS_TS_')) as [string, string][]),
    onConsole: (line) => {
      if (verbose || (!/^\[\s*\d+\.\d+\]/.test(line) && !line.startsWith('[qemu]') && !line.startsWith('nydus-vm-init:') && !line.startsWith('@@nydus-vm-exit'))) {
        process.stdout.write(line + '\n');
      }
    },
  });
  process.stderr.write(`read-bench-host: VM run ${((Date.now() - t0) / 1000).toFixed(0)} s, guest exit status ${r.exitCode}\n`);
  if (r.timedOut) process.stderr.write(`read-bench-host: the VM timed out after ${timeoutS} s\n`);
  if (r.exitCode !== 0 && !verbose) {
    // show the kernel's side of a failure (oopses, cachefiles errors)
    const tail = r.console.split('\n').filter((l) => /^\[\s*\d+\.\d+\]/.test(l)).slice(-30);
    if (tail.length) process.stderr.write(`last kernel messages:\n${tail.join('\n')}\n`);
  }
  return r.exitCode < 0 ? 1 : r.exitCode;
}

main().then((c) => (process.exitCode = c), (e) => {
  process.stderr.write(`read-bench-host: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
