/**
 * `nydus-ts optimize` on this host's kernel (fanotify pre-content front end, no VM): real lazy
 * mounts served by a real daemon, a real workload (dash, cat and head with their libraries,
 * copied into the image) run in a chroot of the mount, a real registry for the image flow.
 *
 * - the recorded list is exactly the files the workload opened and read, in first-read order,
 *   with their byte ranges; a chunk two files share is attributed to the one the reader opened;
 * - the rebuilt image: `check` OK, its export passes fsck.erofs, mounted lazily it equals the
 *   source tree entry by entry, and the workload's chunks are the first chunks of the blob,
 *   contiguous, in access order; the prefetch table names the files; `create --prefetch-list`
 *   from the source directory makes the same blob;
 * - with prefetch (the daemon's prefetch of the table) the start-up set arrives in one or two
 *   requests, against many for the same table over the original layout; without prefetch the
 *   workload's reads need fewer backend requests on the optimized image (counted, never timed);
 * - the daemon trace API (start / get / stop; a blob already complete in the cache raises its
 *   events again while traced; 409 / 404), `trace start|stop`, and the errors: a failing
 *   workload (nothing written unless --allow-failure), --timeout, an empty trace, bad input;
 * - a registry image: `optimize --image REF --target REF2` pushes an image that `check-image`
 *   accepts against the OCI source, that mounts lazily equal to the source, and that
 *   `convert --prefetch-list` of the OCI source reproduces digest for digest.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { cli, sh, Mounts, CLI } from './helpers/mount';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { snapshotTree, diffTrees } from './helpers/tree-compare';
import { startRegistry, seedImage, TestRegistry, SeededImage } from './helpers/registry';
import { overlayOfImage } from './helpers/oci-overlay';
import { waitUntil } from './conformance/daemon-suite';
import { DaemonApiClient, DaemonApiError } from '../src/daemon/api-client';
import { fsTypeOf } from '../src/kernel/fanotify-group';
import { readBootstrap } from '../src/format/bootstrap-reader';
import { lookupPath, ChunkRef } from '../src/tree/node';
import type { AccessList } from '../src/optimize/access-list';
import type { MountTrace } from '../src/kernel/access-trace';
import { convert } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';

const CHUNK = 0x10000;
let work: string, runDir: string, sock: string, cacheDir: string, src: string, img: { boot: string; blobs: string };
let api: DaemonApiClient;
let reg: TestRegistry | undefined;
const overlays = new Mounts();
const mounted: string[] = [];

const say = (msg: string): void => void process.stderr.write(`optimize [${process.uptime().toFixed(1)} s]: ${msg}\n`);

/** The workload: a shell running cat and head; it opens /data/empty (no data) and reads dup2, whose content equals dup1. */
const WORKLOAD = ['/bin/sh', '-c', 'cat /data/a /data/empty /data/dup2 > /dev/null; head -c 5000 /data/big > /dev/null; cat /data/c > /dev/null'];
let LD_SO: string, LIBC: string;
/** the files WORKLOAD reads, in the order of their first read */
let EXPECTED_LIST: string[];

function nydus(args: string[]): { stdout: string; stderr: string } {
  const r = cli(args);
  if (r.status !== 0) throw new Error(`nydus-ts ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}${daemonLogTail()}`);
  return r;
}
const daemonLogTail = (): string => {
  const f = path.join(runDir ?? '', 'daemon.log');
  return fs.existsSync(f) ? `\n--- daemon log tail ---\n${fs.readFileSync(f, 'utf8').split('\n').slice(-25).join('\n')}` : '';
};
const daemonArgs = (): string[] => ['-A', sock, '--cache-dir', cacheDir];

/** Copy a host binary and the libraries `ldd` names to the same paths under `root`. */
function copyWithLibs(root: string, bin: string, as: string): string[] {
  const copy = (from: string, to: string): void => {
    fs.mkdirSync(path.dirname(path.join(root, to)), { recursive: true });
    fs.copyFileSync(fs.realpathSync(from), path.join(root, to));
    fs.chmodSync(path.join(root, to), 0o755);
  };
  copy(bin, as);
  const libs: string[] = [];
  for (const line of execFileSync('ldd', [bin], { encoding: 'utf8' }).split('\n')) {
    const m = /=>\s+(\/\S+)\s+\(/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) {
      copy(m[1], m[1]);
      libs.push(m[1]);
    }
  }
  return libs;
}

