/**
 * The daemon conformance suite, written once and run against both kernel front ends:
 *   - fanotify pre-content events on the host (test/frontend-fanotify.test.ts),
 *   - fscache on-demand in the 6.12 VM (kernel-tests/daemon.test.ts).
 * Every case runs `nydus-ts daemon` (supervisor + serving child) and `nydus-ts mount/umount`
 * like a user, on real mounts, and compares real bytes with the source.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { generateTree } from '../../images/tree-gen';
import { snapshotTree, diffTrees } from '../helpers/tree-compare';
import { DaemonApiClient } from '../../src/daemon/api-client';

const execFileP = promisify(execFile);
export const REPO = path.resolve(__dirname, '..', '..', '..');
export const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');

export interface FrontendHarness {
  frontend: 'fscache' | 'fanotify';
  /** checks the environment (throws with the reason if the front end cannot run here) */
  check(): void;
  /** an empty directory on ext4/xfs/btrfs for the daemon's cache */
  cacheDir(): string;
  /** `nydus-ts daemon` arguments selecting the front end and its cache dir */
  daemonArgs(cacheDir: string): string[];
  /** generate the sample tree with its > 4 GiB sparse file (slow under emulation) */
  largeTree: boolean;
}

/** Shared state of a running suite, for the front end's own extra tests. */
export interface SuiteContext {
  work: string;
  cacheDir: string;
  sock: string;
  logFile: string;
  api: DaemonApiClient;
  cli(args: string[]): Promise<string>;
  build(name: string, src: string, extra?: string[]): Promise<Image>;
  mountImage(name: string, img: Image, opts?: { fsid?: string; domain?: string; blobs?: string }): Promise<string>;
  umount(mnt: string): Promise<void>;
  startDaemon(): Promise<void>;
  stopDaemon(): Promise<void>;
  blobMetrics(blobId: string): Promise<any>;
}

export interface Image {
  boot: string;
  blobs: string;
  report: any;
}

