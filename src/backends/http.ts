/**
 * HTTP plumbing shared by the network backends (registry, http-proxy, s3, oss) and the
 * `http-proxy` backend itself (spec rafs-v6.md §3.5).
 *
 * - HttpClient: one undici Agent per backend (keep-alive connection reuse, at most
 *   `maxConnections` sockets per origin), TLS options (skip_verify, ca_cert_files), an optional
 *   unix socket, connect / header / body timeouts. `send()` never follows redirects. With
 *   `proxyUrl` (a backend's `proxy.url`, see proxy.ts) an undici ProxyAgent instead: forward-proxy
 *   requests for http:// URLs, CONNECT tunnels for https://, the same socket bound.
 * - checkRangeResponse: validates a range reply (206 + matching Content-Range + exact length,
 *   or 200 carrying the whole blob, which is sliced) and classifies failures as retryable or not.
 * - withRetries: `retry_limit` retries with exponential backoff and full jitter, only for errors
 *   marked retryable (connection errors, timeouts, 5xx, 408, 429, short bodies).
 */
import * as dns from 'node:dns';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { Agent, Dispatcher, Pool, ProxyAgent, ProxyAgentOptions, ResponseData, request } from './undici-core';
import { BlobBackend } from '../daemon/interfaces';
import { HttpProxyBackendConfig } from '../daemon/config';
import { NydusError } from '../errors';

/** Tuning knobs beyond the JSON config (all optional; tests use them to keep things fast). */
export interface HttpTuning {
  /** overrides `timeout` (seconds) of the config: max wait for the headers, then for each further MIN_PROGRESS (64 KiB) of the body */
  timeoutMs?: number;
  /** overrides `connect_timeout` (seconds) */
  connectTimeoutMs?: number;
  /** first backoff delay (default 200 ms), doubled per attempt */
  backoffBaseMs?: number;
  /** backoff cap (default 5000 ms) */
  backoffMaxMs?: number;
  /** sockets per origin (default 16) */
  maxConnections?: number;
  /** largest 200 (whole-blob) reply accepted when a range was asked for (default 256 MiB) */
  maxWholeBody?: number;
  /**
   * send every request through this HTTP proxy (the `proxy.url` of a backend, see proxy.ts):
   * http:// URLs as forward-proxy requests (absolute URL in the request line, original Host),
   * https:// URLs through a CONNECT tunnel
   */
  viaProxy?: string;
  /** host name → IP address overrides for connections (like curl --resolve); for tests */
  resolve?: Record<string, string>;
}

export interface HttpClientOptions {
  /** milliseconds; 0 = none */
  timeoutMs: number;
  connectTimeoutMs: number;
  skipVerify?: boolean;
  caCertFiles?: string[];
  /** connect every request to this unix socket instead of the URL's host */
  socketPath?: string;
  maxConnections?: number;
  /** an HTTP proxy every request goes through (see HttpTuning.viaProxy) */
  proxyUrl?: string;
  /** host name → IP address overrides (see HttpTuning.resolve) */
  resolve?: Record<string, string>;
}

export interface BodyLimits {
  /** most bytes a 2xx body (of this status) may have; more is a non-retryable error */
  maxBody?: (status: number) => number;
}

export interface HttpReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  url: string;
}

const MAX_ERROR_BODY = 4096;
/** body bytes that must arrive within each `timeout` period (see HttpClient.send) */
export const MIN_PROGRESS = 64 * 1024;

/** A NydusError('ERR_BACKEND') that says whether trying again may help. */
export function backendError(message: string, retryable: boolean, context: Record<string, unknown> = {}, cause?: unknown): NydusError {
  return new NydusError('ERR_BACKEND', message, { ...context, retryable }, cause === undefined ? undefined : { cause });
}

export function isRetryable(e: unknown): boolean {
  return e instanceof NydusError && e.context.retryable === true;
}

/** 5xx, 408 Request Timeout and 429 Too Many Requests are worth retrying; other 4xx are not. */
export function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

