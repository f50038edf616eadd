/**
 * Prometheus metrics and the background scrub, on this host's fanotify front end with a real
 * daemon and real mounts: the text exposition parses with a real parser (parse-prometheus-text-
 * format) and its counters equal the JSON metrics; daemon-wide counters survive a session's end;
 * the TCP listener answers on 127.0.0.1 with metrics only and refuses non-loopback addresses; a
 * periodic scrub runs on its own. (The scrub of a damaged chunk runs on both front ends in the
 * conformance suite, test/conformance/daemon-suite.ts.)
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as net from 'node:net';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import parsePrometheus = require('parse-prometheus-text-format');
import { CLI, waitUntil } from './conformance/daemon-suite';
import { runCli } from './helpers/cli';
import { DaemonApiClient } from '../src/daemon/api-client';
import { fsTypeOf } from '../src/kernel/fanotify-group';
import { Exposition, PROMETHEUS_CONTENT_TYPE } from '../src/daemon/prometheus';

const execFileP = promisify(execFile);

interface RunningDaemon {
  proc: ChildProcess;
  sock: string;
  cacheDir: string;
  log: string;
  api: DaemonApiClient;
}

let work: string;
const daemons: RunningDaemon[] = [];
const mounts: Array<{ sock: string; mnt: string }> = [];

function cli(args: string[]): Promise<string> {
  return runCli(args, { runDir: path.join(work, 'run') });
}

function ext4Dir(prefix: string): string {
  const base = process.env.TMPDIR ?? '/tmp';
  const type = fsTypeOf(base);
  if (!['ext4', 'xfs', 'btrfs'].includes(type)) throw new Error(`${base} is on ${type}: the fanotify tests need a cache dir on ext4, xfs or btrfs (set TMPDIR)`);
  return fs.mkdtempSync(path.join(base, prefix));
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function startDaemon(name: string, extra: string[]): Promise<RunningDaemon> {
  const cacheDir = ext4Dir(`nydus-metrics-${name}-`);
  const sock = path.join(work, `${name}.sock`);
  const log = path.join(work, `${name}.log`);
  const out = fs.openSync(log, 'a');
  const proc = spawn(process.execPath, [CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', cacheDir, '--apisock', sock, '--log-level', 'info', ...extra], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const api = new DaemonApiClient(sock);
  const d = { proc, sock, cacheDir, log, api };
  daemons.push(d);
  await waitUntil(`daemon ${name}`, async () => proc.exitCode !== null || (await api.isAlive()), 120_000);
  assert.equal(proc.exitCode, null, `daemon ${name} exited: ${fs.readFileSync(log, 'utf8')}`);
  return d;
}

async function mountImage(d: RunningDaemon, name: string, files: Record<string, Buffer>): Promise<{ mnt: string; blobId: string }> {
  const src = path.join(work, `src-${name}`);
  fs.mkdirSync(src);
  for (const [f, data] of Object.entries(files)) fs.writeFileSync(path.join(src, f), data);
  const boot = path.join(work, `${name}.boot`);
  const json = path.join(work, `${name}.json`);
  await cli(['create', '-B', boot, '-D', path.join(work, 'blobs'), '-J', json, '--chunk-size', '0x10000', src]);
  const mnt = path.join(work, 'mnt', name);
  await cli(['mount', '-A', d.sock, '-B', boot, '-D', path.join(work, 'blobs'), '--fsid', name, mnt]);
  mounts.push({ sock: d.sock, mnt });
  return { mnt, blobId: JSON.parse(fs.readFileSync(json, 'utf8')).blobs[0] };
}

function get(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    }).on('error', reject);
  });
}

type Families = Map<string, ReturnType<typeof parsePrometheus>[number]>;

function parse(text: string): Families {
  const fams = parsePrometheus(text);
  const byName: Families = new Map();
  for (const f of fams) {
    assert.ok(!byName.has(f.name), `metric family ${f.name} appears twice`);
    assert.notEqual(f.type, 'UNTYPED', `${f.name} has no TYPE line`);
    assert.ok(f.help.length > 0, `${f.name} has no HELP line`);
    assert.match(f.name, /^nydus_ts_[a-z0-9_]+$/);
    if (f.type === 'COUNTER') assert.match(f.name, /_total$/, `counter ${f.name} should end in _total`);
    byName.set(f.name, f);
  }
  return byName;
}

/** the value of the sample of `name` whose labels include `labels` */
function value(fams: Families, name: string, labels: Record<string, string> = {}): number {
  const f = fams.get(name);
  assert.ok(f, `no metric ${name}`);
  const s = f.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  assert.ok(s, `no sample of ${name} with ${JSON.stringify(labels)}`);
  return Number(s.value);
}

let main: RunningDaemon;
let metricsPort: number;
let img: { mnt: string; blobId: string };
const data = { a: crypto.randomBytes(700_000), b: crypto.randomBytes(300_000) };

