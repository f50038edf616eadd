/**
 * `s3` and `oss` backends.
 * - The signers against published vectors: the AWS Signature Version 4 examples of the S3 docs
 *   (GET object with Range, PUT object with an escaped key, GET ?lifecycle, GET bucket listing
 *   with a sorted query) and `get-vanilla` of the AWS sig-v4 test suite; the Aliyun OSS
 *   documentation's PUT example.
 * - The s3 backend against a real S3-compatible server, @20minutes/s3rver, which verifies AWS
 *   SigV4 signatures with its own implementation (a wrong secret is refused) and serves Range
 *   reads.
 * - The oss backend through a small OSS front (virtual-hosted Host check, OSS signature check
 *   written from the Aliyun docs) in front of s3rver, which serves the bytes.
 */
import { test, describe, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import { AddressInfo } from 'node:net';
import { EMPTY_SHA256, OssBackend, S3Backend, awsUriEncode, signOss, signV4 } from '../src/backends/object-storage';
import { OssBackendConfig, ProxyConfig, S3BackendConfig, parseBlobCacheEntry } from '../src/daemon/config';
import { makeBackend } from '../src/daemon/daemon';
import { NydusError } from '../src/errors';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';

// s3rver ships no type declarations
// eslint-disable-next-line @typescript-eslint/no-var-requires
const S3rver = require('@20minutes/s3rver') as new (o: Record<string, unknown>) => { run(): Promise<AddressInfo>; close(): Promise<void>; httpServer: http.Server };
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { DUMMY_ACCOUNT } = require('@20minutes/s3rver/lib/models/account') as { DUMMY_ACCOUNT: { createKeyPair(id: string, secret: string): void } };

const KEY_ID = 'AKIDNYDUSTSTEST0001';
const SECRET = 'nydus/ts+Secret/Key0123456789abcdefGHIJ';
const BUCKET = 'nydus-blobs';
const PREFIX = 'nydus/sha256:'; // a '/' and a ':' that both need care in the signed path
const BLOB = crypto.randomBytes(300 * 1024 + 17);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const SMALL = crypto.randomBytes(1000);
const SMALL_ID = crypto.createHash('sha256').update(SMALL).digest('hex');
const NO_PROXY: ProxyConfig = { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300 };
const FAST = { backoffBaseMs: 5, backoffMaxMs: 20, timeoutMs: 3000, connectTimeoutMs: 3000 };

let dir = '';
let s3: InstanceType<typeof S3rver>;
let s3Host = '';
let s3Connections = 0;
const fronts: http.Server[] = [];

async function putObject(bucket: string, key: string, body: Buffer): Promise<void> {
  // signed with our own signer: s3rver refuses a bad signature, so this is a check too
  const url = new URL(`http://${s3Host}/${bucket}/${awsUriEncode(key, true)}`);
  const payloadHash = crypto.createHash('sha256').update(body).digest('hex');
  const headers = { 'x-amz-content-sha256': payloadHash, 'content-type': 'application/octet-stream' };
  const sig = signV4({ method: 'PUT', url, headers, payloadHash, region: 'us-east-1', service: 's3', accessKeyId: KEY_ID, secretAccessKey: SECRET, date: new Date() });
  const r = await fetch(url, { method: 'PUT', headers: { ...headers, ...sig.headers }, body });
  assert.equal(r.status, 200, `PUT ${url}: ${r.status} ${await r.text()}`);
}

before(async () => {
  dir = makeTmpDir('nydus-ts-s3-');
  DUMMY_ACCOUNT.createKeyPair(KEY_ID, SECRET);
  s3 = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: BUCKET }], serviceEndpoint: 's3.invalid' });
  const addr = await s3.run();
  s3Host = `127.0.0.1:${addr.port}`;
  s3.httpServer.on('connection', () => s3Connections++);
  await putObject(BUCKET, PREFIX + BLOB_ID, BLOB);
  await putObject(BUCKET, PREFIX + SMALL_ID, SMALL);
  await putObject(BUCKET, 'oss/' + BLOB_ID, BLOB);
});

