/**
 * Issue 4, "Faults": the registry backend + blob session under network faults, against the REAL
 * docker-registry with a fault-injecting proxy (test/helpers/fault-proxy.ts) in between.
 *
 * Set-up: a nydus image built by the builder (64 KiB chunks, digests in the bootstrap); its blob
 * is pushed with RegistryImageSink to an anonymous registry and to a token-auth registry. Each
 * case registers the image as the daemon does (makeBackend from a parsed registration with
 * `timeout`/`connect_timeout` 1 s and `retry_limit` 2, ImageRegistry, ChunkedBlobSession with
 * digest validation) over a real sparse cache file (SparseFileWriter), injects a fault and has
 * several concurrent readers ask for every chunk range.
 *
 * Invariants checked for every fault:
 * - every read settles within a bound computed from timeout × attempts (a watchdog, not the
 *   test runner's timeout, catches a hung reader);
 * - a read either succeeds or fails with an EIO-class NydusError (ERR_BACKEND, or
 *   ERR_DIGEST_MISMATCH / ERR_BAD_BLOB for corrupted bytes), and faults within the retry budget
 *   do not fail reads at all;
 * - the cache file never holds a wrong byte (every present extent equals the blob's data);
 * - once the fault is cleared, the same session reads everything correctly (no poisoned
 *   in-flight state) and has nothing left in flight;
 * - no unhandled rejection.
 *
 * Faults: HTTP 500/502/503, TCP reset before the reply and mid-body, truncated bodies (early FIN;
 * short body with a matching Content-Length), stalls before the headers and mid-body, slow-loris
 * bodies, corrupted bodies (chunk data and the ci array), a random mix, an endpoint that dies
 * and comes back; token mode: faults through the token flow, token-endpoint 503 / stall, tokens
 * expiring at the registry mid-run, a revoked token, 401 on everything; and a `proxy` section
 * whose proxy dies mid-run (fallback true). Within the retry budget (≤ retry_limit faults per
 * read) reads must succeed; persistent faults must fail reads with the fault's own error.
 * NYDUS_TS_FAULTS_DEBUG=1 prints per-case outcomes and session metrics.
 */