before(async () => {
  assert.equal(process.getuid?.(), 0, 'these tests need root (fanotify front end)');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  work = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'nydus-metrics-'));
  metricsPort = await freePort();
  main = await startDaemon('main', ['--metrics-listen', `127.0.0.1:${metricsPort}`]);
  img = await mountImage(main, 'img', { a: data.a, b: data.b });
  assert.ok(fs.readFileSync(path.join(img.mnt, 'a')).equals(data.a));
  assert.ok(fs.readFileSync(path.join(img.mnt, 'b')).equals(data.b));
});

after(async () => {
  for (const m of mounts.reverse()) await cli(['umount', m.mnt]).catch(() => execFileP('umount', [m.mnt]).catch(() => undefined));
  for (const d of daemons) {
    if (d.proc.exitCode === null) {
      d.proc.kill('SIGTERM');
      await new Promise((r) => d.proc.once('exit', r));
    }
    d.api.close();
  }
});

test('Prometheus exposition on the API socket parses and its counters equal the JSON metrics', async () => {
  const r = await main.api.request('GET', '/api/v1/metrics/prometheus');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], PROMETHEUS_CONTENT_TYPE);
  const j = (await main.api.metrics()) as any; // nothing reads meanwhile: the same counts
  const p = parse(r.text);
  const t = j.totals;
  assert.ok(t.chunks_verified > 0 && t.by_backend.localfs.bytes > 0, JSON.stringify(t));
  assert.equal(value(p, 'nydus_ts_backend_read_bytes_total', { backend: 'localfs' }), t.by_backend.localfs.bytes);
  assert.equal(value(p, 'nydus_ts_backend_requests_total', { backend: 'localfs' }), t.by_backend.localfs.requests);
  assert.equal(value(p, 'nydus_ts_chunks_fetched_total'), t.chunks_fetched);
  assert.equal(value(p, 'nydus_ts_chunks_verified_total'), t.chunks_verified);
  assert.equal(value(p, 'nydus_ts_chunk_digest_failures_total'), t.digest_failures);
  assert.equal(value(p, 'nydus_ts_fill_requests_total'), t.reads);
  assert.equal(value(p, 'nydus_ts_fanotify_events_total'), j.frontend.events);
  assert.equal(value(p, 'nydus_ts_fanotify_slow_path_total'), j.frontend.slow_path);
  assert.equal(value(p, 'nydus_ts_scrub_runs_total'), j.scrub.runs_total);
  // the GC/culling section: its counters as counters, cache bytes on disk as a gauge
  assert.ok(j.cache.disk_bytes > 0, JSON.stringify(j.cache));
  assert.equal(value(p, 'nydus_ts_cache_disk_bytes'), j.cache.disk_bytes);
  assert.equal(p.get('nydus_ts_cache_disk_bytes')!.type, 'GAUGE');
  assert.equal(value(p, 'nydus_ts_cache_gc_runs_total'), j.cache.gc_runs);
  assert.equal(p.get('nydus_ts_cache_gc_runs_total')!.type, 'COUNTER');
  const blob = j.blobs.find((b: any) => b.blob_id === img.blobId);
  assert.equal(value(p, 'nydus_ts_blob_backend_read_bytes_total', { blob: img.blobId }), blob.backend_bytes);
  assert.equal(value(p, 'nydus_ts_blob_chunks_cached', { blob: img.blobId }), blob.chunks_ready);
  assert.equal(value(p, 'nydus_ts_blob_cache_bytes', { blob: img.blobId }), blob.pages_present * 4096);

  // histograms: cumulative buckets, +Inf = _count = the JSON count, _sum in seconds
  for (const [name, h] of [['nydus_ts_kernel_request_latency_seconds', j.frontend.event_latency], ['nydus_ts_fill_latency_seconds', t.read_latency_hist]] as const) {
    const s = p.get(name)!.metrics[0];
    assert.equal(p.get(name)!.type, 'HISTOGRAM');
    const les = Object.keys(s.buckets!).filter((k) => k !== '+Inf').map(Number).sort((x, y) => x - y);
    let prev = 0;
    for (const le of les) {
      const n = Number(s.buckets![String(le)]);
      assert.ok(n >= prev, `${name}: bucket le=${le} (${n}) below the previous one (${prev})`);
      prev = n;
    }
    assert.ok(h.count > 0, `${name}: no observations`);
    assert.equal(Number(s.buckets!['+Inf']), h.count);
    assert.equal(Number(s.count), h.count);
    assert.ok(Math.abs(Number(s.sum) - h.sum_ms / 1000) < 1e-9, `${name}: sum ${s.sum} s vs ${h.sum_ms} ms`);
  }
  // GET /metrics is the same exposition
  const r2 = await main.api.request('GET', '/metrics');
  assert.equal(r2.status, 200);
  assert.equal(value(parse(r2.text), 'nydus_ts_chunks_verified_total'), t.chunks_verified);
});

