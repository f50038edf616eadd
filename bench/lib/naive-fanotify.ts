/**
 * bench/naive-fanotify.c as a peer for read benchmarks: one thread, pread from the blob's
 * uncompressed data + pwrite into its cache file + allow, no verification (the floor of what any
 * fanotify daemon costs); compiled into ${NYDUS_TS_CACHE:-.cache}/bench, driven over its
 * stdout (a "ready" line, counters on SIGUSR1 and at exit as JSON lines).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { CACHE_DIR, REPO, sh } from './harness';

const C_SOURCE = path.join(REPO, 'bench', 'naive-fanotify.c');

/** Compile bench/naive-fanotify.c into .cache/bench unless the binary is newer than the source. */
export function buildNaive(): string {
  const dir = path.join(CACHE_DIR, 'bench');
  const bin = path.join(dir, 'naive-fanotify');
  fs.mkdirSync(dir, { recursive: true });
  if (!fs.existsSync(bin) || fs.statSync(bin).mtimeMs < fs.statSync(C_SOURCE).mtimeMs) {
    sh('gcc', ['-O2', '-Wall', '-o', bin + '.tmp', C_SOURCE]);
    fs.renameSync(bin + '.tmp', bin);
  }
  return bin;
}

/** What naive-fanotify prints on SIGUSR1 (counters since the previous dump) and at exit. */
export interface NaiveStats {
  kind: string;
  events: number;
  bytes: number;
  reads: number;
  max_batch: number;
  denied: number;
  overflows: number;
  /** time inside the fills' pread(2) of the source and pwrite(2) into the cache file */
  pread_ms: number;
  pwrite_ms: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  sizes: Record<string, number>;
}

export interface Naive {
  proc: ChildProcess;
  lines: string[];
  waiters: Array<() => void>;
  stderr: string;
  exited: Promise<void>;
}

/** daemons still running (stopped by clean-up) */
export const naives = new Set<Naive>();

async function nextLine(d: Naive, timeoutS: number, what: string): Promise<string> {
  const t = Date.now();
  while (!d.lines.length) {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) throw new Error(`naive-fanotify exited (${d.proc.signalCode ?? d.proc.exitCode}) while waiting for ${what}: ${d.stderr.trim()}`);
    if (Date.now() - t > timeoutS * 1000) throw new Error(`naive-fanotify: no ${what} within ${timeoutS} s: ${d.stderr.trim()}`);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 200);
      d.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return d.lines.shift()!;
}

export async function startNaive(bin: string, boot: string, source: string, store: string, mnt: string): Promise<Naive> {
  fs.mkdirSync(store, { recursive: true });
  const proc = spawn(bin, ['--meta', boot, '--source', source, '--store', store, '--mnt', mnt, '--name', 'blob'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const d: Naive = { proc, lines: [], waiters: [], stderr: '', exited: new Promise((resolve) => proc.once('exit', () => resolve())) };
  naives.add(d);
  let buf = '';
  const wake = (): void => {
    for (const w of d.waiters.splice(0)) w();
  };
  proc.stdout!.on('data', (x: Buffer) => {
    buf += x.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      d.lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    wake();
  });
  proc.stderr!.on('data', (x: Buffer) => (d.stderr += x.toString()));
  proc.once('exit', wake);
  const first = await nextLine(d, 30, '"ready"');
  if (first !== 'ready') throw new Error(`naive-fanotify: expected "ready", got ${first}`);
  return d;
}

export async function naiveStats(d: Naive): Promise<NaiveStats> {
  d.proc.kill('SIGUSR1');
  return JSON.parse(await nextLine(d, 30, 'its counters')) as NaiveStats;
}

/** SIGTERM: it unmounts the image and its bind mount, prints its totals and exits. */
export async function stopNaive(d: Naive): Promise<NaiveStats | undefined> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) {
    d.proc.kill('SIGTERM');
    const t = setTimeout(() => d.proc.kill('SIGKILL'), 30_000);
    await d.exited;
    clearTimeout(t);
  }
  naives.delete(d);
  const total = d.lines.find((l) => l.includes('"kind":"total"'));
  return total ? (JSON.parse(total) as NaiveStats) : undefined;
}