export function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export async function waitUntil(what: string, cond: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Define the conformance tests for `h` in the calling test file; returns the shared context. */
export function defineDaemonConformance(h: FrontendHarness): SuiteContext {
  let daemon: ChildProcess | undefined;
  const mounted: string[] = [];
  const ctx = {} as SuiteContext;

  ctx.cli = async (args) => {
    try {
      const r = await execFileP(process.execPath, [CLI, ...args], { env: { ...process.env, NYDUS_TS_RUN_DIR: path.join(ctx.work, 'run') }, maxBuffer: 64 << 20 });
      return r.stdout + r.stderr;
    } catch (e) {
      const err = e as { stderr?: string; stdout?: string; message: string };
      throw new Error(`nydus-ts ${args.join(' ')} failed: ${err.stderr ?? ''}${err.stdout ?? ''}${err.message}`);
    }
  };
  ctx.build = async (name, src, extra = []) => {
    const boot = path.join(ctx.work, `${name}.boot`);
    const blobs = path.join(ctx.work, 'blobs');
    const json = path.join(ctx.work, `${name}.json`);
    await ctx.cli(['create', '-B', boot, '-D', blobs, '-J', json, ...extra, src]);
    return { boot, blobs, report: JSON.parse(fs.readFileSync(json, 'utf8')) };
  };
  ctx.mountImage = async (name, img, opts = {}) => {
    const mnt = path.join(ctx.work, 'mnt', name);
    const args = ['mount', '-A', ctx.sock, '-B', img.boot, '-D', opts.blobs ?? img.blobs, '--fsid', opts.fsid ?? name];
    if (opts.domain) args.push('--domain-id', opts.domain);
    await ctx.cli([...args, mnt]);
    mounted.push(mnt);
    return mnt;
  };
  ctx.umount = async (mnt) => {
    await ctx.cli(['umount', mnt]);
    mounted.splice(mounted.indexOf(mnt), 1);
  };
  ctx.startDaemon = async () => {
    const out = fs.openSync(ctx.logFile, 'a');
    daemon = spawn(process.execPath, [CLI, 'daemon', ...h.daemonArgs(ctx.cacheDir), '--apisock', ctx.sock, '--log-level', 'info'], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const d = daemon;
    // a daemon starts in about a second natively, and in 20 s or more under emulation (the VM)
    await waitUntil('the daemon API', async () => d.exitCode !== null || (await ctx.api.isAlive()), 120_000).catch(() => undefined);
    const info = await ctx.api.daemonInfo().catch((e) => assert.fail(`daemon did not start: ${e.message}\n${fs.readFileSync(ctx.logFile, 'utf8')}`));
    assert.equal(info.state, 'RUNNING');
    assert.equal((info as any).frontend, h.frontend);
  };
  ctx.stopDaemon = async () => {
    const d = daemon;
    if (!d || d.exitCode !== null) return;
    d.kill('SIGTERM');
    await new Promise((r) => d.once('exit', r));
    daemon = undefined;
  };
  ctx.blobMetrics = async (blobId) => {
    const m = (await ctx.api.metrics()) as any;
    return m.blobs.find((x: any) => x.blob_id === blobId);
  };

  before(async () => {
    h.check();
    ctx.work = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', `nydus-${h.frontend}-`));
    ctx.cacheDir = h.cacheDir();
    ctx.sock = path.join(ctx.work, 'api.sock');
    ctx.logFile = path.join(ctx.work, 'daemon.log');
    ctx.api = new DaemonApiClient(ctx.sock);
    await ctx.startDaemon();
  });

  after(async () => {
    for (const m of [...mounted].reverse()) await ctx.cli(['umount', m]).catch(() => execFileP('umount', [m]).catch(() => undefined));
    await ctx.stopDaemon();
    await ctx.api?.close();
    if (process.env.NYDUS_TS_KERNEL_VERBOSE) process.stderr.write(fs.readFileSync(ctx.logFile, 'utf8'));
  });

  test(`[${h.frontend}] the generated sample tree mounted lazily equals its source`, async () => {
    const src = path.join(ctx.work, 'tree');
    await generateTree(src, { seed: 3, fileCount: 200, large: h.largeTree });
    const img = await ctx.build('tree', src);
    const mnt = await ctx.mountImage('tree', img);
    const diffs = diffTrees(await snapshotTree(src), await snapshotTree(mnt));
    assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`);
    const b = await ctx.blobMetrics(img.report.blobs[0]);
    assert.ok(b && b.chunks_verified > 0 && b.digest_failures === 0, JSON.stringify(b));
  });

  let big: Image;
  let bigSrc: string;
  test(`[${h.frontend}] many images in one daemon; 16 parallel cold readers get the right bytes`, async () => {
    bigSrc = path.join(ctx.work, 'big');
    fs.mkdirSync(bigSrc);
    for (let i = 0; i < 16; i++) fs.writeFileSync(path.join(bigSrc, `f${i}`), crypto.randomBytes(600_000 + i * 50_000));
    big = await ctx.build('big', bigSrc, ['--chunk-size', '0x40000']);
    const others = [];
    for (let k = 0; k < 2; k++) {
      const s = path.join(ctx.work, `small${k}`);
      fs.mkdirSync(s);
      fs.writeFileSync(path.join(s, 'x'), `image ${k}\n`.repeat(1000));
      others.push({ s, mnt: await ctx.mountImage(`small${k}`, await ctx.build(`small${k}`, s)) });
    }
    const mnt = await ctx.mountImage('big', big);
    const readers = Array.from({ length: 16 }, (_, i) => execFileP('sha256sum', [path.join(mnt, `f${(i * 7) % 16}`)]).then((r) => [i, r.stdout.split(' ')[0]] as const));
    for (const [i, hh] of await Promise.all(readers)) assert.equal(hh, sha(path.join(bigSrc, `f${(i * 7) % 16}`)), `reader ${i}`);
    for (const o of others) assert.equal(fs.readFileSync(path.join(o.mnt, 'x'), 'utf8'), fs.readFileSync(path.join(o.s, 'x'), 'utf8'));
  });

  test(`[${h.frontend}] random reads, mmap and executing a binary from a lazy mount`, async () => {
    const src = path.join(ctx.work, 'exec');
    fs.mkdirSync(src);
    const data = crypto.randomBytes(3_000_000);
    fs.writeFileSync(path.join(src, 'data'), data);
    fs.copyFileSync('/bin/echo', path.join(src, 'echo'));
    fs.chmodSync(path.join(src, 'echo'), 0o755);
    const img = await ctx.build('exec', src, ['--chunk-size', '0x10000']);
    const mnt = await ctx.mountImage('exec', img);
    // random pieces, cold, in a random order
    const fd = fs.openSync(path.join(mnt, 'data'), 'r');
    for (let i = 0; i < 64; i++) {
      const off = crypto.randomInt(0, data.length - 1);
      const len = Math.min(crypto.randomInt(1, 70_000), data.length - off);
      const b = Buffer.alloc(len);
      assert.equal(fs.readSync(fd, b, 0, len, off), len);
      assert.ok(b.equals(data.subarray(off, off + len)), `random read ${off}+${len}`);
    }
    fs.closeSync(fd);
    // mmap: python maps the file and hashes the mapping (page faults on the EROFS file)
    const r = await execFileP('python3', ['-c', 'import mmap,sys,hashlib;f=open(sys.argv[1],"rb");m=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ);print(hashlib.sha256(m[:]).hexdigest())', path.join(mnt, 'echo')]);
    assert.equal(r.stdout.trim(), sha('/bin/echo'));
    const e = await execFileP(path.join(mnt, 'echo'), ['hello', 'from', 'the', 'lazy', 'mount']);
    assert.equal(e.stdout, 'hello from the lazy mount\n');
  });

  test(`[${h.frontend}] unmount and remount: served from the cache with zero backend bytes`, async () => {
    const mnt = path.join(ctx.work, 'mnt', 'big');
    await ctx.umount(mnt);
    const m2 = await ctx.mountImage('big', big);
    for (let i = 0; i < 16; i++) assert.equal(sha(path.join(m2, `f${i}`)), sha(path.join(bigSrc, `f${i}`)));
    const b = await ctx.blobMetrics(big.report.blobs[0]);
    assert.equal(b.backend_bytes, 0, `backend bytes after remount: ${JSON.stringify(b)}`);
  });

  test(`[${h.frontend}] two images sharing a blob open and fetch it once`, async () => {
    const a = path.join(ctx.work, 'da');
    const b = path.join(ctx.work, 'db');
    fs.mkdirSync(a);
    fs.mkdirSync(b);
    const shared = crypto.randomBytes(900_000);
    fs.writeFileSync(path.join(a, 'shared'), shared);
    fs.writeFileSync(path.join(b, 'shared'), shared);
    fs.writeFileSync(path.join(b, 'own'), crypto.randomBytes(10_000));
    const ia = await ctx.build('da', a);
    const ib = await ctx.build('db', b, ['--chunk-dict', ia.boot]);
    assert.ok(ib.report.blobs.includes(ia.report.blobs[0]));
    const ma = await ctx.mountImage('da', ia, { domain: 'dom1' });
    const mb = await ctx.mountImage('db', ib, { domain: 'dom1' });
    assert.ok(fs.readFileSync(path.join(ma, 'shared')).equals(shared));
    assert.ok(fs.readFileSync(path.join(mb, 'shared')).equals(shared));
    const m = (await ctx.api.metrics()) as any;
    const sessions = m.blobs.filter((x: any) => x.blob_id === ia.report.blobs[0]);
    assert.equal(sessions.length, 1, `the shared blob has ${sessions.length} open sessions`);
    const fetched = sessions[0].backend_bytes;
    const blobFile = fs.statSync(path.join(ia.blobs, ia.report.blobs[0])).size;
    assert.ok(fetched <= blobFile, `the shared blob was fetched more than once: ${fetched} bytes of a ${blobFile}-byte blob`);
  });

  test(`[${h.frontend}] a corrupted chunk gives EIO on that file only, and no wrong byte anywhere`, async () => {
    const src = path.join(ctx.work, 'corrupt');
    fs.mkdirSync(src);
    const good = crypto.randomBytes(300_000);
    const victim = crypto.randomBytes(300_000);
    fs.writeFileSync(path.join(src, 'good'), good);
    fs.writeFileSync(path.join(src, 'victim'), victim);
    const img = await ctx.build('corrupt', src, ['--compressor', 'none', '--chunk-size', '0x10000']);
    const blobs2 = path.join(ctx.work, 'blobs-corrupt');
    fs.mkdirSync(blobs2);
    const id = img.report.blobs[0];
    const data = fs.readFileSync(path.join(img.blobs, id));
    // with --compressor none the victim's bytes appear verbatim in the blob: flip one
    const at = data.indexOf(victim.subarray(100_000, 100_064));
    assert.ok(at > 0);
    data[at + 5] ^= 0x55;
    fs.writeFileSync(path.join(blobs2, id), data);
    const mnt = await ctx.mountImage('corrupt', img, { blobs: blobs2 });
    assert.throws(() => fs.readFileSync(path.join(mnt, 'victim')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
    assert.ok(fs.readFileSync(path.join(mnt, 'good')).equals(good));
    // every readable byte of the victim is right: only the bad chunk's range fails
    const fd = fs.openSync(path.join(mnt, 'victim'), 'r');
    let bad = 0;
    for (let off = 0; off < victim.length; off += 4096) {
      const b = Buffer.alloc(Math.min(4096, victim.length - off));
      try {
        fs.readSync(fd, b, 0, b.length, off);
        assert.ok(b.equals(victim.subarray(off, off + b.length)), `wrong bytes at ${off}`);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EIO') throw e;
        bad++;
      }
    }
    fs.closeSync(fd);
    assert.ok(bad > 0 && bad <= 0x10000 / 4096 + 1, `${bad} unreadable pages`);
    const b = await ctx.blobMetrics(id);
    assert.ok(b.digest_failures > 0, JSON.stringify(b));
    assert.match(fs.readFileSync(ctx.logFile, 'utf8'), new RegExp(`blob ${id} chunk \\d+: .*digest`));
  });

  test(`[${h.frontend}] kill -9 of the serving process while 8 readers run: every read completes with the right bytes`, async () => {
    const src = path.join(ctx.work, 'kill');
    fs.mkdirSync(src);
    for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(src, `f${i}`), crypto.randomBytes(2_000_000));
    const img = await ctx.build('kill', src, ['--chunk-size', '0x10000']);
    const mnt = await ctx.mountImage('kill', img);
    const before = (await ctx.api.daemonInfo()) as any;
    const reads = Array.from({ length: 8 }, (_, i) => execFileP('sha256sum', [path.join(mnt, `f${i}`)]).then((r) => r.stdout.split(' ')[0]));
    await new Promise((r) => setTimeout(r, 150));
    process.kill(before.pid, 'SIGKILL');
    const hashes = await Promise.all(reads);
    hashes.forEach((hh, i) => assert.equal(hh, sha(path.join(src, `f${i}`)), `reader ${i}`));
    await waitUntil('a new serving process', async () => (await ctx.api.isAlive()) && ((await ctx.api.daemonInfo()) as any).pid !== before.pid);
    const afterInfo = (await ctx.api.daemonInfo()) as any;
    assert.equal(afterInfo.state, 'RUNNING');
    // the registrations and mounts survived: the earlier mounts still read, and unmount works
    assert.equal(fs.readFileSync(path.join(ctx.work, 'mnt', 'small1', 'x'), 'utf8'), 'image 1\n'.repeat(1000));
    for (let i = 0; i < 8; i++) assert.equal(sha(path.join(mnt, `f${i}`)), sha(path.join(src, `f${i}`)));
    await ctx.umount(mnt);
  });

  test(`[${h.frontend}] daemon restart on a warm cache: remounted images read with zero backend bytes`, async () => {
    for (const m of [...mounted].reverse()) await ctx.umount(m);
    await ctx.stopDaemon();
    await ctx.startDaemon();
    const m2 = await ctx.mountImage('big', big);
    for (let i = 0; i < 16; i++) assert.equal(sha(path.join(m2, `f${i}`)), sha(path.join(bigSrc, `f${i}`)));
    const b = await ctx.blobMetrics(big.report.blobs[0]);
    assert.equal(b.backend_bytes, 0, `backend bytes after a daemon restart: ${JSON.stringify(b)}`);
  });

  test(`[${h.frontend}] bad API requests and a bad bootstrap get errors; the daemon keeps serving`, async () => {
    const api = ctx.api;
    const work = ctx.work;
    const r1 = await api.request('PUT', '/api/v2/blobs', '{not json');
    assert.equal(r1.status, 400);
    const r2 = await api.request('PUT', '/api/v2/blobs', JSON.stringify({ type: 'bootstrap', id: 'nope', config_v2: { version: 2, id: 'nope', backend: { type: 'localfs', localfs: { dir: work } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: '/nonexistent/boot' } }));
    assert.equal(r2.status, 400);
    assert.match(JSON.stringify(r2.body), /metadata_path/);
    const r3 = await api.request('DELETE', '/api/v2/blobs?domain_id=nope&blob_id=nope');
    assert.equal(r3.status, 500);
    assert.match(JSON.stringify(r3.body), /blob_cache: cache entry not found/);
    const bad = path.join(work, 'bad.boot');
    fs.writeFileSync(bad, crypto.randomBytes(8192));
    const r4 = await api.request('PUT', '/api/v2/blobs', JSON.stringify({ type: 'bootstrap', id: 'bad', config_v2: { version: 2, id: 'bad', backend: { type: 'localfs', localfs: { dir: work } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: bad } }));
    assert.ok(r4.status >= 400);
    const empty = fs.mkdtempSync(path.join(work, 'm-'));
    if (h.frontend === 'fscache') {
      await assert.rejects(execFileP('mount', ['-t', 'erofs', '-o', 'fsid=unknown-fsid', 'none', empty]));
    } else {
      const r5 = await api.request('POST', `/api/v1/mount?mountpoint=${encodeURIComponent(empty)}`, JSON.stringify({ id: 'unknown-fsid' }));
      assert.equal(r5.status, 404, JSON.stringify(r5.body));
      const r6 = await api.request('POST', '/api/v1/mount?mountpoint=relative', JSON.stringify({ id: 'big' }));
      assert.equal(r6.status, 400);
      const r7 = await api.request('DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(empty)}`);
      assert.equal(r7.status, 404);
    }
    assert.equal(((await api.daemonInfo()) as any).state, 'RUNNING');
    assert.ok(fs.readFileSync(path.join(work, 'mnt', 'big', 'f3')).equals(fs.readFileSync(path.join(bigSrc, 'f3'))));
  });

  return ctx;
}
