/**
 * Issue #10, part 1: `nydus-ts snapshotter`, a containerd proxy snapshotter for plain OCI
 * images (directories + overlayfs, as containerd's overlayfs snapshotter).
 *
 * - gRPC level: a real @grpc/grpc-js client against the real snapshotter process: every
 *   method, containerd's mount shapes (mounted for real), error codes naming the key or parent,
 *   List streaming and filters, Update masks, Remove/Cleanup, persistence across SIGTERM and
 *   kill -9 restarts, the CLI's start-up checks.
 * - Real containerd (a private one, test/helpers/containerd.ts) with our snapshotter as
 *   `[proxy_plugins.nydus-ts]`: import a two-layer OCI image, `ctr run` real programs from it,
 *   writes land in the container's upper dir, `ctr snapshots` goes through our service, a
 *   snapshotter restart (SIGTERM and kill -9) under a running container, and removing the
 *   container and the image releases every snapshot and directory. Releases go through
 *   containerd's GC; a wait that sees none for 2 s runs a synchronous GC (collectGarbage in
 *   the helper says why) and logs that it did.
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSnapshotsProto, WireInfo, WireMount } from '../src/containerd/proto';
import { checkMountable, defaultMounts, SnapshotLayout } from '../src/containerd/mounts';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cli, sh, CLI } from './helpers/mount';
import {
  startSnapshotter, startContainerd, buildTestImage, waitFor, pidAlive, mountsUnder, unmountUnder, killLeftovers, SnapshotterProcess, PrivateContainerd, TestImage,
} from './helpers/containerd';

after(killLeftovers);

const say = (msg: string): void => void process.stderr.write(`containerd-snapshotter [${process.uptime().toFixed(1)} s]: ${msg}\n`);

// ---------------------------------------------------------------- gRPC client

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function connect(sock: string): AnyClient {
  const { Client } = loadSnapshotsProto();
  return new Client(`unix:${sock}`, grpc.credentials.createInsecure()) as unknown as AnyClient;
}

function rpc<T = any>(c: AnyClient, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => {
    c[method](req, { deadline: Date.now() + 20_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

async function list(c: AnyClient, filters: string[] = []): Promise<WireInfo[][]> {
  const stream = c.List({ snapshotter: 'nydus-ts', filters }) as grpc.ClientReadableStream<{ info: WireInfo[] }>;
  const batches: WireInfo[][] = [];
  for await (const msg of stream) batches.push(msg.info);
  return batches;
}
const names = async (c: AnyClient, filters: string[] = []): Promise<string[]> => (await list(c, filters)).flat().map((i) => i.name).sort();

/** `p` must fail with gRPC `code` and a message matching `re`. */
async function rejectsWith(p: Promise<unknown>, code: grpc.status, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(grpc.status[e.code], grpc.status[code], `status of: ${e.details}`);
    assert.match(e.details, re);
    return true;
  });
}

const prepare = (c: AnyClient, key: string, parent = '', labels: Record<string, string> = {}): Promise<WireMount[]> =>
  rpc<{ mounts: WireMount[] }>(c, 'Prepare', { snapshotter: 'nydus-ts', key, parent, labels }).then((r) => r.mounts);
const view = (c: AnyClient, key: string, parent = '', labels: Record<string, string> = {}): Promise<WireMount[]> =>
  rpc<{ mounts: WireMount[] }>(c, 'View', { snapshotter: 'nydus-ts', key, parent, labels }).then((r) => r.mounts);
const commit = (c: AnyClient, name: string, key: string, labels: Record<string, string> = {}): Promise<unknown> =>
  rpc(c, 'Commit', { snapshotter: 'nydus-ts', name, key, labels });
const stat = (c: AnyClient, key: string): Promise<WireInfo> => rpc<{ info: WireInfo }>(c, 'Stat', { snapshotter: 'nydus-ts', key }).then((r) => r.info);
const remove = (c: AnyClient, key: string): Promise<unknown> => rpc(c, 'Remove', { snapshotter: 'nydus-ts', key });
const update = (c: AnyClient, name: string, labels: Record<string, string>, paths?: string[]): Promise<WireInfo> =>
  rpc<{ info: WireInfo }>(c, 'Update', { snapshotter: 'nydus-ts', info: { name, labels }, update_mask: paths ? { paths } : null }).then((r) => r.info);

// ---------------------------------------------------------------- the snapshotter's own state

interface StoredRecord { id: string; kind: string; parent: string; labels: Record<string, string> }
function stored(root: string): Record<string, StoredRecord> {
  return (JSON.parse(fs.readFileSync(path.join(root, 'metadata.json'), 'utf8')) as { snapshots: Record<string, StoredRecord> }).snapshots;
}
const snapshotDirs = (root: string): string[] => fs.readdirSync(path.join(root, 'snapshots')).sort();
const idOfMount = (root: string, m: WireMount): string => {
  const re = new RegExp(`^${root}/snapshots/(\\d+)/fs$`);
  const src = m.type === 'bind' ? m.source : m.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
  const hit = re.exec(src);
  assert.ok(hit, `mount source ${src} is a snapshot fs dir under ${root}`);
  return hit[1];
};
const fsDir = (root: string, id: string): string => path.join(root, 'snapshots', id, 'fs');

/** Mount what the snapshotter answered, for real (what containerd's mount code does). */
function mountAt(m: WireMount, target: string): void {
  fs.mkdirSync(target, { recursive: true });
  if (m.type === 'bind') sh('mount', ['-o', m.options.join(','), m.source, target]);
  else sh('mount', ['-t', m.type, '-o', m.options.join(','), m.source, target]);
}