export function headerValue(h: HttpReply['headers'], name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * Measurement knobs for bench:start's tuning runs (bench/README.md, "Tuning"): sockets per
 * origin when the caller sets none (default 16), and `NYDUS_TS_HTTP_REUSE=0` to close every
 * connection after its request (no keep-alive).
 */
const ENV_CONNECTIONS = /^[1-9]\d*$/.test(process.env.NYDUS_TS_HTTP_CONNECTIONS ?? '') ? Number(process.env.NYDUS_TS_HTTP_CONNECTIONS) : undefined;
const NO_REUSE = process.env.NYDUS_TS_HTTP_REUSE === '0';

/** URL without userinfo or query (query strings of redirected object-storage URLs carry signatures). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`;
  } catch {
    return url;
  }
}

export class HttpClient {
  readonly dispatcher: Dispatcher;
  constructor(readonly opts: HttpClientOptions) {
    const connect: Record<string, unknown> = { timeout: opts.connectTimeoutMs || null };
    if (opts.socketPath) connect.socketPath = opts.socketPath;
    if (opts.resolve && Object.keys(opts.resolve).length > 0) connect.lookup = overrideLookup(opts.resolve);
    if (opts.skipVerify) connect.rejectUnauthorized = false;
    if (opts.caCertFiles && opts.caCertFiles.length > 0) {
      const extra = opts.caCertFiles.map((f) => {
        try {
          return fs.readFileSync(f, 'utf8');
        } catch (e) {
          throw new NydusError('ERR_INVALID_ARGUMENT', `ca_cert_files: cannot read ${f}: ${(e as Error).message}`, { path: f });
        }
      });
      connect.ca = [...tls.rootCertificates, ...extra];
    }
    const limits = { connections: opts.maxConnections ?? ENV_CONNECTIONS ?? 16, headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs };
    if (opts.proxyUrl) {
      // forward-proxy form for http:// targets (what a Dragonfly peer or a caching proxy sees and
      // can cache), CONNECT tunnels for https:// ones; the same per-origin socket bound either way
      const { timeout: _t, ...tlsOpts } = connect;
      this.dispatcher = new ProxyAgent({
        uri: opts.proxyUrl,
        proxyTunnel: false,
        ...limits,
        requestTls: tlsOpts,
        proxyTls: { ...tlsOpts, timeout: opts.connectTimeoutMs || undefined } as Record<string, unknown>,
        factory: (origin: string | URL, o: object) => new Pool(origin, { ...o, ...limits }),
      } as ProxyAgentOptions);
    } else {
      this.dispatcher = new Agent({ ...limits, connect });
    }
  }

  /**
   * One GET (no redirects followed). Reads the whole body of 2xx replies and at most 4 KiB of
   * others. Transport failures (refused, reset, timeouts, truncated bodies) become retryable
   * ERR_BACKEND errors naming the URL.
   */
  async send(url: string, headers: Record<string, string>, what = 'GET', limits: BodyLimits = {}): Promise<HttpReply> {
    // undici's own timeouts have ~1 s resolution; this timer gives precise ones, undici's stay as
    // a backstop. It runs from the request to the headers, then is restarted whenever another
    // MIN_PROGRESS bytes of the body arrived: a body must deliver at least that much per
    // `timeout` (a server dripping a few bytes now and then would otherwise hold the read for
    // ever), so one exchange lasts at most timeout × (2 + body bytes / MIN_PROGRESS).
    const ac = new AbortController();
    let phase: 'headers' | 'body' = 'headers';
    let timer: NodeJS.Timeout | undefined;
    /** body bytes since the timer was last restarted */
    let progress = 0;
    const arm = () => {
      if (!this.opts.timeoutMs) return;
      if (timer) clearTimeout(timer);
      const ms = this.opts.timeoutMs;
      timer = setTimeout(() => ac.abort(new IdleTimeout(phase, progress > 0 ? `body too slow: ${progress} bytes in ${ms} ms, fewer than the ${MIN_PROGRESS} required` : undefined)), ms);
    };
    arm();
    try {
      let res: ResponseData;
      try {
        res = await request(url, { method: 'GET', headers, dispatcher: this.dispatcher, signal: ac.signal, reset: NO_REUSE });
      } catch (e) {
        // certificate problems do not go away by retrying; everything else on the wire might
        throw backendError(`${what} ${redactUrl(url)}: ${describeTransportError(ac.signal.reason ?? e)}`, !isCertificateError(e), { url: redactUrl(url) }, e);
      }
      phase = 'body';
      arm();
      res.body.on('error', () => undefined); // errors surface through the iteration below
      const status = res.statusCode;
      const chunks: Buffer[] = [];
      let n = 0;
      // 2xx bodies up to the caller's limit (larger ones are an error), others truncated to 4 KiB
      const ok = status >= 200 && status < 300;
      const max = ok ? limits.maxBody?.(status) ?? Infinity : MAX_ERROR_BODY;
      const cl = headerValue(res.headers, 'content-length');
      if (ok && cl !== undefined && Number(cl) > max) {
        res.body.destroy();
        throw backendError(`${what} ${redactUrl(url)}: HTTP ${status} with a ${cl}-byte body, more than the ${max} bytes expected`, false, { url: redactUrl(url), status });
      }
      try {
        for await (const c of res.body) {
          const b = c as Buffer;
          progress += b.length;
          if (progress >= MIN_PROGRESS) {
            progress = 0;
            arm();
          }
          chunks.push(b);
          n += b.length;
          if (n > max) break; // leaving the loop destroys the body (and its connection)
        }
      } catch (e) {
        throw backendError(`${what} ${redactUrl(url)}: HTTP ${status}: body cut short after ${n} bytes: ${describeTransportError(ac.signal.reason ?? e)}`, true, { url: redactUrl(url), status, short: true }, e);
      }
      if (ok && n > max) throw backendError(`${what} ${redactUrl(url)}: HTTP ${status} body longer than the ${max} bytes expected`, false, { url: redactUrl(url), status });
      const body = Buffer.concat(chunks);
      return { status, headers: res.headers, body: ok ? body : body.subarray(0, MAX_ERROR_BODY), url };
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined);
  }
}

