/**
 * Reader child processes for read benchmarks: every read through a mount happens in one, so that
 * a daemon that never answers an event costs a timeout, not a hung benchmark (a blocked reader
 * is killable). Jobs: a sequential read, a sha256 of a file, or random pieces (hashed after the
 * clock stops). Readers are released together; each times its own read loop (CLOCK_MONOTONIC,
 * comparable across processes).
 */
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import { spawn, ChildProcess } from 'node:child_process';
import { MiB } from './harness';

export type ChildJob =
  | { mode: 'seq'; file: string }
  | { mode: 'sha256'; file: string }
  | { mode: 'pieces'; file: string; piece: number; offsets: number[] };

export interface ChildResult {
  bytes: number;
  /** CLOCK_MONOTONIC ns around the read loop, as decimal strings */
  t0: string;
  t1: string;
  sha256?: string;
}

/** Child side: open, say "ready", wait for a line on stdin, read, print one JSON result. */
export function childMain(job: ChildJob): void {
  const fd = fs.openSync(job.file, 'r');
  const buf = Buffer.allocUnsafe(job.mode === 'pieces' ? job.piece * job.offsets.length : MiB);
  process.stdout.write('ready\n');
  process.stdin.once('data', () => {
    const h = job.mode === 'seq' ? undefined : crypto.createHash('sha256');
    let bytes = 0;
    const t0 = process.hrtime.bigint();
    if (job.mode === 'pieces') {
      for (const [i, off] of job.offsets.entries()) {
        let got = 0;
        while (got < job.piece) {
          const n = fs.readSync(fd, buf, i * job.piece + got, job.piece - got, off + got);
          if (n === 0) throw new Error(`${job.file}: short read at ${off + got}`);
          got += n;
        }
        bytes += got;
      }
    } else {
      for (;;) {
        const n = fs.readSync(fd, buf, 0, buf.length, null);
        if (n === 0) break;
        h?.update(buf.subarray(0, n));
        bytes += n;
      }
    }
    const t1 = process.hrtime.bigint();
    // the pieces are hashed after the clock stops
    if (job.mode === 'pieces') h!.update(buf.subarray(0, bytes));
    fs.closeSync(fd);
    const r: ChildResult = { bytes, t0: String(t0), t1: String(t1), sha256: h?.digest('hex') };
    process.stdout.write(JSON.stringify(r) + '\n', () => process.exit(0));
  });
}

/** readers still running (killed by clean-up) */
export const children = new Set<ChildProcess>();

/** Run jobs in parallel child processes, released together; returns their results in order. */
export async function runReaders(jobs: ChildJob[], timeoutS: number): Promise<ChildResult[]> {
  const procs = jobs.map((job) => {
    const p = spawn(process.execPath, [__filename, JSON.stringify(job)], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(p);
    let out = '';
    let err = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const ready = new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (out.startsWith('ready\n')) {
          p.stdout!.off('data', check);
          resolve();
        }
      };
      p.stdout!.on('data', check);
      p.once('exit', () => reject(new Error(`reader of ${job.file} exited before it was ready: ${err.trim()}`)));
    });
    const done = new Promise<ChildResult>((resolve, reject) => {
      p.once('exit', (code, sig) => {
        children.delete(p);
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (code === 0 && line) resolve(JSON.parse(line) as ChildResult);
        else reject(new Error(`reader of ${job.file} failed (${sig ?? `exit ${code}`}): ${err.trim() || out.trim()}`));
      });
    });
    return { p, ready, done };
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      for (const { p } of procs) p.kill('SIGKILL');
      reject(new Error(`a read of ${jobs[0].file} took longer than ${timeoutS} s (a daemon that does not answer its events?)`));
    }, timeoutS * 1000);
  });
  try {
    await Promise.race([Promise.all(procs.map((x) => x.ready)), timeout]);
    for (const { p } of procs) p.stdin!.write('go\n');
    return await Promise.race([Promise.all(procs.map((x) => x.done)), timeout]);
  } finally {
    clearTimeout(timer);
    for (const { p } of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}

export const secondsOf = (r: ChildResult): number => Number(BigInt(r.t1) - BigInt(r.t0)) / 1e9;


if (require.main === module) childMain(JSON.parse(process.argv[2]) as ChildJob);