after(async () => {
  for (const f of fronts) {
    f.closeAllConnections();
    await new Promise<void>((r) => f.close(() => r()));
  }
  if (s3) {
    s3.httpServer.closeAllConnections();
    await s3.close();
  }
  removeTmpDir(dir);
});

function s3Cfg(extra: Partial<S3BackendConfig> = {}): S3BackendConfig {
  return {
    scheme: 'http',
    endpoint: s3Host,
    region: 'eu-central-1',
    bucket_name: BUCKET,
    object_prefix: PREFIX,
    access_key_id: KEY_ID,
    access_key_secret: SECRET,
    skip_verify: false,
    ca_cert_files: [],
    timeout: 5,
    connect_timeout: 5,
    retry_limit: 0,
    proxy: NO_PROXY,
    ...extra,
  };
}

async function rejects(p: Promise<unknown>, re: RegExp, code = 'ERR_BACKEND'): Promise<NydusError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof NydusError, `expected NydusError, got ${e}`);
    assert.equal(e.code, code);
    assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected rejection matching ${re}`);
}

/** A front server on loopback: `handle` answers or returns undefined to forward to s3rver. */
async function startFront(rewrite: (req: http.IncomingMessage, res: http.ServerResponse) => { path: string; headers: http.OutgoingHttpHeaders } | undefined): Promise<{ host: string; port: number; requests: http.IncomingMessage[] }> {
  const requests: http.IncomingMessage[] = [];
  const port = Number(s3Host.split(':')[1]);
  const server = http.createServer((req, res) => {
    requests.push(req);
    const fwd = rewrite(req, res);
    if (!fwd) return;
    const up = http.request({ host: '127.0.0.1', port, method: req.method, path: fwd.path, headers: fwd.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  fronts.push(server);
  const p = (server.address() as AddressInfo).port;
  return { host: `127.0.0.1:${p}`, port: p, requests };
}

describe('signers: published vectors', () => {
  const aws = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', region: 'us-east-1', service: 's3', date: new Date('2013-05-24T00:00:00Z') };

  test('SigV4: S3 docs "GET Object" example (Range, empty payload)', () => {
    const r = signV4({ ...aws, method: 'GET', url: new URL('https://examplebucket.s3.amazonaws.com/test.txt'), headers: { Range: 'bytes=0-9', 'x-amz-content-sha256': EMPTY_SHA256 }, payloadHash: EMPTY_SHA256 });
    assert.equal(
      r.canonicalRequest,
      'GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
    assert.equal(r.stringToSign, 'AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972');
    assert.equal(r.signature, 'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41');
    assert.equal(
      r.headers.authorization,
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
    );
    assert.equal(r.headers['x-amz-date'], '20130524T000000Z');
  });

  test('SigV4: S3 docs "PUT Object" example (escaped key, payload hash, extra headers)', () => {
    const body = Buffer.from('Welcome to Amazon S3.');
    const payloadHash = crypto.createHash('sha256').update(body).digest('hex');
    assert.equal(payloadHash, '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072');
    const url = new URL(`https://examplebucket.s3.amazonaws.com/${awsUriEncode('test$file.text', true)}`);
    assert.equal(url.pathname, '/test%24file.text');
    const r = signV4({ ...aws, method: 'PUT', url, headers: { Date: 'Fri, 24 May 2013 00:00:00 GMT', 'x-amz-storage-class': 'REDUCED_REDUNDANCY', 'x-amz-content-sha256': payloadHash }, payloadHash });
    assert.equal(r.signedHeaders, 'date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class');
    assert.equal(r.signature, '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd');
  });

  test('SigV4: S3 docs "GET Bucket Lifecycle" and "Get Bucket (List Objects)" (query strings)', () => {
    const h = { 'x-amz-content-sha256': EMPTY_SHA256 };
    const lifecycle = signV4({ ...aws, method: 'GET', url: new URL('https://examplebucket.s3.amazonaws.com/?lifecycle'), headers: h, payloadHash: EMPTY_SHA256 });
    assert.equal(lifecycle.signature, 'fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543');
    // the query is given out of order: the canonical form sorts it
    const list = signV4({ ...aws, method: 'GET', url: new URL('https://examplebucket.s3.amazonaws.com/?prefix=J&max-keys=2'), headers: h, payloadHash: EMPTY_SHA256 });
    assert.match(list.canonicalRequest, /^GET\n\/\nmax-keys=2&prefix=J\n/);
    assert.equal(list.signature, '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7');
  });

  test('SigV4: AWS sig-v4 test suite "get-vanilla"', () => {
    const r = signV4({
      accessKeyId: 'AKIDEXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
      region: 'us-east-1',
      service: 'service',
      date: new Date('2015-08-30T12:36:00Z'),
      method: 'GET',
      url: new URL('https://example.amazonaws.com/'),
      headers: {},
      payloadHash: EMPTY_SHA256,
    });
    assert.equal(r.headers.authorization, 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31');
  });

  test('OSS: Aliyun documentation PUT example', () => {
    const r = signOss({
      method: 'PUT',
      contentMd5: 'ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=',
      contentType: 'text/html',
      date: 'Thu, 17 Nov 2005 18:49:58 GMT',
      headers: { 'X-OSS-Meta-Author': 'foo@bar.com', 'X-OSS-Magic': 'abracadabra', Host: 'oss-example.oss-cn-hangzhou.aliyuncs.com' },
      resource: '/oss-example/nelson',
      accessKeyId: '44CF9590006BF252F707',
      accessKeySecret: 'OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV',
    });
    assert.equal(r.stringToSign, 'PUT\nODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=\ntext/html\nThu, 17 Nov 2005 18:49:58 GMT\nx-oss-magic:abracadabra\nx-oss-meta-author:foo@bar.com\n/oss-example/nelson');
    assert.equal(r.authorization, 'OSS 44CF9590006BF252F707:26NBxoKdsyly4EDv6inkoDft/yA=');
  });

  test('RFC 3986 encoding of object keys', () => {
    assert.equal(awsUriEncode('nydus/sha256:ab cd+e~f_g.h-i*', true), 'nydus/sha256%3Aab%20cd%2Be~f_g.h-i%2A');
    assert.equal(awsUriEncode('a/b'), 'a%2Fb');
    assert.equal(awsUriEncode('é'), '%C3%A9');
  });
});