/** a net.connect `lookup` that answers the overridden names and asks DNS for the rest */
function overrideLookup(map: Record<string, string>): (...a: unknown[]) => void {
  return (hostname: unknown, options: unknown, callback: unknown) => {
    const cb = (typeof options === 'function' ? options : callback) as (err: Error | null, address: unknown, family?: number) => void;
    const o = (typeof options === 'object' && options !== null ? options : {}) as dns.LookupOptions;
    const ip = map[String(hostname)];
    if (ip === undefined) {
      dns.lookup(String(hostname), { ...o, all: true } as dns.LookupAllOptions, (err, addrs) => {
        if (err) cb(err, undefined);
        else if (o.all) cb(null, addrs);
        else cb(null, addrs[0]?.address, addrs[0]?.family);
      });
      return;
    }
    const family = net.isIP(ip) || 4;
    if (o.all) cb(null, [{ address: ip, family }]);
    else cb(null, ip, family);
  };
}

const CERT_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ERR_TLS_CERT_ALTNAME_INVALID|HOSTNAME_MISMATCH/;
function isCertificateError(e: unknown): boolean {
  const err = e as { code?: unknown; cause?: { code?: unknown } };
  const code = typeof err?.cause?.code === 'string' ? err.cause.code : typeof err?.code === 'string' ? err.code : '';
  return CERT_CODES.test(code);
}

class IdleTimeout extends Error {
  constructor(readonly phase: 'headers' | 'body', detail?: string) {
    super(`timeout waiting for response ${phase}${detail ? ` (${detail})` : ''}`);
  }
}

function describeTransportError(e: unknown): string {
  if (e instanceof IdleTimeout) return e.message;
  const err = e as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = err?.code ?? '';
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return 'connect timeout';
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return 'timeout waiting for response headers';
  if (code === 'UND_ERR_BODY_TIMEOUT') return 'timeout waiting for response body';
  const cause = err?.cause?.code ? ` (${err.cause.code})` : '';
  return `${code ? code + ': ' : ''}${err?.message ?? String(e)}${cause}`;
}