function mountLocal(boot: string, blobs: string, name: string, extra: string[] = []): string {
  const mnt = path.join(work, 'mnt', name);
  nydus(['mount', '--bootstrap', boot, '--blob-dir', blobs, ...daemonArgs(), ...extra, mnt]);
  mounted.push(mnt);
  return mnt;
}
function umount(mnt: string): void {
  nydus(['umount', mnt]);
  mounted.splice(mounted.indexOf(mnt), 1);
}
function blobIdsOf(boot: string): string[] {
  return readBootstrap(fs.readFileSync(boot)).blobs.map((b) => b.blobId);
}
/** Unmounted blobs lose their cache files: the next mount reads cold. */
function coldCache(ids: string[]): void {
  for (const id of ids) for (const d of ['blobs', 'presence']) fs.rmSync(path.join(cacheDir, d, id), { force: true });
}
async function blobMetrics(id: string): Promise<any> {
  const m = (await api.metrics()) as { blobs: Array<{ blob_id: string }> };
  const b = m.blobs.find((x) => x.blob_id === id);
  assert.ok(b, `no metrics for blob ${id}`);
  return b;
}
/** Read what a trace read, range by range, through `mnt`. */
function replay(mnt: string, list: AccessList): number {
  let n = 0;
  for (const r of list.reads) {
    const fd = fs.openSync(path.join(mnt, r.path), 'r');
    const buf = Buffer.alloc(r.length);
    n += fs.readSync(fd, buf, 0, r.length, r.offset);
    fs.closeSync(fd);
  }
  return n;
}

/**
 * The chunks a trace's reads touch in `boot`, in the order relayout.ts promises: files in the
 * order of their first read, each file's chunks that were read in file order, each chunk once.
 */
function startupChunks(boot: string, list: AccessList): ChunkRef[] {
  const b = readBootstrap(fs.readFileSync(boot));
  const touched = new Map<string, Set<number>>();
  for (const r of list.reads) {
    const ks = touched.get(r.path) ?? new Set<number>();
    touched.set(r.path, ks);
    for (let k = Math.floor(r.offset / b.chunkSize); k <= Math.floor((r.offset + r.length - 1) / b.chunkSize); k++) ks.add(k);
  }
  const seen = new Set<string>();
  const out: ChunkRef[] = [];
  for (const [p, ks] of touched) {
    const node = lookupPath(b.root, Buffer.from(p));
    assert.ok(node, `${p} is not in ${boot}`);
    for (const k of [...ks].sort((x, y) => x - y)) {
      const c = node.inode.chunks[k];
      const key = `${c.blobIndex}:${c.ciIndex}`;
      if (!seen.has(key)) {
        seen.add(key);
        out.push(c);
      }
    }
  }
  return out;
}

/** The start-up chunks of each blob are its first chunks, back to back, in access order. */
/**
 * The start-up chunks come first in their blobs, contiguous. `ordered`: also in access order
 * (`--prefetch-files all`); otherwise (`whole`, the default) files read in part follow the
 * table's files, so only the set is checked.
 */
function assertStartupFirst(boot: string, list: AccessList, what: string, ordered = true): number {
  const perBlob = new Map<number, ChunkRef[]>();
  for (const c of startupChunks(boot, list)) perBlob.set(c.blobIndex, [...(perBlob.get(c.blobIndex) ?? []), c]);
  for (const [bi, access] of perBlob) {
    const cs = ordered ? access : [...access].sort((x, y) => x.ciIndex - y.ciIndex);
    cs.forEach((c, i) => {
      assert.equal(c.ciIndex, i, `${what}: blob ${bi}: the start-up chunk #${i} has ci index ${c.ciIndex}`);
      const prev = cs[i - 1];
      assert.equal(c.compressedOffset, prev ? prev.compressedOffset + prev.compressedSize : 0, `${what}: blob ${bi}: start-up chunk #${i} is not right after the previous one`);
    });
  }
  return [...perBlob.values()].reduce((n, cs) => n + cs.length, 0);
}

function readList(file: string): string[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
}