/** A fresh snapshotter in its own temp dir for one test; everything is stopped and removed afterwards. */
async function withSnapshotter(name: string, fn: (ctx: { dir: string; root: string; sock: string; sn: SnapshotterProcess; c: AnyClient }) => Promise<void>): Promise<void> {
  const dir = makeTmpDir(`ctrd-${name}-`);
  const root = path.join(dir, 'root');
  const sock = path.join(dir, 'sn.sock');
  let sn: SnapshotterProcess | undefined;
  let c: AnyClient | undefined;
  try {
    sn = await startSnapshotter(root, sock);
    c = connect(sock);
    await fn({ dir, root, sock, sn, c });
  } catch (e) {
    if (sn) process.stderr.write(`--- snapshotter log ---\n${sn.log().split('\n').slice(-40).join('\n')}\n`);
    throw e;
  } finally {
    c?.close();
    await sn?.stop('SIGKILL');
    unmountUnder(dir);
    removeTmpDir(dir);
  }
}

// ================================================================= CLI

test('snapshotter CLI: --help; bad --root and --address are refused clearly; a live socket is never taken over; SIGTERM and SIGINT remove the socket', async () => {
  const help = cli(['snapshotter', '--help']);
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /Usage: nydus-ts snapshotter/);
  for (const flag of ['--root', '--address', '--daemon-apisock', '--daemon-start', '--amplify-io', '--read-ahead-kb', '--prefetch-threads', '--prefetch-merge-size', '--prefetch-bandwidth']) assert.ok(help.stdout.includes(flag), `--help names ${flag}`);
  const dir = makeTmpDir('ctrd-cli-');
  let sn: SnapshotterProcess | undefined;
  try {
    // the gRPC stack loads inside the action: neither `--help` nor `snapshotter --help` pays for it
    const hook = path.join(dir, 'hook.js');
    const loadedFile = path.join(dir, 'loaded.json');
    fs.writeFileSync(hook, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(loadedFile)}, JSON.stringify(Object.keys(require.cache))));\n`);
    for (const args of [['--help'], ['snapshotter', '--help']]) {
      sh(process.execPath, ['-r', hook, CLI, ...args]);
      const loaded = (JSON.parse(fs.readFileSync(loadedFile, 'utf8')) as string[]).filter((f) => /@grpc|\/containerd\//.test(f));
      assert.deepEqual(loaded, [], `nydus-ts ${args.join(' ')} loaded ${loaded.join(' ')}`);
    }
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, 'x');
    const r1 = cli(['snapshotter', '--root', file, '--address', path.join(dir, 's1.sock')]);
    assert.equal(r1.status, 1);
    assert.match(r1.stderr, /nydus-ts: error: --root .*a-file: exists and is not a directory/);
    for (const [args, re] of [
      [['--daemon-start', 'sometimes'], /nydus-ts: error: --daemon-start sometimes: must be startup or first-mount/],
      [['--amplify-io', '100'], /nydus-ts: error: --amplify-io 100: must be an integer from 4096 to 268435456/],
      [['--amplify-io', '1m'], /nydus-ts: error: --amplify-io 1m: must be an integer/],
      [['--read-ahead-kb', '70000'], /nydus-ts: error: --read-ahead-kb 70000: must be an integer from 0 to 65536/],
      [['--prefetch', '--prefetch-threads', '0'], /nydus-ts: error: --prefetch-threads "0": expected a positive integer/],
      [['--prefetch-bandwidth', '1000000'], /nydus-ts: error: --prefetch-threads, --prefetch-merge-size and --prefetch-bandwidth need --prefetch or --prefetch-all/],
    ] as const) {
      const r = cli(['snapshotter', '--root', path.join(dir, 'root-bad'), '--address', path.join(dir, 'bad.sock'), ...args]);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.ok(!fs.existsSync(path.join(dir, 'root-bad')) && !fs.existsSync(path.join(dir, 'bad.sock')), `${args.join(' ')}: nothing made`);
    }
    const r2 = cli(['snapshotter', '--root', path.join(dir, 'root'), '--address', path.join(dir, 'x'.repeat(120) + '.sock')]);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /--address .*: a unix socket path can have at most 107 bytes/);
    const r3 = cli(['snapshotter', '--root', path.join(dir, 'root'), '--address', file]);
    assert.equal(r3.status, 1);
    assert.match(r3.stderr, /--address .*a-file: exists and is not a socket/);
    const r4 = cli(['snapshotter', '--root', path.join(file, 'sub'), '--address', path.join(dir, 's4.sock')]);
    assert.equal(r4.status, 1);
    assert.match(r4.stderr, /--root .*a-file\/sub: not a usable directory/);

    const sock = path.join(dir, 'run', 'sn.sock'); // its directory is created
    sn = await startSnapshotter(path.join(dir, 'root'), sock, ['--daemon-apisock', path.join(dir, 'daemon.sock')]);
    assert.match(sn.log(), /"daemonApiSock":".*\/daemon\.sock"/, 'the daemon socket is recorded');
    assert.equal((fs.statSync(sock).mode & 0o777).toString(8), '600');
    const again = cli(['snapshotter', '--root', path.join(dir, 'root2'), '--address', sock]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /--address .*sn\.sock: a server already answers there/);
    const sameRoot = cli(['snapshotter', '--root', path.join(dir, 'root'), '--address', path.join(dir, 'other.sock')]);
    assert.equal(sameRoot.status, 1);
    assert.match(sameRoot.stderr, /--root .*root: in use by the snapshotter with pid \d+/);
    assert.ok(pidAlive(sn.pid), 'the first snapshotter still serves');
    const c = connect(sock);
    await prepare(c, 'still-serving');
    c.close();
    assert.equal(await sn.stop('SIGTERM'), 0);
    assert.ok(!fs.existsSync(sock), 'SIGTERM removes the socket');
    sn = await startSnapshotter(path.join(dir, 'root'), sock);
    assert.deepEqual(await names(connect(sock)), ['still-serving']);
    assert.equal(await sn.stop('SIGINT'), 0);
    assert.ok(!fs.existsSync(sock), 'SIGINT removes the socket');
    assert.ok(!fs.existsSync(path.join(dir, 'root', 'snapshotter.pid')), 'the root is unlocked');
  } finally {
    await sn?.stop('SIGKILL');
    removeTmpDir(dir);
  }
});

// ================================================================= gRPC semantics

test('Prepare/View/Mounts/Commit/Stat/Usage: the directories and mounts of containerd\'s overlayfs snapshotter, and they mount for real', async () => {
  await withSnapshotter('mounts', async ({ dir, root, c }) => {
    const t0 = Date.now();
    const indexOff = fs.existsSync('/sys/module/overlay/parameters/index') ? ['index=off'] : [];
    // active, no parent: a rw bind of its own fs dir
    const [m1] = await prepare(c, 'ns/1/extract-a', '', { 'containerd.io/snapshot.ref': 'sha256:aaa' });
    assert.equal(m1.type, 'bind');
    assert.deepEqual(m1.options, ['rbind', 'rw']);
    const id1 = idOfMount(root, m1);
    assert.ok(fs.statSync(path.join(root, 'snapshots', id1, 'work')).isDirectory(), 'an active snapshot has a work dir');
    mountAt(m1, path.join(dir, 'mnt1'));
    fs.mkdirSync(path.join(dir, 'mnt1', 'etc'));
    fs.writeFileSync(path.join(dir, 'mnt1', 'etc', 'base.txt'), 'base\n');
    fs.writeFileSync(path.join(dir, 'mnt1', 'big'), Buffer.alloc(64 << 10, 7));
    sh('umount', [path.join(dir, 'mnt1')]);
    assert.equal(fs.readFileSync(path.join(fsDir(root, id1), 'etc', 'base.txt'), 'utf8'), 'base\n');
    const u1 = await rpc(c, 'Usage', { key: 'ns/1/extract-a' });
    assert.ok(u1.size >= 64 << 10 && u1.inodes === 4, `usage of the active snapshot: ${JSON.stringify(u1)}`);
    const s1 = await stat(c, 'ns/1/extract-a');
    assert.equal(s1.kind, 'ACTIVE');
    assert.deepEqual(s1.labels, { 'containerd.io/snapshot.ref': 'sha256:aaa' });

    await commit(c, 'ns/2/sha256:layer1', 'ns/1/extract-a', { 'containerd.io/snapshot.ref': 'sha256:layer1' });
    await rejectsWith(stat(c, 'ns/1/extract-a'), grpc.status.NOT_FOUND, /ns\/1\/extract-a/);
    const c1 = await stat(c, 'ns/2/sha256:layer1');
    assert.equal(c1.kind, 'COMMITTED');
    assert.equal(c1.parent, '');
    assert.deepEqual(c1.labels, { 'containerd.io/snapshot.ref': 'sha256:layer1' }, 'commit labels replace the active\'s');
    const created = c1.created_at!.seconds * 1000 + c1.created_at!.nanos / 1e6;
    assert.ok(created >= t0 - 1000 && created <= Date.now() + 1000, 'created_at is now');
    assert.deepEqual(c1.updated_at, c1.created_at);
    assert.deepEqual(await rpc(c, 'Usage', { key: 'ns/2/sha256:layer1' }), u1, 'a committed snapshot keeps its usage');
    assert.equal(stored(root)['ns/2/sha256:layer1'].id, id1, 'commit keeps the directory');

    // active with one parent: overlay, upper/work in its own dir
    const [m2] = await prepare(c, 'ns/3/extract-b', 'ns/2/sha256:layer1');
    const id2 = idOfMount(root, m2);
    assert.deepEqual(m2, { type: 'overlay', source: 'overlay', target: '', options: [...indexOff, `workdir=${root}/snapshots/${id2}/work`, `upperdir=${fsDir(root, id2)}`, `lowerdir=${fsDir(root, id1)}`] });
    mountAt(m2, path.join(dir, 'mnt2'));
    assert.equal(fs.readFileSync(path.join(dir, 'mnt2', 'etc', 'base.txt'), 'utf8'), 'base\n');
    fs.writeFileSync(path.join(dir, 'mnt2', 'etc', 'layer2.txt'), 'two\n');
    fs.rmSync(path.join(dir, 'mnt2', 'big'));
    sh('umount', [path.join(dir, 'mnt2')]);
    assert.ok(fs.existsSync(path.join(fsDir(root, id1), 'big')), 'the lower layer is untouched');
    assert.ok(fs.lstatSync(path.join(fsDir(root, id2), 'big')).isCharacterDevice(), 'the delete is a whiteout in the upper dir');
    await commit(c, 'ns/4/sha256:layer2', 'ns/3/extract-b');

    // active with two parents: lowerdir nearest first; the container view is the merge
    const [m3] = await prepare(c, 'ns/5/container', 'ns/4/sha256:layer2');
    const id3 = idOfMount(root, m3);
    assert.deepEqual(m3.options, [...indexOff, `workdir=${root}/snapshots/${id3}/work`, `upperdir=${fsDir(root, id3)}`, `lowerdir=${fsDir(root, id2)}:${fsDir(root, id1)}`]);
    assert.deepEqual(await rpc(c, 'Mounts', { key: 'ns/5/container' }), { mounts: [m3] }, 'Mounts repeats Prepare\'s answer');
    mountAt(m3, path.join(dir, 'mnt3'));
    assert.deepEqual(fs.readdirSync(path.join(dir, 'mnt3')).sort(), ['etc']);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'mnt3', 'etc')).sort(), ['base.txt', 'layer2.txt']);
    fs.writeFileSync(path.join(dir, 'mnt3', 'etc', 'new.txt'), 'container\n');
    sh('umount', [path.join(dir, 'mnt3')]);
    assert.deepEqual(fs.readdirSync(path.join(fsDir(root, id3), 'etc')), ['new.txt'], 'the container write is in its upper dir only');
    const u3 = await rpc(c, 'Usage', { key: 'ns/5/container' });
    assert.ok(u3.size > 0 && u3.inodes === 3, `usage of the container's upper dir: ${JSON.stringify(u3)}`);

    // views: no parent → its own empty fs, ro; one parent → ro bind of it; several → overlay, lowerdir only
    const [v0] = await view(c, 'ns/6/view-empty');
    const idv0 = idOfMount(root, v0);
    assert.deepEqual(v0.options, ['rbind', 'ro']);
    assert.ok(!fs.existsSync(path.join(root, 'snapshots', idv0, 'work')), 'a view has no work dir');
    const [v1] = await view(c, 'ns/7/view-one', 'ns/2/sha256:layer1');
    assert.deepEqual(v1, { type: 'bind', source: fsDir(root, id1), target: '', options: ['rbind', 'ro'] });
    const [v2] = await view(c, 'ns/8/view-two', 'ns/4/sha256:layer2');
    assert.deepEqual(v2, { type: 'overlay', source: 'overlay', target: '', options: [...indexOff, `lowerdir=${fsDir(root, id2)}:${fsDir(root, id1)}`] });
    assert.deepEqual(await rpc(c, 'Mounts', { key: 'ns/8/view-two' }), { mounts: [v2] });
    for (const [m, name] of [[v1, 'v1'], [v2, 'v2']] as const) {
      const mnt = path.join(dir, name);
      mountAt(m, mnt);
      try {
        assert.equal(fs.readFileSync(path.join(mnt, 'etc', 'base.txt'), 'utf8'), 'base\n');
        assert.throws(() => fs.writeFileSync(path.join(mnt, 'etc', 'x'), 'x'), /EROFS/, `${name} is read-only`);
      } finally {
        sh('umount', [mnt]);
      }
    }
    assert.deepEqual(await rpc(c, 'Usage', { key: 'ns/8/view-two' }), { size: 0, inodes: 0 });
    assert.equal((await stat(c, 'ns/8/view-two')).kind, 'VIEW');
    assert.deepEqual(await rpc(c, 'Cleanup', {}), {});
  });
});