describe('s3 backend against s3rver (SigV4 verified by the server)', () => {
  test('ranged reads: first bytes, last byte, middle, whole blob, empty; signed path with an escaped prefix', async () => {
    const b = new S3Backend(s3Cfg(), FAST);
    try {
      assert.equal(b.blobUrl(BLOB_ID), `http://${s3Host}/${BUCKET}/nydus/sha256%3A${BLOB_ID}`);
      // (not `bytes=0-0`: s3rver answers it with the whole object, which the backend rightly refuses)
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 2), BLOB.subarray(0, 2));
      assert.deepEqual(await b.readRange(BLOB_ID, BLOB.length - 1, 1), BLOB.subarray(BLOB.length - 1));
      assert.deepEqual(await b.readRange(BLOB_ID, 12345, 100000), BLOB.subarray(12345, 112345));
      assert.deepEqual(await b.readRange(BLOB_ID, 0, BLOB.length), BLOB);
      assert.deepEqual(await b.readRange(SMALL_ID, 10, 990), SMALL.subarray(10));
      assert.equal((await b.readRange(BLOB_ID, 7, 0)).length, 0);
    } finally {
      await b.close();
    }
  });

  test('endpoint given with a scheme, default scheme https rewritten by it', async () => {
    const b = new S3Backend(s3Cfg({ scheme: 'https', endpoint: `http://${s3Host}/` }), FAST);
    try {
      assert.equal(b.blobUrl('x'), `http://${s3Host}/${BUCKET}/nydus/sha256%3Ax`);
      assert.deepEqual(await b.readRange(SMALL_ID, 0, 16), SMALL.subarray(0, 16));
    } finally {
      await b.close();
    }
    const d = new S3Backend(s3Cfg({ endpoint: '' }));
    assert.equal(d.blobUrl('abc'), `http://s3.amazonaws.com/${BUCKET}/nydus/sha256%3Aabc`);
    await d.close();
  });

  test('a wrong secret is refused by the server: 403 SignatureDoesNotMatch, not retried', async () => {
    const b = new S3Backend(s3Cfg({ access_key_secret: 'not-the-secret', retry_limit: 3 }), FAST);
    try {
      const e = await rejects(b.readRange(BLOB_ID, 0, 10), /^s3: GET .*nydus\/sha256%3A[0-9a-f]{64} \(range 0\+10\): HTTP 403 access denied \(credentials or signature rejected\): SignatureDoesNotMatch/);
      assert.equal(e.context.retryable, false);
      assert.equal(e.context.attempts, undefined, 'a 403 is not retried');
      assert.equal(e.context.bucket, BUCKET);
      assert.equal(e.context.key, PREFIX + BLOB_ID);
    } finally {
      await b.close();
    }
  });

  test('an unknown access key: 403 InvalidAccessKeyId', async () => {
    const b = new S3Backend(s3Cfg({ access_key_id: 'AKIDUNKNOWN' }), FAST);
    try {
      await rejects(b.readRange(BLOB_ID, 0, 10), /HTTP 403 .*InvalidAccessKeyId/);
    } finally {
      await b.close();
    }
  });

  test('missing object, missing bucket, range past the end', async () => {
    const b = new S3Backend(s3Cfg(), FAST);
    const nb = new S3Backend(s3Cfg({ bucket_name: 'no-such-bucket' }), FAST);
    try {
      const e = await rejects(b.readRange('0'.repeat(64), 0, 10), /HTTP 404 blob not found: NoSuchKey/);
      assert.equal(e.context.retryable, false);
      await rejects(nb.readRange(BLOB_ID, 0, 10), /HTTP 404 bucket "no-such-bucket" not found: NoSuchBucket/);
      await rejects(b.readRange(SMALL_ID, SMALL.length, 10), /HTTP 416 range not satisfiable/);
    } finally {
      await b.close();
      await nb.close();
    }
  });

  test('anonymous access when no keys are configured (no Authorization header)', async () => {
    const seen: http.IncomingHttpHeaders[] = [];
    const front = await startFront((req) => {
      seen.push(req.headers);
      return { path: req.url!, headers: req.headers };
    });
    const b = new S3Backend(s3Cfg({ endpoint: front.host, access_key_id: '', access_key_secret: '' }), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 100, 50), BLOB.subarray(100, 150));
      assert.equal(seen.length, 1);
      assert.equal(seen[0].authorization, undefined);
      assert.equal(seen[0].range, 'bytes=100-149');
    } finally {
      await b.close();
    }
    assert.throws(() => new S3Backend(s3Cfg({ access_key_secret: '' })), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT' && /both access_key_id and access_key_secret/.test(e.message));
  });

  test('503 SlowDown and dropped connections are retried (re-signed) up to retry_limit', async () => {
    let n = 0;
    const front = await startFront((req, res) => {
      n++;
      if (n === 1) {
        res.writeHead(503, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>');
        return undefined;
      }
      if (n === 2) {
        req.socket.destroy();
        return undefined;
      }
      return { path: req.url!, headers: req.headers }; // Host kept: the signature covers it
    });
    const b = new S3Backend(s3Cfg({ endpoint: front.host, retry_limit: 2 }), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 5000, 3000), BLOB.subarray(5000, 8000));
      assert.equal(n, 3);
      const dates = front.requests.map((r) => r.headers.authorization);
      assert.ok(dates.every((a) => typeof a === 'string' && a.startsWith('AWS4-HMAC-SHA256 Credential=' + KEY_ID + '/')));
      // retry_limit 0: the 503 is returned, naming the S3 error code
      n = 0;
      const b0 = new S3Backend(s3Cfg({ endpoint: front.host }), FAST);
      const e = await rejects(b0.readRange(BLOB_ID, 0, 10), /HTTP 503 unexpected status: SlowDown: Please reduce your request rate/);
      assert.equal(e.context.retryable, true);
      await b0.close();
    } finally {
      await b.close();
    }
  });

  test('connections are reused and bounded per host (HttpClient)', async () => {
    const b = new S3Backend(s3Cfg(), { ...FAST, maxConnections: 3 });
    const before = s3Connections;
    try {
      const reads = Array.from({ length: 40 }, (_, i) => {
        const off = (i * 7919) % (BLOB.length - 4096);
        return b.readRange(BLOB_ID, off, 4096).then((d) => assert.deepEqual(d, BLOB.subarray(off, off + 4096)));
      });
      await Promise.all(reads);
      const opened = s3Connections - before;
      assert.ok(opened >= 1 && opened <= 3, `40 reads opened ${opened} connections, expected 1..3`);
    } finally {
      await b.close();
    }
  });
});

