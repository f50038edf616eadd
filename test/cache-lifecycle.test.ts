/**
 * The cache's life cycle on the fanotify front end (host kernel, real mounts): `cache usage`,
 * `cache gc` (explicit and automatic on unregister) and culling under disk pressure on a small
 * loop-mounted ext4 filesystem made for the test. The fscache side runs in the VM
 * (test/conformance/daemon-suite.ts, "cache usage and gc").
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { runCli } from './helpers/cli';
import { DaemonApiClient } from '../src/daemon/api-client';
import { fsTypeOf } from '../src/kernel/fanotify-group';
import { CLI, sha, waitUntil } from './conformance/daemon-suite';

const execFileP = promisify(execFile);

function check(): void {
  assert.equal(process.getuid?.(), 0, 'the cache life-cycle tests need root (mounts, fanotify)');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
}

function workDir(prefix: string): string {
  const base = process.env.TMPDIR ?? '/tmp';
  const type = fsTypeOf(base);
  assert.ok(['ext4', 'xfs', 'btrfs'].includes(type), `${base} is on ${type}: the fanotify front end needs a cache dir on ext4, xfs or btrfs (set TMPDIR)`);
  return fs.mkdtempSync(path.join(base, prefix));
}

const dropCaches = (): void => fs.writeFileSync('/proc/sys/vm/drop_caches', '3');

/** One daemon (supervisor + serving child) on its own cache dir and socket, driven like a user. */
class Harness {
  readonly sock: string;
  readonly log: string;
  readonly api: DaemonApiClient;
  private proc?: ChildProcess;
  readonly mounted = new Set<string>();

  constructor(readonly work: string, readonly cacheDir: string, private readonly args: string[]) {
    this.sock = path.join(work, 'api.sock');
    this.log = path.join(work, 'daemon.log');
    this.api = new DaemonApiClient(this.sock);
  }

  cli(args: string[]): Promise<string> {
    return runCli(args, { runDir: path.join(this.work, 'run'), output: 'stdout' });
  }

  async start(): Promise<void> {
    const out = fs.openSync(this.log, 'a');
    const p = spawn(process.execPath, [CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', this.cacheDir, '--apisock', this.sock, '--log-level', 'info', ...this.args], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.proc = p;
    await waitUntil('the daemon API', async () => p.exitCode !== null || (await this.api.isAlive()), 60_000).catch(() => undefined);
    assert.equal(p.exitCode, null, `the daemon exited: ${fs.readFileSync(this.log, 'utf8')}`);
  }

  async stop(): Promise<void> {
    for (const m of [...this.mounted]) await this.umount(m).catch(() => execFileP('umount', [m]).catch(() => undefined));
    const p = this.proc;
    if (p && p.exitCode === null) {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
    this.api.close();
  }

  async build(name: string, src: string, extra: string[] = []): Promise<{ boot: string; blobs: string; ids: string[] }> {
    const boot = path.join(this.work, `${name}.boot`);
    const blobs = path.join(this.work, 'blobs');
    const json = path.join(this.work, `${name}.json`);
    await this.cli(['create', '-B', boot, '-D', blobs, '-J', json, ...extra, src]);
    return { boot, blobs, ids: JSON.parse(fs.readFileSync(json, 'utf8')).blobs };
  }

  async mount(name: string, img: { boot: string; blobs: string }): Promise<string> {
    const mnt = path.join(this.work, 'mnt', name);
    await this.cli(['mount', '-A', this.sock, '-B', img.boot, '-D', img.blobs, '--fsid', name, mnt]);
    this.mounted.add(mnt);
    return mnt;
  }

  /** `nydus-ts umount`: unmount, then unregister the image */
  async umount(mnt: string): Promise<void> {
    await this.cli(['umount', mnt]);
    this.mounted.delete(mnt);
  }

  async usage(): Promise<any> {
    return JSON.parse(await this.cli(['cache', 'usage', '-A', this.sock, '--json']));
  }

  async metrics(): Promise<any> {
    return this.api.call('GET', '/api/v1/metrics');
  }
}

function randomDir(dir: string, files: Record<string, Buffer>): Record<string, Buffer> {
  fs.mkdirSync(dir, { recursive: true });
  for (const [n, d] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), d);
  return files;
}

const harnesses: Harness[] = [];
const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const h of harnesses) await h.stop().catch(() => undefined);
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
});