test('errors: NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION name the key or parent; nothing half-made stays; the snapshotter keeps serving', async () => {
  await withSnapshotter('errors', async ({ root, sn, c }) => {
    await rejectsWith(prepare(c, 'e/x', 'no-such-parent'), grpc.status.NOT_FOUND, /snapshot e\/x: parent no-such-parent does not exist/);
    await rejectsWith(view(c, 'e/y', 'no-such-parent'), grpc.status.NOT_FOUND, /parent no-such-parent/);
    await rejectsWith(stat(c, 'e/x'), grpc.status.NOT_FOUND, /snapshot e\/x: does not exist/);
    assert.deepEqual(snapshotDirs(root), [], 'a refused Prepare leaves no directory');
    await prepare(c, 'e/a');
    await rejectsWith(prepare(c, 'e/a'), grpc.status.ALREADY_EXISTS, /snapshot e\/a: already exists/);
    await rejectsWith(view(c, 'e/a'), grpc.status.ALREADY_EXISTS, /e\/a/);
    await rejectsWith(prepare(c, 'e/b', 'e/a'), grpc.status.INVALID_ARGUMENT, /parent e\/a is not a committed snapshot/);
    await rejectsWith(prepare(c, ''), grpc.status.INVALID_ARGUMENT, /empty snapshot key/);
    await rejectsWith(prepare(c, 'e/big', '', { k: 'v'.repeat(5000) }), grpc.status.INVALID_ARGUMENT, /snapshot e\/big: label k: .* more than 4096/);
    await view(c, 'e/v');
    await rejectsWith(commit(c, 'E', 'e/v'), grpc.status.FAILED_PRECONDITION, /snapshot e\/v: is not active/);
    await rejectsWith(commit(c, 'E', 'missing'), grpc.status.NOT_FOUND, /snapshot missing: does not exist/);
    await rejectsWith(commit(c, '', 'e/a'), grpc.status.INVALID_ARGUMENT, /empty snapshot name/);
    await commit(c, 'E', 'e/a');
    await prepare(c, 'e/c', 'E');
    await rejectsWith(commit(c, 'E', 'e/c'), grpc.status.ALREADY_EXISTS, /committed snapshot E: already exists/);
    assert.equal((await stat(c, 'e/c')).kind, 'ACTIVE', 'a refused Commit keeps the active snapshot');
    await rejectsWith(rpc(c, 'Mounts', { key: 'E' }), grpc.status.FAILED_PRECONDITION, /snapshot E: is committed/);
    for (const method of ['Stat', 'Mounts', 'Remove', 'Usage']) {
      await rejectsWith(rpc(c, method, { key: 'nope/1' }), grpc.status.NOT_FOUND, /snapshot nope\/1: does not exist/);
    }
    await rejectsWith(update(c, 'nope/1', { a: 'b' }), grpc.status.NOT_FOUND, /nope\/1/);
    await rejectsWith(update(c, 'E', {}, ['parent']), grpc.status.INVALID_ARGUMENT, /snapshot E: cannot update field "parent"/);
    await rejectsWith(remove(c, 'E'), grpc.status.FAILED_PRECONDITION, /snapshot E: cannot remove a snapshot with children \(1: e\/c\)/);
    assert.equal((await stat(c, 'E')).kind, 'COMMITTED', 'a refused Remove keeps the snapshot');
    await rejectsWith(list(c, ['labels.a==b,']), grpc.status.INVALID_ARGUMENT, /filter "labels.a==b,": expected a field name/);
    await rejectsWith(list(c, ['name~=(']), grpc.status.INVALID_ARGUMENT, /bad regular expression/);
    // still serving, and every refused call left the state as it was
    await prepare(c, 'e/after', 'E');
    assert.deepEqual(await names(c), ['E', 'e/after', 'e/c', 'e/v']);
    assert.deepEqual(snapshotDirs(root).length, 4);
    assert.ok(pidAlive(sn.pid));
    assert.doesNotMatch(sn.log(), /WARN/, 'no internal errors');
  });
});