import { test, describe, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { startRegistry, TestRegistry } from './helpers/registry';
import { FaultProxy, FaultRule, Fault, TOKEN_PATH } from './helpers/fault-proxy';
import { createImage } from '../src/builder/build';
import { exportBlobData } from '../src/tools/export';
import { readBootstrap } from '../src/format/bootstrap-reader';
import { ChunkInfo } from '../src/format/layout';
import { ImageRegistry } from '../src/daemon/image-registry';
import { SparseFileWriter } from '../src/daemon/file-writer';
import { BlobBackend, BlobSession } from '../src/daemon/interfaces';
import { makeBackend } from '../src/daemon/daemon';
import { parseBlobCacheEntry } from '../src/daemon/config';
import { ProxiedBackend } from '../src/backends/proxy';
import { RegistryBackend } from '../src/backends/registry';
import { MIN_PROGRESS } from '../src/backends/http';
import { RegistryImageSink } from '../src/oci/registry-client';
import { MediaTypes } from '../src/oci/types';
import { ChunkPool } from '../src/codec/chunk-pool';
import { NydusError } from '../src/errors';

const REPO = 'faults/nydus';
const TIMEOUT_S = 1; // the registration's `timeout` and `connect_timeout` (seconds; the config's minimum)
const RETRY_LIMIT = 2;
const READERS = 4;
/** EIO-class errors: what the front end turns into a failed read */
const EIO_CODES = new Set(['ERR_BACKEND', 'ERR_DIGEST_MISMATCH', 'ERR_BAD_BLOB']);

/**
 * Upper bound of one ensure(): it may wait for the ci array load and for a chunk fetch (each one
 * backend readRange; a fetch another request started earlier ends no later). A readRange makes
 * 1 + retry_limit attempts; an attempt is at most 3 HTTP exchanges (blob GET, 401 → token GET
 * → blob GET), each at most timeout for the headers plus timeout per MIN_PROGRESS body bytes
 * (HttpClient.send), plus the backoffs (≤ 200 ms, 400 ms by default).
 */
function ensureBound(token: boolean): number {
  const t = TIMEOUT_S * 1000;
  const send = t + t * (Math.floor(maxReadBytes / MIN_PROGRESS) + 1) + 500;
  const attempt = (token ? 3 : 1) * send;
  let backoff = 0;
  for (let i = 0; i < RETRY_LIMIT; i++) backoff += Math.min(5000, 200 * 2 ** i);
  const readRange = (RETRY_LIMIT + 1) * attempt + backoff;
  return 2 * readRange + 1500; // + decode / write slack on 2 shared cores
}

let work: string;
let boot: string;
let blobFile: string;
let blobId: string;
let expected: Buffer;
let chunks: ChunkInfo[];
/** the largest backend read: the ci array, or two adjacent chunks (a read range spans ≤ 2) */
let maxReadBytes = 0;
/** the Range header of the ci array load */
let ciRange = '';
let pool: ChunkPool;
let anon: TestRegistry;
let tok: TestRegistry;
let proxy: FaultProxy;
let tokProxy: FaultProxy;
const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => unhandled.push(e);

async function pushBlob(reg: TestRegistry): Promise<void> {
  const sink = new RegistryImageSink(`${reg.host}/${REPO}:latest`, { insecure: true, ...(reg.creds ? { auth: reg.creds.basic } : {}), dockerConfig: false });
  try {
    await sink.pushBlob({ mediaType: MediaTypes.nydusBlob, digest: `sha256:${blobId}`, size: fs.statSync(blobFile).size }, { path: blobFile });
    assert.ok(await sink.hasBlob({ mediaType: MediaTypes.nydusBlob, digest: `sha256:${blobId}`, size: fs.statSync(blobFile).size }));
  } finally {
    await sink.close();
  }
}

before(async () => {
  process.on('unhandledRejection', onUnhandled);
  work = makeTmpDir('nydus-faults-');
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  const text = (seed: number, n: number) => {
    let s = '';
    for (let i = 0; s.length < n; i++) s += `line ${seed}:${i} ${crypto.createHash('md5').update(`${seed}/${i}`).digest('hex')}\n`;
    return s.slice(0, n);
  };
  fs.writeFileSync(path.join(src, 'a.txt'), text(1, 1_300_000));
  fs.writeFileSync(path.join(src, 'b.bin'), crypto.randomBytes(900_000));
  fs.writeFileSync(path.join(src, 'd', 'c.txt'), text(3, 70_000));
  fs.writeFileSync(path.join(src, 'small'), 'tiny\n');
  boot = path.join(work, 'image.boot');
  const blobDir = path.join(work, 'blobs');
  const r = await createImage({ type: 'dir', source: src, bootstrap: boot, blobDir, chunkSize: 0x10000 });
  assert.equal(r.blobs.length, 1);
  blobId = r.blobs[0];
  blobFile = path.join(blobDir, blobId);
  const raw = path.join(work, 'blob.raw');
  await exportBlobData(boot, blobDir, blobId, raw);
  expected = fs.readFileSync(raw);
  chunks = readBootstrap(fs.readFileSync(boot)).chunkTable.filter((c) => c.blobIndex === 0).sort((a, b) => a.uncompressedOffset - b.uncompressedOffset);
  assert.ok(chunks.length >= 30, `${chunks.length} chunks`);
  const bootInfo = readBootstrap(fs.readFileSync(boot)).blobs[0];
  maxReadBytes = bootInfo.ciCompressedSize + 4096;
  ciRange = `bytes=${bootInfo.ciOffset}-${bootInfo.ciOffset + bootInfo.ciCompressedSize + 4096 - 1}`;
  for (let i = 0; i + 1 < chunks.length; i++) maxReadBytes = Math.max(maxReadBytes, chunks[i].compressedSize + chunks[i + 1].compressedSize);
  pool = await ChunkPool.create({ threads: 2 });
  // the image is built: from here on no synchronous child processes (token server in-process)
  anon = await startRegistry({ auth: 'none', logLevel: 'warn' });
  tok = await startRegistry({ auth: 'token', logLevel: 'warn' });
  await pushBlob(anon);
  await pushBlob(tok);
  proxy = await FaultProxy.start({ upstream: anon.host });
  tokProxy = await FaultProxy.start({ upstream: tok.host, proxyTokenRealm: true });
});

after(async () => {
  process.off('unhandledRejection', onUnhandled);
  await proxy?.close();
  await tokProxy?.close();
  await pool?.close();
  await anon?.stop();
  await tok?.stop();
  if (work) removeTmpDir(work);
});

// ---------------------------------------------------------------------------------------------

let seq = 0;

interface Opened {
  s: BlobSession;
  w: SparseFileWriter;
  backend: BlobBackend;
  logs: string[];
  /** another session of the same registration (same backend) over a fresh cache file */
  reopen(): Promise<{ s: BlobSession; w: SparseFileWriter }>;
  close(): Promise<void>;
}

/** Register the image the way the daemon does and open its blob over a fresh cache file. */
async function openSession(backendConfig: Record<string, unknown>, daemonAmplify = false): Promise<Opened> {
  const id = `img${++seq}`;
  const entry = parseBlobCacheEntry({
    type: 'bootstrap',
    id,
    config: {
      backend_type: 'registry',
      backend_config: { scheme: 'http', repo: REPO, timeout: TIMEOUT_S, connect_timeout: TIMEOUT_S, retry_limit: RETRY_LIMIT, ...backendConfig },
      cache_type: 'fscache',
      cache_config: { work_dir: work },
      metadata_path: boot,
    },
  });
  const backend = makeBackend(entry);
  const logs: string[] = [];
  const reg = new ImageRegistry({ pool, log: (level, msg) => logs.push(`${level}: ${msg}`) });
  // amplify 0: a read asks for its own chunks only, so fault counts map to requests; or the
  // daemon's own settings (amplify_io of the registration, readahead by default)
  reg.register({ id, domainId: '', bootstrapPath: boot, backend, session: { amplify: daemonAmplify ? entry.amplifyIo : 0, validate: true } });
  const l = reg.resolve(id, blobId);
  if (l.kind !== 'blob') throw new Error(`resolve: ${l.kind}`);
  const opened: Array<{ s: BlobSession; w: SparseFileWriter }> = [];
  let n = 0;
  const open = async () => {
    const w = new SparseFileWriter(path.join(work, `cache-${id}-${n++}`), expected.length);
    const o = { s: await l.open(w), w };
    opened.push(o);
    return o;
  };
  const { s, w } = await open();
  return {
    s, w, backend, logs,
    reopen: open,
    async close() {
      for (const o of opened) {
        // bounded: a hung fetch must fail its test, not hang the file
        let t: NodeJS.Timeout | undefined;
        await Promise.race([o.s.close(), new Promise((r) => (t = setTimeout(r, 10_000)))]);
        clearTimeout(t);
        o.w.close();
        fs.rmSync(o.w.path, { force: true });
      }
      await backend.close();
    },
  };
}

interface Outcome {
  ok: number;
  failed: Array<{ range: [number, number]; err: unknown }>;
  hung: string[];
  maxMs: number;
  /** reads made */
  total: number;
  ranges: Array<[number, number]>;
}

/** A read range per chunk (offset inside the chunk, sometimes spanning into the next one). */
function rangesFor(readerNo: number, sequential = false): Array<[number, number]> {
  const out: Array<[number, number]> = chunks.map((c, i) => {
    const off = c.uncompressedOffset + ((i * 977 + readerNo * 131) % Math.max(1, c.uncompressedSize));
    const len = i % 3 === 0 ? c.uncompressedSize : 1 + ((i * 7919) % 5000);
    return [off, Math.min(len, expected.length - off)];
  });
  if (sequential) return out;
  // each reader its own order (deterministic shuffle)
  let x = 0x9e3779b9 ^ (readerNo * 0x85ebca6b);
  for (let i = out.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) >>> 0;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** ensure() with a watchdog: 'hung' when it does not settle within `boundMs` */
async function guarded(s: BlobSession, off: number, len: number, boundMs: number): Promise<'ok' | 'hung' | { err: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const settled = s.ensure(off, len).then(
    () => 'ok' as const,
    (err: unknown) => ({ err }),
  );
  const watchdog = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), boundMs)));
  try {
    return await Promise.race([settled, watchdog]);
  } finally {
    clearTimeout(timer);
  }
}