test('[fanotify] cache usage and gc: an unregistered image\'s own blob goes; another image\'s data and the blob both share stay', async () => {
  check();
  const work = workDir('nydus-cachegc-');
  const cacheDir = path.join(work, 'cache');
  fs.mkdirSync(cacheDir);
  // explicit gc only: no automatic pass may run before the test asks
  const h = new Harness(work, cacheDir, ['--no-gc-on-unregister', '--gc-interval', '0', '--cull-interval', '0']);
  harnesses.push(h);
  await h.start();

  const shared = crypto.randomBytes(1_200_000);
  const s = randomDir(path.join(work, 'src-s'), { shared });
  const a = randomDir(path.join(work, 'src-a'), { shared, own_a: crypto.randomBytes(900_000) });
  const b = randomDir(path.join(work, 'src-b'), { shared, own_b: crypto.randomBytes(700_000) });
  const is = await h.build('s', path.join(work, 'src-s'), ['--chunk-size', '0x10000']);
  const ia = await h.build('a', path.join(work, 'src-a'), ['--chunk-size', '0x10000', '--chunk-dict', is.boot]);
  const ib = await h.build('b', path.join(work, 'src-b'), ['--chunk-size', '0x10000', '--chunk-dict', is.boot]);
  const sharedId = is.ids[0];
  assert.deepEqual(ia.ids.length, 2, `image a has the shared blob and its own: ${ia.ids}`);
  assert.ok(ia.ids.includes(sharedId) && ib.ids.includes(sharedId));
  const ownA = ia.ids.find((x) => x !== sharedId)!;
  const ownB = ib.ids.find((x) => x !== sharedId)!;
  void s;

  const ma = await h.mount('a', ia);
  const mb = await h.mount('b', ib);
  for (const [n, d] of Object.entries(a)) assert.ok(fs.readFileSync(path.join(ma, n)).equals(d), `a/${n}`);
  for (const [n, d] of Object.entries(b)) assert.ok(fs.readFileSync(path.join(mb, n)).equals(d), `b/${n}`);

  let u = await h.usage();
  assert.equal(u.source, 'daemon');
  assert.equal(u.frontend, 'fanotify');
  assert.ok(u.filesystem.total_bytes > 0 && u.filesystem.files_total > 0 && u.filesystem.used_ratio > 0, JSON.stringify(u.filesystem));
  const blob = (id: string): any => u.blobs.find((x: any) => x.blob_id === id);
  for (const id of [sharedId, ownA, ownB]) {
    const x = blob(id);
    assert.ok(x, `blob ${id} in usage: ${JSON.stringify(u.blobs)}`);
    assert.ok(x.mounted && x.referenced && x.kind === 'blob', JSON.stringify(x));
    assert.ok(x.disk_bytes > 0 && x.chunk_count > 0, JSON.stringify(x));
    assert.ok(x.last_access && Date.now() - Date.parse(x.last_access) < 120_000, `last access ${x.last_access}`);
  }
  // everything of the own blobs was read; the shared blob is read through both images
  assert.equal(blob(ownA).chunks_present, blob(ownA).chunk_count, JSON.stringify(blob(ownA)));
  assert.deepEqual(blob(sharedId).images.sort(), ['a', 'b']);
  const imgA = u.images.find((i: any) => i.id === 'a');
  assert.ok(imgA.mounted && imgA.disk_bytes > 0 && imgA.last_access, JSON.stringify(imgA));
  assert.ok(u.totals.disk_bytes >= blob(ownA).disk_bytes + blob(ownB).disk_bytes + blob(sharedId).disk_bytes);
  const text = await h.cli(['cache', 'usage', '-A', h.sock]);
  assert.match(text, new RegExp(`blob ${ownA}: .* on disk, \\d+/\\d+ chunks, last access`));

  // unregister a (umount = unmount + DELETE /api/v2/blobs): nothing is removed without a gc
  await h.umount(ma);
  const ownAFile = path.join(cacheDir, 'blobs', ownA);
  assert.ok(fs.existsSync(ownAFile));
  u = await h.usage();
  assert.equal(blob(ownA).referenced, false);
  assert.equal(blob(ownA).mounted, false);
  assert.equal(blob(sharedId).referenced, true);
  assert.equal(u.totals.unreferenced_blobs, 1);

  const dry = JSON.parse(await h.cli(['cache', 'gc', '-A', h.sock, '--dry-run', '--json']));
  assert.equal(dry.dry_run, true);
  assert.deepEqual(dry.removed.map((r: any) => r.blob_id), [ownA]);
  assert.ok(fs.existsSync(ownAFile), 'a dry run removes nothing');

  const bFetched = (await h.metrics()).blobs.filter((x: any) => ib.ids.includes(x.blob_id)).reduce((n: number, x: any) => n + x.backend_bytes, 0);
  const r = JSON.parse(await h.cli(['cache', 'gc', '-A', h.sock, '--json']));
  assert.deepEqual(r.removed.map((x: any) => x.blob_id), [ownA]);
  assert.ok(r.removed[0].bytes > 0 && r.bytes_freed === r.removed[0].bytes, JSON.stringify(r));
  assert.ok(!fs.existsSync(ownAFile), 'its cache file is gone');
  assert.ok(!fs.existsSync(path.join(cacheDir, 'presence', ownA)), 'its presence map is gone');
  for (const id of [sharedId, ownB]) {
    assert.ok(fs.statSync(path.join(cacheDir, 'blobs', id)).blocks > 0, `blob ${id} keeps its data`);
    assert.ok(fs.existsSync(path.join(cacheDir, 'presence', id)));
  }
  // b still reads everything from the cache: no byte fetched again
  dropCaches();
  for (const [n, d] of Object.entries(b)) assert.ok(fs.readFileSync(path.join(mb, n)).equals(d), `b/${n} after gc`);
  const m = await h.metrics();
  assert.equal(m.blobs.filter((x: any) => ib.ids.includes(x.blob_id)).reduce((n: number, x: any) => n + x.backend_bytes, 0), bFetched);
  assert.equal(m.cache.gc_runs, 1);
  assert.equal(m.cache.gc_blobs_removed, 1);
  assert.equal(m.cache.gc_bytes_freed, r.bytes_freed);
  assert.match(fs.readFileSync(h.log, 'utf8'), new RegExp(`cache gc \\(api\\): removed 1 unreferenced object\\(s\\), \\d+ bytes \\[${ownA} \\d+\\]`));
  const again = JSON.parse(await h.cli(['cache', 'gc', '-A', h.sock, '--json']));
  assert.deepEqual(again.removed, []);

  // nydusd's cull (DELETE /api/v2/blobs?blob_id=): refused while referenced, then removes it
  const inUse = await h.api.request('DELETE', `/api/v2/blobs?blob_id=${ownB}`);
  assert.equal(inUse.status, 500);
  assert.match(JSON.stringify(inUse.body), /in use/);
  const gone = await h.api.request('DELETE', `/api/v2/blobs?blob_id=${ownA}`);
  assert.equal(gone.status, 500);
  assert.match(JSON.stringify(gone.body), /blob_cache: cache entry not found/);
  await h.umount(mb);
  const culled = await h.api.request('DELETE', `/api/v2/blobs?blob_id=${ownB}`);
  assert.equal(culled.status, 204, JSON.stringify(culled.body));
  assert.ok(!fs.existsSync(path.join(cacheDir, 'blobs', ownB)));

  // offline: the same cache dir read without a daemon
  await h.stop();
  harnesses.splice(harnesses.indexOf(h), 1);
  const off = JSON.parse(await h.cli(['cache', 'usage', '-A', path.join(work, 'none.sock'), '--cache-dir', cacheDir, '--json']));
  assert.equal(off.source, 'offline');
  assert.equal(off.frontend, 'fanotify');
  assert.deepEqual(off.blobs.map((x: any) => x.blob_id), [sharedId]);
  for (const x of off.blobs) assert.ok(x.pages_present > 0 && x.disk_bytes > 0 && x.last_access, JSON.stringify(x));
});