test('Update honours update_mask: labels.<key> sets or removes one label, "labels" or no mask replaces them; updated_at moves, created_at stays', async () => {
  await withSnapshotter('update', async ({ c }) => {
    await prepare(c, 'u/a', '', { keep: '1', drop: '2', change: '3' });
    const before = await stat(c, 'u/a');
    await new Promise((r) => setTimeout(r, 20));
    const i1 = await update(c, 'u/a', { change: '33', add: '4', keep: 'not in the mask' }, ['labels.change', 'labels.add', 'labels.drop']);
    assert.deepEqual(i1.labels, { keep: '1', change: '33', add: '4' });
    assert.deepEqual(i1.created_at, before.created_at);
    const ms = (t: WireInfo['updated_at']): number => t!.seconds * 1000 + t!.nanos / 1e6;
    assert.ok(ms(i1.updated_at) > ms(before.updated_at), 'updated_at moves');
    assert.deepEqual((await stat(c, 'u/a')).labels, i1.labels, 'Stat sees the update');
    assert.deepEqual((await update(c, 'u/a', { only: 'x' }, ['labels'])).labels, { only: 'x' });
    assert.deepEqual((await update(c, 'u/a', { n: 'y', m: 'z' })).labels, { n: 'y', m: 'z' }, 'no mask replaces all labels');
    assert.deepEqual((await update(c, 'u/a', { n: '' }, ['labels.n'])).labels, { m: 'z' }, 'an empty value removes the label');
    assert.deepEqual((await update(c, 'u/a', { 'containerd.io/snapshot/x.y': 'dots' }, ['labels.containerd.io/snapshot/x.y'])).labels, { m: 'z', 'containerd.io/snapshot/x.y': 'dots' });
    await commit(c, 'U', 'u/a');
    assert.deepEqual((await update(c, 'U', { gc: 'yes' }, ['labels.gc'])).labels, { gc: 'yes' }, 'committed snapshots take label updates too');
    await rejectsWith(update(c, 'U', { gc: 'x'.repeat(5000) }, ['labels.gc']), grpc.status.INVALID_ARGUMENT, /label gc/);
    assert.deepEqual((await stat(c, 'U')).labels, { gc: 'yes' }, 'a refused update changes nothing');
  });
});

