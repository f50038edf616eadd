/**
 * Issue #3 on the real kernel path (runs inside the test VM): the `nydus-ts daemon` process
 * (supervisor + serving child) on /dev/cachefiles, images registered over its API by
 * `nydus-ts mount`, and the kernel's EROFS reading through fscache.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { generateTree } from '../images/tree-gen';
import { snapshotTree, diffTrees } from '../test/helpers/tree-compare';
import { DaemonApiClient } from '../src/daemon/api-client';

const execFileP = promisify(execFile);
const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
const IN_VM = 'kernel tests must run inside the test VM (node dist/test/kernel-vm.test.js)';

let work: string;
let cacheDir: string;
let sock: string;
let daemon: ChildProcess;
let api: DaemonApiClient;
const mounted: string[] = [];
let logFile: string;

async function cli(args: string[]): Promise<string> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { env: { ...process.env, NYDUS_TS_RUN_DIR: path.join(work, 'run') }, maxBuffer: 64 << 20 });
    return r.stdout + r.stderr;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`nydus-ts ${args.join(' ')} failed: ${err.stderr ?? ''}${err.stdout ?? ''}${err.message}`);
  }
}

async function build(name: string, src: string, extra: string[] = []): Promise<{ boot: string; blobs: string; report: any }> {
  const boot = path.join(work, `${name}.boot`);
  const blobs = path.join(work, 'blobs');
  const json = path.join(work, `${name}.json`);
  await cli(['create', '-B', boot, '-D', blobs, '-J', json, ...extra, src]);
  return { boot, blobs, report: JSON.parse(fs.readFileSync(json, 'utf8')) };
}

async function mountImage(name: string, img: { boot: string; blobs: string }, opts: { fsid?: string; domain?: string; blobs?: string } = {}): Promise<string> {
  const mnt = path.join(work, 'mnt', name);
  const args = ['mount', '-A', sock, '-B', img.boot, '-D', opts.blobs ?? img.blobs, '--fsid', opts.fsid ?? name];
  if (opts.domain) args.push('--domain-id', opts.domain);
  await cli([...args, mnt]);
  mounted.push(mnt);
  return mnt;
}

async function umount(mnt: string): Promise<void> {
  await cli(['umount', mnt]);
  mounted.splice(mounted.indexOf(mnt), 1);
}

before(async () => {
  const disk = process.env.NYDUS_VM_CACHE_DIR;
  assert.ok(disk && fs.existsSync('/dev/cachefiles'), `/dev/cachefiles or the ext4 cache disk is missing: ${IN_VM}`);
  work = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'nydus-daemon-'));
  cacheDir = fs.mkdtempSync(path.join(disk, 'cache-'));
  sock = path.join(work, 'api.sock');
  logFile = path.join(work, 'daemon.log');
  const out = fs.openSync(logFile, 'a');
  daemon = spawn(process.execPath, [CLI, 'daemon', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'info'], { stdio: ['ignore', out, out] });
  api = new DaemonApiClient(sock);
  for (let i = 0; i < 150 && !(await api.isAlive()); i++) await new Promise((r) => setTimeout(r, 100));
  const info = await api.daemonInfo().catch((e) => assert.fail(`daemon did not start: ${e.message}\n${fs.readFileSync(logFile, 'utf8')}`));
  assert.equal(info.state, 'RUNNING');
});

after(async () => {
  for (const m of [...mounted].reverse()) await execFileP('umount', [m]).catch(() => undefined);
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon.once('exit', r));
  }
  await api?.close();
  if (process.env.NYDUS_TS_KERNEL_VERBOSE) process.stderr.write(fs.readFileSync(logFile, 'utf8'));
});

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

test('mount by fsid through the daemon: the whole tree equals its source', async () => {
  const src = path.join(work, 'tree');
  await generateTree(src, { seed: 3, fileCount: 200 });
  const img = await build('tree', src);
  const mnt = await mountImage('tree', img);
  const diffs = diffTrees(await snapshotTree(src), await snapshotTree(mnt));
  assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`);
  const m = (await api.metrics()) as any;
  const b = m.blobs.find((x: any) => x.blob_id === img.report.blobs[0]);
  assert.ok(b && b.chunks_verified > 0 && b.digest_failures === 0, JSON.stringify(m));
});

let big: { boot: string; blobs: string; report: any };
let bigSrc: string;
test('many images in one daemon; 16 parallel readers of a cold image get the right bytes', async () => {
  bigSrc = path.join(work, 'big');
  fs.mkdirSync(bigSrc);
  for (let i = 0; i < 16; i++) fs.writeFileSync(path.join(bigSrc, `f${i}`), crypto.randomBytes(600_000 + i * 50_000));
  big = await build('big', bigSrc, ['--chunk-size', '0x40000']);
  const others = [];
  for (let k = 0; k < 2; k++) {
    const s = path.join(work, `small${k}`);
    fs.mkdirSync(s);
    fs.writeFileSync(path.join(s, 'x'), `image ${k}\n`.repeat(1000));
    others.push({ s, mnt: await mountImage(`small${k}`, await build(`small${k}`, s)) });
  }
  const mnt = await mountImage('big', big);
  const readers = Array.from({ length: 16 }, (_, i) => execFileP('sha256sum', [path.join(mnt, `f${(i * 7) % 16}`)]).then((r) => [i, r.stdout.split(' ')[0]] as const));
  for (const [i, h] of await Promise.all(readers)) assert.equal(h, sha(path.join(bigSrc, `f${(i * 7) % 16}`)), `reader ${i}`);
  for (const o of others) assert.equal(fs.readFileSync(path.join(o.mnt, 'x'), 'utf8'), fs.readFileSync(path.join(o.s, 'x'), 'utf8'));
});

test('unmount and remount: served from the cache with zero backend reads', async () => {
  const mnt = path.join(work, 'mnt', 'big');
  await umount(mnt);
  const m2 = await mountImage('big', big);
  for (let i = 0; i < 16; i++) assert.equal(sha(path.join(m2, `f${i}`)), sha(path.join(bigSrc, `f${i}`)));
  const m = (await api.metrics('big')) as any;
  const b = m.blobs.filter((x: any) => x.blob_id === big.report.blobs[0]);
  const fetched = b.reduce((n: number, x: any) => n + x.backend_bytes, 0);
  assert.equal(fetched, 0, `backend bytes after remount: ${JSON.stringify(b)}`);
});

test('two images sharing a blob in one domain open it once', async () => {
  const a = path.join(work, 'da');
  const b = path.join(work, 'db');
  fs.mkdirSync(a);
  fs.mkdirSync(b);
  const shared = crypto.randomBytes(900_000);
  fs.writeFileSync(path.join(a, 'shared'), shared);
  fs.writeFileSync(path.join(b, 'shared'), shared);
  fs.writeFileSync(path.join(b, 'own'), crypto.randomBytes(10_000));
  const ia = await build('da', a);
  const ib = await build('db', b, ['--chunk-dict', ia.boot]);
  assert.ok(ib.report.blobs.includes(ia.report.blobs[0]));
  const ma = await mountImage('da', ia, { domain: 'dom1' });
  const mb = await mountImage('db', ib, { domain: 'dom1' });
  assert.ok(fs.readFileSync(path.join(ma, 'shared')).equals(shared));
  assert.ok(fs.readFileSync(path.join(mb, 'shared')).equals(shared));
  const m = (await api.metrics()) as any;
  const sessions = m.blobs.filter((x: any) => x.blob_id === ia.report.blobs[0]);
  assert.equal(sessions.length, 1, `the shared blob has ${sessions.length} open objects`);
  const cookieFiles = (await execFileP('find', [cacheDir, '-name', `D${ia.report.blobs[0]}`])).stdout.trim().split('\n').filter(Boolean);
  assert.ok(cookieFiles.length <= 1);
});

test('a corrupted chunk gives EIO on that file only, and no wrong byte anywhere', async () => {
  const src = path.join(work, 'corrupt');
  fs.mkdirSync(src);
  const good = crypto.randomBytes(300_000);
  const victim = crypto.randomBytes(300_000);
  fs.writeFileSync(path.join(src, 'good'), good);
  fs.writeFileSync(path.join(src, 'victim'), victim);
  const img = await build('corrupt', src, ['--compressor', 'none']);
  const blobs2 = path.join(work, 'blobs-corrupt');
  fs.mkdirSync(blobs2);
  const id = img.report.blobs[0];
  const data = fs.readFileSync(path.join(img.blobs, id));
  // with --compressor none the victim's bytes appear verbatim in the blob: flip one
  const at = data.indexOf(victim.subarray(1000, 1064));
  assert.ok(at > 0);
  data[at + 5] ^= 0x55;
  fs.writeFileSync(path.join(blobs2, id), data);
  const mnt = await mountImage('corrupt', img, { blobs: blobs2 });
  assert.throws(() => fs.readFileSync(path.join(mnt, 'victim')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  assert.ok(fs.readFileSync(path.join(mnt, 'good')).equals(good));
  const m = (await api.metrics('corrupt')) as any;
  assert.ok(m.blobs.some((b: any) => b.digest_failures > 0), JSON.stringify(m.blobs));
  assert.match(fs.readFileSync(logFile, 'utf8'), new RegExp(`blob ${id} chunk \\d+: .*digest`));
});

test('kill -9 of the serving process during reads: every read completes with the right bytes', async () => {
  const src = path.join(work, 'kill');
  fs.mkdirSync(src);
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(src, `f${i}`), crypto.randomBytes(2_000_000));
  const img = await build('kill', src, ['--chunk-size', '0x10000']);
  const mnt = await mountImage('kill', img);
  const before = (await api.daemonInfo()) as any;
  const reads = Array.from({ length: 8 }, (_, i) => execFileP('sha256sum', [path.join(mnt, `f${i}`)]).then((r) => r.stdout.split(' ')[0]));
  await new Promise((r) => setTimeout(r, 150));
  process.kill(before.pid, 'SIGKILL');
  const hashes = await Promise.all(reads);
  hashes.forEach((h, i) => assert.equal(h, sha(path.join(src, `f${i}`)), `reader ${i}`));
  for (let i = 0; i < 100 && !(await api.isAlive()); i++) await new Promise((r) => setTimeout(r, 100));
  const afterInfo = (await api.daemonInfo()) as any;
  assert.notEqual(afterInfo.pid, before.pid, 'a new serving process took over');
  assert.equal(afterInfo.state, 'RUNNING');
  // the registrations survived: the earlier mounts still read
  assert.equal(fs.readFileSync(path.join(work, 'mnt', 'small1', 'x'), 'utf8'), 'image 1\n'.repeat(1000));
});

test('bad API requests get error responses and the daemon keeps serving', async () => {
  const r1 = await api.request('PUT', '/api/v2/blobs', '{not json');
  assert.equal(r1.status, 400);
  const r2 = await api.request('PUT', '/api/v2/blobs', JSON.stringify({ type: 'bootstrap', id: 'nope', config_v2: { version: 2, id: 'nope', backend: { type: 'localfs', localfs: { dir: work } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: '/nonexistent/boot' } }));
  assert.equal(r2.status, 400);
  assert.match(JSON.stringify(r2.body), /metadata_path/);
  const r3 = await api.request('DELETE', '/api/v2/blobs?domain_id=nope&blob_id=nope');
  assert.equal(r3.status, 500);
  assert.match(JSON.stringify(r3.body), /blob_cache: cache entry not found/);
  // an invalid bootstrap is refused, the others keep serving
  const bad = path.join(work, 'bad.boot');
  fs.writeFileSync(bad, crypto.randomBytes(8192));
  const r4 = await api.request('PUT', '/api/v2/blobs', JSON.stringify({ type: 'bootstrap', id: 'bad', config_v2: { version: 2, id: 'bad', backend: { type: 'localfs', localfs: { dir: work } }, cache: { type: 'fscache', fscache: { work_dir: work } }, metadata_path: bad } }));
  assert.ok(r4.status >= 400);
  await assert.rejects(execFileP('mount', ['-t', 'erofs', '-o', 'fsid=unknown-fsid', 'none', fs.mkdtempSync(path.join(work, 'm-'))]));
  assert.equal(((await api.daemonInfo()) as any).state, 'RUNNING');
  assert.ok(fs.readFileSync(path.join(work, 'mnt', 'big', 'f3')).equals(fs.readFileSync(path.join(bigSrc, 'f3'))));
});
