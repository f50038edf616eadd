/**
 * The benchmarks' shared harness: options (declared once, parsed and turned into --help),
 * logging, clocks, child processes, rounds with alternating order, medians and ratios, the
 * machine's other load, page-cache drops, mounts left behind, clean-up on exit and on signals,
 * and JSON output. Each benchmark file keeps only what it measures.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
export const MiB = 1 << 20;
/** where benchmarks cache what they build (rootfs tars, OCI layouts, compiled peers) */
export const CACHE_DIR = process.env.NYDUS_TS_CACHE || path.join(REPO, '.cache');

// ---------------------------------------------------------------------------------------------
// logging and numbers

/** A progress logger for stderr: `name [12.3 s]: msg` (seconds since this process started). */
export function logger(name: string): (msg: string) => void {
  return (msg: string) => process.stderr.write(`${name} [${process.uptime().toFixed(1)} s]: ${msg}\n`);
}

/** Monotonic seconds. */
export const now = (): number => Number(process.hrtime.bigint()) / 1e9;

/** Median of the finite values (NaN when there are none). */
export function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** x / y, NaN unless both are finite and y > 0. */
export const ratio = (x: number, y: number): number => (Number.isFinite(x) && Number.isFinite(y) && y > 0 ? x / y : NaN);

export const fmtS = (x: number, digits = 2): string => (Number.isFinite(x) ? `${x.toFixed(digits)} s` : '–');
export const fmtMiB = (bytes: number, digits = 1): string => (Number.isFinite(bytes) ? `${(bytes / MiB).toFixed(digits)} MiB` : '–');
export const fmtX = (x: number, digits = 1): string => (Number.isFinite(x) ? `${x.toFixed(digits)}×` : '–');
export const fmtPct = (x: number, digits = 1): string => (Number.isFinite(x) ? `${(100 * x).toFixed(digits)} %` : '–');