/** A short, printable excerpt of an error body for messages. */
export function bodyExcerpt(b: Buffer): string {
  if (b.length === 0) return '';
  const s = b.subarray(0, 200).toString('utf8').replace(/\s+/g, ' ').trim();
  return s ? `: ${s}${b.length > 200 ? '…' : ''}` : '';
}

/**
 * The bytes [offset, offset+length) out of a reply to `Range: bytes=offset-(offset+length-1)`.
 * Accepts 206 with an exactly matching Content-Range and body, or 200 carrying a whole blob that
 * covers the range. Anything else throws ERR_BACKEND naming the URL, status and reason.
 */
export function checkRangeResponse(r: HttpReply, offset: number, length: number, maxWholeBody = 256 * 1024 * 1024): Buffer {
  const where = `GET ${redactUrl(r.url)} (range ${offset}+${length})`;
  const ctx = { url: redactUrl(r.url), status: r.status, offset, length };
  if (r.status === 206) {
    const cr = headerValue(r.headers, 'content-range');
    const m = cr ? /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(cr) : null;
    if (!m) throw backendError(`${where}: HTTP 206 with ${cr ? `unparsable Content-Range ${JSON.stringify(cr)}` : 'no Content-Range'}`, false, ctx);
    const start = Number(m[1]);
    const end = Number(m[2]);
    if (start !== offset || end !== offset + length - 1) {
      throw backendError(`${where}: HTTP 206 with Content-Range ${JSON.stringify(cr)}, expected bytes ${offset}-${offset + length - 1}`, false, ctx);
    }
    if (r.body.length < length) throw backendError(`${where}: HTTP 206 short body: ${r.body.length} of ${length} bytes`, true, { ...ctx, short: true });
    if (r.body.length > length) throw backendError(`${where}: HTTP 206 body of ${r.body.length} bytes, expected ${length}`, false, ctx);
    return r.body;
  }
  if (r.status === 200) {
    const cl = headerValue(r.headers, 'content-length');
    const declared = cl !== undefined ? Number(cl) : r.body.length;
    if (declared > maxWholeBody) throw backendError(`${where}: HTTP 200 (range ignored) with a ${declared}-byte body, larger than the ${maxWholeBody}-byte limit`, false, ctx);
    if (r.body.length < offset + length) {
      // a whole blob shorter than the range: either truncated (retry) or the range is past the end
      const truncated = cl !== undefined && r.body.length < declared;
      throw backendError(`${where}: HTTP 200 (range ignored) with ${r.body.length} bytes, which does not cover the range`, truncated, { ...ctx, short: truncated });
    }
    return r.body.subarray(offset, offset + length);
  }
  const retry = isRetryableStatus(r.status);
  const why = r.status === 416 ? 'range not satisfiable (beyond the end of the blob?)' : r.status === 404 ? 'blob not found' : `unexpected status`;
  throw backendError(`${where}: HTTP ${r.status} ${why}${bodyExcerpt(r.body)}`, retry, ctx);
}

export interface RetryPolicy {
  /** extra attempts after the first */
  retryLimit: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
}

export function backoffDelay(attempt: number, base: number, max: number): number {
  const ceiling = Math.min(max, base * 2 ** attempt);
  // "equal jitter": half fixed, half random, so retries of concurrent readers spread out
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Run `fn` up to 1 + retryLimit times while it fails with a retryable error. */
export async function withRetries<T>(policy: RetryPolicy, fn: (attempt: number) => Promise<T>): Promise<T> {
  const base = policy.backoffBaseMs ?? 200;
  const max = policy.backoffMaxMs ?? 5000;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (!isRetryable(e) || attempt >= policy.retryLimit) {
        if (attempt > 0 && e instanceof NydusError) {
          throw new NydusError(e.code, `${e.message} (after ${attempt + 1} attempts)`, { ...e.context, attempts: attempt + 1 }, { cause: e.cause });
        }
        throw e;
      }
      await sleep(backoffDelay(attempt, base, max));
    }
  }
}