interface ReadOptions {
  /** reads each reader keeps in flight (default 1: one after another) */
  depth?: number;
  /** reads per reader (default: one per chunk) */
  limit?: number;
  /** readers go through the blob in order (default: each in its own random order) */
  sequential?: boolean;
}

/** READERS concurrent readers over every chunk range; each read has a watchdog of `boundMs`. */
async function readAll(s: BlobSession, boundMs: number, ro: ReadOptions = {}): Promise<Outcome> {
  const o: Outcome = { ok: 0, failed: [], hung: [], maxMs: 0, total: 0, ranges: [] };
  const reader = async (n: number) => {
    const todo = rangesFor(n, ro.sequential).slice(0, ro.limit ?? chunks.length);
    const lane = async () => {
      for (let r = todo.shift(); r; r = todo.shift()) {
        const [off, len] = r;
        o.total++;
        o.ranges.push(r);
        const t0 = performance.now();
        const res = await guarded(s, off, len, boundMs);
        o.maxMs = Math.max(o.maxMs, performance.now() - t0);
        if (res === 'hung') {
          o.hung.push(`reader ${n}: ensure(${off}, ${len}) did not settle within ${boundMs} ms`);
          return; // this lane is stuck; the others go on
        }
        if (res === 'ok') o.ok++;
        else o.failed.push({ range: r, err: res.err });
      }
    };
    await Promise.all(Array.from({ length: ro.depth ?? 1 }, lane));
  };
  await Promise.all(Array.from({ length: READERS }, (_, n) => reader(n)));
  return o;
}

/** is [off, off+len) inside the extents? */
function covered([off, len]: [number, number], present: Array<[number, number]>): boolean {
  return present.some(([a, b]) => off >= a && off + len <= b);
}

