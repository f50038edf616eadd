/**
 * Culling under disk pressure on the fscache front end, in the VM (the 6.12 kernel's cachefiles):
 * the daemon's cache dir is a small ext4 made for the test (loop device on the scratch disk).
 *  - with watermarks, the kernel's culling signal (POLLOUT below bcull) and the daemon's own checks
 *    cull the least recently read objects of images no mount uses, every read stays right, usage
 *    ends below the high watermark, and a culled image mounted again is fetched again;
 *  - without watermarks, a cache write that finds the disk full (ENOBUFS below bstop) makes room
 *    by culling unused objects, and the read succeeds.
 * Objects in use are never culled (cachefiles refuses, EBUSY); README "Culling" says why fscache
 * does not punch ranges of mounted images. The usage/gc cases run in the conformance suite.
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { runCli } from '../test/helpers/cli';
import { DaemonApiClient } from '../src/daemon/api-client';
import { CLI, sha, waitUntil } from '../test/conformance/daemon-suite';

const execFileP = promisify(execFile);
const IN_VM = 'kernel tests must run inside the test VM (node dist/test/kernel-vm.test.js)';
const MiB = 1 << 20;

class FscacheDaemon {
  readonly sock: string;
  readonly log: string;
  readonly api: DaemonApiClient;
  private proc?: ChildProcess;
  private stopped = false;
  readonly mounted = new Set<string>();

  constructor(readonly work: string, readonly cacheDir: string, private readonly args: string[]) {
    this.sock = path.join(work, 'api.sock');
    this.log = path.join(work, 'daemon.log');
    this.api = new DaemonApiClient(this.sock);
  }

  cli(args: string[]): Promise<string> {
    return runCli(args, { runDir: path.join(this.work, 'run'), output: 'stdout', daemonLog: this.log });
  }

  async start(): Promise<void> {
    const out = fs.openSync(this.log, 'a');
    const p = spawn(process.execPath, [CLI, 'daemon', '--fscache', this.cacheDir, '--apisock', this.sock, '--log-level', 'info', ...this.args], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.proc = p;
    await waitUntil('the daemon API', async () => p.exitCode !== null || (await this.api.isAlive()), 120_000).catch(() => undefined);
    assert.equal(p.exitCode, null, `the daemon exited: ${fs.readFileSync(this.log, 'utf8')}`);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const m of [...this.mounted]) await execFileP('umount', [m]).catch(() => undefined);
    const p = this.proc;
    if (p && p.exitCode === null) {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
    this.api.close();
  }

  /** an image of one file of `mib` MiB random bytes (stored uncompressed: faster under emulation) */
  async image(name: string, mib: number): Promise<{ boot: string; blobs: string; id: string; data: Buffer }> {
    const src = path.join(this.work, `src-${name}`);
    fs.mkdirSync(src);
    const data = crypto.randomBytes(mib * MiB);
    fs.writeFileSync(path.join(src, 'f'), data);
    const boot = path.join(this.work, `${name}.boot`);
    const blobs = path.join(this.work, 'blobs');
    const json = path.join(this.work, `${name}.json`);
    await this.cli(['create', '-B', boot, '-D', blobs, '-J', json, '--compressor', 'none', src]);
    return { boot, blobs, id: JSON.parse(fs.readFileSync(json, 'utf8')).blobs[0], data };
  }

  async mount(name: string, img: { boot: string; blobs: string }): Promise<string> {
    const mnt = path.join(this.work, 'mnt', name);
    await this.cli(['mount', '-A', this.sock, '-B', img.boot, '-D', img.blobs, '--fsid', name, mnt]);
    this.mounted.add(mnt);
    return mnt;
  }

  /** umount(8) only: the image stays registered (referenced, not mounted) */
  async unmountOnly(mnt: string): Promise<void> {
    await execFileP('umount', [mnt]);
    this.mounted.delete(mnt);
  }

  logTail(): string {
    return `--- daemon log ---\n${fs.readFileSync(this.log, 'utf8').split('\n').filter((l) => !l.includes(' DEBUG ')).slice(-40).join('\n')}`;
  }

  async metrics(): Promise<any> {
    return this.api.call('GET', '/api/v1/metrics');
  }

  async usage(): Promise<any> {
    return JSON.parse(await this.cli(['cache', 'usage', '-A', this.sock, '--json']));
  }
}

/** A fresh `mib` MiB ext4 (no reserved blocks) loop-mounted under the VM's scratch disk. */
async function smallExt4(name: string, mib: number): Promise<{ work: string; dir: string }> {
  assert.ok(process.env.NYDUS_VM_CACHE_DIR && fs.existsSync('/dev/cachefiles'), `/dev/cachefiles or the ext4 scratch disk is missing: ${IN_VM}`);
  const work = fs.mkdtempSync(path.join(process.env.NYDUS_VM_CACHE_DIR, `${name}-`));
  const img = path.join(work, 'fs.img');
  const dir = path.join(work, 'cache');
  fs.mkdirSync(dir);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, mib * MiB);
  await execFileP('mkfs.ext4', ['-q', '-F', '-m', '0', '-b', '4096', img]);
  await execFileP('mount', ['-o', 'loop', img, dir]);
  cleanups.push(() => execFileP('umount', [dir]).then(() => undefined, () => undefined));
  return { work, dir };
}

