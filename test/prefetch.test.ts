/**
 * Background prefetch in the daemon (src/daemon/prefetch.ts), on real fanotify mounts of this
 * host: a running `nydus-ts daemon`, images built with `create --prefetch-patterns`, blobs served
 * by localfs or by an HTTP server in this process that can hold its answers. What is checked is
 * counted, never timed: which chunks became present without a read, whether reads took the slow
 * path, which requests reached the backend, and how many on-demand requests queued behind
 * prefetch (none).
 *
 * The HTTP server runs in this process, so every read of a mount here is asynchronous (a
 * synchronous read would block the server that must answer it).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { CLI, waitUntil } from './conformance/daemon-suite';
import { runCli } from './helpers/cli';
import { DaemonApiClient } from '../src/daemon/api-client';
import { fsTypeOf } from '../src/kernel/fanotify-group';
import { readBootstrapTables } from '../src/format/bootstrap-reader';

const execFileP = promisify(execFile);
const CHUNK = 0x10000;
const chunksOf = (n: number): number => Math.ceil(n / CHUNK);

let work: string;
let cacheDir: string;
let sock: string;
let logFile: string;
let api: DaemonApiClient;
let daemon: ChildProcess | undefined;
const mounted = new Set<string>();

function cli(args: string[]): Promise<string> {
  return runCli(args, { runDir: path.join(work, 'run') });
}

interface Built {
  name: string;
  src: string;
  boot: string;
  blobs: string;
  blobId: string;
  files: Map<string, Buffer>;
}

/** An image of random (incompressible) files, 64 KiB chunks, the patterns first in the blob. */
async function build(name: string, sizes: Record<string, number>, patterns: string[]): Promise<Built> {
  const src = path.join(work, 'src', name);
  const files = new Map<string, Buffer>();
  for (const [rel, size] of Object.entries(sizes)) {
    const data = crypto.randomBytes(size);
    fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
    fs.writeFileSync(path.join(src, rel), data);
    files.set(rel, data);
  }
  const boot = path.join(work, `${name}.boot`);
  const blobs = path.join(work, 'blobs');
  const json = path.join(work, `${name}.json`);
  const pat = path.join(work, `${name}.patterns`);
  fs.writeFileSync(pat, patterns.join('\n') + '\n');
  await cli(['create', '-B', boot, '-D', blobs, '-J', json, '--chunk-size', '0x10000', '--compressor', 'none', '--prefetch-patterns', pat, src]);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  return { name, src, boot, blobs, blobId: report.blobs[0], files };
}

const logTail = (): string => fs.readFileSync(logFile, 'utf8').split('\n').slice(-25).join('\n');

/** waitUntil with a longer budget (a loaded machine) and the daemon's log tail when it times out */
async function waitFor(what: string, cond: () => Promise<boolean> | boolean): Promise<void> {
  try {
    await waitUntil(what, cond, 90_000);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n--- daemon log tail ---\n${logTail()}`);
  }
}

async function metrics(): Promise<any> {
  return api.metrics();
}
async function blob(id: string): Promise<any> {
  return (await metrics()).blobs.find((b: any) => b.blob_id === id);
}

/** Register through the API (config_v2) with a backend section and prefetch settings, then mount. */
async function registerAndMount(id: string, img: Built, backend: Record<string, unknown>, prefetch: Record<string, unknown>): Promise<string> {
  const wd = path.join(work, 'wd', id);
  fs.mkdirSync(wd, { recursive: true });
  const reg = await api.request('PUT', '/api/v2/blobs', JSON.stringify({
    type: 'bootstrap', id, domain_id: '',
    config_v2: { version: 2, id, backend, cache: { type: 'fscache', fscache: { work_dir: wd }, prefetch }, metadata_path: img.boot },
  }));
  assert.equal(reg.status, 204, JSON.stringify(reg.body));
  const mnt = path.join(work, 'mnt', id);
  fs.mkdirSync(mnt, { recursive: true });
  const r = await api.request('POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, JSON.stringify({ id }));
  assert.equal(r.status, 200, JSON.stringify(r.body));
  mounted.add(mnt);
  return mnt;
}

async function unmountApi(mnt: string, id: string): Promise<void> {
  const r = await api.request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`);
  assert.equal(r.status, 204, `${JSON.stringify(r.body)}\n--- daemon log tail ---\n${logTail()}`);
  mounted.delete(mnt);
  await api.request('DELETE', `/api/v2/blobs?domain_id=${id}&blob_id=${id}`);
}