test('[fanotify] automatic gc after unregister (grace 0): the blob\'s data goes, the daemon logs and counts it', async () => {
  check();
  const work = workDir('nydus-autogc-');
  const cacheDir = path.join(work, 'cache');
  fs.mkdirSync(cacheDir);
  const h = new Harness(work, cacheDir, ['--gc-grace', '0', '--gc-interval', '0']);
  harnesses.push(h);
  await h.start();
  const files = randomDir(path.join(work, 'src'), { f: crypto.randomBytes(800_000) });
  const img = await h.build('x', path.join(work, 'src'));
  const keep = randomDir(path.join(work, 'src-k'), { k: crypto.randomBytes(300_000) });
  const ik = await h.build('k', path.join(work, 'src-k'));
  const mnt = await h.mount('x', img);
  const mk = await h.mount('k', ik);
  assert.ok(fs.readFileSync(path.join(mnt, 'f')).equals(files.f));
  assert.ok(fs.readFileSync(path.join(mk, 'k')).equals(keep.k));
  const file = path.join(cacheDir, 'blobs', img.ids[0]);
  assert.ok(fs.statSync(file).blocks > 0);
  await h.umount(mnt);
  await waitUntil('the automatic gc to remove the cache file', () => !fs.existsSync(file), 20_000);
  assert.ok(!fs.existsSync(path.join(cacheDir, 'presence', img.ids[0])));
  assert.ok(fs.existsSync(path.join(cacheDir, 'blobs', ik.ids[0])), 'the mounted image keeps its data');
  assert.match(fs.readFileSync(h.log, 'utf8'), new RegExp(`cache gc \\((unregister|unmount)\\): removed 1 unreferenced object\\(s\\), \\d+ bytes \\[${img.ids[0]} \\d+\\]`));
  const m = await h.metrics();
  assert.equal(m.cache.gc_blobs_removed, 1);
  // mounted again: fetched again, right bytes
  const again = await h.mount('x', img);
  assert.ok(fs.readFileSync(path.join(again, 'f')).equals(files.f));
});

