/**
 * Issue #2: hostile or broken tar input gives a clear error naming the archive and entry, a
 * non-zero exit, and nothing half-written: no bootstrap, no blob, no temp file, and never a
 * write outside the output paths.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cli } from './helpers/mount';
import { tarHeader, padLen, TAR_TRAILER } from '../src/tools/tar-writer';

let work: string;
before(() => {
  work = makeTmpDir('nydus-hostile-');
});
after(() => removeTmpDir(work));

type E = { path: string; type?: '0' | '1' | '2' | '5'; data?: string; link?: string };
function tarOf(entries: E[], opts: { truncateAt?: number } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.data ?? '');
    parts.push(tarHeader({ path: Buffer.from(e.path), type: e.type ?? '0', mode: 0o644, uid: 0, gid: 0, size: data.length, mtime: 0, mtimeNsec: 0, linkpath: e.link ? Buffer.from(e.link) : undefined }));
    if ((e.type ?? '0') === '0') parts.push(data, Buffer.alloc(padLen(data.length)));
  }
  parts.push(TAR_TRAILER);
  const all = Buffer.concat(parts);
  return opts.truncateAt !== undefined ? all.subarray(0, opts.truncateAt) : all;
}

function attempt(name: string, tar: Buffer): { status: number; stderr: string; out: string } {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  const tarFile = path.join(dir, 'in.tar');
  fs.writeFileSync(tarFile, tar);
  const out = path.join(dir, 'out');
  const r = cli(['create', '--type', 'tar', '-B', path.join(out, 'boot'), '-D', path.join(out, 'blobs'), tarFile]);
  return { status: r.status, stderr: r.stderr, out };
}

function assertNothingWritten(out: string): void {
  assert.ok(!fs.existsSync(path.join(out, 'boot')), 'bootstrap written');
  const blobs = path.join(out, 'blobs');
  const left = fs.existsSync(blobs) ? fs.readdirSync(blobs) : [];
  assert.deepEqual(left, [], `left in the blob dir: ${left.join(', ')}`);
  if (fs.existsSync(out)) assert.deepEqual(fs.readdirSync(out).filter((f) => f !== 'blobs'), []);
}

const cases: [string, Buffer, RegExp][] = [
  ['dotdot', tarOf([{ path: 'ok', data: 'x' }, { path: '../evil', data: 'x' }]), /\.\.\/evil/],
  ['deep-dotdot', tarOf([{ path: 'a/b/../../../evil', data: 'x' }]), /evil/],
  ['hardlink-outside', tarOf([{ path: 'link', type: '1', link: 'not/in/archive' }]), /hardlink target "not\/in\/archive"/],
  ['hardlink-escape', tarOf([{ path: 'f', data: 'x' }, { path: 'link', type: '1', link: '../../etc/passwd' }]), /link/],
  ['truncated-body', tarOf([{ path: 'big', data: 'y'.repeat(5000) }], { truncateAt: 512 + 1000 }), /big/],
  ['truncated-header', tarOf([{ path: 'a', data: 'x' }, { path: 'b', data: 'y' }], { truncateAt: 1024 + 100 }), /in\.tar/],
  ['garbage', Buffer.alloc(4096, 0x41), /in\.tar/],
];

for (const [name, tar, re] of cases) {
  test(`hostile tar (${name}): clear error, exit 1, nothing half-written`, () => {
    const r = attempt(name, tar);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^nydus-ts: error: /);
    assert.match(r.stderr, re);
    assert.match(r.stderr, /in\.tar/, 'the message names the archive');
    assertNothingWritten(r.out);
    assert.ok(!fs.existsSync(path.join(work, 'evil')) && !fs.existsSync(path.join(work, name, 'evil')));
  });
}

test('absolute paths are contained: /etc/x lands at /etc/x inside the image', () => {
  const dir = path.join(work, 'abs');
  fs.mkdirSync(dir);
  const tarFile = path.join(dir, 'in.tar');
  fs.writeFileSync(tarFile, tarOf([{ path: '/etc/x', data: 'abs' }]));
  const boot = path.join(dir, 'boot');
  const r = cli(['create', '--type', 'tar', '-B', boot, '-D', path.join(dir, 'blobs'), tarFile]);
  assert.equal(r.status, 0, r.stderr);
  const ls = JSON.parse(cli(['inspect', boot, 'ls', '-R', '/', '--json']).stdout) as { path: string }[];
  assert.deepEqual(ls.map((e) => e.path), ['/', '/etc', '/etc/x']);
});

test('duplicate entries: the last one wins, as when extracting', () => {
  const dir = path.join(work, 'dup');
  fs.mkdirSync(dir);
  const tarFile = path.join(dir, 'in.tar');
  fs.writeFileSync(tarFile, tarOf([{ path: 'f', data: 'first' }, { path: 'f', data: 'second!' }]));
  const boot = path.join(dir, 'boot');
  assert.equal(cli(['create', '--type', 'tar', '-B', boot, '-D', path.join(dir, 'blobs'), tarFile]).status, 0);
  const ls = JSON.parse(cli(['inspect', boot, 'ls', '/', '--json']).stdout) as { path: string; size: number }[];
  assert.deepEqual(ls.map((e) => [e.path, e.size]), [['/f', 7]]);
});

test('bad arguments name the input and the reason', () => {
  const r = cli(['create', '-B', path.join(work, 'b'), '-D', path.join(work, 'bl'), '--chunk-size', '12345', '/nonexistent-dir']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--chunk-size 12345/);
  const r2 = cli(['create', '-B', path.join(work, 'b'), '-D', path.join(work, 'bl'), '/nonexistent-dir']);
  assert.equal(r2.status, 1);
  assert.match(r2.stderr, /\/nonexistent-dir/);
  const r3 = cli(['merge', '-B', path.join(work, 'm'), '/nonexistent.boot']);
  assert.equal(r3.status, 1);
  assert.match(r3.stderr, /\/nonexistent\.boot/);
});
