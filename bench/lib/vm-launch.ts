/**
 * Host side of a benchmark that runs INSIDE the test VM (kernel-tests/vm.ts: the kernel tests'
 * kernel and QEMU set-up, the host's root over 9p): boot once, run the guest benchmark with the
 * options the host does not take, stream its report, show the kernel's last lines on a failure.
 * Host options: --timeout, --memory-mb, --disk-mb, --verbose, and whatever the benchmark adds;
 * path options the guest writes (--output-json FILE, --cpu-prof DIR) are checked to be visible
 * in the guest and created here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { findKernel, guestVisible, runInVm } from '../../kernel-tests/vm';
import { logger, opt, optionHelp, parseArgs, Parsed, REPO, Spec, UsageError } from './harness';

export interface VmLaunch<S extends Spec> {
  /** the benchmark's name, for messages */
  name: string;
  /** the guest's script, e.g. dist/bench/read-bench.js */
  script: string;
  /** what the host does, for --help */
  summary: string;
  /** the guest benchmark's own --help text (printed without booting anything) */
  guestUsage: () => string;
  defaults: { timeoutS: number; memoryMB: number; diskMB: number };
  /** the benchmark's own host options */
  hostSpec: S;
  /** guest options that name host paths the guest writes: file (its directory is made) or dir */
  guestPaths?: Record<string, 'file' | 'dir'>;
  /** guest options the host sets itself (refused on the command line, with the reason) */
  reserved?: Record<string, string>;
  /** before the boot: more guest arguments (e.g. a layout the host built) */
  prepare?: (host: Parsed<S>, log: (m: string) => void) => Promise<string[]>;
  /** environment passed to the guest: NYDUS_TS_* except these */
  envExclude?: string[];
}

/** Parse, boot, run; resolves with the guest's exit status. */
export async function launchInVm<S extends Spec>(o: VmLaunch<S>, argv: string[]): Promise<number> {
  const log = logger(`${o.name}-host`);
  const common = {
    timeoutS: opt.int('--timeout', o.defaults.timeoutS, 'kill the VM after S seconds', { metavar: 'S' }),
    memoryMB: opt.int('--memory-mb', o.defaults.memoryMB, 'guest RAM, MiB', { min: 512 }),
    diskMB: opt.int('--disk-mb', o.defaults.diskMB, 'guest ext4 scratch disk, sparse, MiB', { min: 1024 }),
    verbose: opt.flag('--verbose', "show the kernel's and the VM init's console lines too"),
  };
  const spec = { ...o.hostSpec, ...common };
  const usage = `usage: node ${path.relative(REPO, path.join(REPO, 'dist', 'bench', `${o.name}-host.js`))} [host options] [guest options]\n${o.summary}\n\nHost options:\n${optionHelp(spec)}\n\nGuest options:\n`;
  if (argv.includes('-h') || argv.includes('--help')) {
    // --help must not boot a VM, build a kernel or an image
    process.stdout.write(usage + o.guestUsage());
    return 0;
  }
  const parsed = parseArgs(argv, spec, { usage, passThrough: true });
  const a = parsed as unknown as Parsed<typeof common> & { rest: string[] };
  const guest: string[] = [];
  for (let i = 0; i < a.rest.length; i++) {
    const k = a.rest[i];
    if (o.reserved?.[k]) throw new UsageError(`${k}: ${o.reserved[k]}`);
    const kind = o.guestPaths?.[k];
    if (!kind) {
      guest.push(k);
      continue;
    }
    const v = a.rest[++i];
    if (v === undefined) throw new UsageError(`${k} needs a value`);
    const p = path.resolve(v);
    if (!guestVisible(p)) throw new UsageError(`${k} ${p}: the guest cannot write there (under /run, /proc, /sys or /dev)`);
    fs.mkdirSync(kind === 'file' ? path.dirname(p) : p, { recursive: true });
    guest.push(k, p);
  }
  const script = path.join(REPO, o.script);
  if (!fs.existsSync(script)) throw new Error(`${script} is missing: build first (npx tsc -p .)`);
  const extra = o.prepare ? await o.prepare(parsed as unknown as Parsed<S>, log) : [];
  const kernel = findKernel();
  const t0 = Date.now();
  log(`booting the VM (kernel ${kernel}, ${a.memoryMB} MiB, ${a.diskMB} MiB scratch disk)`);
  const exclude = new Set(['NYDUS_TS_RUN_DIR', 'NYDUS_TS_FSCACHE', ...(o.envExclude ?? [])]);
  const r = await runInVm({
    kernel,
    command: [process.execPath, script, ...extra, ...guest],
    timeoutMs: a.timeoutS * 1000,
    memoryMB: a.memoryMB,
    diskMB: a.diskMB,
    cwd: REPO,
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('NYDUS_TS_') && !exclude.has(k)) as [string, string][]),
    onConsole: (raw) => {
      // SeaBIOS clears the screen: drop terminal escapes so that the kernel's first line is seen as one
      const line = raw.replace(/\x1b(?:\[[0-9;?]*[A-Za-z]|c)/g, '');
      const boot = /^(SeaBIOS|Booting from ROM)/.test(line) || (raw !== line && !line.trim());
      if (a.verbose || (!boot && !/^\[\s*\d+\.\d+\]/.test(line) && !line.startsWith('[qemu]') && !line.startsWith('nydus-vm-init:') && !line.startsWith('@@nydus-vm-exit'))) {
        process.stdout.write(line + '\n');
      }
    },
  });
  log(`VM run ${((Date.now() - t0) / 1000).toFixed(0)} s, guest exit status ${r.exitCode}`);
  if (r.timedOut) log(`the VM timed out after ${a.timeoutS} s`);
  if (r.exitCode !== 0 && !a.verbose) {
    // the kernel's side of a failure (oopses, cachefiles errors)
    const tail = r.console.split('\n').filter((l) => /^\[\s*\d+\.\d+\]/.test(l)).slice(-30);
    if (tail.length) process.stderr.write(`last kernel messages:\n${tail.join('\n')}\n`);
  }
  return r.exitCode < 0 ? 1 : r.exitCode;
}