test('[fanotify] automatic gc with a grace period: the pass after the unregister keeps the data, the pass when the grace is over removes it', async () => {
  check();
  const work = workDir('nydus-gracegc-');
  const cacheDir = path.join(work, 'cache');
  fs.mkdirSync(cacheDir);
  const h = new Harness(work, cacheDir, ['--gc-grace', '2', '--gc-interval', '0']);
  harnesses.push(h);
  await h.start();
  const files = randomDir(path.join(work, 'src'), { f: crypto.randomBytes(400_000) });
  const img = await h.build('g', path.join(work, 'src'));
  const mnt = await h.mount('g', img);
  assert.ok(fs.readFileSync(path.join(mnt, 'f')).equals(files.f));
  const file = path.join(cacheDir, 'blobs', img.ids[0]);
  await h.umount(mnt);
  // the grace counts from when the blob became unreferenced, so the first pass always keeps it
  await waitUntil('the pass when the grace is over to remove the cache file', () => !fs.existsSync(file), 30_000);
  const log = fs.readFileSync(h.log, 'utf8');
  assert.match(log, new RegExp(`cache gc \\(grace\\): removed 1 unreferenced object\\(s\\), \\d+ bytes \\[${img.ids[0]} \\d+\\]`));
  assert.doesNotMatch(log, /cache gc \((unregister|unmount)\): removed/);
});