test('List streams batches of at most 100 and filters as containerd writes them (ANDed by comma, ORed across strings)', async () => {
  await withSnapshotter('list', async ({ c }) => {
    await prepare(c, 'l/base');
    await commit(c, 'ns/1/sha256:base', 'l/base', { 'containerd.io/snapshot.ref': 'sha256:base' });
    for (let i = 0; i < 250; i++) await prepare(c, `ns/2/c${String(i).padStart(3, '0')}`, 'ns/1/sha256:base', { idx: String(i), group: i % 2 ? 'odd' : 'even' });
    const batches = await list(c);
    assert.deepEqual(batches.map((b) => b.length), [100, 100, 51], 'a stream of batches');
    assert.equal(new Set(batches.flat().map((i) => i.name)).size, 251);
    // the form containerd uses after an ALREADY_EXISTS from Prepare
    assert.deepEqual(await names(c, ['labels."containerd.io/snapshot.ref"==sha256:base,parent==""']), ['ns/1/sha256:base']);
    assert.deepEqual(await names(c, ['labels."containerd.io/snapshot.ref"=="sha256:base",kind==committed']), ['ns/1/sha256:base']);
    assert.equal((await names(c, ['parent=="ns/1/sha256:base"'])).length, 250);
    assert.equal((await names(c, ['parent=="ns/1/sha256:base",labels.group==odd'])).length, 125);
    assert.deepEqual(await names(c, ['labels.idx==7', 'labels.idx=="42"']), ['ns/2/c007', 'ns/2/c042']);
    assert.deepEqual(await names(c, ['name~=^ns/2/c00[0-2]$']), ['ns/2/c000', 'ns/2/c001', 'ns/2/c002']);
    assert.deepEqual(await names(c, ['kind==active,labels.idx~=^24[5-9]$']), ['ns/2/c245', 'ns/2/c246', 'ns/2/c247', 'ns/2/c248', 'ns/2/c249']);
    assert.equal((await names(c, ['labels.group!=odd'])).length, 126, '!= matches an absent label (as containerd)');
    assert.equal((await names(c, ['labels.group'])).length, 250, 'a bare field means present');
    assert.deepEqual(await names(c, ['labels.nothing==x']), []);
  });
});

test('Remove frees the directory at once; Cleanup removes directories no snapshot owns and nothing else', async () => {
  await withSnapshotter('cleanup', async ({ root, c }) => {
    const [m] = await prepare(c, 'r/a');
    const id = idOfMount(root, m);
    fs.writeFileSync(path.join(fsDir(root, id), 'file'), 'x');
    await commit(c, 'R', 'r/a');
    const [m2] = await prepare(c, 'r/b', 'R');
    const id2 = idOfMount(root, m2);
    assert.deepEqual(snapshotDirs(root), [id, id2].sort());
    await remove(c, 'r/b');
    assert.deepEqual(snapshotDirs(root), [id], 'Remove took its directory');
    await rejectsWith(stat(c, 'r/b'), grpc.status.NOT_FOUND, /r\/b/);
    // what a crash or a failed removal leaves behind
    for (const orphan of ['999', 'new-123456', 'rm-7']) fs.mkdirSync(path.join(root, 'snapshots', orphan, 'fs'), { recursive: true });
    fs.writeFileSync(path.join(root, 'snapshots', '999', 'fs', 'junk'), 'x');
    await rpc(c, 'Cleanup', { snapshotter: 'nydus-ts' });
    assert.deepEqual(snapshotDirs(root), [id], 'only the live snapshot\'s directory is left');
    assert.equal(fs.readFileSync(path.join(fsDir(root, id), 'file'), 'utf8'), 'x');
    await remove(c, 'R');
    assert.deepEqual(snapshotDirs(root), []);
    assert.deepEqual(await names(c), []);
    // ids are never reused (a directory name never means two snapshots)
    const [m3] = await prepare(c, 'r/c');
    assert.ok(Number(idOfMount(root, m3)) > Number(id2));
  });
});

