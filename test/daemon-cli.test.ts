/**
 * Issue #3 on the host: the daemon's start-up safety and the nydusd-compatible entry point.
 * (The fscache path itself is tested in the VM: kernel-tests/daemon.test.ts.)
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cli, REPO } from './helpers/mount';

const NYDUSD = path.join(REPO, 'scripts', 'nydusd');

test('nydusd wrapper: singleton flags as the snapshotter passes them reach the daemon', () => {
  const dir = makeTmpDir('nydusd-');
  try {
    const sock = path.join(dir, 'api.sock');
    const args = ['singleton', '--fscache', dir, '--fscache-threads', '2', '--id', 'daemon-1', '--supervisor', path.join(dir, 'sup.sock'), '--log-level', 'info', '--apisock', sock, '--log-rotation-size', '100'];
    const r = spawnSync(NYDUSD, args, { encoding: 'utf8', timeout: 30_000 });
    if (fs.existsSync('/dev/cachefiles')) {
      // a machine with cachefiles: the daemon starts; stop it again through its API
      assert.fail('this host test expects a kernel without /dev/cachefiles (the VM tests cover the real device)');
    }
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /nydus-ts: error: cannot open \/dev\/cachefiles: ENOENT .*CONFIG_CACHEFILES/);
    assert.ok(!fs.existsSync(sock), 'no API socket is left behind after a failed start');
    const bad = spawnSync(NYDUSD, ['fuse', '--mountpoint', '/x'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /only the 'singleton' subcommand/);
    const v = spawnSync(NYDUSD, ['--version'], { encoding: 'utf8' });
    assert.equal(v.status, 0);
    assert.match(v.stdout, /^\d+\.\d+\.\d+/);
  } finally {
    removeTmpDir(dir);
  }
});

test('daemon flags are validated with clear errors', () => {
  const dir = makeTmpDir('nydusd-');
  try {
    const r1 = cli(['daemon', '--fscache', path.join(dir, 'missing'), '--apisock', path.join(dir, 's')]);
    assert.equal(r1.status, 1);
    assert.match(r1.stderr, /--fscache .*missing: not an existing directory/);
    const r2 = cli(['daemon', '--fscache', dir, '--id', 'x', '--apisock', path.join(dir, 's')]);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /--id and --supervisor must be given together/);
    const r3 = cli(['daemon', '--apisock', path.join(dir, 's')]);
    assert.equal(r3.status, 1);
    assert.match(r3.stderr, /--fscache/);
    const r4 = cli(['mount', '-B', path.join(dir, 'nope.boot'), '-D', dir, path.join(dir, 'mnt')]);
    assert.equal(r4.status, 1);
    assert.match(r4.stderr, /--bootstrap .*nope\.boot: no such file/);
    const r5 = cli(['status', '-A', path.join(dir, 'none.sock')]);
    assert.equal(r5.status, 1);
    assert.match(r5.stderr, /daemon API .*none\.sock/);
  } finally {
    removeTmpDir(dir);
  }
});

test('every command has --help', () => {
  for (const c of ['create', 'merge', 'check', 'inspect', 'export', 'unpack', 'daemon', 'mount', 'umount', 'status']) {
    const r = cli([c, '--help']);
    assert.equal(r.status, 0, c);
    assert.match(r.stdout, new RegExp(`Usage: nydus-ts ${c}`));
  }
});

/** The library modules (below dist/src) and packages a CLI invocation loads before it exits. */
function modulesLoadedBy(args: string[]): string[] {
  const dir = makeTmpDir('cli-modules-');
  try {
    const out = path.join(dir, 'modules.json');
    const hook = path.join(dir, 'hook.js');
    fs.writeFileSync(hook, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(Object.keys(require.cache))));\n`);
    const r = spawnSync(process.execPath, ['-r', hook, path.join(REPO, 'dist', 'src', 'cli', 'main.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
    assert.ok(fs.existsSync(out), `the CLI did not exit normally: ${r.stderr}`);
    const files = JSON.parse(fs.readFileSync(out, 'utf8')) as string[];
    return files.map((f) => f.replace(/.*\/node_modules\/((@[^/]+\/)?[^/]+).*/, 'pkg:$1').replace(/.*\/dist\/src\//, '')).filter((f, i, a) => a.indexOf(f) === i);
  } finally {
    removeTmpDir(dir);
  }
}

test('the CLI loads a command\'s implementation only when that command runs', () => {
  const heavy = ['pkg:undici', 'daemon/daemon.js', 'builder/build.js', 'oci/convert.js', 'tools/check.js'];
  for (const args of [['--version'], ['--help'], ['mount', '--help'], ['create', '--help'], ['convert', '--help']]) {
    const loaded = modulesLoadedBy(args);
    assert.deepEqual(heavy.filter((m) => loaded.includes(m)), [], `nydus-ts ${args.join(' ')} loaded: ${loaded.join(' ')}`);
  }
  // mount --image needs the registry client, not the daemon, the builder or the converter
  const mountImage = modulesLoadedBy(['mount', '--image', '127.0.0.1:1/x:y', '--work-dir', '/nonexistent-nydus-ts', '-A', '/nonexistent-nydus-ts/api.sock', '/nonexistent-nydus-ts/mnt']);
  assert.ok(mountImage.includes('oci/image-mount.js') && mountImage.includes('pkg:undici'), mountImage.join(' '));
  assert.deepEqual(['daemon/daemon.js', 'builder/build.js', 'oci/convert.js'].filter((m) => mountImage.includes(m)), [], mountImage.join(' '));
});
