/**
 * What a docker-registry (distribution 2.8) served, from its log: one "response completed" line
 * per request (logfmt: time=, http.request.method=, http.request.uri=, http.response.written=,
 * http.response.duration=). Read from a byte offset, so a benchmark counts one run's requests.
 */
import * as fs from 'node:fs';

export interface Egress {
  requests: number;
  blob_gets: number;
  blob_bytes: number;
  manifest_bytes: number;
  total_bytes: number;
  /** sum of the registry's own response durations (request in → last byte written) */
  busy_s: number;
  /** blob GETs: seconds since `t0Epoch` at which the response completed, bytes, duration */
  gets: Array<{ at_s: number; bytes: number; ms: number }>;
}

function durationS(d: string): number {
  const m = /^([\d.]+)(ns|µs|us|ms|s|m)$/.exec(d);
  if (!m) return NaN;
  const f: Record<string, number> = { ns: 1e-9, µs: 1e-6, us: 1e-6, ms: 1e-3, s: 1, m: 60 };
  return Number(m[1]) * f[m[2]];
}

/** The size of the log now: the offset to count from. */
export function logOffset(logFile: string): number {
  try {
    return fs.statSync(logFile).size;
  } catch {
    return 0;
  }
}

/** Requests the registry logged since byte `offset` of `logFile`; `t0Epoch` (ms) dates the GETs. */
export function egressSince(logFile: string, offset: number, t0Epoch = 0): Egress {
  const fd = fs.openSync(logFile, 'r');
  let buf: Buffer;
  try {
    const size = fs.fstatSync(fd).size;
    buf = Buffer.alloc(Math.max(0, size - offset));
    fs.readSync(fd, buf, 0, buf.length, offset);
  } finally {
    fs.closeSync(fd);
  }
  const e: Egress = { requests: 0, blob_gets: 0, blob_bytes: 0, manifest_bytes: 0, total_bytes: 0, busy_s: 0, gets: [] };
  const field = (line: string, k: string): string | undefined => {
    const m = new RegExp(`(?:^| )${k.replace(/\./g, '\\.')}=("(?:[^"\\\\]|\\\\.)*"|\\S+)`).exec(line);
    return m ? m[1].replace(/^"|"$/g, '') : undefined;
  };
  for (const line of buf.toString('utf8').split('\n')) {
    if (!/msg="response completed/.test(line)) continue;
    const method = field(line, 'http.request.method') ?? '';
    const uri = field(line, 'http.request.uri') ?? '';
    const bytes = Number(field(line, 'http.response.written') ?? 0) || 0;
    const dur = durationS(field(line, 'http.response.duration') ?? '');
    const time = Date.parse(field(line, 'time') ?? '');
    e.requests++;
    e.total_bytes += bytes;
    if (Number.isFinite(dur)) e.busy_s += dur;
    if (method === 'GET' && /\/blobs\/sha256:/.test(uri)) {
      e.blob_gets++;
      e.blob_bytes += bytes;
      e.gets.push({ at_s: (time - t0Epoch) / 1000, bytes, ms: dur * 1000 });
    } else if (/\/manifests\//.test(uri)) e.manifest_bytes += bytes;
  }
  return e;
}