test('daemon-wide counters keep counting after a blob session closes', async () => {
  const before = parse((await main.api.request('GET', '/metrics')).text);
  const other = await mountImage(main, 'short', { x: crypto.randomBytes(300_000) });
  fs.readFileSync(path.join(other.mnt, 'x'));
  const during = (await main.api.metrics()) as any;
  const fetched = during.blobs.find((b: any) => b.blob_id === other.blobId).chunks_fetched;
  assert.ok(fetched > 0);
  await cli(['umount', other.mnt]);
  mounts.splice(mounts.findIndex((m) => m.mnt === other.mnt), 1);
  const j = (await main.api.metrics()) as any;
  assert.equal(j.blobs.find((b: any) => b.blob_id === other.blobId), undefined, 'the unmounted blob has no session');
  const afterP = parse((await main.api.request('GET', '/metrics')).text);
  assert.equal(value(afterP, 'nydus_ts_chunks_fetched_total'), value(before, 'nydus_ts_chunks_fetched_total') + fetched);
  assert.equal(value(afterP, 'nydus_ts_chunks_fetched_total'), j.totals.chunks_fetched);
  assert.ok(j.totals.sessions_closed >= 1);
});

test('label values and help text are escaped (a parser reads them back unchanged)', () => {
  const x = new Exposition();
  const nasty = 'a "quoted" back\\slash\nnew line';
  x.counter('nydus_ts_test_total', 'help with \\ and\nnewline', 3, { blob: nasty });
  x.gauge('nydus_ts_test_gauge', 'g', 1.5);
  const p = parsePrometheus(x.text());
  assert.equal(p[0].metrics[0].labels!.blob, nasty);
  assert.equal(p[0].help, 'help with \\ and\nnewline');
  assert.equal(p[0].metrics[0].value, '3');
  assert.equal(p[1].metrics[0].value, '1.5');
});

test('the TCP listener answers on 127.0.0.1 with the metrics and nothing of the API', async () => {
  const r = await get(`http://127.0.0.1:${metricsPort}/metrics`);
  assert.equal(r.status, 200);
  assert.equal(r.type, PROMETHEUS_CONTENT_TYPE);
  const p = parse(r.body);
  const j = (await main.api.metrics()) as any;
  assert.equal(value(p, 'nydus_ts_chunks_verified_total'), j.totals.chunks_verified);
  assert.equal((await get(`http://127.0.0.1:${metricsPort}/api/v1/daemon`)).status, 404);
  assert.equal((await get(`http://127.0.0.1:${metricsPort}/api/v1/metrics`)).status, 404);
});

test('a non-loopback --metrics-listen is refused with a clear error, before anything starts', async () => {
  for (const addr of ['0.0.0.0:9110', '192.0.2.7:9110', '[::]:9110', 'example.com:9110', '127.0.0.1:70000']) {
    const sock = path.join(work, 'refused.sock');
    const r = await execFileP(process.execPath, [CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', main.cacheDir, '--apisock', sock, '--metrics-listen', addr])
      .then(() => ({ code: 0, stderr: '' }), (e) => ({ code: e.code as number, stderr: String(e.stderr) }));
    assert.equal(r.code, 1, `${addr}: exit code ${r.code}`);
    assert.match(r.stderr, new RegExp(`--metrics-listen ${addr.replace(/[[\]().]/g, '\\$&')}: `));
    assert.ok(!fs.existsSync(sock), `${addr}: the API socket was created`);
  }
  // the port is taken by the main daemon: a clear error as well
  const busy = await execFileP(process.execPath, [CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', ext4Dir('nydus-busy-'), '--apisock', path.join(work, 'busy.sock'), '--metrics-listen', `127.0.0.1:${metricsPort}`])
    .then(() => ({ code: 0, stderr: '' }), (e) => ({ code: e.code as number, stderr: String(e.stderr) }));
  assert.equal(busy.code, 1);
  assert.match(busy.stderr, /the port is in use/);
});

test('scrub of an unknown image is an error naming it', async () => {
  await assert.rejects(cli(['cache', 'scrub', '-A', main.sock, '--image', 'no-such-image']), /no registered image no-such-image/);
  await assert.rejects(cli(['cache', 'scrub', '-A', main.sock, '--rate', 'fast']), /--rate "fast"/);
});

test('a periodic background scrub verifies the cache on its own and reports in the metrics', async () => {
  const d = await startDaemon('periodic', ['--scrub-interval', '1', '--scrub-rate', '50']);
  const m = await mountImage(d, 'periodic', { p: crypto.randomBytes(500_000) });
  fs.readFileSync(path.join(m.mnt, 'p'));
  await waitUntil('a periodic scrub that verified chunks', async () => {
    const s = ((await d.api.metrics()) as any).scrub;
    return s.runs_total >= 1 && s.chunks_verified_total > 0 && !s.running;
  }, 60_000);
  const last = JSON.parse(await cli(['cache', 'scrub', '-A', d.sock, '--status', '--json']));
  assert.equal(last.trigger, 'periodic');
  assert.deepEqual(last.findings, []);
  const p = parse((await d.api.request('GET', '/metrics')).text);
  assert.ok(value(p, 'nydus_ts_scrub_chunks_verified_total') > 0);
  assert.ok(value(p, 'nydus_ts_scrub_last_run_timestamp_seconds') > 0);
});