test('[fanotify] watermarks on a 64 MiB ext4: reading 72 MiB succeeds with the right bytes, usage ends below the high watermark, evicted ranges are fetched again', async () => {
  check();
  const work = workDir('nydus-cull-');
  const img = path.join(work, 'fs.img');
  const cacheDir = path.join(work, 'cache');
  fs.mkdirSync(cacheDir);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 << 20);
  await execFileP('mkfs.ext4', ['-q', '-F', '-m', '0', '-b', '4096', img]);
  await execFileP('mount', ['-o', 'loop', img, cacheDir]);
  cleanups.push(async () => {
    await execFileP('umount', [cacheDir]).catch(() => undefined);
  });
  const HIGH = 0.7;
  const h = new Harness(work, cacheDir, ['--cache-high-watermark', '70%', '--cache-low-watermark', '50%', '--cull-interval', '1', '--gc-interval', '0']);
  harnesses.push(h);
  await h.start();

  // an image read once, then unmounted but still registered: culled first (not mounted)
  const cold = randomDir(path.join(work, 'src-cold'), { c: crypto.randomBytes(8 << 20) });
  const icold = await h.build('cold', path.join(work, 'src-cold'));
  const mcold = await h.mount('cold', icold);
  assert.ok(fs.readFileSync(path.join(mcold, 'c')).equals(cold.c));
  await h.api.call('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(mcold)}`);
  h.mounted.delete(mcold);
  const coldFile = path.join(cacheDir, 'blobs', icold.ids[0]);
  assert.ok(fs.statSync(coldFile).blocks * 512 >= 8 << 20);

  // three 24 MiB files of random bytes (nothing compresses): more than the filesystem holds
  const big = randomDir(path.join(work, 'src-big'), { f0: crypto.randomBytes(24 << 20), f1: crypto.randomBytes(24 << 20), f2: crypto.randomBytes(24 << 20) });
  const ibig = await h.build('big', path.join(work, 'src-big'));
  const mbig = await h.mount('big', ibig);
  const total = (await h.usage()).filesystem.total_bytes;
  assert.ok(total < 72 << 20, `the test filesystem holds ${total} bytes`);
  let peak = 0;
  const sampler = setInterval(() => {
    const s = fs.statfsSync(cacheDir);
    peak = Math.max(peak, (s.blocks - s.bfree) / (s.blocks - s.bfree + s.bavail));
  }, 50);
  try {
    for (const n of ['f0', 'f1', 'f2']) assert.equal(sha(path.join(mbig, n)), crypto.createHash('sha256').update(big[n]).digest('hex'), `${n} read through a full cache`);
  } finally {
    clearInterval(sampler);
  }
  const id = ibig.ids[0];
  let m = await h.metrics();
  const b = m.blobs.find((x: any) => x.blob_id === id);
  assert.equal(b.denials, 0, `no read was refused: ${JSON.stringify(b)}`);
  assert.ok(!fs.existsSync(coldFile), 'the registered but unmounted image\'s blob was culled');
  assert.ok(m.cache.cull_blobs_removed >= 1, JSON.stringify(m.cache));
  assert.ok(m.cache.cull_ranges_evicted >= 1 && m.cache.cull_bytes_evicted > 0, JSON.stringify(m.cache));

  // after the pass that follows the reads, usage is below the high watermark
  await h.api.call('POST', '/api/v1/cache/cull');
  const u = await h.usage();
  assert.ok(u.filesystem.used_ratio <= HIGH, `used ${u.filesystem.used_ratio} > ${HIGH} (peak while reading ${peak.toFixed(3)}); culling: ${JSON.stringify(m.cache)}`);
  assert.equal(u.watermarks.above_high, false);
  const ub = u.blobs.find((x: any) => x.blob_id === id);
  assert.ok(ub.chunks_present < ub.chunk_count, `cold chunks were evicted: ${JSON.stringify(ub)}`);
  assert.match(fs.readFileSync(h.log, 'utf8'), /cache culling \((writes|periodic|start)\): space .* evicted [1-9]\d* cold range\(s\) of mounted blobs/);

  // the evicted ranges (f0's, the coldest) are fetched again, verified, right
  const fetched = b.backend_bytes;
  dropCaches();
  assert.ok(fs.readFileSync(path.join(mbig, 'f0')).equals(big.f0), 'f0 after its ranges were evicted');
  m = await h.metrics();
  const b2 = m.blobs.find((x: any) => x.blob_id === id);
  assert.ok(b2.backend_bytes > fetched, `f0 was fetched again: ${fetched} → ${b2.backend_bytes}`);
  assert.equal(b2.denials, 0);
  assert.equal(b2.digest_failures, 0);
  for (const n of ['f1', 'f2']) assert.equal(sha(path.join(mbig, n)), crypto.createHash('sha256').update(big[n]).digest('hex'), `${n} again`);
});
