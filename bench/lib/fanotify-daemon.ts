/**
 * nydus-ts' own daemon with the fanotify front end, as a read benchmark drives it: started on a
 * fresh cache dir and API socket, waited for until RUNNING, stopped through its API (then
 * signals), its per-blob metrics read with `nydus-ts status --json`. NYDUS_TS_BENCH_CLI=PATH
 * measures another build's CLI (its main.js) instead of this one.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { CLI } from './harness';

/** the CLI whose daemon, mount, umount and status are measured (another build's, for before/after) */
export const OUR_CLI = process.env.NYDUS_TS_BENCH_CLI ? path.resolve(process.env.NYDUS_TS_BENCH_CLI) : CLI;

export interface Ours {
  proc: ChildProcess;
  sock: string;
  logFile: string;
  exited: Promise<void>;
}

/** daemons still running (stopped by clean-up) */
export const ourDaemons = new Set<Ours>();

function api(sock: string, method: string, p: string, timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: p, timeout: timeoutMs, headers: { 'content-length': 0 } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${p}: timeout`)));
    req.on('error', reject);
    req.end();
  });
}

export function tail(file: string, n = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).map((l) => `    ${l}`).join('\n');
  } catch {
    return '    (no log)';
  }
}

export async function startOurs(cacheDir: string, work: string, tag: string): Promise<Ours> {
  const sock = path.join(work, `api-${tag}.sock`);
  const logFile = path.join(work, `daemon-${tag}.log`);
  const outFile = path.join(work, `daemon-${tag}.out`);
  fs.mkdirSync(cacheDir, { recursive: true });
  const out = fs.openSync(outFile, 'a');
  const proc = spawn(process.execPath, [OUR_CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', cacheDir, '--apisock', sock, '--log-file', logFile], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const d: Ours = { proc, sock, logFile, exited: new Promise((resolve) => proc.once('exit', () => resolve())) };
  ourDaemons.add(d);
  const t = Date.now();
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`\`nydus-ts daemon --frontend fanotify\` exited (${proc.signalCode ?? `code ${proc.exitCode}`}) before it was RUNNING; the fanotify front end does not work (yet?).\n  its output:\n${tail(outFile)}`);
    }
    if (Date.now() - t > 60_000) throw new Error(`\`nydus-ts daemon --frontend fanotify\` is not RUNNING after 60 s.\n  its output:\n${tail(outFile)}`);
    try {
      const r = await api(sock, 'GET', '/api/v1/daemon', 2000);
      if (r.status === 200 && (JSON.parse(r.body) as { state?: string }).state === 'RUNNING') return d;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function stopOurs(d: Ours): Promise<void> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) {
    await api(d.sock, 'PUT', '/api/v1/daemon/exit').catch(() => d.proc.kill('SIGTERM'));
    const t1 = setTimeout(() => d.proc.kill('SIGTERM'), 15_000);
    const t2 = setTimeout(() => d.proc.kill('SIGKILL'), 30_000);
    await d.exited;
    clearTimeout(t1);
    clearTimeout(t2);
  }
  ourDaemons.delete(d);
}

export function ourCli(args: string[], cli = OUR_CLI): string {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 120_000 });
  if (r.status !== 0) throw new Error(`nydus-ts ${args.join(' ')} failed: ${(r.stderr || r.stdout || r.error?.message || `status ${r.status}`).trim()}`);
  return r.stdout;
}

/** The per-blob metrics the fanotify front end reports in `status --json` (metrics.blobs[]). */
export interface OurBlobMetrics {
  events?: number;
  fast_path?: number;
  slow_path?: number;
  denials?: number;
  event_latency?: { p50_ms?: number; p99_ms?: number; [k: string]: unknown };
  backend_bytes?: number;
  [k: string]: unknown;
}

/** `status --json` ({daemon, mounts, metrics: {blobs: [...]}}), reduced to our blob's entry. */
export function ourStatus(sock: string, blobId: string): OurBlobMetrics | null {
  const j = JSON.parse(ourCli(['status', '-A', sock, '--json'])) as { metrics?: { blobs?: Array<OurBlobMetrics & { blob_id?: string }> } };
  const blobs = j.metrics?.blobs ?? [];
  return blobs.find((b) => b.blob_id === blobId) ?? blobs[0] ?? null;
}