const daemons: FscacheDaemon[] = [];
const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const d of daemons) await d.stop().catch(() => undefined);
  for (const c of cleanups.reverse()) await c();
});

test('[fscache] watermarks on a 48 MiB ext4: the kernel\'s culling signal culls the least recently read unmounted images; reads stay right, usage ends below the high watermark', async (t) => {
  const { work, dir } = await smallExt4('cull', 48);
  const d = new FscacheDaemon(work, dir, ['--cache-high-watermark', '60%', '--cache-low-watermark', '35%', '--cull-interval', '1', '--gc-interval', '0']);
  daemons.push(d);
  t.after(() => d.stop()); // one cachefiles cache at a time: the next test binds its own
  await d.start();
  const imgs = [];
  // four 9 MiB images read one after another, each unmounted (still registered) after its read
  for (let i = 0; i < 4; i++) {
    const img = await d.image(`i${i}`, 9);
    imgs.push(img);
    const mnt = await d.mount(`i${i}`, img);
    assert.equal(sha(path.join(mnt, 'f')), crypto.createHash('sha256').update(img.data).digest('hex'), `image ${i}`);
    if (i < 3) await d.unmountOnly(mnt);
  }
  const m = await d.metrics();
  assert.ok(m.cache.kernel_culling_signals >= 1, `cachefiles signalled culling (POLLOUT): ${JSON.stringify(m.cache)}`);
  assert.ok(m.cache.cull_blobs_removed >= 1, JSON.stringify(m.cache));
  assert.equal(m.frontend.reads_failed, 0, JSON.stringify(m.frontend));
  await d.api.call('POST', '/api/v1/cache/cull');
  const u = await d.usage();
  assert.ok(u.filesystem.used_ratio <= 0.6, `used ${u.filesystem.used_ratio}: ${JSON.stringify(m.cache)}`);
  // the least recently read image went first; the mounted one kept its data
  const present = (id: string, vol: string): boolean => u.blobs.some((b: any) => b.blob_id === id && b.volume === vol && b.disk_bytes > 0);
  assert.ok(!present(imgs[0].id, 'i0'), `the oldest unmounted image was culled: ${JSON.stringify(u.blobs.map((b: any) => [b.volume, b.blob_id.slice(0, 8), b.disk_bytes]))}`);
  assert.ok(present(imgs[3].id, 'i3'), `the mounted image keeps its data: ${JSON.stringify(u.blobs.map((b: any) => [b.volume, b.blob_id.slice(0, 8), b.disk_bytes, b.mounted]))}\n${d.logTail()}`);
  assert.match(fs.readFileSync(d.log, 'utf8'), /cache culling \(kernel\): space/);
  // mounted again (still registered: the kernel mounts it by fsid): fetched again, right bytes
  const again = path.join(work, 'mnt', 'i0');
  await execFileP('mount', ['-t', 'erofs', '-o', 'fsid=i0', 'none', again]);
  d.mounted.add(again);
  assert.equal(sha(path.join(again, 'f')), crypto.createHash('sha256').update(imgs[0].data).digest('hex'), 'image 0 after it was culled');
});

test('[fscache] no watermarks, a full disk: a cache write that meets it culls unused objects and the read succeeds', async (t) => {
  const { work, dir } = await smallExt4('full', 40);
  const d = new FscacheDaemon(work, dir, ['--cache-high-watermark', 'off', '--cache-files-high-watermark', 'off', '--gc-interval', '0']);
  daemons.push(d);
  t.after(() => d.stop());
  await d.start();
  for (let i = 0; i < 5; i++) {
    const img = await d.image(`f${i}`, 9);
    const mnt = await d.mount(`f${i}`, img);
    assert.equal(sha(path.join(mnt, 'f')), crypto.createHash('sha256').update(img.data).digest('hex'), `image ${i} on a full cache`);
    await d.unmountOnly(mnt);
  }
  const m = await d.metrics();
  assert.ok(m.cache.full_writes >= 1 && m.cache.full_write_bytes_freed > 0, `a write met the full disk and room was made: ${JSON.stringify(m.cache)}`);
  assert.equal(m.cache.full_write_failures, 0);
  assert.equal(m.frontend.reads_failed, 0, JSON.stringify(m.frontend));
  assert.match(fs.readFileSync(d.log, 'utf8'), /cache filesystem full writing \d+ bytes of f\d\/[0-9a-f]+: made room, [1-9]\d* object\(s\) removed/);
});