/** A Markdown table. */
export function markdownTable(head: string[], rows: string[][]): string[] {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

export function writeJson(file: string, value: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}

/** Where and on what a run happened, for the JSON and the report's header. */
export function machine(): { date: string; host_cpus: number; cpu_model: string; memory_gib: number; kernel: string; node: string } {
  return {
    date: new Date().toISOString(),
    host_cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? '?',
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
  };
}

// ---------------------------------------------------------------------------------------------
// options

/** One option: its flag, a metavar for --help, how a value is taken, and its help line. */
export interface Opt<T> {
  flag: string;
  metavar?: string;
  help: string;
  init: () => T;
  /** `next()` returns the option's value (only options with a metavar take one) */
  take: (cur: T, next: () => string) => T;
}

function positiveInt(flag: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag}: expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** Builders of the usual kinds of option. */
export const opt = {
  int: (flag: string, def: number, help: string, o: { min?: number; metavar?: string } = {}): Opt<number> => ({
    flag, metavar: o.metavar ?? 'N', help: `${help} (default ${def})`, init: () => def, take: (_c, next) => positiveInt(flag, next(), o.min ?? 1),
  }),
  optInt: (flag: string, help: string, o: { min?: number; metavar?: string } = {}): Opt<number | undefined> => ({
    flag, metavar: o.metavar ?? 'N', help, init: () => undefined, take: (_c, next) => positiveInt(flag, next(), o.min ?? 1),
  }),
  num: (flag: string, def: number, help: string, metavar = 'X'): Opt<number> => ({
    flag, metavar, help: `${help} (default ${def})`, init: () => def,
    take: (_c, next) => {
      const v = next();
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new UsageError(`${flag}: expected a number ≥ 0, got ${JSON.stringify(v)}`);
      return n;
    },
  }),
  str: (flag: string, help: string, metavar = 'S'): Opt<string | undefined> => ({ flag, metavar, help, init: () => undefined, take: (_c, next) => next() }),
  /** a path, made absolute */
  path: (flag: string, help: string, metavar = 'FILE'): Opt<string | undefined> => ({ flag, metavar, help, init: () => undefined, take: (_c, next) => path.resolve(next()) }),
  flag: (flag: string, help: string): Opt<boolean> => ({ flag, help, init: () => false, take: () => true }),
  /** a flag that turns a default-on setting off (`--no-drop-caches`) */
  off: (flag: string, help: string): Opt<boolean> => ({ flag, help, init: () => true, take: () => false }),
  choice: <C extends string>(flag: string, choices: readonly C[], def: C, help: string): Opt<C> => ({
    flag, metavar: choices.join('|'), help: `${help} (default ${def})`, init: () => def,
    take: (_c, next) => {
      const v = next() as C;
      if (!choices.includes(v)) throw new UsageError(`${flag}: one of ${choices.join(', ')}, not ${JSON.stringify(v)}`);
      return v;
    },
  }),
  /** a comma-separated list, each item one of `choices` (when given); kept in the given order */
  list: <C extends string>(flag: string, def: readonly C[], help: string, choices?: readonly C[]): Opt<C[]> => ({
    flag, metavar: 'LIST', help: `${help} (default ${def.join(',') || 'none'})`, init: () => [...def],
    take: (_c, next) => {
      const vs = next().split(',').map((s) => s.trim()).filter(Boolean) as C[];
      if (!vs.length) throw new UsageError(`${flag}: an empty list`);
      for (const v of vs) if (choices && !choices.includes(v)) throw new UsageError(`${flag}: unknown ${JSON.stringify(v)} (known: ${choices.join(', ')})`);
      return vs;
    },
  }),
  /** repeatable; every value kept */
  repeat: (flag: string, help: string, metavar = 'A'): Opt<string[]> => ({ flag, metavar, help: `${help} (repeatable)`, init: () => [], take: (c, next) => [...c, next()] }),
  /** repeatable K=V */
  env: (flag: string, help: string): Opt<Record<string, string>> => ({
    flag, metavar: 'K=V', help: `${help} (repeatable)`, init: () => ({}),
    take: (c, next) => {
      const v = next();
      const eq = v.indexOf('=');
      if (eq <= 0) throw new UsageError(`${flag}: expected K=V, got ${JSON.stringify(v)}`);
      return { ...c, [v.slice(0, eq)]: v.slice(eq + 1) };
    },
  }),
};

export class UsageError extends Error {}

export type Spec = Record<string, Opt<any>>;
export type Parsed<S extends Spec> = { [K in keyof S]: S[K] extends Opt<infer T> ? T : never };

/** The option lines of --help for a spec. */
export function optionHelp(spec: Spec): string {
  const lefts = Object.values(spec).map((o) => `  ${o.flag}${o.metavar ? ` ${o.metavar}` : ''}`);
  const w = Math.min(30, Math.max(...lefts.map((l) => l.length)) + 2);
  // help wrapped to 100 columns, continuation lines under the first
  const wrap = (text: string): string[] => {
    const lines: string[] = [];
    let cur = '';
    for (const word of text.split(/\s+/)) {
      if (cur && w + cur.length + 1 + word.length > 100) {
        lines.push(cur);
        cur = word;
      } else cur = cur ? `${cur} ${word}` : word;
    }
    return [...lines, cur];
  };
  return Object.values(spec).map((o, i) => {
    const left = lefts[i];
    const body = wrap(o.help).map((l, j) => (j === 0 && left.length < w ? `${left.padEnd(w)}${l}` : `${' '.repeat(w)}${l}`));
    return (left.length >= w ? [left, ...body] : body).join('\n');
  }).join('\n');
}

/** A benchmark's --help: the head, the options of `spec` and -h, then the tail. */
export function usageText(head: string, spec: Spec, tail = ''): string {
  return `${head.trimEnd()}\n\n${optionHelp(spec)}\n  -h, --help\n${tail ? `\n${tail.trimEnd()}\n` : ''}`;
}

/**
 * Parse argv by `spec`. -h/--help prints `usage` and exits 0; a bad option throws UsageError.
 * With `passThrough`, options the spec does not know are kept in order in `rest` (a host
 * launcher hands them to the guest's benchmark).
 */
export function parseArgs<S extends Spec>(argv: string[], spec: S, o: { usage: string; passThrough?: boolean }): Parsed<S> & { rest: string[] } {
  const byFlag = new Map(Object.entries(spec).map(([k, s]) => [s.flag, k]));
  const out: Record<string, unknown> = Object.fromEntries(Object.entries(spec).map(([k, s]) => [k, s.init()]));
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      process.stdout.write(o.usage.endsWith('\n') ? o.usage : o.usage + '\n');
      process.exit(0);
    }
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const key = byFlag.get(flag);
    if (key === undefined) {
      if (o.passThrough) {
        rest.push(a);
        continue;
      }
      throw new UsageError(`unknown option ${a} (see --help)`);
    }
    const s = spec[key];
    const next = (): string => {
      if (eq > 0) return a.slice(eq + 1);
      if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
      return argv[++i];
    };
    out[key] = s.take(out[key], next);
  }
  return { ...(out as Parsed<S>), rest };
}

