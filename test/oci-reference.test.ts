/**
 * Image reference parsing (src/oci/reference.ts): Docker Hub normalization, registries with
 * ports, tags and digests, and the errors for invalid references.
 */
import { test, describe } from 'node:test';
import * as assert from 'node:assert/strict';
import { parseReference, checkDigest, isLoopbackHost } from '../src/oci/reference';
import { NydusError } from '../src/errors';

const D = 'sha256:' + 'ab'.repeat(32);

function ok(s: string, want: { registry: string; repository: string; tag?: string; digest?: string; apiHost?: string; daemonHost?: string; str?: string; familiar?: string }) {
  const r = parseReference(s);
  assert.equal(r.registry, want.registry, `${s}: registry`);
  assert.equal(r.repository, want.repository, `${s}: repository`);
  assert.equal(r.tag, want.tag, `${s}: tag`);
  assert.equal(r.digest, want.digest, `${s}: digest`);
  assert.equal(r.apiHost, want.apiHost ?? want.registry, `${s}: apiHost`);
  assert.equal(r.daemonHost, want.daemonHost ?? want.registry, `${s}: daemonHost`);
  if (want.str) assert.equal(r.toString(), want.str, `${s}: toString`);
  if (want.familiar) assert.equal(r.familiar(), want.familiar, `${s}: familiar`);
  return r;
}

function bad(s: string, reason: RegExp) {
  assert.throws(
    () => parseReference(s),
    (e: unknown) => {
      assert.ok(e instanceof NydusError, `${s}: NydusError expected, got ${e}`);
      assert.equal(e.code, 'ERR_INVALID_ARGUMENT');
      assert.ok(e.message.includes(JSON.stringify(s)), `${s}: message names the reference: ${e.message}`);
      assert.match(e.message, reason);
      assert.equal(e.context.reference, s);
      return true;
    },
  );
}