describe('oss backend (virtual-hosted, OSS signature checked by an OSS front over s3rver)', () => {
  const ENDPOINT_HOST = 'oss-cn-test.aliyuncs.test';

  /**
   * A minimal OSS front: checks virtual-hosted addressing and the OSS header signature (written
   * here from the Aliyun documentation, independently of src/: HMAC-SHA1 over
   * VERB, Content-MD5, Content-Type, Date, x-oss-* headers, /bucket/key; Date within 15 minutes),
   * then lets s3rver serve the object (path-style, unsigned). s3rver's own V2 header check signs
   * an empty Date line, so it cannot stand in for OSS here.
   */
  async function ossFront() {
    return startFront((req, res) => {
      const deny = (status: number, code: string, message: string) => {
        res.writeHead(status, { 'content-type': 'application/xml' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`);
        return undefined;
      };
      const host = (req.headers.host ?? '').replace(/:\d+$/, '');
      const m = /^([^.]+)\.oss-cn-test\.aliyuncs\.test$/.exec(host);
      if (!m) return deny(400, 'InvalidHost', `not virtual-hosted: ${host}`);
      const bucket = m[1];
      const key = decodeURIComponent(new URL(req.url!, 'http://x').pathname.slice(1));
      const auth = req.headers.authorization;
      if (auth !== undefined) {
        const a = /^OSS ([^:]+):([A-Za-z0-9+/=]+)$/.exec(auth);
        if (!a) return deny(400, 'InvalidArgument', 'Authorization header is not "OSS id:signature"');
        const date = req.headers.date ?? '';
        if (!(Math.abs(Date.now() - Date.parse(date)) < 15 * 60_000)) return deny(403, 'RequestTimeTooSkewed', `bad Date ${date}`);
        if (a[1] !== KEY_ID) return deny(403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.');
        const ossHeaders = Object.keys(req.headers)
          .filter((h) => h.startsWith('x-oss-'))
          .sort()
          .map((h) => `${h}:${req.headers[h]}\n`)
          .join('');
        const sts = `${req.method}\n${req.headers['content-md5'] ?? ''}\n${req.headers['content-type'] ?? ''}\n${date}\n${ossHeaders}/${bucket}/${key}`;
        const want = crypto.createHmac('sha1', SECRET).update(sts).digest('base64');
        if (a[2] !== want) return deny(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.');
      }
      const headers: http.OutgoingHttpHeaders = { ...req.headers, host: s3Host };
      delete headers.authorization;
      return { path: `/${bucket}${req.url}`, headers };
    });
  }

  function ossCfg(port: number, extra: Partial<OssBackendConfig> = {}): OssBackendConfig {
    return {
      scheme: 'http',
      endpoint: `${ENDPOINT_HOST}:${port}`,
      bucket_name: BUCKET,
      object_prefix: 'oss/',
      access_key_id: KEY_ID,
      access_key_secret: SECRET,
      skip_verify: false,
      ca_cert_files: [],
      timeout: 5,
      connect_timeout: 5,
      retry_limit: 0,
      proxy: NO_PROXY,
      ...extra,
    };
  }
  const resolve = { [`${BUCKET}.${ENDPOINT_HOST}`]: '127.0.0.1' };

  test('signed ranged reads; URL is bucket.endpoint/prefix+id; Date and OSS Authorization sent', async () => {
    const front = await ossFront();
    const b = new OssBackend(ossCfg(front.port), { ...FAST, resolve });
    try {
      assert.equal(b.blobUrl(BLOB_ID), `http://${BUCKET}.${ENDPOINT_HOST}:${front.port}/oss/${BLOB_ID}`);
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 2), BLOB.subarray(0, 2));
      assert.deepEqual(await b.readRange(BLOB_ID, 200000, BLOB.length - 200000), BLOB.subarray(200000));
      const req = front.requests[0];
      assert.equal(req.headers.host, `${BUCKET}.${ENDPOINT_HOST}:${front.port}`);
      assert.match(req.headers.authorization ?? '', new RegExp(`^OSS ${KEY_ID}:[A-Za-z0-9+/]{27}=$`));
      assert.ok(!Number.isNaN(Date.parse(req.headers.date ?? '')));
    } finally {
      await b.close();
    }
  });

  test('a wrong secret is refused (403), anonymous works, missing object is 404', async () => {
    const front = await ossFront();
    const bad = new OssBackend(ossCfg(front.port, { access_key_secret: 'wrong' }), { ...FAST, resolve });
    const anon = new OssBackend(ossCfg(front.port, { access_key_id: '', access_key_secret: '' }), { ...FAST, resolve });
    try {
      const e = await rejects(bad.readRange(BLOB_ID, 0, 10), /^oss: GET .*: HTTP 403 access denied \(credentials or signature rejected\): SignatureDoesNotMatch/);
      assert.equal(e.context.retryable, false);
      assert.deepEqual(await anon.readRange(BLOB_ID, 10, 10), BLOB.subarray(10, 20));
      assert.equal(front.requests[front.requests.length - 1].headers.authorization, undefined);
      await rejects(anon.readRange('f'.repeat(64), 0, 10), /HTTP 404 blob not found: NoSuchKey/);
    } finally {
      await bad.close();
      await anon.close();
    }
  });

  test('endpoint is required and must be a host', () => {
    assert.throws(() => new OssBackend(ossCfg(1, { endpoint: '' })), /oss backend needs "endpoint"/);
    assert.throws(() => new OssBackend(ossCfg(1, { endpoint: 'host/path' })), /endpoint must be a host\[:port\]/);
  });
});

describe('makeBackend: s3 and oss registrations', () => {
  function entry(backend: Record<string, unknown>) {
    return parseBlobCacheEntry(
      { type: 'bootstrap', id: 'img', config_v2: { version: 2, backend, cache: { type: 'fscache', fscache: { work_dir: '/nonexistent' } }, metadata_path: '/nonexistent/image.boot' } },
      { checkPaths: false },
    );
  }

  test('config_v2 s3 → a working S3Backend; legacy oss → OssBackend', async () => {
    const b = makeBackend(entry({ type: 's3', s3: { scheme: 'http', endpoint: s3Host, region: 'us-east-1', bucket_name: BUCKET, object_prefix: PREFIX, access_key_id: KEY_ID, access_key_secret: SECRET } }));
    try {
      assert.equal(b.kind, 's3');
      assert.deepEqual(await b.readRange(SMALL_ID, 0, SMALL.length), SMALL);
    } finally {
      await b.close();
    }
    const legacy = parseBlobCacheEntry(
      { type: 'bootstrap', id: 'img', config: { backend_type: 'oss', backend_config: { endpoint: 'oss-cn-hangzhou.aliyuncs.com', bucket_name: 'b', object_prefix: 'p/' }, cache_type: 'fscache', cache_config: { work_dir: '/x' }, metadata_path: '/x/i.boot' } },
      { checkPaths: false },
    );
    const o = makeBackend(legacy);
    assert.ok(o instanceof OssBackend);
    assert.equal(o.blobUrl('abc'), 'https://b.oss-cn-hangzhou.aliyuncs.com/p/abc');
    await o.close();
    assert.throws(() => makeBackend(entry({ type: 'localdisk', localdisk: { device_path: '/dev/vdb' } })), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
  });
});