test('long layer chains: options past a page minus 512 bytes rely on containerd\'s relative lowerdirs; past a page or 500 layers a snapshot is refused', () => {
  const longRoot = '/var/lib/' + 'r'.repeat(80);
  const layout = new SnapshotLayout(longRoot);
  const ids = (n: number, from = 1): string[] => Array.from({ length: n }, (_, i) => String(from + n - 1 - i));
  // 120 layers: 12 KB of absolute lowerdirs, 1 KB relative: fine
  checkMountable(layout, 'k', 'active', '1000', ids(120, 1));
  const m = defaultMounts(layout, 'active', '1000', ids(120, 1))[0];
  assert.ok(m.options.join(',').length > 4096, 'absolute options pass a page');
  // 450 layers with six-digit ids: over a page even relative
  assert.throws(() => checkMountable(layout, 'k', 'active', '999999', ids(450, 100000)), /snapshot k: 450 parent layers need \d+ bytes of overlay options even as relative lowerdirs, more than one page/);
  assert.throws(() => checkMountable(layout, 'k', 'view', '9', ids(501, 1)), /snapshot k: 501 parent layers, overlayfs stacks at most 500/);
  checkMountable(layout, 'k', 'view', '9', ids(1, 1)); // a bind: no limit
});

test('state persists: a SIGTERM restart serves the same snapshots; kill -9 during a storm of changes loses none that were answered', async () => {
  const dir = makeTmpDir('ctrd-persist-');
  const root = path.join(dir, 'root');
  const sock = path.join(dir, 'sn.sock');
  let sn: SnapshotterProcess | undefined;
  let c: AnyClient | undefined;
  try {
    sn = await startSnapshotter(root, sock);
    c = connect(sock);
    await prepare(c, 'p/1', '', { a: '1' });
    await commit(c, 'P1', 'p/1', { l: 'one' });
    await prepare(c, 'p/2', 'P1', { b: '2' });
    await view(c, 'p/v', 'P1');
    const before = (await list(c)).flat().sort((x, y) => x.name.localeCompare(y.name));
    const mountsBefore = await rpc(c, 'Mounts', { key: 'p/2' });
    c.close();
    assert.equal(await sn.stop('SIGTERM'), 0);
    sn = await startSnapshotter(root, sock);
    c = connect(sock);
    assert.deepEqual((await list(c)).flat().sort((x, y) => x.name.localeCompare(y.name)), before, 'same names, kinds, parents, labels and timestamps');
    assert.deepEqual(await rpc(c, 'Mounts', { key: 'p/2' }), mountsBefore);

    // kill -9 while 300 changes are in flight
    const answered: string[] = [];
    const calls: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const key = `storm/${i}`;
      calls.push(
        (i % 3 === 2 ? prepare(c, key, 'P1').then(() => commit(c!, `C${i}`, key)).then(() => void answered.push(`C${i}`)) : prepare(c, key, 'P1', { i: String(i) }).then(() => void answered.push(key)))
          .catch(() => undefined),
      );
    }
    // kill once the snapshotter has made some 60 of the 300 changes durable: mid-storm, mid-write
    const metadata = path.join(root, 'metadata.json');
    await waitFor('60 durable changes', () => (fs.readFileSync(metadata, 'utf8').match(/"storm\/|"C\d/g) ?? []).length >= 60, 30_000);
    process.kill(sn.pid, 'SIGKILL');
    await sn.stop();
    await Promise.all(calls);
    const answeredBeforeKill = answered.length;
    assert.ok(answeredBeforeKill > 0, 'some changes were answered before the kill');
    c.close();
    assert.ok(fs.existsSync(sock), 'kill -9 leaves a stale socket');
    sn = await startSnapshotter(root, sock); // replaces the stale socket
    c = connect(sock);
    const now = new Set(await names(c));
    for (const k of [...before.map((i) => i.name), ...answered]) assert.ok(now.has(k), `${k} was answered before the kill and survives`);
    say(`kill -9 after ${answeredBeforeKill} answered changes: ${now.size - before.length} of the 300 storm snapshots after restart`);
    assert.ok(now.size - before.length < 300, 'the kill landed in the middle of the storm');
    // every snapshot's directory is there; orphans of the interrupted ones go with Cleanup
    const recs = stored(root);
    for (const [k, r] of Object.entries(recs)) {
      assert.ok(fs.statSync(fsDir(root, r.id)).isDirectory(), `${k}: its fs dir exists`);
      if (r.kind === 'active') assert.ok(fs.statSync(path.join(root, 'snapshots', r.id, 'work')).isDirectory(), `${k}: its work dir exists`);
    }
    await rpc(c, 'Cleanup', {});
    assert.deepEqual(snapshotDirs(root), [...new Set(Object.values(recs).map((r) => r.id))].sort(), 'after Cleanup exactly the live directories remain');
    assert.deepEqual(fs.readdirSync(root).filter((f) => f.endsWith('.tmp')), [], 'no temp metadata file is left');
    const [m] = await prepare(c, 'after/kill', 'P1');
    const newId = Number(idOfMount(root, m));
    assert.ok(Object.values(recs).every((r) => Number(r.id) < newId), 'a new snapshot gets a fresh id');
  } catch (e) {
    if (sn) process.stderr.write(`--- snapshotter log ---\n${sn.log().split('\n').slice(-40).join('\n')}\n`);
    throw e;
  } finally {
    c?.close();
    await sn?.stop('SIGKILL');
    removeTmpDir(dir);
  }
});

// ================================================================= real containerd