/** the first blob requests since log entry `from` were the ci array load, `n` times faulted, then a clean retry */
function assertCiLoadFaulted(via: FaultProxy, from: number, n: number): void {
  const first = via.log.slice(from).filter((r) => /\/blobs\//.test(r.path) && r.upstreamStatus !== 401).slice(0, n + 1);
  assert.deepEqual(first.map((r) => r.range), new Array(n + 1).fill(ciRange), 'the ci array load was retried');
  assert.ok(first.slice(0, n).every((r) => r.fault), 'the ci array load attempts were faulted');
  assert.ok(!first[n].fault);
}

function describeFailures(o: Outcome, max = 3): string {
  return o.failed.slice(0, max).map((f) => `${f.range}: ${(f.err as Error)?.message ?? String(f.err)}`).join('\n  ');
}

/** Every byte present in the cache file is the blob's byte; returns the bytes present. */
function checkCache(w: SparseFileWriter, present: Array<[number, number]>): number {
  const got = fs.readFileSync(w.path);
  assert.equal(got.length, expected.length, 'cache file size');
  let n = 0;
  for (const [a, b] of present) {
    n += b - a;
    if (!got.subarray(a, b).equals(expected.subarray(a, b))) {
      let i = a;
      while (i < b && got[i] === expected[i]) i++;
      assert.fail(`WRONG BYTES in the cache file at ${i} (extent ${a}-${b})`);
    }
  }
  return n;
}

interface CaseOptions {
  /** faults to inject (into `via`, default: the anonymous registry's proxy) */
  rules: FaultRule[];
  via?: FaultProxy;
  /** backend config: default `host` = the proxy */
  backend?: Record<string, unknown>;
  /** load the ci array (and chunk 0) before injecting, so the faults hit chunk data */
  warm?: boolean;
  /** 'ok': every read succeeds; 'fail': every read (after warm-up) fails; 'any': either */
  expect: 'ok' | 'fail' | 'any';
  /** allowed error codes (default EIO_CODES), and the fault's own error message (most failures must match) */
  codes?: Set<string>;
  message?: RegExp;
  /** faults that must have been applied: kind → at least this many */
  minHits?: Partial<Record<Fault['kind'], number>>;
  token?: boolean;
  /** extra checks on the outcome before the fault is cleared */
  check?: (o: Outcome, x: Opened) => void | Promise<void>;
  /** how the readers read while the fault is on */
  read?: ReadOptions;
  /** the daemon's amplification and readahead instead of amplify 0 */
  daemonAmplify?: boolean;
}

/** One fault case; returns the outcome (while faulty) for extra assertions. */
async function faultCase(c: CaseOptions): Promise<Outcome> {
  const via = c.via ?? proxy;
  const reg = c.token ? tok : anon;
  const x = await openSession({ host: via.host, ...(c.token ? { auth: reg.creds!.basic } : {}), ...c.backend }, c.daemonAmplify);
  const bound = ensureBound(!!c.token);
  const unhandledBefore = unhandled.length;
  try {
    return await reg.logOnFailure(async () => {
      if (c.warm) await x.s.ensure(0, 1);
      const presentBefore = await x.w.presentRanges();
      const hitsBefore = { ...via.applied };
      for (const r of c.rules) via.inject(r);
      const o = await readAll(x.s, bound, c.read);
      const left = via.pending();
      via.clear();
      if (process.env.NYDUS_TS_FAULTS_DEBUG) {
        const codes: Record<string, number> = {};
        for (const f of o.failed) codes[(f.err as NydusError).code] = (codes[(f.err as NydusError).code] ?? 0) + 1;
        const applied = Object.fromEntries(Object.entries(via.applied).map(([k, v]) => [k, v - (hitsBefore[k] ?? 0)]).filter(([, v]) => v));
        process.stderr.write(`[faults] proxy: clients ${via.openConnections()} upstream ${JSON.stringify(via.upstreamConnections())}\n`);
        process.stderr.write(`[faults] ok ${o.ok}/${o.total} failed ${JSON.stringify(codes)} maxMs ${o.maxMs.toFixed(0)} bound ${bound} applied ${JSON.stringify(applied)} metrics ${JSON.stringify({ ...x.s.metrics(), read_latency_hist: undefined })}\n  ${describeFailures(o, 2)}\n`);
      }
      assert.deepEqual(o.hung, [], 'hung readers');
      const codes = c.codes ?? EIO_CODES;
      for (const f of o.failed) {
        assert.ok(f.err instanceof NydusError, `a read failed with a non-NydusError: ${(f.err as Error)?.stack ?? f.err}`);
        assert.ok(codes.has(f.err.code), `a read failed with ${f.err.code}: ${f.err.message}`);
      }
      if (c.message && o.failed.length > 0) {
        // the fault's own error, for most reads (on a loaded machine, a last attempt may also
        // time out waiting for one of the connections the faulty exchanges keep busy)
        const own = o.failed.filter((f) => c.message!.test((f.err as Error).message)).length;
        assert.ok(own * 2 >= o.failed.length, `only ${own} of ${o.failed.length} failures match ${c.message}:\n  ${describeFailures(o)}`);
      }
      assert.equal(o.ok + o.failed.length, o.total);
      if (c.expect === 'ok') assert.equal(o.failed.length, 0, `reads failed within the retry budget:\n  ${describeFailures(o)}`);
      if (c.expect === 'fail') {
        // only reads of what was present before the fault may succeed
        const servable = o.ranges.filter((r) => covered(r, presentBefore)).length;
        assert.equal(o.ok, servable, `reads succeeded despite a persistent fault (${o.ok} of ${o.total}, ${servable} were cached)`);
        assert.ok(o.failed.length > 0);
      }
      for (const [kind, n] of Object.entries(c.minHits ?? {})) {
        const got = (via.applied[kind] ?? 0) - (hitsBefore[kind] ?? 0);
        assert.ok(got >= n!, `fault ${kind} applied ${got} times, expected at least ${n} (pending ${left})`);
      }
      checkCache(x.w, await x.w.presentRanges());
      await c.check?.(o, x);

      // the fault is gone: the same session reads everything, right, without leftovers
      const again = await readAll(x.s, bound);
      assert.deepEqual(again.hung, [], 'hung readers after the fault cleared');
      assert.equal(again.failed.length, 0, `reads failed after the fault cleared:\n  ${describeFailures(again)}`);
      await new Promise((r) => setImmediate(r));
      assert.equal((x.s as unknown as { inflight: Map<number, unknown> }).inflight.size, 0, 'chunks still in flight after every read settled');
      assert.ok(fs.readFileSync(x.w.path).equals(expected), 'cache file differs from the blob after a full read');
      assert.equal(unhandled.length, unhandledBefore, `unhandled rejections: ${unhandled.slice(unhandledBefore).map(String).join('; ')}`);
      return o;
    });
  } finally {
    await x.close();
  }
}

// ---------------------------------------------------------------------------------------------

describe('registry backend under faults (anonymous registry)', () => {
  test('baseline: no faults, every read right; the proxy forwards ranges untouched', async () => {
    const o = await faultCase({ rules: [], expect: 'ok' });
    assert.equal(o.ok, READERS * chunks.length);
    assert.ok(proxy.blobRequests().some((r) => r.status === 206));
  });

  test('HTTP 503 then 500 for the next 2 blob requests (ci array load first): retried, all reads succeed', async () => {
    const before = proxy.log.length;
    await faultCase({
      rules: [{ fault: { kind: 'status', status: 503 }, count: 1 }, { fault: { kind: 'status', status: 500 }, count: 1 }],
      expect: 'ok',
      minHits: { status: 2 },
    });
    assertCiLoadFaulted(proxy, before, 2);
  });

  test('HTTP 500 on every blob request: reads fail with ERR_BACKEND after 1 + retry_limit attempts, then recover', async () => {
    const t0 = performance.now();
    const o = await faultCase({
      rules: [{ fault: { kind: 'status', status: 500 }, count: Infinity }],
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 16 },
      message: /HTTP 500 .*after 3 attempts/,
      minHits: { status: 3 },
    });
    assert.ok(o.failed.every((f) => (f.err as NydusError).context.attempts === 3 || /after 3 attempts/.test((f.err as Error).message)));
    assert.ok(performance.now() - t0 < 30_000);
  });

  test('TCP reset before the response, twice: retried, all reads succeed', async () => {
    await faultCase({ rules: [{ fault: { kind: 'reset-before' }, count: 2 }], warm: true, expect: 'ok', minHits: { 'reset-before': 2 } });
  });

  test('TCP reset in the middle of the body, twice (the ci array load): retried, all reads succeed', async () => {
    const before = proxy.log.length;
    await faultCase({ rules: [{ fault: { kind: 'reset-mid' }, count: 2 }], expect: 'ok', minHits: { 'reset-mid': 2 } });
    assertCiLoadFaulted(proxy, before, 2);
  });

  test('reset mid-body on every blob request: ERR_BACKEND "body cut short"/reset, then recover', async () => {
    await faultCase({
      rules: [{ fault: { kind: 'reset-mid', afterBytes: 100 }, count: Infinity }],
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 16 },
      message: /(cut short|ECONNRESET|other side closed|socket|reset)/i,
      minHits: { 'reset-mid': 3 },
    });
  });

  test('truncated bodies (FIN before Content-Length; short body with a shortened Content-Length): retried, all succeed', async () => {
    await faultCase({
      rules: [{ fault: { kind: 'truncate' }, count: 1 }, { fault: { kind: 'truncate', fixLength: true }, count: 1 }],
      warm: true,
      expect: 'ok',
      minHits: { truncate: 2 },
    });
  });

  test('short bodies on every request: ERR_BACKEND, nothing written, then recover', async () => {
    await faultCase({
      rules: [{ fault: { kind: 'truncate', fixLength: true, afterBytes: 10 }, count: Infinity }],
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 16 },
      message: /short body/,
    });
  });

  test('stall before the headers (longer than the timeout), twice: timed out, retried, all succeed', async () => {
    const o = await faultCase({ rules: [{ fault: { kind: 'stall-headers' }, count: 2 }], warm: true, expect: 'ok', minHits: { 'stall-headers': 2 } });
    assert.ok(o.maxMs >= TIMEOUT_S * 1000 * 0.9, `a stalled read took only ${o.maxMs} ms`);
  });

  test('stall in the middle of the body, twice (the ci array load): timed out, retried, all succeed', async () => {
    const before = proxy.log.length;
    const o = await faultCase({ rules: [{ fault: { kind: 'stall-body' }, count: 2 }], expect: 'ok', minHits: { 'stall-body': 2 } });
    assertCiLoadFaulted(proxy, before, 2);
    assert.ok(o.maxMs >= TIMEOUT_S * 1000 * 0.9, `a stalled read took only ${o.maxMs} ms`);
  });

  test('every blob request stalls (headers or body): reads fail with a timeout within the bound, then recover', async () => {
    const t0 = performance.now();
    await faultCase({
      rules: [{ fault: { kind: 'stall-headers' }, count: 6 }, { fault: { kind: 'stall-body', afterBytes: 1 }, count: Infinity }],
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 8 },
      message: /timeout/,
      minHits: { 'stall-headers': 3, 'stall-body': 3 },
    });
    const took = performance.now() - t0;
    assert.ok(took < 2 * ensureBound(false) + 10_000, `took ${took} ms`);
  });

  test('slow-loris bodies (a few bytes every 0.6 s: never idle for a whole timeout), twice: cut off by the deadline, retried, all succeed', async () => {
    await faultCase({ rules: [{ fault: { kind: 'drip', bytes: 64, intervalMs: 600 }, count: 2 }], warm: true, expect: 'ok', minHits: { drip: 2 } });
  });

  test('slow-loris bodies on every blob request: reads fail with a timeout within the bound, then recover', async () => {
    await faultCase({
      rules: [{ fault: { kind: 'drip', bytes: 64, intervalMs: 600 }, count: Infinity }],
      warm: true,
      expect: 'fail',
      message: /timeout|deadline/,
      read: { depth: 4, limit: 4 },
      minHits: { drip: 3 },
    });
  });

  test('a corrupted body (bytes flipped in a stored, uncompressed chunk) is caught by the chunk digest, never written; a later read succeeds', async () => {
    // a chunk of random data is stored as is: only the digest can tell flipped bytes
    const raw = chunks.find((c) => c.compressedSize === c.uncompressedSize && c.uncompressedOffset > 0);
    assert.ok(raw, 'the image has a stored (incompressible) chunk');
    const coversRaw = (r: { method: string; path: string; range?: string }) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? '');
      return r.method === 'GET' && /\/blobs\//.test(r.path) && !!m && Number(m[1]) <= raw.compressedOffset && Number(m[2]) >= raw.compressedOffset + raw.compressedSize - 1;
    };
    await faultCase({
      rules: [{ fault: { kind: 'corrupt', flips: 3 }, match: coversRaw, count: 1 }],
      warm: true,
      expect: 'any',
      codes: new Set(['ERR_DIGEST_MISMATCH']),
      minHits: { corrupt: 1 },
      check: (o, x) => {
        assert.ok(o.failed.length >= 1, 'a read over the corrupted chunk succeeded');
        // only reads that touch the corrupted chunk failed
        for (const f of o.failed) assert.ok(f.range[0] < raw.uncompressedOffset + raw.uncompressedSize && f.range[0] + f.range[1] > raw.uncompressedOffset, `read ${f.range} failed`);
        assert.ok(x.s.metrics().digest_failures >= 1);
      },
    });
  });

  test('corruption on every blob request: every read fails (digest / decompression), nothing written', async () => {
    await faultCase({
      rules: [{ fault: { kind: 'corrupt', every: 3 }, count: Infinity }], // every chunk in a body is hit
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 16 },
      check: async (o, x) => {
        // compressed chunks fail to decompress or their digest, stored ones their digest
        assert.ok(o.failed.some((f) => (f.err as NydusError).code === 'ERR_DIGEST_MISMATCH'));
        const bad = o.failed.filter((f) => ['ERR_DIGEST_MISMATCH', 'ERR_BAD_BLOB'].includes((f.err as NydusError).code)).length;
        assert.ok(bad * 2 >= o.failed.length, `only ${bad} of ${o.failed.length} failures are digest / decompression errors`);
        assert.ok(x.s.metrics().digest_failures >= 1);
        const present = await x.w.presentRanges();
        const n = present.reduce((a, [s, e]) => a + e - s, 0);
        assert.ok(n <= 0x10000, `${n} bytes present after reads of corrupted chunks only`);
      },
    });
  });

  test('a corrupted chunk-info (ci array) load fails the reads (never wrong bytes); the next read loads it again', async () => {
    const before = proxy.log.length;
    await faultCase({ rules: [{ fault: { kind: 'corrupt', flips: 64 }, count: 1 }], expect: 'any', minHits: { corrupt: 1 }, codes: new Set(['ERR_BAD_BLOB', 'ERR_DIGEST_MISMATCH']) });
    assertCiLoadFaulted(proxy, before, 1);
  });

  test('the registry endpoint goes away (connections reset, then refused) and comes back on the same port', async () => {
    const p = await FaultProxy.start({ upstream: anon.host });
    let back: FaultProxy | undefined;
    const x = await openSession({ host: p.host });
    try {
      await anon.logOnFailure(async () => {
        const bound = ensureBound(false);
        await x.s.ensure(0, 1);
        // bodies stall, and the endpoint dies while they are in flight
        p.inject({ fault: { kind: 'stall-body' }, count: Infinity });
        const killer = (async () => {
          while (p.hits('stall-body') < 1) await new Promise((r) => setTimeout(r, 5));
          await p.kill();
        })();
        const o = await readAll(x.s, bound, { depth: 8, limit: 8 });
        await killer;
        assert.deepEqual(o.hung, []);
        const servable = o.ranges.filter((r) => covered(r, [[0, 0x10000]])).length;
        assert.equal(o.ok, servable, describeFailures(o));
        for (const f of o.failed) {
          assert.ok(f.err instanceof NydusError && f.err.code === 'ERR_BACKEND', String(f.err));
          assert.match(f.err.message, /ECONNREFUSED|ECONNRESET|other side closed|socket|cut short|timeout/i);
        }
        assert.ok(o.failed.some((f) => /ECONNREFUSED/.test((f.err as Error).message)), `no read saw the refused port:\n  ${describeFailures(o)}`);
        checkCache(x.w, await x.w.presentRanges());
        // back on the same port: the same session and backend read everything
        back = await FaultProxy.start({ upstream: anon.host, port: p.port });
        const again = await readAll(x.s, bound);
        assert.deepEqual(again.hung, []);
        assert.equal(again.failed.length, 0, describeFailures(again));
        assert.ok(fs.readFileSync(x.w.path).equals(expected));
      });
    } finally {
      await x.close();
      await p.close();
      await back?.close();
    }
  });

  test('chaos: a random recoverable fault on ~30% of blob requests; invariants hold', async () => {
    const kinds: Fault[] = [
      { kind: 'status', status: 503 }, { kind: 'reset-before' }, { kind: 'reset-mid' }, { kind: 'truncate' },
      { kind: 'truncate', fixLength: true }, { kind: 'status', status: 502 }, { kind: 'stall-body' }, { kind: 'corrupt' },
    ];
    let stalls = 0;
    // deterministic pseudo-random: request n is broken when its hash says so; at most 3 stalls (1 s each)
    const choose = (_r: unknown, n: number): Fault | undefined => {
      const h = Math.imul(n + 1, 2654435761) >>> 0;
      if (h % 10 >= 3) return undefined;
      const f = kinds[(h >>> 8) % kinds.length];
      if (f.kind === 'stall-body' && ++stalls > 3) return kinds[0];
      return f;
    };
    const o = await faultCase({ rules: [{ fault: choose, count: Infinity }], expect: 'any', read: { depth: 2 } });
    assert.ok(o.ok > 0);
    assert.ok(Object.keys(proxy.applied).length >= 4, JSON.stringify(proxy.applied));
  });

  test('the daemon\'s amplification and readahead, sequential readers: resets and 503s on every other request; invariants hold', async () => {
    const choose = (_r: unknown, n: number): Fault | undefined => (n % 4 === 1 ? { kind: 'reset-mid' } : n % 4 === 3 ? { kind: 'status', status: 503 } : undefined);
    const o = await faultCase({ rules: [{ fault: choose, count: Infinity }], daemonAmplify: true, expect: 'any', read: { sequential: true }, minHits: { 'reset-mid': 1, status: 1 } });
    assert.ok(o.ok > 0);
  });
});