async function readEq(mnt: string, img: Built, rel: string): Promise<void> {
  const got = await fs.promises.readFile(path.join(mnt, rel));
  assert.ok(got.equals(img.files.get(rel)!), `${rel}: wrong bytes`);
}

/**
 * An HTTP blob server (http-proxy backend) for `img`: answers the chunk index at once, and
 * holds every data request while `hold` is true, until release() answers them.
 */
async function heldServer(img: Built): Promise<{ addr: string; held: Array<() => void>; log: Array<[number, number]>; setHold(v: boolean): void; release(): void; close(): void }> {
  const tables = readBootstrapTables(fs.readFileSync(img.boot));
  const ciOffset = tables.blobs[0].ciOffset;
  const data = fs.readFileSync(path.join(img.blobs, img.blobId));
  const held: Array<() => void> = [];
  const log: Array<[number, number]> = [];
  let hold = true;
  const server = http.createServer((req, res) => {
    if (req.url !== `/blobs/${img.blobId}`) {
      res.writeHead(404).end();
      return;
    }
    const r = /bytes=(\d+)-(\d+)/.exec(String(req.headers.range ?? ''));
    const [from, to] = r ? [Number(r[1]), Number(r[2])] : [0, data.length - 1];
    const answer = (): void => {
      res.writeHead(r ? 206 : 200, { 'content-length': to - from + 1, ...(r ? { 'content-range': `bytes ${from}-${to}/${data.length}` } : {}) });
      res.end(data.subarray(from, to + 1));
    };
    if (from >= ciOffset) {
      answer();
      return;
    }
    log.push([from, to]);
    if (hold) held.push(answer);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const release = (): void => {
    while (held.length) held.shift()!();
  };
  return {
    addr: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, held, log, release,
    setHold: (v) => (hold = v),
    close: () => {
      release();
      server.close();
      server.closeAllConnections();
    },
  };
}

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the prefetch tests mount images: they need root');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  const base = process.env.TMPDIR ?? '/tmp';
  const type = fsTypeOf(base);
  assert.ok(['ext4', 'xfs', 'btrfs'].includes(type), `${base} is on ${type}: the fanotify cache dir must be on ext4, xfs or btrfs (set TMPDIR)`);
  work = fs.mkdtempSync(path.join(base, 'nydus-prefetch-'));
  cacheDir = path.join(work, 'cache');
  fs.mkdirSync(cacheDir);
  sock = path.join(work, 'api.sock');
  logFile = path.join(work, 'daemon.log');
  api = new DaemonApiClient(sock);
  const out = fs.openSync(logFile, 'a');
  daemon = spawn(process.execPath, [CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', cacheDir, '--apisock', sock, '--log-level', 'info'], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const d = daemon;
  await waitUntil('the daemon API', async () => d.exitCode !== null || (await api.isAlive()), 120_000);
  assert.equal(((await api.daemonInfo()) as any).state, 'RUNNING', fs.readFileSync(logFile, 'utf8'));
});

after(async () => {
  for (const m of mounted) await api.request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(m)}`).catch(() => execFileP('umount', [m]).catch(() => undefined));
  const d = daemon;
  if (d && d.exitCode === null) {
    // exit (not a signal): the daemon also releases its bind mount of the cache dir
    const exited = new Promise((r) => d.once('exit', r));
    await api.request('PUT', '/api/v1/daemon/exit').catch(() => d.kill('SIGTERM'));
    await exited;
  }
  api?.close();
  if (process.env.NYDUS_TS_KEEP_TMP === undefined && work) {
    await execFileP('umount', [path.join(cacheDir, 'hsm')]).catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test('prefetch: the listed files (a listed directory: its whole subtree) become present without being read; the others do not', async () => {
  const sizes = { 'hot/a': 300_000, 'hot/sub/b': 200_000, 'hot/sub/c': 70_000, warm: 150_000, cold1: 400_000, cold2: 250_000 };
  const img = await build('listed', sizes, ['/hot', '/warm']);
  const listed = chunksOf(sizes['hot/a']) + chunksOf(sizes['hot/sub/b']) + chunksOf(sizes['hot/sub/c']) + chunksOf(sizes.warm);
  // flags that need --prefetch are refused without it
  await assert.rejects(cli(['mount', '-B', img.boot, '-D', img.blobs, '-A', sock, '--prefetch-threads', '2', path.join(work, 'mnt', 'x')]), /need --prefetch/);
  const mnt = path.join(work, 'mnt', 'listed');
  await cli(['mount', '-B', img.boot, '-D', img.blobs, '-A', sock, '--fsid', 'listed', '--prefetch', '--prefetch-threads', '2', '--prefetch-merge-size', String(2 * CHUNK), mnt]);
  mounted.add(mnt);
  await waitFor('the prefetch to finish', async () => (await blob(img.blobId))?.prefetch.state === 'done');
  let b = await blob(img.blobId);
  assert.equal(b.prefetch.chunks, listed, JSON.stringify(b.prefetch));
  assert.equal(b.chunks_ready, listed, 'exactly the listed files\' chunks are present');
  assert.equal(b.reads, 0, 'nothing was read to get there');
  assert.equal(b.events, 0, 'no fanotify event: nobody read the mount');
  assert.ok(b.prefetch.requests > 0 && b.prefetch.requests < listed, `adjacent chunks are merged into fewer requests: ${b.prefetch.requests} for ${listed} chunks`);
  assert.ok(b.prefetch.max_inflight <= 2, `threads_count 2: ${b.prefetch.max_inflight} in flight at most`);
  assert.equal(b.ondemand_waits_behind_prefetch, 0);
  const fetched = b.backend_bytes;

  // the listed files are served from the cache: fast path only, no backend byte
  for (const rel of ['hot/a', 'hot/sub/b', 'hot/sub/c', 'warm']) await readEq(mnt, img, rel);
  b = await blob(img.blobId);
  assert.equal(b.slow_path, 0, `listed files took the slow path: ${JSON.stringify({ events: b.events, slow: b.slow_path })}`);
  assert.ok(b.fast_path > 0);
  assert.equal(b.backend_bytes, fetched);
  // an unlisted file is fetched when read
  await readEq(mnt, img, 'cold1');
  b = await blob(img.blobId);
  assert.ok(b.slow_path > 0 && b.backend_bytes > fetched, 'the unlisted file was not present before its read');
  const all = await metrics();
  assert.ok(all.prefetch.chunks >= listed && all.prefetch.ondemand_waits_behind_prefetch === 0, JSON.stringify(all.prefetch));
  const st = await cli(['status', '-A', sock]);
  assert.match(st, new RegExp(`blob ${img.blobId}: .*prefetch done: ${listed} chunks .* reads queued behind prefetch: 0`));
  await cli(['umount', mnt]);
  mounted.delete(mnt);
});

test('prefetch_all: the listed files, then the whole blob; a complete blob raises no events', async () => {
  const sizes = { first: 200_000, 'd/x': 300_000, 'd/y': 123_456, z: 500_000 };
  const img = await build('all', sizes, ['/first']);
  const mnt = path.join(work, 'mnt', 'all');
  await cli(['mount', '-B', img.boot, '-D', img.blobs, '-A', sock, '--fsid', 'all', '--prefetch-all', mnt]);
  mounted.add(mnt);
  await waitFor('the whole-blob prefetch to finish', async () => (await blob(img.blobId))?.prefetch.state === 'done');
  let b = await blob(img.blobId);
  assert.equal(b.chunks_ready, b.chunk_count, JSON.stringify(b));
  assert.equal(b.prefetch.chunks, b.chunk_count);
  assert.equal(b.reads, 0);
  await waitFor('the blob to be marked complete', async () => (await blob(img.blobId)).done === true);
  const fetched = b.backend_bytes;
  for (const rel of Object.keys(sizes)) await readEq(mnt, img, rel);
  b = await blob(img.blobId);
  assert.equal(b.events, 0, 'reads of a complete blob raise no events');
  assert.equal(b.backend_bytes, fetched);
  await cli(['umount', mnt]);
  mounted.delete(mnt);
});

test('prefetch yields: reads during a held prefetch are served first, none queues behind it, and a chunk in a prefetch request is shared, not fetched twice', async () => {
  const sizes = { hot: 1 << 20, cold: 512 << 10 };
  const img = await build('held', sizes, ['/hot']);
  const srv = await heldServer(img);
  try {
    const mnt = await registerAndMount('held', img, { type: 'http-proxy', 'http-proxy': { addr: srv.addr, path: '/blobs', timeout: 120 } },
      { enable: true, threads: 2, batch_size: 2 * CHUNK });
    // prefetch's first two requests (threads 2) reach the backend and are held there
    await waitFor('two prefetch requests held', () => srv.held.length === 2);
    srv.setHold(false);
    const first = srv.log.slice();
    // an unlisted file: read and complete while prefetch still waits for its requests
    await readEq(mnt, img, 'cold');
    let b = await blob(img.blobId);
    assert.equal(b.prefetch.state, 'running');
    assert.ok(b.prefetch.pending_chunks > 0 && b.prefetch.inflight === 2, JSON.stringify(b.prefetch));
    assert.equal(b.ondemand_waits_behind_prefetch, 0);
    // a listed chunk prefetch has not started: fetched on demand at once
    const fh = await fs.promises.open(path.join(mnt, 'hot'), 'r');
    try {
      const tail = Buffer.alloc(CHUNK);
      await fh.read(tail, 0, CHUNK, sizes.hot - CHUNK);
      assert.ok(tail.equals(img.files.get('hot')!.subarray(sizes.hot - CHUNK)));
      b = await blob(img.blobId);
      assert.equal(b.prefetch.state, 'running');
      assert.equal(b.prefetch.inflight, 2);
      // a chunk inside a held prefetch request: the read waits for that request, no second fetch
      const head = Buffer.alloc(4096);
      const reading = fh.read(head, 0, 4096, 0);
      await waitFor('the read to join the prefetch request', async () => (await blob(img.blobId)).prefetch.shared_with_reads > 0);
      srv.release();
      await reading;
      assert.ok(head.equals(img.files.get('hot')!.subarray(0, 4096)));
    } finally {
      await fh.close();
    }
    await waitFor('the prefetch to finish', async () => (await blob(img.blobId)).prefetch.state === 'done');
    await readEq(mnt, img, 'hot');
    b = await blob(img.blobId);
    assert.equal(b.ondemand_waits_behind_prefetch, 0);
    assert.ok(b.prefetch.max_inflight <= 2);
    const [from0, to0] = first.find(([f]) => f === 0)!;
    const overlapping = srv.log.filter(([f, t]) => f <= to0 && t >= from0);
    assert.equal(overlapping.length, 1, `the held range was fetched ${overlapping.length} times: ${JSON.stringify(srv.log)}`);
    const all = await metrics();
    assert.equal(all.prefetch.ondemand_waits_behind_prefetch, 0, JSON.stringify(all.prefetch));
    assert.ok(all.prefetch.ondemand_during_prefetch > 0, 'the reads ran while prefetch requests were in flight');
    await unmountApi(mnt, 'held');
  } finally {
    srv.close();
  }
});

test('bandwidth_rate: prefetch never asks for more than rate × elapsed + one request', async () => {
  const rate = 256 << 10;
  const img = await build('rate', { hot: 1 << 20, other: 100_000 }, ['/hot']);
  const t0 = performance.now();
  const mnt = await registerAndMount('rate', img, { type: 'localfs', localfs: { dir: img.blobs } },
    { enable: true, threads: 4, batch_size: CHUNK, bandwidth_limit: rate });
  let samples = 0;
  for (;;) {
    const b = await blob(img.blobId);
    const elapsed = (performance.now() - t0) / 1000;
    assert.ok(b.prefetch.bytes <= rate * elapsed + CHUNK, `${b.prefetch.bytes} bytes prefetched after ${elapsed.toFixed(2)} s at ${rate} bytes/s`);
    samples++;
    if (b.prefetch.state === 'done') {
      assert.equal(b.prefetch.chunks, chunksOf(1 << 20));
      assert.ok(b.prefetch.throttle_waits > 0, 'the pacer made requests wait');
      assert.ok(b.prefetch.max_inflight <= 4);
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(samples > 1);
  await readEq(mnt, img, 'hot');
  await unmountApi(mnt, 'rate');
});

test('unmount stops prefetch at once, even while its requests are held; nothing more is fetched', async () => {
  const img = await build('stop', { hot: 2 << 20 }, ['/hot']);
  const srv = await heldServer(img);
  try {
    const mnt = await registerAndMount('stop', img, { type: 'http-proxy', 'http-proxy': { addr: srv.addr, path: '/blobs', timeout: 120 } },
      { enable: true, threads: 2, batch_size: CHUNK });
    await waitFor('two prefetch requests held', () => srv.held.length === 2);
    await unmountApi(mnt, 'stop');
    await waitFor('the cancellation in the log', () => /prefetch of blob \w+ for image stop cancelled with \d+ chunk\(s\) not fetched/.test(fs.readFileSync(logFile, 'utf8')));
    const n = srv.log.length;
    srv.setHold(false);
    srv.release();
    // let any worker that survived the unmount show itself
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(srv.log.length, n, `requests after the unmount: ${JSON.stringify(srv.log.slice(n))}`);
    assert.equal(((await api.daemonInfo()) as any).state, 'RUNNING');
  } finally {
    srv.close();
  }
});

test('a bad prefetch table entry is an error naming the image and the nid; the rest is prefetched and the image serves', async () => {
  const img = await build('badnid', { a: 200_000, b: 300_000, c: 100_000 }, ['/a', '/b']);
  // overwrite the first nid of the table with one far beyond the inode area (no checksum in RAFS v6)
  const boot = fs.readFileSync(img.boot);
  const t = readBootstrapTables(boot);
  assert.equal(t.prefetchNids.length, 2);
  boot.writeUInt32LE(0x0fffffff, t.ext.prefetchTableOffset);
  fs.writeFileSync(img.boot, boot);
  const mnt = await registerAndMount('badnid', img, { type: 'localfs', localfs: { dir: img.blobs } }, { enable: true });
  await waitFor('the prefetch to finish', async () => (await blob(img.blobId))?.prefetch.state === 'done');
  assert.match(fs.readFileSync(logFile, 'utf8'), /image badnid: prefetch table entry 0 \(nid 268435455\): nid 268435455 is out of range/);
  const b = await blob(img.blobId);
  assert.equal(b.prefetch.chunks, chunksOf(300_000), 'the good entry (/b) was prefetched');
  for (const rel of ['a', 'b', 'c']) await readEq(mnt, img, rel);
  await unmountApi(mnt, 'badnid');
});