test('containerd 1.6 with nydus-ts as its proxy snapshotter: plain OCI image, ctr run, writes, restarts, removal', async (t) => {
  const dir = makeTmpDir('ctrd-real-');
  const root = path.join(dir, 'sn-root');
  const sock = path.join(dir, 'sn.sock');
  let sn: SnapshotterProcess | undefined;
  let ctrd: PrivateContainerd | undefined;
  let image: TestImage;
  const snap = ['snapshots', '--snapshotter', 'nydus-ts'];
  /** our committed and active snapshots by kind (from our own metadata) */
  const ours = (): [string, StoredRecord][] => Object.entries(stored(root));
  let leftMounted: string[] = [];
  try {
    image = buildTestImage(path.join(dir, 'image'));
    sn = await startSnapshotter(root, sock);
    ctrd = await startContainerd(path.join(dir, 'containerd'), sock);
    const ctr = ctrd.ctr;
    let layerIds: string[] = [];
    /** wait for containerd's GC to release snapshots; every 2 s without it, run a synchronous GC (see collectGarbage) */
    const released = async (what: string, done: () => boolean): Promise<void> => {
      let nudged = Date.now();
      await waitFor(what, async () => {
        if (done()) return true;
        if (Date.now() - nudged > 2000) {
          say(`${what}: not yet, running a synchronous GC`);
          await ctrd!.collectGarbage();
          nudged = Date.now();
        }
        return false;
      }, 20_000);
    };
    /** a subtest's failure does not reach the catch below: dump the logs where it happens */
    const logged = (fn: () => Promise<void>) => async (): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`--- snapshotter log ---\n${sn!.log().split('\n').slice(-40).join('\n')}\n--- containerd log ---\n${ctrd!.log().split('\n').slice(-40).join('\n')}\n`);
        throw e;
      }
    };

    await t.test('ctr images import unpacks both layers into our snapshotter; ctr run runs a program from them', logged(async () => {
      const out = await ctr(['images', 'import', '--snapshotter', 'nydus-ts', image.tar]);
      assert.match(out, /unpacking docker\.io\/nydus-ts\/plain:1/);
      const recs = ours();
      assert.equal(recs.length, 2, `two committed layers: ${JSON.stringify(recs)}`);
      // containerd names them <namespace>/<n>/<chain id>; the second's parent is the first
      const chain1 = image.diffIds[0];
      const chain2 = 'sha256:' + crypto.createHash('sha256').update(`${image.diffIds[0]} ${image.diffIds[1]}`).digest('hex');
      const [n1, r1] = recs.find(([n]) => n.endsWith(`/${chain1}`))!;
      const [, r2] = recs.find(([n]) => n.endsWith(`/${chain2}`))!;
      assert.equal(r1.kind, 'committed');
      assert.equal(r2.kind, 'committed');
      assert.equal(r2.parent, n1);
      assert.match(n1, new RegExp(`^${ctrd!.namespace}/\\d+/`));
      layerIds = [r1.id, r2.id];
      assert.ok(fs.statSync(path.join(fsDir(root, r1.id), 'bin', 'dash')).isFile(), 'layer 1 was unpacked into its fs dir');
      assert.equal(fs.readFileSync(path.join(fsDir(root, r2.id), 'etc', 'hello.txt'), 'utf8'), 'hello from layer 2\n');
      const wh = fs.lstatSync(path.join(fsDir(root, r2.id), 'etc', 'removed.txt'));
      assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'the OCI whiteout became an overlay whiteout');
      const ls = await ctr([...snap, 'ls']);
      assert.equal(ls.split('\n').filter((l) => / Committed\s*$/.test(l)).length, 2, ls);

      const run = await ctr(['run', '--rm', '--snapshotter', 'nydus-ts', image.name, 'c1', 'sh', '-c', 'cat /etc/hello.txt /etc/base.txt; ls /etc; test -e /etc/removed.txt || echo whiteout-ok']);
      assert.equal(run, 'hello from layer 2\nbase layer\nbase.txt\nhello.txt\nwhiteout-ok\n');
      // run --rm deletes the container; containerd's GC then removes its snapshot from us
      await released('the container snapshot and its directory to be released', () => ours().length === 2 && snapshotDirs(root).length === 2);
      assert.deepEqual(snapshotDirs(root), [...layerIds].sort());
    }));

    await t.test('a write in a container lands in its upper dir, never in the image\'s layers; removing the container releases it', logged(async () => {
      const out = await ctr(['run', '--snapshotter', 'nydus-ts', image.name, 'c2', 'sh', '-c', 'echo written > /etc/written.txt; echo changed > /etc/hello.txt; rm /etc/base.txt; cat /etc/hello.txt']);
      assert.equal(out, 'changed\n');
      const [key, rec] = ours().find(([n]) => n.endsWith('/c2'))!;
      assert.equal(rec.kind, 'active');
      const upper = fsDir(root, rec.id);
      assert.equal(fs.readFileSync(path.join(upper, 'etc', 'written.txt'), 'utf8'), 'written\n');
      assert.equal(fs.readFileSync(path.join(upper, 'etc', 'hello.txt'), 'utf8'), 'changed\n');
      assert.ok(fs.lstatSync(path.join(upper, 'etc', 'base.txt')).isCharacterDevice(), 'the rm is a whiteout in the upper dir');
      assert.equal(fs.readFileSync(path.join(fsDir(root, layerIds[1]), 'etc', 'hello.txt'), 'utf8'), 'hello from layer 2\n', 'layer 2 is untouched');
      assert.ok(!fs.existsSync(path.join(fsDir(root, layerIds[1]), 'etc', 'written.txt')));
      assert.equal(fs.readFileSync(path.join(fsDir(root, layerIds[0]), 'etc', 'base.txt'), 'utf8'), 'base layer\n', 'layer 1 is untouched');
      const usage = await ctr([...snap, 'usage', 'c2']);
      assert.match(usage, /c2\s+\d+(\.\d+)?\s*\w*B?\s+\d+/, `usage through our Usage: ${usage}`);
      await ctr(['containers', 'rm', 'c2']);
      await released(`${key} and its directory to be removed`, () => !stored(root)[key] && !fs.existsSync(path.dirname(upper)));
    }));

    await t.test('ctr snapshots prepare/mounts/label/info/commit/view/rm go through our service; an unknown parent is NOT_FOUND and we keep serving', logged(async () => {
      const parentName = (await ctr([...snap, 'ls'])).split('\n').find((l) => / Committed\s*$/.test(l) && /^sha256:\S+\s+sha256:/.test(l))!.split(/\s+/)[0];
      await ctr([...snap, 'prepare', 'manual', parentName]);
      const mounts = await ctr([...snap, 'mounts', '/mnt/x', 'manual']);
      assert.match(mounts, /^mount -t overlay overlay \/mnt\/x -o .*upperdir=.*lowerdir=/);
      await ctr([...snap, 'label', 'manual', 'containerd.io/snapshot/test=yes']);
      const [key, rec] = ours().find(([n]) => n.endsWith('/manual'))!;
      assert.equal(rec.labels['containerd.io/snapshot/test'], 'yes', 'the label reached our Update');
      const info = JSON.parse(await ctr([...snap, 'info', 'manual'])) as { Kind: number; Parent: string };
      assert.equal(info.Parent, parentName);
      await ctr([...snap, 'commit', 'manual-done', 'manual']);
      await ctr([...snap, 'view', 'manual-view', 'manual-done']);
      assert.equal(ours().find(([n]) => n.endsWith('/manual-view'))![1].kind, 'view');
      assert.ok(!stored(root)[key], 'the active key went with the commit');
      // straight to our socket: a parent nobody has (containerd itself would refuse it earlier)
      const c = connect(sock);
      try {
        await rejectsWith(prepare(c, `${ctrd!.namespace}/999/bad`, `${ctrd!.namespace}/998/sha256:missing`), grpc.status.NOT_FOUND, /parent nydus-ts-test\/998\/sha256:missing does not exist/);
      } finally {
        c.close();
      }
      await ctr([...snap, 'rm', 'manual-view']);
      await ctr([...snap, 'rm', 'manual-done']);
      await released('manual snapshots to be removed', () => ours().length === 2 && snapshotDirs(root).length === 2);
      assert.deepEqual(snapshotDirs(root), [...layerIds].sort());
    }));

    await t.test('restarting the snapshotter (SIGTERM, then kill -9) under a running container: it keeps running; ctr lists and removes the snapshots afterwards', logged(async () => {
      await ctr(['run', '-d', '--snapshotter', 'nydus-ts', image.name, 'sleeper', 'sleep', '600']);
      const taskPid = Number(await waitFor('the task to run', async () => /sleeper\s+(\d+)\s+RUNNING/.exec(await ctr(['tasks', 'ls']))?.[1]));
      const rootfs = path.join(ctrd!.dir, 'state', 'io.containerd.runtime.v2.task', ctrd!.namespace, 'sleeper', 'rootfs');
      assert.ok(mountsUnder(rootfs).length === 1, 'the shim mounted the rootfs');
      assert.equal(await sn!.stop('SIGTERM'), 0);
      assert.ok(!fs.existsSync(sock));
      assert.ok(pidAlive(taskPid), 'the container runs without the snapshotter');
      assert.match(await ctr(['tasks', 'ls']), /sleeper\s+\d+\s+RUNNING/);
      sn = await startSnapshotter(root, sock);
      assert.equal(await ctr(['tasks', 'exec', '--exec-id', 'e1', 'sleeper', 'cat', '/etc/hello.txt']), 'hello from layer 2\n');
      assert.match(await ctrd!.ctrReconnecting([...snap, 'ls']), /^sleeper\s+sha256:\S+\s+Active\s*$/m);
      process.kill(sn.pid, 'SIGKILL');
      await sn.stop();
      assert.ok(fs.existsSync(sock), 'kill -9 leaves a stale socket');
      sn = await startSnapshotter(root, sock);
      assert.ok(pidAlive(taskPid), 'still running after kill -9 of the snapshotter');
      assert.match(await ctrd!.ctrReconnecting([...snap, 'ls']), /^sleeper\s+sha256:\S+\s+Active\s*$/m);
      const [key, rec] = ours().find(([n]) => n.endsWith('/sleeper'))!;
      await ctr(['tasks', 'kill', '-s', 'SIGKILL', 'sleeper']);
      await waitFor('the task to stop', async () => !/sleeper\s+\d+\s+RUNNING/.test(await ctr(['tasks', 'ls'])));
      await ctr(['tasks', 'rm', 'sleeper']);
      assert.equal(mountsUnder(rootfs).length, 0, 'the rootfs is unmounted');
      await ctr(['containers', 'rm', 'sleeper']);
      await released(`${key} and its directory to be removed`, () => !stored(root)[key] && !fs.existsSync(path.join(root, 'snapshots', rec.id)));
      assert.doesNotMatch(await ctr([...snap, 'ls']), /sleeper/);
    }));

    await t.test('removing the image releases every snapshot and directory', logged(async () => {
      await ctr(['images', 'rm', '--sync', image.name]);
      await released('every snapshot and directory to be released', () => ours().length === 0 && snapshotDirs(root).length === 0);
      assert.deepEqual(snapshotDirs(root), []);
      assert.equal((await ctr([...snap, 'ls'])).trim().split('\n').length, 1, 'ctr lists nothing but the header');
      assert.equal((await ctr(['content', 'ls', '-q'])).trim(), '', 'the content store is empty');
      await ctrd!.collectGarbage(); // nothing is left for a full collection either
      assert.deepEqual([ours().length, snapshotDirs(root).length], [0, 0]);
      assert.doesNotMatch(sn!.log(), /WARN/, 'the snapshotter logged no internal error');
    }));
  } catch (e) {
    if (sn) process.stderr.write(`--- snapshotter log ---\n${sn.log().split('\n').slice(-40).join('\n')}\n`);
    if (ctrd) process.stderr.write(`--- containerd log ---\n${ctrd.log().split('\n').slice(-40).join('\n')}\n`);
    throw e;
  } finally {
    await ctrd?.stop();
    await sn?.stop('SIGTERM');
    leftMounted = mountsUnder(dir);
    unmountUnder(dir);
    removeTmpDir(dir);
  }
  assert.deepEqual(leftMounted, [], 'containerd and its shims left nothing of ours mounted');
});