// ---------------------------------------------------------------------------------------------
// processes

export interface RunResult { code: number; signal: string | null; stdout: string; stdoutBytes: Buffer; stderr: string; seconds: number }

/** Run to the end without blocking the event loop; never rejects on a non-zero exit (on a timeout it kills). */
export function run(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = now();
    const p = spawn(cmd, args, { stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: o.env ?? process.env, cwd: o.cwd });
    const out: Buffer[] = [];
    let stderr = '';
    p.stdout!.on('data', (b: Buffer) => out.push(b));
    p.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    if (o.input !== undefined) p.stdin!.end(o.input);
    const t = o.timeoutMs ? setTimeout(() => p.kill('SIGKILL'), o.timeoutMs) : undefined;
    p.once('error', reject);
    p.once('close', (code, sig) => {
      if (t) clearTimeout(t);
      const bytes = Buffer.concat(out);
      resolve({ code: code ?? 128, signal: sig, stdout: bytes.toString(), stdoutBytes: bytes, stderr, seconds: now() - t0 });
    });
  });
}

/** run(), rejecting with the command's stderr when it fails. */
export async function must(cmd: string, args: string[], o: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, o);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.signal ?? `exit ${r.code}`}): ${(r.stderr.trim() || r.stdout.trim()).slice(-4000)}`);
  return r;
}

/** Synchronous run that must succeed; returns stdout. */
export function sh(cmd: string, args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv; stdio?: 'pipe' | 'inherit' } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', o.stdio === 'inherit' ? 'inherit' : 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout || r.error?.message || `status ${r.status}`).toString().trim().slice(-4000)}`);
  return r.stdout;
}