describe('registry backend under faults (token auth)', () => {
  test('503 and a mid-body reset through the token flow: retried, all reads succeed', async () => {
    await faultCase({
      via: tokProxy,
      token: true,
      rules: [{ fault: { kind: 'status', status: 503 }, count: 1 }, { fault: { kind: 'reset-mid' }, count: 1 }],
      expect: 'ok',
      minHits: { status: 1, 'reset-mid': 1 },
    });
  });

  test('the token endpoint fails (503, then a stall) while the first token is fetched: retried, all reads succeed', async () => {
    await faultCase({
      via: tokProxy,
      token: true,
      rules: [
        { fault: { kind: 'status', status: 503 }, match: (r) => r.path.startsWith(TOKEN_PATH), count: 1 },
        { fault: { kind: 'stall-headers' }, match: (r) => r.path.startsWith(TOKEN_PATH), count: 1 },
      ],
      expect: 'ok',
      minHits: { status: 1, 'stall-headers': 1 },
    });
    assert.ok(tokProxy.log.some((r) => r.path.startsWith(TOKEN_PATH) && r.status === 200), 'token requests went through the proxy');
  });

  test('tokens expire mid-run (the registry answers 401): refreshed transparently, all reads succeed', async () => {
    const ts = tok.tokenServer!;
    // tokens die at the registry after 2 s, but the token server claims 300 s: no early refresh
    ts.setTtl(2, 300);
    const issuedBefore = ts.stats.issued;
    const logBefore = tokProxy.log.length;
    // and one refresh mid-run fails (token endpoint 503): the read is retried
    tokProxy.inject({ fault: { kind: 'status', status: 503 }, match: (r) => r.path.startsWith(TOKEN_PATH), skip: 1, count: 1 });
    try {
      const x = await openSession({ host: tokProxy.host, auth: tok.creds!.basic });
      try {
        const bound = ensureBound(true);
        // three waves of readers over > 2 token lifetimes, each on other chunks
        for (let wave = 0; wave < 3; wave++) {
          const sub = chunks.filter((_c, i) => i % 3 === wave);
          const res = await Promise.all(
            sub.map(async (c, i) => {
              await new Promise((r) => setTimeout(r, (i * 1700) / sub.length)); // spread over 1.7 s
              return guarded(x.s, c.uncompressedOffset, c.uncompressedSize, bound);
            }),
          );
          const bad = res.filter((r) => r !== 'ok').map((r) => (r === 'hung' ? 'hung' : (r.err as Error).message));
          assert.deepEqual(bad, [], `wave ${wave}`);
        }
        assert.ok(fs.readFileSync(x.w.path).equals(expected));
        const got401 = tokProxy.log.slice(logBefore).filter((r) => r.upstreamStatus === 401 && r.authorization?.startsWith('Bearer '));
        assert.ok(got401.length >= 1, 'the registry never rejected an expired token');
        assert.ok(ts.stats.issued - issuedBefore >= 2, `only ${ts.stats.issued - issuedBefore} tokens issued`);
        assert.ok((x.backend as RegistryBackend).auth.tokenRequests >= 3);
        assert.equal(tokProxy.pending(), 0, 'the token endpoint fault was not hit');
      } finally {
        await x.close();
      }
    } finally {
      tokProxy.clear();
      ts.setTtl(300);
    }
  });

  test('the token in use is revoked mid-run (every request with it gets a 401 + Bearer challenge): a new token, all reads succeed', async () => {
    const issued = tok.tokenServer!.stats.issued;
    let revoked: string | undefined;
    await faultCase({
      via: tokProxy,
      token: true,
      warm: true,
      rules: [{
        fault: { kind: 'unauthorized' },
        // after warm-up: the token the backend holds now is revoked, later ones are fine
        match: (r) => {
          revoked ??= tokProxy.log.filter((l) => l.authorization?.startsWith('Bearer ')).at(-1)?.authorization;
          return /\/blobs\//.test(r.path) && r.authorization === revoked;
        },
        count: Infinity,
      }],
      expect: 'ok',
      minHits: { unauthorized: 1 },
    });
    assert.ok(revoked);
    assert.ok(tok.tokenServer!.stats.issued - issued >= 2, 'the first token and at least one replacement');
  });

  test('401 on every blob request: reads fail at once with ERR_BACKEND 401 (not retried), then recover', async () => {
    const o = await faultCase({
      via: tokProxy,
      token: true,
      rules: [{ fault: { kind: 'unauthorized' }, count: Infinity }],
      warm: true,
      expect: 'fail',
      read: { depth: 4, limit: 16 },
      message: /HTTP 401 unauthorized/,
    });
    assert.ok(o.maxMs < 5000, `a 401 took ${o.maxMs} ms`);
  });
});

