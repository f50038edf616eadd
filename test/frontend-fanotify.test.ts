/**
 * The fanotify pre-content front end on this host's kernel (≥ 6.14), no VM: the shared daemon
 * conformance suite, then what only this front end has — cache files the daemon owns (deleted,
 * truncated or punched behind its back), done blobs that stop raising events, mounts the daemon
 * makes (64 blobs, busy unmounts), start-up checks and the event protocol.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import * as http from 'node:http';
import { promisify } from 'node:util';
import { defineDaemonConformance, sha, CLI, waitUntil } from './conformance/daemon-suite';
import { parseEvents, FanotifyEvent, fsTypeOf } from '../src/kernel/fanotify-group';

const execFileP = promisify(execFile);

function ext4Dir(prefix: string): string {
  const base = process.env.TMPDIR ?? '/tmp';
  const type = fsTypeOf(base);
  if (!['ext4', 'xfs', 'btrfs'].includes(type)) throw new Error(`${base} is on ${type}: the fanotify tests need a cache dir on ext4, xfs or btrfs (set TMPDIR)`);
  return fs.mkdtempSync(path.join(base, prefix));
}

const ctx = defineDaemonConformance({
  frontend: 'fanotify',
  largeTree: true,
  check: () => {
    assert.equal(process.getuid?.(), 0, 'the fanotify front end tests need root');
    const [maj, min] = os.release().split('.').map(Number);
    assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  },
  cacheDir: () => ext4Dir('nydus-fan-cache-'),
  daemonArgs: (dir) => ['--frontend', 'fanotify', '--cache-dir', dir],
});

async function status(): Promise<any> {
  return JSON.parse(await ctx.cli(['status', '-A', ctx.sock, '--json']));
}

test('[fanotify] status --json: front end, serving and supervisor pids, per-blob event counters', async () => {
  const src = path.join(ctx.work, 'st');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), crypto.randomBytes(500_000));
  const img = await ctx.build('st', src, ['--chunk-size', '0x10000']);
  const mnt = await ctx.mountImage('st', img);
  fs.readFileSync(path.join(mnt, 'a'));
  const s = await status();
  assert.equal(s.daemon.frontend, 'fanotify');
  assert.ok(s.daemon.pid > 0 && s.daemon.supervisor_pid > 0 && s.daemon.pid !== s.daemon.supervisor_pid);
  const b = s.metrics.blobs.find((x: any) => x.blob_id === img.report.blobs[0]);
  for (const k of ['events', 'fast_path', 'slow_path', 'denials', 'backend_bytes', 'chunks_ready']) assert.equal(typeof b[k], 'number', `${k} in ${JSON.stringify(b)}`);
  assert.ok(b.events > 0 && b.slow_path > 0, JSON.stringify(b));
  assert.equal(typeof b.event_latency.p50_ms, 'number');
  assert.equal(typeof b.event_latency.p99_ms, 'number');
  assert.ok(s.metrics.mounts.some((m: any) => m.mountpoint === mnt));
  await ctx.umount(mnt);
});

test('[fanotify] a blob fully read raises no more events; reads stay right', async () => {
  const src = path.join(ctx.work, 'done');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), crypto.randomBytes(2_000_000));
  const img = await ctx.build('done', src, ['--chunk-size', '0x10000']);
  const mnt = await ctx.mountImage('done', img);
  const id = img.report.blobs[0];
  assert.equal(sha(path.join(mnt, 'a')), sha(path.join(src, 'a')));
  let b = await ctx.blobMetrics(id);
  assert.equal(b.done, true, `the blob should be complete: ${JSON.stringify(b)}`);
  const events = b.events;
  // drop the page cache: the reads go to the cache file again, and raise nothing
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  for (let i = 0; i < 3; i++) assert.equal(sha(path.join(mnt, 'a')), sha(path.join(src, 'a')));
  b = await ctx.blobMetrics(id);
  assert.equal(b.events, events, `events after the blob was complete: ${b.events - events}`);
  await ctx.umount(mnt);
});

test('[fanotify] a cache file truncated, punched or deleted behind the daemon is refetched, never read as zeros', async () => {
  const src = path.join(ctx.work, 'tamper');
  fs.mkdirSync(src);
  const data = crypto.randomBytes(3_000_000);
  fs.writeFileSync(path.join(src, 'a'), data);
  const img = await ctx.build('tamper', src, ['--chunk-size', '0x10000']);
  const id = img.report.blobs[0];
  const cacheFile = path.join(ctx.cacheDir, 'blobs', id);
  let mnt = await ctx.mountImage('tamper', img);
  assert.ok(fs.readFileSync(path.join(mnt, 'a')).equals(data));
  const fetched0 = (await ctx.blobMetrics(id)).backend_bytes;

  // truncate the complete cache file to half (same inode, the mount keeps reading it)
  const size = fs.statSync(cacheFile).size;
  fs.truncateSync(cacheFile, Math.floor(size / 2 / 4096) * 4096);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  await new Promise((r) => setTimeout(r, 200)); // the FAN_MODIFY notice reaches the daemon
  assert.ok(fs.readFileSync(path.join(mnt, 'a')).equals(data), 'bytes after a truncate');
  let b = await ctx.blobMetrics(id);
  assert.ok(b.foreign_modifications >= 1 && b.backend_bytes > fetched0, JSON.stringify(b));

  // punch a hole in the middle
  const fetched1 = b.backend_bytes;
  await execFileP('fallocate', ['--punch-hole', '--offset', String(1 << 20), '--length', String(256 << 10), cacheFile]);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(fs.readFileSync(path.join(mnt, 'a')).equals(data), 'bytes after a punched hole');
  b = await ctx.blobMetrics(id);
  assert.ok(b.backend_bytes > fetched1, `the punched range was fetched again: ${JSON.stringify(b)}`);

  // delete it while unmounted: the next mount starts a new cache file and fetches again
  await ctx.umount(mnt);
  fs.rmSync(cacheFile);
  mnt = await ctx.mountImage('tamper', img);
  assert.ok(fs.readFileSync(path.join(mnt, 'a')).equals(data), 'bytes after the cache file was deleted');
  b = await ctx.blobMetrics(id);
  assert.ok(b.backend_bytes >= data.length, JSON.stringify(b));

  // replaced while the daemon is down by a file of the right size full of zeros: not trusted
  await ctx.umount(mnt);
  await ctx.stopDaemon();
  fs.rmSync(cacheFile);
  fs.writeFileSync(cacheFile, Buffer.alloc(size));
  await ctx.startDaemon();
  mnt = await ctx.mountImage('tamper', img);
  assert.ok(fs.readFileSync(path.join(mnt, 'a')).equals(data), 'bytes after the cache file was replaced');
  assert.match(fs.readFileSync(ctx.logFile, 'utf8'), /is not trusted: .*generation stamp/);
  await ctx.umount(mnt);
});

test('[fanotify] an image with 64 blobs and long paths mounts (new mount API) and reads right', async () => {
  const layers: string[] = [];
  const blobs = path.join(ctx.work, 'blobs64');
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 64; i++) {
    const d = path.join(ctx.work, 'l64', `layer${i}`);
    fs.mkdirSync(d, { recursive: true });
    const name = `${'n'.repeat(200)}-${i}`;
    const data = crypto.randomBytes(5000 + i);
    fs.writeFileSync(path.join(d, name), data);
    files.set(name, data);
    layers.push(path.join(ctx.work, 'l64', `layer${i}.boot`));
  }
  // one layer per blob, built four at a time, merged into one image
  for (let i = 0; i < 64; i += 4) {
    await Promise.all(layers.slice(i, i + 4).map((boot, k) => ctx.cli(['create', '-B', boot, '-D', blobs, path.join(ctx.work, 'l64', `layer${i + k}`)])));
  }
  const merged = path.join(ctx.work, 'l64', 'image.boot');
  await ctx.cli(['merge', '-B', merged, ...layers]);
  const img = { boot: merged, blobs, report: {} };
  const mnt = await ctx.mountImage('many-blobs', img);
  const info = await ctx.api.metrics() as any;
  const mine = info.images.find((i: any) => i.id === 'many-blobs');
  assert.equal(mine.blobs.length, 64);
  for (const [name, data] of files) assert.ok(fs.readFileSync(path.join(mnt, name)).equals(data), name);
  await ctx.umount(mnt);
});

test('[fanotify] a slow blob never blocks another: reads of one image complete while another image\'s backend holds its answers', async () => {
  // image A reads its blob through an http-proxy backend that answers only when told to
  const srcA = path.join(ctx.work, 'slowA');
  const srcB = path.join(ctx.work, 'slowB');
  fs.mkdirSync(srcA);
  fs.mkdirSync(srcB);
  const dataA = crypto.randomBytes(700_000);
  const dataB = crypto.randomBytes(700_000);
  fs.writeFileSync(path.join(srcA, 'a'), dataA);
  fs.writeFileSync(path.join(srcB, 'b'), dataB);
  const imgA = await ctx.build('slowA', srcA);
  const imgB = await ctx.build('slowB', srcB);
  const held: Array<() => void> = [];
  let served = 0;
  const server = http.createServer((req, res) => {
    const m = /^\/blobs\/([0-9a-f]{64})$/.exec(req.url ?? '');
    const file = m && path.join(imgA.blobs, m[1]);
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    const data = fs.readFileSync(file);
    const r = /bytes=(\d+)-(\d+)/.exec(String(req.headers.range ?? ''));
    const [from, to] = r ? [Number(r[1]), Number(r[2])] : [0, data.length - 1];
    const answer = (): void => {
      res.writeHead(r ? 206 : 200, { 'content-length': to - from + 1, ...(r ? { 'content-range': `bytes ${from}-${to}/${data.length}` } : {}) });
      res.end(data.subarray(from, to + 1));
    };
    // the chunk index is answered at once; chunk data waits until the test releases it
    if (to - from + 1 <= 64 << 10 && from > 0) answer();
    else
      held.push(() => {
        served++;
        answer();
      });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as import('node:net').AddressInfo).port;
  try {
    const work = path.join(ctx.work, 'slow-work');
    fs.mkdirSync(work, { recursive: true });
    const reg = await ctx.api.request('PUT', '/api/v2/blobs', JSON.stringify({
      type: 'bootstrap', id: 'slowA', domain_id: '',
      config_v2: { version: 2, id: 'slowA', backend: { type: 'http-proxy', 'http-proxy': { addr: `http://127.0.0.1:${port}`, path: '/blobs', timeout: 120 } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: imgA.boot },
    }));
    assert.equal(reg.status, 204, JSON.stringify(reg.body));
    const mntA = path.join(ctx.work, 'mnt', 'slowA');
    fs.mkdirSync(mntA, { recursive: true });
    const mnt = await ctx.api.request('POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mntA)}`, JSON.stringify({ id: 'slowA' }));
    assert.equal(mnt.status, 200, JSON.stringify(mnt.body));
    const readA = execFileP('sha256sum', [path.join(mntA, 'a')]);
    await waitUntil('image A\'s first fetch to be held', () => held.length > 0);
    // A's reader is blocked in the kernel; B is served meanwhile
    const mntB = await ctx.mountImage('slowB', imgB);
    assert.ok(fs.readFileSync(path.join(mntB, 'b')).equals(dataB));
    assert.equal(served, 0, 'image A got none of its chunk data yet');
    while (held.length) held.shift()!();
    const hashA = (await readA).stdout.split(' ')[0];
    assert.equal(hashA, crypto.createHash('sha256').update(dataA).digest('hex'));
    await ctx.api.request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(mntA)}`);
    await ctx.umount(mntB);
  } finally {
    while (held.length) held.shift()!();
    server.close();
  }
});

test('[fanotify] POST /api/v1/mount read_ahead_kb: the new mount\'s bdi gets it (the default 1024 otherwise); a bad value is a 400 and mounts nothing', async () => {
  const src = path.join(ctx.work, 'ra-src');
  fs.mkdirSync(src);
  const data = crypto.randomBytes(300_000);
  fs.writeFileSync(path.join(src, 'f'), data);
  const img = await ctx.build('ra', src);
  const work = path.join(ctx.work, 'ra-work');
  fs.mkdirSync(work, { recursive: true });
  const reg = await ctx.api.request('PUT', '/api/v2/blobs', JSON.stringify({
    type: 'bootstrap', id: 'ra', domain_id: '',
    config_v2: { version: 2, id: 'ra', backend: { type: 'localfs', localfs: { dir: img.blobs } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: img.boot },
  }));
  assert.equal(reg.status, 204, JSON.stringify(reg.body));
  const bdis = (): Set<string> => new Set(fs.readdirSync('/sys/class/bdi').filter((n) => n.startsWith('erofs-')));
  const mountWith = async (name: string, body: Record<string, unknown>): Promise<{ status: number; mnt: string; bdi?: string; body: unknown }> => {
    const mnt = path.join(ctx.work, 'mnt', name);
    fs.mkdirSync(mnt, { recursive: true });
    const before = bdis();
    const r = await ctx.api.request('POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, JSON.stringify({ id: 'ra', ...body }));
    const fresh = [...bdis()].filter((n) => !before.has(n));
    return { status: r.status, mnt, bdi: fresh[0], body: r.body };
  };
  for (const bad of [-1, 65537, 1.5, '128']) {
    const r = await mountWith('ra-bad', { read_ahead_kb: bad });
    assert.equal(r.status, 400, `read_ahead_kb ${JSON.stringify(bad)}: ${JSON.stringify(r.body)}`);
    assert.match(JSON.stringify(r.body), /read_ahead_kb must be an integer from 0 to 65536/);
    assert.ok(!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${r.mnt} `) && r.bdi === undefined, 'nothing mounted');
  }
  const readAhead = (bdi: string): number => Number(fs.readFileSync(path.join('/sys/class/bdi', bdi, 'read_ahead_kb'), 'utf8'));
  for (const [name, body, want] of [['ra-128', { read_ahead_kb: 128 }, 128], ['ra-default', {}, 1024]] as const) {
    const r = await mountWith(name, body);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    try {
      assert.ok(r.bdi, 'the mount made an EROFS bdi');
      assert.equal(readAhead(r.bdi!), want, `${name}: read_ahead_kb`);
      assert.ok(fs.readFileSync(path.join(r.mnt, 'f')).equals(data), `${name}: reads right`);
    } finally {
      const u = await ctx.api.request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(r.mnt)}`);
      assert.ok(u.status < 300, JSON.stringify(u.body));
    }
  }
});

test('[fanotify] a busy mount is reported, never detached lazily; exit waits for mounts', async () => {
  const src = path.join(ctx.work, 'busy');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a'), 'busy\n');
  const img = await ctx.build('busy', src);
  const mnt = await ctx.mountImage('busy', img);
  const holder = spawn('sleep', ['30'], { cwd: mnt });
  await new Promise((r) => holder.once('spawn', r));
  await assert.rejects(ctx.cli(['umount', mnt]), /busy/);
  const r = await ctx.api.request('PUT', '/api/v1/daemon/exit');
  assert.equal(r.status, 409, JSON.stringify(r.body));
  assert.equal(((await ctx.api.daemonInfo()) as any).state, 'RUNNING');
  assert.equal(fs.readFileSync(path.join(mnt, 'a'), 'utf8'), 'busy\n');
  holder.kill();
  await new Promise((r2) => holder.once('exit', r2));
  await ctx.umount(mnt);
  // nothing busy any more: exit unmounts the rest, stops the daemon and releases the bind mount
  const supervisor = ((await ctx.api.daemonInfo()) as any).supervisor_pid;
  const r3 = await ctx.api.request('PUT', '/api/v1/daemon/exit');
  assert.equal(r3.status, 204, JSON.stringify(r3.body));
  await waitUntil('the supervisor to exit', () => {
    try {
      process.kill(supervisor, 0);
      return false;
    } catch {
      return true;
    }
  });
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
  assert.ok(!mounts.includes(path.join(ctx.cacheDir, 'hsm')), 'the bind mount is gone');
  assert.ok(!mounts.includes(` ${ctx.work}/mnt/`), `no image stays mounted:\n${mounts}`);
});

test('[fanotify] start-up errors: tmpfs cache dir, no CAP_SYS_ADMIN, no cache dir', async () => {
  const tmpfs = fs.mkdtempSync(path.join(ctx.work, 'tmpfs-'));
  await execFileP('mount', ['-t', 'tmpfs', 'tmpfs', tmpfs]);
  try {
    const run = (args: string[], pre: string[] = []) =>
      execFileP(pre[0] ?? process.execPath, [...pre.slice(1), ...(pre.length ? [process.execPath] : []), CLI, 'daemon', ...args, '--apisock', path.join(ctx.work, `x-${crypto.randomUUID()}.sock`)]).then(
        () => assert.fail('the daemon should not start'),
        (e: { code: number; stderr: string }) => e,
      );
    let e = await run(['--frontend', 'fanotify', '--cache-dir', tmpfs]);
    assert.equal(e.code, 1);
    assert.match(e.stderr, /tmpfs.*ext4, xfs or btrfs/);
    e = await run(['--frontend', 'fanotify', '--cache-dir', ctx.work], ['setpriv', '--inh-caps=-sys_admin', '--bounding-set=-sys_admin']);
    assert.equal(e.code, 1);
    assert.match(e.stderr, /CAP_SYS_ADMIN/);
    e = await run(['--frontend', 'fanotify']);
    assert.match(e.stderr, /no cache directory/);
    e = await run(['--frontend', 'fanotify', '--cache-dir', path.join(ctx.work, 'nonexistent')]);
    assert.match(e.stderr, /not an existing directory/);
  } finally {
    await execFileP('umount', [tmpfs]);
  }
});

test('[fanotify] event records: ranges, overflow, bad framing', () => {
  const ev = (mask: number, fd: number, range?: [number, number]): Buffer => {
    const len = 24 + (range ? 24 : 0);
    const b = Buffer.alloc(len);
    b.writeUInt32LE(len, 0);
    b[4] = 3;
    b.writeUInt16LE(24, 6);
    b.writeBigUInt64LE(BigInt(mask), 8);
    b.writeInt32LE(fd, 16);
    b.writeInt32LE(1234, 20);
    if (range) {
      b[24] = 6;
      b.writeUInt16LE(24, 26);
      b.writeBigUInt64LE(BigInt(range[0]), 32);
      b.writeBigUInt64LE(BigInt(range[1]), 40);
    }
    return b;
  };
  const buf = Buffer.concat([ev(0x100000, 7, [4096, 131072]), ev(0x4000, -1), ev(0x100000, 9)]);
  const out: FanotifyEvent[] = [];
  parseEvents(buf, buf.length, out);
  assert.deepEqual(out, [
    { mask: 0x100000, fd: 7, pid: 1234, offset: 4096, count: 131072 },
    { mask: 0x4000, fd: -1, pid: 1234 },
    { mask: 0x100000, fd: 9, pid: 1234 },
  ]);
  const bad = Buffer.from(buf);
  bad[24 + 48 + 4] = 2; // version of the third event
  const part: FanotifyEvent[] = [];
  assert.throws(() => parseEvents(bad, bad.length, part), /version 2/);
  assert.equal(part.length, 2);
  assert.throws(() => parseEvents(buf, 30, []), /trailing bytes|do not fit/);
});
