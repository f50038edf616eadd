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
import { spawn, execFile, execFileSync, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { generateTree } from '../../images/tree-gen';
import { snapshotTree, diffTrees } from '../helpers/tree-compare';
import { CLI, runCli } from '../helpers/cli';
import { DaemonApiClient } from '../../src/daemon/api-client';

const execFileP = promisify(execFile);
export { CLI };

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
  mountImage(name: string, img: Image, opts?: { fsid?: string; domain?: string; blobs?: string; extra?: string[] }): Promise<string>;
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

  ctx.cli = (args) => runCli(args, { runDir: path.join(ctx.work, 'run') });
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
    if (opts.extra) args.push(...opts.extra);
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

  test(`[${h.frontend}] prefetch: the prefetch table's files are present after the mount without being read; the others are not`, async () => {
    const src = path.join(ctx.work, 'pf');
    const sizes: Record<string, number> = { 'hot/a': 300_000, 'hot/b': 200_000, cold: 400_000 };
    const data = new Map<string, Buffer>();
    for (const [rel, size] of Object.entries(sizes)) {
      fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
      data.set(rel, crypto.randomBytes(size));
      fs.writeFileSync(path.join(src, rel), data.get(rel)!);
    }
    const patterns = path.join(ctx.work, 'pf.patterns');
    fs.writeFileSync(patterns, '/hot\n');
    const img = await ctx.build('pf', src, ['--chunk-size', '0x10000', '--prefetch-patterns', patterns]);
    const id = img.report.blobs[0];
    const mnt = await ctx.mountImage('pf', img, { extra: ['--prefetch'] });
    await waitUntil('the prefetch to finish', async () => (await ctx.blobMetrics(id))?.prefetch?.state === 'done', 120_000);
    const listed = Math.ceil(sizes['hot/a'] / 0x10000) + Math.ceil(sizes['hot/b'] / 0x10000);
    let b = await ctx.blobMetrics(id);
    assert.equal(b.prefetch.chunks, listed, JSON.stringify(b.prefetch));
    assert.equal(b.chunks_ready, listed);
    assert.equal(b.reads, 0, 'nothing was read to get there');
    const fetched = b.backend_bytes;
    for (const rel of ['hot/a', 'hot/b']) assert.ok(fs.readFileSync(path.join(mnt, rel)).equals(data.get(rel)!), rel);
    b = await ctx.blobMetrics(id);
    assert.equal(b.reads, 0, 'the listed files were served from the cache, without a fill request');
    assert.equal(b.backend_bytes, fetched);
    assert.ok(fs.readFileSync(path.join(mnt, 'cold')).equals(data.get('cold')!));
    b = await ctx.blobMetrics(id);
    assert.ok(b.reads > 0 && b.backend_bytes > fetched, 'the unlisted file was fetched when read');
    assert.equal(b.ondemand_waits_behind_prefetch, 0);
    await ctx.umount(mnt);
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

  test(`[${h.frontend}] scrub: a clean cache has 0 findings; a byte flipped in a cached chunk is found, evicted and fetched again`, async () => {
    const src = path.join(ctx.work, 'scrub');
    fs.mkdirSync(src);
    const victim = crypto.randomBytes(400_000);
    fs.writeFileSync(path.join(src, 'victim'), victim);
    fs.writeFileSync(path.join(src, 'other'), crypto.randomBytes(200_000));
    // uncompressed chunks: the cache file holds the victim's bytes at its chunks' offsets
    const img = await ctx.build('scrub', src, ['--compressor', 'none', '--chunk-size', '0x10000']);
    const id = img.report.blobs[0];
    let mnt = await ctx.mountImage('scrub', img);
    assert.ok(fs.readFileSync(path.join(mnt, 'victim')).equals(victim));
    assert.ok(fs.readFileSync(path.join(mnt, 'other')).equals(fs.readFileSync(path.join(src, 'other'))));
    // fscache links a new cache file into cache/ only when the image is unmounted
    await ctx.umount(mnt);
    mnt = await ctx.mountImage('scrub', img);
    const scrub = async (): Promise<any> => JSON.parse(await ctx.cli(['cache', 'scrub', '-A', ctx.sock, '--image', 'scrub', '--rate', '0', '--json']));
    const clean = await scrub();
    const chunkCount = JSON.parse(await ctx.cli(['inspect', img.boot, 'blobs', '--json']))[0].chunk_count;
    assert.equal(clean.state, 'done', JSON.stringify(clean));
    assert.deepEqual(clean.findings, []);
    assert.deepEqual(clean.skipped, []);
    assert.equal(clean.chunks_verified, chunkCount, JSON.stringify(clean));

    // flip one byte of the victim inside the cache file
    const cacheFile = h.frontend === 'fanotify'
      ? path.join(ctx.cacheDir, 'blobs', id)
      : execFileSync('find', [path.join(ctx.cacheDir, 'cache'), '-name', `D${id}`, '-path', '*Ierofs,scrub*']).toString().trim();
    assert.ok(cacheFile && fs.existsSync(cacheFile), `cache file of ${id}: ${cacheFile}`);
    const cached = fs.readFileSync(cacheFile);
    const at = cached.indexOf(victim.subarray(250_000, 250_064)) + 7;
    assert.ok(at > 7);
    const fd = fs.openSync(cacheFile, 'r+');
    fs.writeSync(fd, Buffer.from([cached[at] ^ 0x5a]), 0, 1, at);
    fs.closeSync(fd);
    const chunks: any[] = JSON.parse(await ctx.cli(['inspect', img.boot, 'chunks', '/victim', '--json']));
    const bad = chunks.find((c) => c.uncompressed_offset <= at && at < c.uncompressed_offset + c.uncompressed_size);
    assert.ok(bad, `no chunk of /victim holds cache offset ${at}`);
    const before = await ctx.blobMetrics(id);

    const found = await scrub();
    assert.equal(found.findings.length, 1, JSON.stringify(found));
    const f = found.findings[0];
    assert.equal(f.blob_id, id);
    assert.equal(f.chunk_index, bad.ci_index);
    assert.equal(f.offset, bad.uncompressed_offset);
    assert.equal(f.expected_digest, bad.digest);
    assert.notEqual(f.actual_digest, bad.digest);
    assert.equal(f.evicted, true);
    assert.match(fs.readFileSync(ctx.logFile, 'utf8'), new RegExp(`scrub: blob ${id} chunk ${bad.ci_index} at ${bad.uncompressed_offset}\\+`));
    const m = (await ctx.api.metrics()) as any;
    assert.ok(m.scrub.mismatches_total >= 1, JSON.stringify(m.scrub));

    // the page cache may still hold the flipped byte: drop it, then the read goes to the daemon
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    assert.ok(fs.readFileSync(path.join(mnt, 'victim')).equals(victim), 'the victim reads right after the scrub');
    const after = await ctx.blobMetrics(id);
    assert.equal(after.chunks_fetched - before.chunks_fetched, 1, `chunks fetched again: ${JSON.stringify({ before, after })}`);
    assert.equal(after.backend_bytes - before.backend_bytes, bad.compressed_size);
    assert.deepEqual((await scrub()).findings, [], 'a second scrub finds nothing');
    await ctx.umount(mnt);
  });

  test(`[${h.frontend}] cache usage and gc: an unregistered image's own data goes; a mounted image's data and the blob both share stay`, async () => {
    const shared = crypto.randomBytes(700_000);
    const dirs: Record<string, Record<string, Buffer>> = { gs: { shared }, ga: { shared, own_a: crypto.randomBytes(500_000) }, gb: { shared, own_b: crypto.randomBytes(400_000) } };
    for (const [d, files] of Object.entries(dirs)) {
      fs.mkdirSync(path.join(ctx.work, d));
      for (const [n, data] of Object.entries(files)) fs.writeFileSync(path.join(ctx.work, d, n), data);
    }
    const is = await ctx.build('gs', path.join(ctx.work, 'gs'), ['--chunk-size', '0x10000']);
    const ia = await ctx.build('ga', path.join(ctx.work, 'ga'), ['--chunk-size', '0x10000', '--chunk-dict', is.boot]);
    const ib = await ctx.build('gb', path.join(ctx.work, 'gb'), ['--chunk-size', '0x10000', '--chunk-dict', is.boot]);
    const sharedId: string = is.report.blobs[0];
    const ownA: string = ia.report.blobs.find((x: string) => x !== sharedId);
    const ownB: string = ib.report.blobs.find((x: string) => x !== sharedId);
    // one domain: on fscache the images share the blob's object in volume erofs,gcdom
    const ma = await ctx.mountImage('ga', ia, { domain: 'gcdom' });
    const mb = await ctx.mountImage('gb', ib, { domain: 'gcdom' });
    for (const [n, data] of Object.entries(dirs.ga)) assert.ok(fs.readFileSync(path.join(ma, n)).equals(data), `ga/${n}`);
    for (const [n, data] of Object.entries(dirs.gb)) assert.ok(fs.readFileSync(path.join(mb, n)).equals(data), `gb/${n}`);
    const usage = async (): Promise<any> => JSON.parse(await ctx.cli(['cache', 'usage', '-A', ctx.sock, '--json']));
    const entry = (u: any, id: string): any => u.blobs.find((x: any) => x.blob_id === id && (h.frontend === 'fanotify' || x.volume === 'gcdom'));
    let u = await usage();
    assert.equal(u.frontend, h.frontend);
    assert.ok(u.filesystem.total_bytes > 0 && u.filesystem.files_total > 0, JSON.stringify(u.filesystem));
    for (const id of [sharedId, ownA, ownB]) {
      const x = entry(u, id);
      assert.ok(x && x.mounted && x.referenced && x.kind === 'blob' && x.disk_bytes > 0, `${id}: ${JSON.stringify(x)}`);
      assert.ok(x.last_access && Date.now() - Date.parse(x.last_access) < 600_000, `last access of ${id}: ${x.last_access}`);
    }
    assert.equal(entry(u, ownA).chunks_present, entry(u, ownA).chunk_count, JSON.stringify(entry(u, ownA)));
    assert.ok(u.images.find((i: any) => i.id === 'ga').mounted);

    await ctx.umount(ma); // unmount + unregister: automatic passes keep recently read data (grace)
    // nothing is removed before a gc (fscache: the object's file is linked into the cache dir as the kernel lets it go)
    await waitUntil('the unmounted image\'s blob still listed', async () => !!entry(await usage(), ownA), 30_000);
    const fetchedB = (await ctx.api.metrics() as any).blobs.filter((x: any) => ib.report.blobs.includes(x.blob_id)).reduce((n: number, x: any) => n + x.backend_bytes, 0);
    // fscache: the kernel's CLOSE of the unmounted image's objects may come after umount returns
    const removed: any[] = [];
    await waitUntil('gc to remove the unregistered image\'s own blob', async () => {
      const r = JSON.parse(await ctx.cli(['cache', 'gc', '-A', ctx.sock, '--json']));
      removed.push(...r.removed);
      return removed.some((x) => x.blob_id === ownA);
    }, 60_000);
    assert.ok(!removed.some((x) => x.blob_id === sharedId || x.blob_id === ownB), `gc removed data still in use: ${JSON.stringify(removed)}`);
    if (h.frontend === 'fscache') assert.ok(removed.some((x) => x.blob_id === 'ga' && x.volume === 'gcdom') || !entry(await usage(), 'ga'), 'the bootstrap object of ga goes too');
    u = await usage();
    assert.equal(entry(u, ownA), undefined, JSON.stringify(u.blobs));
    for (const id of [sharedId, ownB]) assert.ok(entry(u, id)?.disk_bytes > 0, `${id} keeps its data: ${JSON.stringify(entry(u, id))}`);
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    for (const [n, data] of Object.entries(dirs.gb)) assert.ok(fs.readFileSync(path.join(mb, n)).equals(data), `gb/${n} after gc`);
    const m = (await ctx.api.metrics()) as any;
    assert.equal(m.blobs.filter((x: any) => ib.report.blobs.includes(x.blob_id)).reduce((n: number, x: any) => n + x.backend_bytes, 0), fetchedB, 'gb read everything from the cache');
    assert.ok(m.cache.gc_blobs_removed >= 1 && m.cache.gc_bytes_freed > 0, JSON.stringify(m.cache));
    await ctx.umount(mb);
  });

  return ctx;
}