describe('registry backend with a proxy section (fallback true)', () => {
  test('the proxy dies mid-run (connections reset, port closed): reads fall back to the registry and succeed', async () => {
    const p = await FaultProxy.start({ upstream: anon.host });
    try {
      // some requests go through cleanly, then bodies stall so the kill hits requests in flight
      p.inject({ fault: { kind: 'stall-body' }, skip: 6, count: Infinity });
      const x = await openSession({ host: anon.host, proxy: { url: p.url, fallback: true, check_interval: 1 } });
      assert.ok(x.backend instanceof ProxiedBackend);
      try {
        const killer = (async () => {
          while (p.hits('stall-body') < 1) await new Promise((r) => setTimeout(r, 5));
          await p.kill();
        })();
        const o = await readAll(x.s, ensureBound(false));
        await killer;
        assert.deepEqual(o.hung, []);
        assert.equal(o.failed.length, 0, describeFailures(o));
        assert.ok(fs.readFileSync(x.w.path).equals(expected));
        const st = (x.backend as ProxiedBackend).stats();
        assert.ok(st.proxyReads >= 1, JSON.stringify(st));
        assert.ok(st.fallbacks >= 1, JSON.stringify(st));
        assert.ok(st.originReads >= 1, JSON.stringify(st));
        assert.equal(st.healthy, false);
        assert.ok(p.log.every((r) => r.forwardProxy), 'requests reached the proxy in absolute form');
        // later reads (a fresh cache: all from the network) go to the registry
        const before = st.originReads;
        const y = await x.reopen();
        const o2 = await readAll(y.s, ensureBound(false));
        assert.deepEqual(o2.hung, []);
        assert.equal(o2.failed.length, 0, describeFailures(o2));
        assert.ok(fs.readFileSync(y.w.path).equals(expected));
        assert.ok((x.backend as ProxiedBackend).stats().originReads > before);
      } finally {
        await x.close();
      }
    } finally {
      await p.close();
    }
  });
});