before(async () => {
  assert.equal(process.getuid?.(), 0, 'mounting EROFS and running a chroot needs root');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  assert.ok(!fs.existsSync('/dev/cachefiles'), '/dev/cachefiles exists: `--frontend auto` would pick fscache; access traces need the fanotify front end');
  for (const t of ['unshare', 'chroot', 'ldd', 'fsck.erofs']) execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'pipe' });
  work = makeTmpDir('nydus-optimize-');
  assert.ok(['ext4', 'xfs', 'btrfs'].includes(fsTypeOf(work)), `${work} is on ${fsTypeOf(work)}: the fanotify cache dir must be on ext4, xfs or btrfs (set NYDUS_TS_TMP)`);
  runDir = path.join(work, 'run');
  sock = path.join(runDir, 'api.sock');
  cacheDir = path.join(work, 'cache');
  process.env.NYDUS_TS_RUN_DIR = runDir;
  process.env.DOCKER_CONFIG = path.join(work, 'docker-empty');
  fs.mkdirSync(process.env.DOCKER_CONFIG);
  api = new DaemonApiClient(sock);

  // the image: a shell, cat and head with their libraries, the data the workload reads, and
  // padding files between them (in the builder's breadth-first order) so that the original
  // layout scatters the workload's chunks
  src = path.join(work, 'src');
  const libs = new Set<string>();
  for (const [bin, as] of [['/bin/dash', '/bin/sh'], ['/bin/cat', '/bin/cat'], ['/usr/bin/head', '/bin/head']]) for (const l of copyWithLibs(src, bin, as)) libs.add(l);
  LD_SO = [...libs].find((l) => /ld-linux/.test(l))!;
  LIBC = [...libs].find((l) => /libc\.so/.test(l))!;
  assert.ok(LD_SO && LIBC, `ldd named no loader or libc: ${[...libs].join(', ')}`);
  const put = (rel: string, data: Buffer | string): void => {
    fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
    fs.writeFileSync(path.join(src, rel), data);
  };
  const dup = crypto.randomBytes(40_000);
  put('data/a', 'hello\n');
  put('data/big', crypto.randomBytes(3_000_000));
  put('data/c', crypto.randomBytes(70_000));
  put('data/dup1', dup);
  put('data/dup2', dup);
  put('data/empty', '');
  put('data/untouched', crypto.randomBytes(200_000));
  for (const f of ['/bin/cat', '/bin/head', '/bin/sh', '/data/a', '/data/big', '/data/c', '/data/dup2', LD_SO, LIBC]) {
    for (let i = 0; i < 3; i++) put(`${f}.pad${i}`, crypto.randomBytes(30_000));
  }
  for (let i = 0; i < 100; i++) put(`data/many/f${i}`, crypto.randomBytes(500 + i * 37));
  for (const d of ['dev', 'proc', 'sys', 'tmp']) fs.mkdirSync(path.join(src, d), { recursive: true });
  EXPECTED_LIST = ['/bin/sh', LD_SO, LIBC, '/bin/cat', '/data/a', '/data/dup2', '/bin/head', '/data/big', '/data/c'];
  img = { boot: path.join(work, 'img', 'image.boot'), blobs: path.join(work, 'img', 'blobs') };
  nydus(['create', src, '-B', img.boot, '-D', img.blobs, '--chunk-size', `0x${CHUNK.toString(16)}`]);
});