/** Throw unless `cmd` is on PATH, naming the Debian package to install. */
export function requireCommands(cmds: Array<[cmd: string, pkg: string]>): void {
  const dirs = (process.env.PATH ?? '/usr/bin:/bin').split(':');
  const missing = cmds.filter(([c]) => !dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, c), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  }));
  if (missing.length) throw new Error(`missing: ${missing.map(([c, p]) => `\`${c}\` (Debian package ${p})`).join(', ')}; scripts/setup.sh installs them`);
}

export function requireRoot(why: string): void {
  if (process.getuid?.() !== 0) throw new UsageError(`must run as root (${why})`);
}

// ---------------------------------------------------------------------------------------------
// the machine

/** sync, then drop the page cache, dentries and inodes. */
export function dropCaches(): void {
  spawnSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** Busy CPU seconds of the whole machine so far (all but idle and iowait, /proc/stat). */
function machineBusy(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((x, y) => x + y, 0) - f[3] - (f[4] ?? 0)) / 100; // USER_HZ
}

/**
 * How busy other processes keep the CPUs while the benchmark is idle (0–1, over 0.5 s), after
 * waiting up to `maxWaitS` seconds for it to fall below 10 %. Shared machines run other jobs;
 * figures taken above ~25 % are flagged.
 */
export async function otherLoad(maxWaitS = 0): Promise<number> {
  const start = Date.now();
  for (;;) {
    const b0 = machineBusy();
    await new Promise((r) => setTimeout(r, 500));
    const load = (machineBusy() - b0) / 0.5 / os.cpus().length;
    if (load < 0.1 || (Date.now() - start) / 1000 >= maxWaitS) return load;
  }
}

export const BUSY = 0.25;

/** A warning line for the runs taken while other processes kept the CPUs busy, or none. */
export function loadWarning(loads: number[], what = 'runs'): string[] {
  const busy = loads.filter((x) => x > BUSY);
  if (!busy.length) return [];
  return [`warning: other processes kept the CPUs busy before ${busy.length} of ${loads.length} ${what} (${busy.map((x) => `${(x * 100).toFixed(0)}%`).join(', ')}); load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}: figures are skewed, rerun on a quiet machine`];
}

/** Mount points at or under `dir`, deepest first (octal escapes of mountinfo decoded). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean)
    .map((l) => unescape(l.split(' ')[4]))
    .filter((m) => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

export const isMounted = (mnt: string): boolean => mountsUnder(mnt).includes(mnt);

/** Unmount everything at or under `dir`, deepest first (lazily when busy); false if some stayed. */
export function unmountAll(dir: string): boolean {
  for (let pass = 0; pass < 3 && mountsUnder(dir).length; pass++) {
    for (const m of mountsUnder(dir)) if (spawnSync('umount', [m]).status !== 0) spawnSync('umount', ['-l', m]);
  }
  return mountsUnder(dir).length === 0;
}

/** A fresh work directory under `base` (default $NYDUS_TS_TMP or the system temp dir). */
export function workDir(prefix: string, base = process.env.NYDUS_TS_TMP || os.tmpdir()): string {
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, `${prefix}-`));
}

/** Remove a work directory unless something is still mounted in it or it is to be kept. */
export function removeWorkDir(dir: string, keep: boolean, log: (m: string) => void): void {
  unmountAll(dir);
  const left = mountsUnder(dir);
  if (left.length) log(`still mounted, keeping ${dir}: ${left.join(', ')}`);
  else if (keep) log(`kept ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// rounds

/** Variants in round r (0-based): the given order, reversed every other round. */
export const roundOrder = <V>(variants: readonly V[], r: number): V[] => (r % 2 === 0 ? [...variants] : [...variants].reverse());

/** Medians of a numeric field over the runs of one variant. */
export function medianOf<R>(runs: R[], f: (r: R) => number | undefined | null): number {
  return median(runs.map((r) => f(r) ?? NaN));
}

// ---------------------------------------------------------------------------------------------
// main and clean-up

const cleanups: Array<{ what: string; fn: () => unknown }> = [];

/** Register clean-up work; it runs in reverse order at the end, on an error and on SIGINT/SIGTERM/SIGHUP. Returns an unregister function. */
export function onCleanup(what: string, fn: () => unknown): () => void {
  const entry = { what, fn };
  cleanups.push(entry);
  return () => {
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
  };
}

async function runCleanups(log: (m: string) => void): Promise<void> {
  while (cleanups.length) {
    const c = cleanups.pop()!;
    try {
      await c.fn();
    } catch (e) {
      log(`clean-up (${c.what}): ${(e as Error).message}`);
    }
  }
}

/**
 * Run a benchmark's main: clean-ups run at the end and on signals (exit 130); a UsageError prints
 * the message and exits 2; any other error prints its stack and exits 1. `main` may return an
 * exit code.
 */
export function benchMain(name: string, main: () => Promise<number | void>): void {
  const log = logger(name);
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (stopping) return;
      stopping = true;
      log(`${sig}: cleaning up`);
      void runCleanups(log).finally(() => process.exit(130));
    });
  }
  main().then(
    async (code) => {
      await runCleanups(log);
      process.exitCode = typeof code === 'number' ? code : 0;
    },
    async (e) => {
      await runCleanups(log);
      if (e instanceof UsageError) process.stderr.write(`${name}: ${e.message}\n`);
      else process.stderr.write(`${name}: error: ${(e as Error).stack ?? e}\n`);
      process.exitCode = e instanceof UsageError ? 2 : 1;
    },
  );
}