describe('parseReference: Docker Hub', () => {
  test('short name → docker.io/library/<name>:latest with both Hub hosts', () => {
    const r = ok('ubuntu', { registry: 'docker.io', repository: 'library/ubuntu', tag: 'latest', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io', str: 'docker.io/library/ubuntu:latest', familiar: 'ubuntu:latest' });
    assert.equal(r.manifestReference, 'latest');
    assert.equal(r.name, 'docker.io/library/ubuntu');
  });
  test('user repositories keep their path; tags', () => {
    ok('user/app:1.0', { registry: 'docker.io', repository: 'user/app', tag: '1.0', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io', str: 'docker.io/user/app:1.0', familiar: 'user/app:1.0' });
    ok('ubuntu:22.04', { registry: 'docker.io', repository: 'library/ubuntu', tag: '22.04', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io' });
  });
  test('docker.io / index.docker.io / registry-1.docker.io spellings normalize to docker.io', () => {
    for (const h of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) {
      ok(`${h}/ubuntu`, { registry: 'docker.io', repository: 'library/ubuntu', tag: 'latest', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io', str: 'docker.io/library/ubuntu:latest' });
      ok(`${h}/library/busybox:musl`, { registry: 'docker.io', repository: 'library/busybox', tag: 'musl', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io' });
    }
  });
  test('digest only: no default tag, manifestReference is the digest', () => {
    const r = ok(`ubuntu@${D}`, { registry: 'docker.io', repository: 'library/ubuntu', digest: D, apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io', str: `docker.io/library/ubuntu@${D}`, familiar: `ubuntu@${D}` });
    assert.equal(r.manifestReference, D);
  });
  test('docker:// prefix is accepted', () => {
    ok('docker://alpine:3', { registry: 'docker.io', repository: 'library/alpine', tag: '3', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io' });
  });
});

describe('parseReference: other registries', () => {
  test('host:port/repo:tag', () => {
    ok('registry.example.com:5000/team/app/server:v1.2.3', { registry: 'registry.example.com:5000', repository: 'team/app/server', tag: 'v1.2.3', str: 'registry.example.com:5000/team/app/server:v1.2.3', familiar: 'registry.example.com:5000/team/app/server:v1.2.3' });
    ok('ghcr.io/dragonflyoss/nydus', { registry: 'ghcr.io', repository: 'dragonflyoss/nydus', tag: 'latest' });
  });
  test('localhost and loopback IPs are registries; single components get no library/ prefix', () => {
    ok('localhost:5000/x', { registry: 'localhost:5000', repository: 'x', tag: 'latest', str: 'localhost:5000/x:latest' });
    ok('localhost/x:1', { registry: 'localhost', repository: 'x', tag: '1' });
    ok('127.0.0.1:5000/foo/bar', { registry: '127.0.0.1:5000', repository: 'foo/bar', tag: 'latest' });
    ok('[::1]:5000/foo', { registry: '[::1]:5000', repository: 'foo', tag: 'latest', str: '[::1]:5000/foo:latest' });
    assert.ok(isLoopbackHost('localhost:5000') && isLoopbackHost('127.0.0.1:80') && isLoopbackHost('127.1.2.3') && isLoopbackHost('[::1]:5000') && isLoopbackHost('localhost'));
    assert.ok(!isLoopbackHost('docker.io') && !isLoopbackHost('10.0.0.1:5000') && !isLoopbackHost('localhost.example.com'));
  });
  test('tag and digest together: digest wins for fetching, both printed', () => {
    const r = ok(`quay.io/org/repo:tag@${D}`, { registry: 'quay.io', repository: 'org/repo', tag: 'tag', digest: D, str: `quay.io/org/repo:tag@${D}` });
    assert.equal(r.manifestReference, D);
  });
  test('repository separators . _ __ - are allowed', () => {
    ok('example.com/a.b/c_d/e__f/g-h/i--j:T_a.g-1', { registry: 'example.com', repository: 'a.b/c_d/e__f/g-h/i--j', tag: 'T_a.g-1' });
  });
  test('an upper-case first component is a registry host (distribution rule)', () => {
    ok('Foo/bar', { registry: 'Foo', repository: 'bar', tag: 'latest' });
  });
  test('withTag / withDigest / toJSON', () => {
    const r = parseReference('localhost:5000/x:1');
    assert.equal(r.withTag('2').toString(), 'localhost:5000/x:2');
    assert.equal(r.withDigest(D).toString(), `localhost:5000/x:1@${D}`);
    assert.equal(r.withDigest(D).manifestReference, D);
    const j = JSON.parse(JSON.stringify(parseReference('busybox')));
    assert.deepEqual(j, { registry: 'docker.io', repository: 'library/busybox', tag: 'latest', apiHost: 'registry-1.docker.io', daemonHost: 'index.docker.io', reference: 'docker.io/library/busybox:latest' });
    assert.throws(() => r.withTag('bad tag'), /invalid tag/);
  });
});

describe('parseReference: invalid references', () => {
  test('upper case in the repository', () => {
    bad('Ubuntu', /lower case/);
    bad('docker.io/Library/ubuntu', /lower case/);
    bad('localhost:5000/MyApp:1', /lower case/);
  });
  test('bad tags', () => {
    bad('ubuntu:', /invalid tag ""/);
    bad('ubuntu:-x', /invalid tag/);
    bad('ubuntu:' + 'a'.repeat(129), /invalid tag/);
    bad('ubuntu:a+b', /invalid tag/);
  });
  test('bad digests', () => {
    bad('ubuntu@sha256:abc', /digest/);
    bad('ubuntu@sha256:' + 'AB'.repeat(32), /64 lower-case hex/);
    bad('ubuntu@', /digest/);
    bad('ubuntu@md5', /digest/);
  });
  test('bad names and hosts', () => {
    bad('', /empty reference/);
    bad('a//b', /empty path component/);
    bad('-ubuntu', /invalid repository path component/);
    bad('ubuntu-', /invalid repository path component/);
    bad('a/b_/c', /invalid repository path component/);
    bad('has space', /white space/);
    bad('https://registry.example.com/x', /URL scheme/);
    bad('host.example.com:99999/x', /port/);
    bad('host.example.com:/x', /port/);
    bad('-host.example.com/x', /registry host/);
    bad('example.com/', /empty repository/);
    bad(':tag', /empty repository/);
    bad('example.com/' + 'a'.repeat(250), /longer than 255/);
  });
  test('checkDigest', () => {
    checkDigest(D);
    checkDigest('sha512:' + 'c'.repeat(128));
    assert.throws(() => checkDigest('sha256:' + 'a'.repeat(63)), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
    assert.throws(() => checkDigest('nope'), /expected algorithm:hex/);
  });
});