/** Body limits of a range GET: 206 → the range length, 200 → a whole blob up to maxWholeBody. */
export function rangeLimits(length: number, maxWholeBody = 256 * 1024 * 1024): BodyLimits {
  return { maxBody: (status) => (status === 206 ? length : maxWholeBody) };
}

export function rangeHeader(offset: number, length: number): string {
  return `bytes=${offset}-${offset + length - 1}`;
}

export function checkRangeArgs(kind: string, blobId: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${kind}: invalid range ${offset}+${length} of blob ${blobId}`, { blobId, offset, length });
  }
  if (!/^[0-9a-zA-Z._-]+$/.test(blobId)) throw new NydusError('ERR_INVALID_ARGUMENT', `${kind}: blob id ${JSON.stringify(blobId)} is not valid`, { blobId });
}

/** seconds from the config, overridden by the tuning's milliseconds */
export function clientOptionsFrom(cfg: { timeout: number; connect_timeout: number; skip_verify: boolean; ca_cert_files: string[] }, tuning: HttpTuning = {}): HttpClientOptions {
  return {
    timeoutMs: tuning.timeoutMs ?? cfg.timeout * 1000,
    connectTimeoutMs: tuning.connectTimeoutMs ?? cfg.connect_timeout * 1000,
    skipVerify: cfg.skip_verify,
    caCertFiles: cfg.ca_cert_files,
    maxConnections: tuning.maxConnections,
    proxyUrl: tuning.viaProxy,
    resolve: tuning.resolve,
  };
}

/**
 * `http-proxy` backend: blob URL = addr + path + '/' + blob id; `addr` is an http(s) URL or an
 * absolute unix socket path (then requests go to `http://localhost` over that socket).
 */
export class HttpProxyBackend implements BlobBackend {
  readonly kind = 'http-proxy';
  private readonly client: HttpClient;
  private readonly base: string;

  constructor(private readonly cfg: HttpProxyBackendConfig, private readonly tuning: HttpTuning = {}) {
    const opts = clientOptionsFrom(cfg, tuning);
    let base: string;
    if (/^https?:\/\//i.test(cfg.addr)) {
      base = cfg.addr.replace(/\/+$/, '');
    } else if (path.isAbsolute(cfg.addr)) {
      opts.socketPath = cfg.addr;
      base = 'http://localhost';
    } else {
      throw new NydusError('ERR_INVALID_ARGUMENT', `http-proxy: addr must be an http(s) URL or an absolute unix socket path, got ${JSON.stringify(cfg.addr)}`);
    }
    const prefix = (cfg.path ?? '').replace(/^\/*/, '').replace(/\/+$/, '');
    this.base = prefix ? `${base}/${prefix}` : base;
    this.client = new HttpClient(opts);
  }

  blobUrl(blobId: string): string {
    return `${this.base}/${blobId}`;
  }

  async readRange(blobId: string, offset: number, length: number): Promise<Buffer> {
    checkRangeArgs(this.kind, blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    const url = this.blobUrl(blobId);
    const where = this.cfg.addr.startsWith('/') ? `${url} via unix socket ${this.cfg.addr}` : url;
    try {
      return await withRetries({ retryLimit: this.cfg.retry_limit, backoffBaseMs: this.tuning.backoffBaseMs, backoffMaxMs: this.tuning.backoffMaxMs }, async () => {
        const r = await this.client.send(url, { range: rangeHeader(offset, length) }, 'GET', rangeLimits(length, this.tuning.maxWholeBody));
        return checkRangeResponse(r, offset, length, this.tuning.maxWholeBody);
      });
    } catch (e) {
      if (e instanceof NydusError && where !== url) throw new NydusError(e.code, `http-proxy: ${e.message.replace(url, where)}`, { ...e.context, blobId }, { cause: e.cause });
      if (e instanceof NydusError) throw new NydusError(e.code, `http-proxy: ${e.message}`, { ...e.context, blobId }, { cause: e.cause });
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
