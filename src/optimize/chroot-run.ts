/**
 * Run a workload in a chroot of a lazy mount, the way a container would see the image, for
 * `nydus-ts optimize`. The parent starts
 *
 *   unshare --mount --propagation private --pid --fork --kill-child -- node chroot-run.js ARGS
 *
 * and this file, as the first process of the new namespaces, builds the root there: an overlayfs
 * with the (read-only) lazy mount as its lower layer and a tmpfs for the writes, a fresh /proc,
 * /dev and /sys bound from the host; then it runs `chroot ROOT CMD…` and exits with its status.
 * Nothing of it is visible outside, and everything goes when the namespaces end: when the
 * workload ends, on a timeout (the parent kills unshare; --kill-child takes the namespace's first
 * process and with it every process of the workload), or when the parent dies.
 *
 * Exit status: the workload's; 128+N when it died of signal N; 125 when the chroot could not be
 * set up (as chroot(1) and container runtimes use 125 for their own failures).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { NydusError } from '../errors';

export interface WorkloadOptions {
  /** the image's root: the lazy mount */
  root: string;
  argv: string[];
  /** KEY=VALUE; default PATH, HOME=/root, TERM */
  env?: string[];
  /** working directory inside the chroot (default /) */
  cwd?: string;
  /** `USER[:GROUP]` as chroot --userspec takes it (numeric ids need no /etc/passwd); needs cwd / */
  user?: string;
  /** seconds until the workload is stopped; a stopped workload counts as done (servers never exit) */
  timeoutS?: number;
  /** scratch dir for the tmpfs (created and removed) */
  workDir?: string;
  /** the workload's stdout: ours (default), or our stderr (when our stdout carries JSON) */
  stdout?: 'inherit' | 'stderr';
  /** stop the workload (as a timeout does) */
  signal?: AbortSignal;
}

export interface WorkloadResult {
  exit_code: number;
  /** stopped by the timeout */
  timed_out: boolean;
  /** stopped through `signal` */
  aborted: boolean;
  duration_ms: number;
}

interface RunnerArgs {
  root: string;
  scratch: string;
  argv: string[];
  env: string[];
  cwd: string;
  user?: string;
}

export const SETUP_FAILED = 125;
export const DEFAULT_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root'];

/** Run the workload; resolves when it (and its namespace) ended. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  if (o.argv.length === 0) throw new NydusError('ERR_INVALID_ARGUMENT', 'no workload: give the command after `--`');
  if (/[,:\\\n]/.test(o.root)) throw new NydusError('ERR_INVALID_ARGUMENT', `mount point ${o.root}: overlayfs cannot take a lower directory whose path has ',', ':' or '\\'`);
  const env = [...DEFAULT_ENV, ...(process.env.TERM ? [`TERM=${process.env.TERM}`] : []), ...(o.env ?? [])];
  for (const e of env) if (!/^[^=]+=/.test(e)) throw new NydusError('ERR_INVALID_ARGUMENT', `--env ${e}: expected KEY=VALUE`);
  if (o.user && (o.cwd ?? '/') !== '/') throw new NydusError('ERR_INVALID_ARGUMENT', '--user runs the workload through chroot(1), whose working directory is /: drop --workdir or --user');
  const scratch = fs.mkdtempSync(path.join(o.workDir ?? os.tmpdir(), '.nydus-optimize-root-'));
  const args: RunnerArgs = { root: o.root, scratch, argv: o.argv, env, cwd: o.cwd ?? '/', user: o.user };
  const t0 = performance.now();
  try {
    const child = spawn('unshare', ['--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--', process.execPath, __filename, Buffer.from(JSON.stringify(args)).toString('base64')], {
      stdio: o.stdout === 'stderr' ? ['inherit', 2, 'inherit'] : 'inherit',
    });
    let timedOut = false;
    let aborted = false;
    // unshare ignores SIGTERM while it waits for its child; SIGKILL ends it, and --kill-child
    // (PR_SET_PDEATHSIG) then ends the namespace's first process and with it the workload
    const timer = o.timeoutS ? setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, o.timeoutS * 1000) : undefined;
    const onAbort = (): void => {
      aborted = true;
      child.kill('SIGKILL');
    };
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const code = await new Promise<number>((resolve, reject) => {
      child.once('error', (e) => reject(new NydusError('ERR_INVALID_ARGUMENT', `cannot run unshare(1) (util-linux) for the workload: ${e.message}`)));
      child.once('exit', (c, sig) => resolve(c ?? 128 + (os.constants.signals[sig as keyof typeof os.constants.signals] ?? 0)));
    });
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
    if (code === SETUP_FAILED && !timedOut && !aborted) throw new NydusError('ERR_KERNEL', `cannot set up the workload's root on ${o.root} (see the message above)`);
    return { exit_code: code, timed_out: timedOut, aborted, duration_ms: Math.round(performance.now() - t0) };
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** Inside the namespaces: build the root, run the workload, exit with its status. */
async function runner(a: RunnerArgs): Promise<number> {
  const { mountSync, MS_BIND, MS_REC, MS_NOSUID, MS_NODEV } = await import('../sys/native');
  const m = path.join(a.scratch, 'root');
  try {
    mountSync('tmpfs', a.scratch, 'tmpfs', MS_NOSUID | MS_NODEV, 'mode=0755');
    for (const d of ['upper', 'work', 'root']) fs.mkdirSync(path.join(a.scratch, d));
    mountSync('overlay', m, 'overlay', 0, `lowerdir=${a.root},upperdir=${a.scratch}/upper,workdir=${a.scratch}/work`);
    fs.mkdirSync(path.join(m, 'proc'), { recursive: true });
    mountSync('proc', path.join(m, 'proc'), 'proc', MS_NOSUID | MS_NODEV, null);
    for (const d of ['dev', 'sys']) {
      fs.mkdirSync(path.join(m, d), { recursive: true });
      mountSync(`/${d}`, path.join(m, d), null, MS_BIND | MS_REC, null);
    }
  } catch (e) {
    process.stderr.write(`nydus-ts optimize: setting up the workload's root: ${(e as Error).message}\n`);
    return SETUP_FAILED;
  }
  // No helper from the image (its shell, env) runs before the workload: they would be traced
  // too. `unshare --root --wd` (no new namespace) is chroot + chdir + exec; chroot(1) when a user
  // is given (--userspec switches after the chroot; its working directory is always /).
  const env = Object.fromEntries(a.env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
  const [cmd, args] = a.user
    ? ['chroot', [`--userspec=${a.user}`, m, ...a.argv]]
    : ['unshare', [`--root=${m}`, `--wd=${a.cwd}`, '--', ...a.argv]];
  const child = spawn(cmd, args, { stdio: 'inherit', env, cwd: '/' });
  return new Promise<number>((resolve) => {
    child.once('error', (e) => {
      process.stderr.write(`nydus-ts optimize: ${cmd}(1): ${e.message}\n`);
      resolve(SETUP_FAILED);
    });
    child.once('exit', (c, sig) => resolve(c ?? 128 + (os.constants.signals[sig as keyof typeof os.constants.signals] ?? 0)));
  });
}

if (require.main === module) {
  const a = JSON.parse(Buffer.from(process.argv[2] ?? '', 'base64').toString('utf8')) as RunnerArgs;
  runner(a).then((code) => process.exit(code), (e) => {
    process.stderr.write(`nydus-ts optimize: ${(e as Error).message}\n`);
    process.exit(SETUP_FAILED);
  });
}