after(async () => {
  const problems: string[] = [];
  for (const m of [...mounted].reverse()) {
    try {
      umount(m);
    } catch (e) {
      problems.push(`umount ${m}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const info = (await api?.daemonInfo().catch(() => undefined)) as { pid?: number; supervisor_pid?: number | null } | undefined;
  if (info) {
    const pids = [info.supervisor_pid, info.pid].filter((p): p is number => typeof p === 'number' && p > 0);
    const alive = (pid: number): boolean => {
      try {
        return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    if (alive(pids[0])) process.kill(pids[0], 'SIGTERM');
    await waitUntil('the daemon to exit', () => !pids.some(alive), 20_000).catch((e) => {
      problems.push((e as Error).message);
      for (const p of pids) if (alive(p)) process.kill(p, 'SIGKILL');
    });
  }
  api?.close();
  overlays.cleanup();
  await reg?.stop();
  const left = work ? fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(work)) : [];
  for (const m of left) problems.push(`left mounted: ${m}`);
  if (work && left.length === 0 && !process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
  assert.deepEqual(problems, [], 'cleanup');
});

let recorded: AccessList;
let opt: { boot: string; blobs: string };

test('optimize records the files the workload opened and read, in order, with their byte ranges; the rebuilt image passes check and fsck.erofs', async () => {
  const traceFile = path.join(work, 'w.trace.json');
  const listFile = path.join(work, 'w.list');
  opt = { boot: path.join(work, 'opt', 'image.boot'), blobs: path.join(work, 'opt', 'blobs') };
  const r = nydus(['optimize', '-B', img.boot, '-D', img.blobs, ...daemonArgs(), '--work-dir', work, '--save-trace', traceFile, '--save-list', listFile, '--prefetch-files', 'all',
    '--output-bootstrap', opt.boot, '--output-blob-dir', opt.blobs, '--json', '--', ...WORKLOAD]);
  const report = JSON.parse(r.stdout);
  say(`optimize: ${r.stderr.trim().split('\n').join(' | ')}`);
  assert.equal(report.record.workload.exit_code, 0);
  assert.deepEqual(readList(listFile), EXPECTED_LIST, 'the prefetch list: the files read, in first-read order');
  recorded = JSON.parse(fs.readFileSync(traceFile, 'utf8')) as AccessList;
  assert.equal(recorded.format, 'nydus-ts-access-trace');
  assert.equal(recorded.stats.dropped, 0);
  const files = new Map(recorded.files.map((f) => [f.path, f]));
  assert.deepEqual(recorded.files.filter((f) => f.opened).map((f) => f.path).sort(), [...EXPECTED_LIST, '/data/empty'].sort(), 'the files opened');
  assert.deepEqual(recorded.files.filter((f) => f.exec).map((f) => f.path).sort(), ['/bin/cat', '/bin/head', '/bin/sh', LD_SO].sort(), 'the files executed (and the ELF interpreter)');
  assert.equal(files.get('/data/empty')!.bytes, 0);
  assert.ok(!files.has('/data/dup1'), 'the chunk dup1 and dup2 share is attributed to dup2, which cat opened');
  for (const f of ['/data/a', '/data/c', '/data/dup2']) assert.deepEqual(files.get(f)!.ranges, [[0, files.get(f)!.size]], `${f} was read whole`);
  const big = files.get('/data/big')!;
  assert.ok(big.ranges[0][0] === 0 && big.bytes >= 5000 && big.bytes < big.size / 4, `head -c 5000 reads the start of /data/big only: ${JSON.stringify(big.ranges)}`);
  assert.ok(recorded.files.every((f) => !f.path.includes('.pad') && !f.path.startsWith('/data/many')), 'nothing the workload did not read');
  // reads are in access order: the first read of each file follows the list
  const firstRead = [...new Set(recorded.reads.map((x) => x.path))];
  assert.deepEqual(firstRead, EXPECTED_LIST);

  // the rebuilt image is a valid nydus image
  const check = nydus(['check', opt.boot, '-D', opt.blobs]);
  assert.match(check.stdout, /OK/);
  const exported = path.join(work, 'opt.img');
  nydus(['export', '-B', opt.boot, '-D', opt.blobs, '-O', exported]);
  const ex = path.join(work, 'opt-extract');
  sh('fsck.erofs', [`--extract=${ex}`, exported]);
  const diffs = diffTrees(await snapshotTree(src), await snapshotTree(ex), { ignore: ['nlink', 'rootMeta'] });
  assert.deepEqual(diffs.slice(0, 10), [], 'fsck.erofs --extract of the export equals the source');
  assert.deepEqual(JSON.parse(nydus(['inspect', opt.boot, 'prefetch', '--json']).stdout).map((p: { path: string }) => p.path), EXPECTED_LIST, 'the prefetch table names the files read');
});

test('the optimized image mounts lazily equal to the source; the workload\'s chunks are the first of the blob, contiguous, in access order', async () => {
  assert.ok(recorded, 'needs the recording test');
  const n = assertStartupFirst(opt.boot, recorded, 'optimized');
  const report = JSON.parse(fs.readFileSync(path.join(work, 'w.trace.json'), 'utf8')) as AccessList;
  assert.ok(n > 10, `${n} start-up chunks`);
  // the original layout did not have them so: the test would prove nothing otherwise
  assert.throws(() => assertStartupFirst(img.boot, report, 'original'), /start-up chunk/);
  // the startup region ends where the rest of the blob begins
  const b = readBootstrap(fs.readFileSync(opt.boot));
  assert.equal(b.blobs.length, 1);
  const want = await snapshotTree(src);
  const mnt = mountLocal(opt.boot, opt.blobs, 'opt-tree');
  try {
    const diffs = diffTrees(want, await snapshotTree(mnt), { ignore: ['nlink', 'rootMeta'] });
    assert.deepEqual(diffs.slice(0, 10), [], `${diffs.length} differences between the optimized mount and the source`);
  } finally {
    umount(mnt);
  }
});

test('create --prefetch-list from the source directory makes the same blob as optimize; a plain path list puts whole files first', async () => {
  assert.ok(recorded, 'needs the recording test');
  const out = path.join(work, 'created');
  const r = JSON.parse(nydus(['create', src, '-B', path.join(out, 'image.boot'), '-D', path.join(out, 'blobs'), '--chunk-size', `0x${CHUNK.toString(16)}`,
    '--prefetch-list', path.join(work, 'w.trace.json'), '-J', '-']).stdout);
  // the same as optimize with its defaults (--prefetch-files whole) from the same trace
  const byDefault = { boot: path.join(work, 'opt-default', 'image.boot'), blobs: path.join(work, 'opt-default', 'blobs') };
  nydus(['optimize', '-B', img.boot, '-D', img.blobs, '--trace', path.join(work, 'w.trace.json'), '--output-bootstrap', byDefault.boot, '--output-blob-dir', byDefault.blobs]);
  assert.deepEqual(r.blobs, blobIdsOf(byDefault.boot), 'same blob id as the image optimize rebuilt');
  assert.deepEqual(fs.readdirSync(path.join(out, 'blobs')), r.blobs, 'only the final blob is left in the blob dir');
  assertStartupFirst(path.join(out, 'image.boot'), recorded, 'create --prefetch-list', false);

  // a path list: each file whole, in list order
  const listed = path.join(work, 'created-list');
  nydus(['create', src, '-B', path.join(listed, 'image.boot'), '-D', path.join(listed, 'blobs'), '--chunk-size', `0x${CHUNK.toString(16)}`, '--prefetch-list', path.join(work, 'w.list')]);
  const b = readBootstrap(fs.readFileSync(path.join(listed, 'image.boot')));
  let next = 0;
  for (const p of EXPECTED_LIST) {
    for (const c of lookupPath(b.root, p)!.inode.chunks) {
      if (c.ciIndex < next) continue; // a chunk an earlier file has (dup2 = dup1)
      assert.equal(c.ciIndex, next++, `${p}: chunks of the listed files come first, in list order`);
    }
  }
  assert.match(nydus(['check', path.join(listed, 'image.boot'), '-D', path.join(listed, 'blobs')]).stdout, /OK/);
  // and the two options that set the prefetch table do not go together
  const both = cli(['create', src, '-B', path.join(work, 'x.boot'), '-D', path.join(work, 'x'), '--prefetch-list', path.join(work, 'w.list'), '--prefetch-patterns', path.join(work, 'w.list')]);
  assert.equal(both.status, 1);
  assert.match(both.stderr, /--prefetch-list and --prefetch-patterns/);
});

test('with prefetch the start-up set arrives in a few requests (the same table over the original layout takes many); without, the workload needs fewer requests', async () => {
  assert.ok(recorded, 'needs the recording test');
  // the original layout with the same prefetch table
  const orig = { boot: path.join(work, 'orig-pf', 'image.boot'), blobs: img.blobs };
  nydus(['merge', img.boot, '-B', orig.boot, '--prefetch-patterns', path.join(work, 'w.list')]);
  const run = async (image: { boot: string; blobs: string }, name: string, prefetch: boolean): Promise<{ prefetchRequests: number; prefetchBytes: number; workloadRequests: number; backendBytes: number }> => {
    const [id] = blobIdsOf(image.boot);
    coldCache([id]);
    const mnt = mountLocal(image.boot, image.blobs, name, prefetch ? ['--prefetch', '--prefetch-merge-size', String(16 << 20)] : []);
    try {
      let m = await blobMetrics(id);
      if (prefetch) {
        await waitUntil(`prefetch of ${name}`, async () => {
          m = await blobMetrics(id);
          return m.prefetch.jobs > 0 && m.prefetch.jobs_running === 0;
        });
        assert.equal(m.prefetch.jobs_done, 1, `${name}: ${JSON.stringify(m.prefetch)}`);
      }
      const before = m.backend_requests;
      replay(mnt, recorded);
      const after = await blobMetrics(id);
      return { prefetchRequests: m.prefetch?.requests ?? 0, prefetchBytes: m.prefetch?.bytes ?? 0, workloadRequests: after.backend_requests - before, backendBytes: after.backend_bytes };
    } finally {
      umount(mnt);
      coldCache([id]);
    }
  };
  const optPf = await run(opt, 'opt-pf', true);
  const origPf = await run(orig, 'orig-pf', true);
  say(`prefetch: optimized ${optPf.prefetchRequests} requests (${optPf.prefetchBytes} B), then ${optPf.workloadRequests} for the workload; original layout ${origPf.prefetchRequests} requests (${origPf.prefetchBytes} B), then ${origPf.workloadRequests}`);
  // the table names /data/big, read only in part: its other chunks make a second run, and the
  // file after it a third
  assert.ok(optPf.prefetchRequests <= 3, `optimized: ${optPf.prefetchRequests} prefetch requests`);
  assert.equal(optPf.workloadRequests, 0, 'after prefetch the workload needs no backend request');
  assert.ok(origPf.prefetchRequests >= 2 * optPf.prefetchRequests, `original layout: ${origPf.prefetchRequests} prefetch requests, optimized ${optPf.prefetchRequests}`);

  const optOd = await run(opt, 'opt-od', false);
  const origOd = await run(orig, 'orig-od', false);
  say(`on demand: optimized ${optOd.workloadRequests} requests (${optOd.backendBytes} B), original layout ${origOd.workloadRequests} requests (${origOd.backendBytes} B)`);
  assert.ok(optOd.workloadRequests < origOd.workloadRequests, `on demand: optimized ${optOd.workloadRequests} requests, original ${origOd.workloadRequests}`);

  // --prefetch-files whole (the default): the partly read /data/big is not in the table, and its
  // chunk read comes after the files read whole: the table's files are one request, big's chunk one more
  const whole = { boot: path.join(work, 'opt-whole', 'image.boot'), blobs: path.join(work, 'opt-whole', 'blobs') };
  nydus(['optimize', '-B', img.boot, '-D', img.blobs, '--trace', path.join(work, 'w.trace.json'), '--output-bootstrap', whole.boot, '--output-blob-dir', whole.blobs]);
  const table = JSON.parse(nydus(['inspect', whole.boot, 'prefetch', '--json']).stdout).map((p: { path: string }) => p.path);
  assert.deepEqual(table, EXPECTED_LIST.filter((p) => p !== '/data/big'));
  const wholePf = await run(whole, 'whole-pf', true);
  say(`prefetch, --prefetch-files whole: ${wholePf.prefetchRequests} requests (${wholePf.prefetchBytes} B), then ${wholePf.workloadRequests} for the workload`);
  assert.equal(wholePf.prefetchRequests, 1);
  assert.ok(wholePf.workloadRequests <= 1, `${wholePf.workloadRequests} requests for the part of /data/big read`);
  assert.ok(wholePf.prefetchBytes < optPf.prefetchBytes / 2, 'the unread part of /data/big is not fetched');
});

test('daemon trace API: start / get / stop; a blob complete in the cache raises events again while traced; 409 and 404; trace start|stop', async () => {
  const [id] = blobIdsOf(img.boot);
  coldCache([id]);
  let mnt = mountLocal(img.boot, img.blobs, 'api');
  // read everything: the blob becomes complete and its reads stop raising events
  for (const f of ['data/a', 'data/big', 'data/c', 'data/dup1', 'data/untouched']) fs.readFileSync(path.join(mnt, f));
  execFileSync('sh', ['-c', `cat $(find ${mnt} -type f) > /dev/null`]);
  await waitUntil('the blob to be complete', async () => (await blobMetrics(id)).done === true);
  umount(mnt);
  mnt = mountLocal(img.boot, img.blobs, 'api');
  const events0 = (await blobMetrics(id)).events;
  fs.readFileSync(path.join(mnt, 'data/untouched'));
  assert.equal((await blobMetrics(id)).events, events0, 'a complete blob raises no events');

  const started = await api.startTrace(mnt);
  assert.equal(started.active, true);
  await assert.rejects(api.startTrace(mnt), (e: unknown) => e instanceof DaemonApiError && e.status === 409);
  assert.equal(fs.readFileSync(path.join(mnt, 'data/c')).length, 70_000);
  const mid = await api.getTrace(mnt);
  assert.equal(mid.active, true);
  assert.ok(mid.events.some((e) => e.t === 'read'), 'reads of a complete blob are traced');
  assert.ok(mid.events.some((e) => e.t === 'open'), 'opens are traced');
  const done = await api.stopTrace(mnt);
  assert.equal(done.active, false);
  assert.ok(done.events.length >= mid.events.length);
  assert.deepEqual(done.events.map((e) => e.seq), [...done.events.map((e) => e.seq)].sort((a, b) => a - b), 'events in kernel order');
  await assert.rejects(api.stopTrace(mnt), (e: unknown) => e instanceof DaemonApiError && e.status === 404);
  await waitUntil('the blob to stop raising events again', async () => (await blobMetrics(id)).done === true);
  await assert.rejects(api.startTrace(path.join(work, 'not-a-mount')), (e: unknown) => e instanceof DaemonApiError && e.status === 404);

  // the CLI: trace start, a read, trace stop → the list; a trace with nothing read is an error
  nydus(['trace', 'start', mnt, '-A', sock]);
  fs.readFileSync(path.join(mnt, 'data/dup1'));
  const list = path.join(work, 'cli.list');
  const raw = path.join(work, 'cli.raw.json');
  nydus(['trace', 'stop', mnt, '-A', sock, '--save-list', list, '--raw', raw]);
  assert.deepEqual(readList(list), ['/data/dup1']);
  assert.ok((JSON.parse(fs.readFileSync(raw, 'utf8')) as MountTrace).events.length > 0);
  nydus(['trace', 'start', mnt, '-A', sock]);
  const empty = cli(['trace', 'stop', mnt, '-A', sock, '--save-list', path.join(work, 'empty.list')]);
  assert.equal(empty.status, 1);
  assert.match(empty.stderr, /read nothing from the image/);
  assert.ok(!fs.existsSync(path.join(work, 'empty.list')), 'nothing written for an empty trace');
  umount(mnt);
});

test('optimize errors: a failing workload writes nothing unless --allow-failure; --timeout keeps the trace; Ctrl-C stops it; bad input is named', async () => {
  const list = path.join(work, 'fail.list');
  const base = ['optimize', '-B', img.boot, '-D', img.blobs, ...daemonArgs(), '--work-dir', work];
  let r = cli([...base, '--save-list', list, '--', '/bin/sh', '-c', 'cat /data/a; exit 3']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /exited with status 3: nothing is written/);
  assert.ok(!fs.existsSync(list));
  nydus([...base, '--save-list', list, '--allow-failure', '--', '/bin/sh', '-c', 'cat /data/a; exit 3']);
  assert.deepEqual(readList(list), ['/bin/sh', LD_SO, LIBC, '/bin/cat', '/data/a']);

  const tl = path.join(work, 'timeout.list');
  const tr = nydus([...base, '--save-list', tl, '--timeout', '2', '--json', '--', '/bin/sh', '-c', 'cat /data/c > /dev/null; while :; do :; done']);
  assert.equal(JSON.parse(tr.stdout).record.workload.timed_out, true);
  assert.deepEqual(readList(tl), ['/bin/sh', LD_SO, LIBC, '/bin/cat', '/data/c']);
  // Ctrl-C while the workload runs: it is stopped, the mount goes, nothing is written
  const il = path.join(work, 'interrupted.list');
  const child = spawn(process.execPath, [CLI, ...base, '--save-list', il, '--', '/bin/sh', '-c', 'cat /data/a; while :; do :; done'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  await waitUntil('the workload to run', async () => ((await api.metrics()) as { mounts: Array<{ mountpoint: string }> }).mounts.some((m) => m.mountpoint.includes('.nydus-optimize-mnt-')) &&
    (await api.getTrace(((await api.metrics()) as { mounts: Array<{ mountpoint: string }> }).mounts[0].mountpoint).catch(() => undefined))?.events.some((e) => e.t === 'read') === true);
  child.kill('SIGINT');
  assert.equal(await exited, 1, stderr);
  assert.match(stderr, /interrupted: the workload was stopped; nothing is written/);
  assert.ok(!fs.existsSync(il));

  assert.deepEqual(mounted, [], 'optimize leaves no mount behind');
  assert.equal(((await api.metrics()) as { mounts: unknown[] }).mounts.length, 0, 'nor a daemon mount');

  const bad: Array<[string[], RegExp]> = [
    [[...base, '--save-list', list], /no workload/],
    [[...base, '--', '/bin/true'], /nothing to write/],
    [['optimize', '-B', path.join(work, 'nope.boot'), '-D', img.blobs, ...daemonArgs(), '--save-list', list, '--', '/bin/true'], /nope\.boot: no such file/],
    [[...base, '--trace', path.join(work, 'nope.json'), '--output-bootstrap', path.join(work, 'o.boot'), '--output-blob-dir', path.join(work, 'o')], /nope\.json: ENOENT/],
    [['optimize', '--image', '127.0.0.1:9/none:x', '--target', '127.0.0.1:9/none:y', '--trace', path.join(work, 'w.list')], /127\.0\.0\.1:9/],
    [[...base, '--save-list', list, '--', '/no/such/program'], /exited with status 127/],
  ];
  fs.writeFileSync(path.join(work, 'garbage.json'), '{"format": "something else"}');
  bad.push([[...base, '--trace', path.join(work, 'garbage.json'), '--output-bootstrap', path.join(work, 'o.boot'), '--output-blob-dir', path.join(work, 'o')], /not a nydus-ts access trace/]);
  for (const [args, re] of bad) {
    r = cli(args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
  assert.ok(!fs.existsSync(path.join(work, 'o.boot')));
});

test('registry image: optimize --image --target pushes an image check-image accepts, that mounts equal to the source; convert --prefetch-list reproduces it', async () => {
  reg = await startRegistry();
  const seeded: SeededImage = await seedImage(reg, 'opt/app', 'v1', {
    rootfsPaths: ['/usr/bin/dash', '/usr/bin/cat', '/usr/bin/head', LIBC.replace(/^\/lib\//, '/usr/lib/'), LD_SO.replace(/^\/lib64\//, '/usr/lib64/'), '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', '/bin', '/lib', '/lib64', '/usr/share/zoneinfo/Europe', '/usr/share/zoneinfo/Arctic', '/etc/os-release'],
  });
  const nydusRef = reg.ref('nydus/app', 'v1');
  await reg.logOnFailure(() => convert(openSource(seeded.reference), openSink(nydusRef), { workDir: path.join(work, 'convert') }));
  const trace = path.join(work, 'reg.trace.json');
  const optRef = reg.ref('nydus/app', 'v1-opt');
  const workload = ['/usr/bin/dash', '-c', 'cat /etc/os-release > /dev/null; head -c 100 /usr/share/zoneinfo/Europe/Paris > /dev/null'];
  const r = nydus(['optimize', '--image', nydusRef, '--insecure', ...daemonArgs(), '--work-dir', work, '--bootstrap-cache', path.join(work, 'state'),
    '--save-trace', trace, '--target', optRef, '-J', '-', '--', ...workload]);
  const report = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  const list = JSON.parse(fs.readFileSync(trace, 'utf8')) as AccessList;
  const readFiles = [...new Set(list.reads.map((x) => x.path))];
  assert.deepEqual(readFiles.filter((p) => /dash|cat|head|os-release|Paris/.test(p)), ['/usr/bin/dash', '/usr/bin/cat', '/etc/os-release', '/usr/bin/head', '/usr/share/zoneinfo/Europe/Paris']);
  assert.ok(report.rebuild.target_manifest_digest, JSON.stringify(report.rebuild));
  say(`optimize --image: ${report.rebuild.blobs.filter((b: { changed: boolean }) => b.changed).length}/${report.rebuild.blobs.length} blobs rewritten, ${report.rebuild.bytes.pushed} B pushed`);

  // check-image: the optimized image against the OCI source, file by file
  const chk = JSON.parse(nydus(['check-image', '--source', seeded.reference, '--target', optRef, '--insecure', '--work-dir', work, '-J', '-']).stdout);
  assert.equal(chk.ok, true, JSON.stringify({ errors: chk.errors, differences: chk.differences.slice(0, 5) }));

  // lazily mounted, it equals the source (an overlay of its OCI layers)
  const want = await snapshotTree(await overlayOfImage(seeded, path.join(work, 'reg-source'), overlays));
  const mnt = path.join(work, 'mnt', 'reg-opt');
  nydus(['mount', '--image', optRef, '--insecure', ...daemonArgs(), '--work-dir', path.join(work, 'state'), mnt]);
  mounted.push(mnt);
  try {
    const diffs = diffTrees(want, await snapshotTree(mnt), { ignore: ['nlink', 'rootMeta'] });
    assert.deepEqual(diffs.slice(0, 10), [], `${diffs.length} differences`);
  } finally {
    umount(mnt);
  }

  // the pushed bootstrap: start-up chunks first in each rewritten blob
  const bootFile = path.join(work, 'reg-opt.boot');
  const { fetchNydusBootstrap } = await import('../src/oci/convert');
  await fetchNydusBootstrap(openSource(optRef), bootFile);
  assertStartupFirst(bootFile, list, 'optimize --image', false);

  // a registry image rebuilt into local files: every blob it uses is there, and it checks
  const local = { boot: path.join(work, 'reg-local', 'image.boot'), blobs: path.join(work, 'reg-local', 'blobs') };
  nydus(['optimize', '--image', nydusRef, '--insecure', '--trace', trace, '--output-bootstrap', local.boot, '--output-blob-dir', local.blobs, '--work-dir', work]);
  assert.deepEqual(fs.readdirSync(local.blobs).sort(), blobIdsOf(local.boot).sort());
  assert.match(nydus(['check', local.boot, '-D', local.blobs]).stdout, /OK/);
  assert.equal(fs.readFileSync(local.boot).compare(fs.readFileSync(bootFile)), 0, 'the same bootstrap as the pushed one');

  // convert --prefetch-list from the OCI source makes the very same image
  const convRef = reg.ref('nydus/app', 'v1-conv');
  const conv = JSON.parse(nydus(['convert', '--source', seeded.reference, '--target', convRef, '--insecure', '--prefetch-list', trace, '--work-dir', work, '-J', '-']).stdout);
  assert.equal(conv.target_manifest_digest, report.rebuild.target_manifest_digest, 'convert --prefetch-list = optimize --image --target');
});
