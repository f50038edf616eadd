/**
 * OCI Distribution API client (pull and push) and the registry ImageSource / ImageSink.
 *
 * - Transport: undici through the backends' HttpClient (keep-alive agent, TLS options).
 *   Scheme: `https`, except `insecure: true` or a loopback registry (`localhost`, `127.0.0.0/8`,
 *   `[::1]`), which use plain `http` — the Docker daemon treats 127.0.0.0/8 as an insecure
 *   registry by default too. `scheme` overrides both.
 * - Auth: RegistryAuth (anonymous, Basic, Bearer tokens from the WWW-Authenticate challenge,
 *   `~/.docker/config.json`). Pull clients ask for `repository:<repo>:pull`, push clients for
 *   `repository:<repo>:pull,push` (plus whatever scope a challenge names, e.g. the source repo
 *   of a cross-repo mount). A 401 refreshes the token once and retries.
 * - Manifests: GET with an Accept of all OCI / Docker v2 manifest and index types, digest
 *   checked (against the reference's digest, else against Docker-Content-Digest); an index /
 *   manifest list is resolved to a platform (default linux/amd64; nydus alternatives per
 *   rafs-v6.md §4.1 skipped unless `nydus` is asked for, then only they are chosen).
 * - Blobs: HEAD; GET streamed through a sha256 verifier (the stream errors with
 *   ERR_DIGEST_MISMATCH at the end on a mismatch); redirects followed (Authorization dropped
 *   for other hosts).
 * - Upload: HEAD first (skip existing), optional cross-repo mount (`?mount=&from=`), then
 *   POST /v2/<repo>/blobs/uploads/ and either one PUT `?digest=` with the whole blob
 *   (≤ monolithicMax) or PATCH chunks with Content-Range (resumed from the registry's Range on
 *   retryable failures) and a closing PUT. File bodies are streamed, never loaded into memory.
 *   Location headers may be relative or absolute.
 * - Manifest push: PUT /v2/<repo>/manifests/<tag or digest>.
 *
 * Errors are NydusError: ERR_NOT_FOUND (404), ERR_DIGEST_MISMATCH, ERR_UNSUPPORTED, ERR_BACKEND
 * (with `status`, `retryable`) — all with `reference` in the context.
 */
import * as fs from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { HttpMethod, ResponseData, request } from '../backends/undici-core';
import { DigestMismatchError, NydusError } from '../errors';
import { RegistryAuth, dockerConfigAuth } from '../backends/auth';
import { HttpClient, backendError, bodyExcerpt, isRetryable, isRetryableStatus, redactUrl, withRetries } from '../backends/http';
import { ImageReference, checkDigest, isLoopbackHost, toReference } from './reference';
import { MANIFEST_ACCEPT, ParsedManifest, VerifyingStream, parseManifestBytes, readAll, selectManifest, sha256Digest } from './layout';
import { Descriptor, ImageSink, ImageSource, Platform, ResolvedManifest } from './types';

export interface RegistryClientOptions {
  /** plain http instead of https */
  insecure?: boolean;
  /** explicit scheme (overrides `insecure` and the loopback default) */
  scheme?: 'http' | 'https';
  /** https without certificate verification */
  skipVerify?: boolean;
  /** extra CA certificates (PEM files) */
  caCertFiles?: string[];
  /** base64 `user:password` */
  auth?: string;
  username?: string;
  password?: string;
  /** a ready bearer token */
  registryToken?: string;
  /** Docker CLI config consulted when no credentials are given (default: $DOCKER_CONFIG or ~/.docker/config.json); false = never */
  dockerConfig?: string | false;
  /** ask for push access (`pull,push` token scope) */
  push?: boolean;
  /** header / body idle timeout in ms (default 60 000) */
  timeoutMs?: number;
  /** connect timeout in ms (default 10 000) */
  connectTimeoutMs?: number;
  /** retries of retryable failures (default 3) */
  retryLimit?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  maxConnections?: number;
  maxRedirects?: number;
  /** blobs up to this size are uploaded with one PUT (default 16 MiB) */
  monolithicMax?: number;
  /** PATCH chunk size for larger blobs (default 16 MiB) */
  chunkSize?: number;
  /** repositories of the same registry to try a cross-repo mount from before uploading */
  mountFrom?: string[];
  /** User-Agent header */
  userAgent?: string;
}

export interface RegistryStats {
  requests: number;
  /** bytes sent in blob uploads */
  uploadedBytes: number;
  /** blobs not uploaded because the registry had them */
  skippedBlobs: number;
  /** blobs made available by a cross-repo mount */
  mountedBlobs: number;
  /** blobs uploaded with one PUT / with PATCH chunks */
  monolithicUploads: number;
  chunkedUploads: number;
}

export interface FetchedManifest {
  descriptor: Descriptor;
  raw: Buffer;
  parsed: ParsedManifest;
}

type BodyFactory = () => Buffer | Readable;

interface CallOptions {
  headers?: Record<string, string>;
  body?: BodyFactory;
  /** statuses that are returned instead of thrown */
  ok: number[];
  /** follow 3xx (GET / HEAD) */
  redirects?: boolean;
  /** max 2xx body (non-stream calls) */
  maxBody?: number;
  /** return the body unread (streaming GET) */
  stream?: boolean;
  what: string;
  /** context for errors (digest …) */
  ctx?: Record<string, unknown>;
}

export interface CallResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  url: string;
  body: Buffer;
  stream?: ResponseData['body'];
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_MANIFEST = 4 * 1024 * 1024;
const MAX_ERROR = 4096;

function hv(h: CallResult['headers'], name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** `{"errors":[{"code":…,"message":…}]}` → `CODE: message; …` */
function registryErrors(body: Buffer): { text: string; codes: string[] } {
  try {
    const j = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> };
    if (Array.isArray(j.errors) && j.errors.length > 0) {
      const codes = j.errors.map((e) => String(e.code ?? ''));
      return { text: `: ${j.errors.map((e) => `${e.code ?? '?'}${e.message ? ` ${e.message}` : ''}`).join('; ')}`, codes };
    }
  } catch {
    // not JSON
  }
  return { text: bodyExcerpt(body), codes: [] };
}

function withProgress(s: Readable, onChunk: (n: number) => void): Readable {
  const t = new Transform({
    transform(c: Buffer, _e, cb) {
      onChunk(c.length);
      cb(null, c);
    },
  });
  s.on('error', (e) => t.destroy(e));
  return s.pipe(t);
}

/** Resolve a Location header (relative or absolute) against the request URL. */
export function resolveLocation(location: string | undefined, base: string, what: string, ctx: Record<string, unknown> = {}): string {
  if (!location) throw backendError(`${what}: reply has no Location header`, false, ctx);
  try {
    const u = new URL(location, base);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`unsupported scheme ${u.protocol}`);
    return u.toString();
  } catch (e) {
    throw backendError(`${what}: invalid Location ${JSON.stringify(location)}: ${(e as Error).message}`, false, ctx);
  }
}

/** Add query parameters to a URL that may already have some (upload `_state` etc.). */
export function addQuery(url: string, params: Record<string, string>): string {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

export class RegistryClient {
  readonly ref: ImageReference;
  readonly origin: string;
  readonly auth: RegistryAuth;
  readonly http: HttpClient;
  readonly stats: RegistryStats = { requests: 0, uploadedBytes: 0, skippedBlobs: 0, mountedBlobs: 0, monolithicUploads: 0, chunkedUploads: 0 };
  private readonly opts: RegistryClientOptions;

  constructor(ref: string | ImageReference, opts: RegistryClientOptions = {}) {
    this.ref = toReference(ref);
    this.opts = { ...opts, mountFrom: opts.mountFrom ? [...opts.mountFrom] : undefined };
    const scheme = opts.scheme ?? (opts.insecure || isLoopbackHost(this.ref.registry) ? 'http' : 'https');
    this.origin = `${scheme}://${this.ref.apiHost}`;
    this.http = new HttpClient({
      timeoutMs: opts.timeoutMs ?? 60_000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      skipVerify: opts.skipVerify,
      caCertFiles: opts.caCertFiles,
      maxConnections: opts.maxConnections ?? 8,
    });
    let basic = opts.auth;
    if (!basic && opts.username !== undefined) basic = Buffer.from(`${opts.username}:${opts.password ?? ''}`).toString('base64');
    if (!basic && !opts.registryToken && opts.dockerConfig !== false) basic = dockerConfigAuth(this.ref.registry, opts.dockerConfig || undefined);
    const repo = this.ref.repository;
    this.auth = new RegistryAuth({
      repo,
      basic,
      registryToken: opts.registryToken,
      client: this.http,
      scopes: [`repository:${repo}:${opts.push ? 'pull,push' : 'pull'}`],
    });
  }

  /** `reference` for error context */
  get name(): string {
    return this.ref.toString();
  }

  url(kind: 'manifests' | 'blobs', reference: string): string {
    return `${this.origin}/v2/${this.ref.repository}/${kind}/${reference}`;
  }

  uploadsUrl(): string {
    return `${this.origin}/v2/${this.ref.repository}/blobs/uploads/`;
  }

  private retryPolicy() {
    return { retryLimit: this.opts.retryLimit ?? 3, backoffBaseMs: this.opts.backoffBaseMs, backoffMaxMs: this.opts.backoffMaxMs };
  }

  /**
   * One logical request: authentication (one 401 → refresh → retry), redirects for GET/HEAD,
   * status classification. Statuses in `ok` are returned; others throw.
   */
  async call(method: string, url: string, o: CallOptions): Promise<CallResult> {
    const registryHost = new URL(this.origin).host;
    const ctx = { reference: this.name, ...(o.ctx ?? {}) };
    let authRetried = false;
    let redirects = 0;
    let current = url;
    for (;;) {
      const sameHost = new URL(current).host === registryHost;
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'nydus-ts/0.1', ...(o.headers ?? {}) };
      let sent: string | undefined;
      if (sameHost) {
        try {
          sent = await this.auth.header();
        } catch (e) {
          throw this.wrap(e, ctx);
        }
        if (sent) headers.authorization = sent;
      }
      const where = `${method} ${redactUrl(current)}`;
      let res: ResponseData;
      this.stats.requests++;
      try {
        const body = o.body?.();
        res = await request(current, { method: method as HttpMethod, headers, body, dispatcher: this.http.dispatcher });
      } catch (e) {
        throw backendError(`${this.name}: ${o.what}: ${where}: ${describe(e)}`, !/CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(describe(e)), { ...ctx, url: redactUrl(current) }, e);
      }
      const status = res.statusCode;
      const okStatus = o.ok.includes(status);
      if (status === 401 && sameHost && !authRetried) {
        const errBody = await readBody(res.body, MAX_ERROR).catch(() => Buffer.alloc(0));
        authRetried = true;
        let again: boolean;
        try {
          again = await this.auth.unauthorized(res.headers['www-authenticate'], sent);
        } catch (e) {
          throw this.wrap(e, ctx);
        }
        if (again) continue;
        throw backendError(`${this.name}: ${o.what}: ${where}: HTTP 401 unauthorized${sent ? ' (credentials or token rejected)' : ' (no credentials configured)'}${registryErrors(errBody).text}`, false, { ...ctx, url: redactUrl(current), status: 401 });
      }
      if (o.redirects && REDIRECTS.has(status) && !okStatus) {
        res.body.on('error', () => undefined); // destroying an unread undici body emits an abort error
        res.body.destroy();
        const loc = hv(res.headers, 'location');
        if (++redirects > (this.opts.maxRedirects ?? 5)) throw backendError(`${this.name}: ${o.what}: ${where}: more than ${this.opts.maxRedirects ?? 5} redirects`, false, { ...ctx, status });
        current = resolveLocation(loc, current, `${this.name}: ${o.what}: ${where}: HTTP ${status} redirect`, ctx);
        continue;
      }
      if (!okStatus) {
        const errBody = await readBody(res.body, MAX_ERROR).catch(() => Buffer.alloc(0));
        const { text, codes } = registryErrors(errBody);
        const c = { ...ctx, url: redactUrl(current), status, ...(codes.length ? { registryCodes: codes } : {}) };
        const msg = `${this.name}: ${o.what}: ${where}: HTTP ${status}`;
        if (status === 404) throw new NydusError('ERR_NOT_FOUND', `${msg} not found${text}`, { ...c, retryable: false });
        if (status === 401) throw backendError(`${msg} unauthorized${sent ? ' (credentials or token rejected)' : ' (no credentials configured)'}${text}`, false, c);
        if (status === 403) throw backendError(`${msg} access denied${text}`, false, c);
        if (codes.includes('DIGEST_INVALID') || codes.includes('SIZE_INVALID')) throw new DigestMismatchError(`${msg}: the registry rejected the upload's digest or size${text}`, c);
        throw backendError(`${msg}${text}`, isRetryableStatus(status), c);
      }
      if (o.stream) return { status, headers: res.headers, url: current, body: Buffer.alloc(0), stream: res.body };
      let body: Buffer;
      try {
        body = method === 'HEAD' ? Buffer.alloc(0) : await readBody(res.body, o.maxBody ?? MAX_MANIFEST);
      } catch (e) {
        if (e instanceof NydusError) throw new NydusError(e.code, `${this.name}: ${o.what}: ${where}: ${e.message}`, { ...ctx, ...e.context, status });
        throw backendError(`${this.name}: ${o.what}: ${where}: HTTP ${status}: body cut short: ${describe(e)}`, true, { ...ctx, status }, e);
      }
      return { status, headers: res.headers, url: current, body };
    }
  }

  private wrap(e: unknown, ctx: Record<string, unknown>): unknown {
    if (e instanceof NydusError && !e.message.startsWith(this.name)) return new NydusError(e.code, `${this.name}: ${e.message}`, { ...ctx, ...e.context }, { cause: e.cause ?? e });
    return e;
  }

  // ---- manifests ---------------------------------------------------------------------------

  /** GET a manifest or index by tag or digest (default: the reference's), digest-verified. */
  async getManifest(reference: string = this.ref.manifestReference, accept = MANIFEST_ACCEPT): Promise<FetchedManifest> {
    const byDigest = reference.includes(':');
    if (byDigest) checkDigest(reference);
    return withRetries(this.retryPolicy(), async () => {
      const r = await this.call('GET', this.url('manifests', reference), { headers: { accept }, ok: [200], redirects: true, maxBody: MAX_MANIFEST, what: 'GET manifest', ctx: byDigest ? { digest: reference } : { tag: reference } });
      const digest = sha256Digest(r.body);
      const header = hv(r.headers, 'docker-content-digest');
      if (byDigest && reference.startsWith('sha256:') && digest !== reference) {
        throw new DigestMismatchError(`${this.name}: manifest ${reference}: digest mismatch: got ${digest}`, { reference: this.name, digest: reference, actual: digest });
      }
      if (!byDigest && header && header.startsWith('sha256:') && header !== digest) {
        throw new DigestMismatchError(`${this.name}: manifest ${reference}: Docker-Content-Digest ${header} does not match the body's ${digest}`, { reference: this.name, digest: header, actual: digest });
      }
      const parsed = parseManifestBytes(r.body, hv(r.headers, 'content-type'), `${this.name}: manifest ${reference}`);
      return { descriptor: { mediaType: parsed.mediaType, digest, size: r.body.length }, raw: r.body, parsed };
    });
  }

  /** HEAD a manifest: its descriptor, or undefined when the registry does not have it. */
  async headManifest(reference: string = this.ref.manifestReference): Promise<Descriptor | undefined> {
    return withRetries(this.retryPolicy(), async () => {
      const r = await this.call('HEAD', this.url('manifests', reference), { headers: { accept: MANIFEST_ACCEPT }, ok: [200, 404], redirects: true, what: 'HEAD manifest' });
      if (r.status === 404) return undefined;
      const digest = hv(r.headers, 'docker-content-digest') ?? (reference.includes(':') ? reference : '');
      return { mediaType: (hv(r.headers, 'content-type') ?? '').split(';')[0], digest, size: Number(hv(r.headers, 'content-length') ?? -1) };
    });
  }

  /** The image manifest of the reference; an index is resolved to `platform` (see selectManifest). */
  async resolveManifest(opts: { platform?: Platform; nydus?: boolean } = {}): Promise<ResolvedManifest> {
    let m = await this.getManifest();
    for (let depth = 0; m.parsed.kind === 'index'; depth++) {
      if (depth >= 3) throw new NydusError('ERR_BAD_BLOB', `${this.name}: image indexes nested too deeply`, { reference: this.name });
      const d = selectManifest(m.parsed.index!, opts, this.name);
      m = await this.getManifest(d.digest);
      if (m.parsed.kind === 'manifest') return { descriptor: { ...m.descriptor, platform: d.platform, annotations: d.annotations }, manifest: m.parsed.manifest!, raw: m.raw };
    }
    return { descriptor: m.descriptor, manifest: m.parsed.manifest!, raw: m.raw };
  }

  /** PUT a manifest under a tag or digest (default: the reference's tag, else its digest). Returns its digest. */
  async putManifest(raw: Buffer, mediaType: string, reference?: string): Promise<string> {
    const digest = sha256Digest(raw);
    const target = reference ?? this.ref.tag ?? digest;
    if (target.includes(':') && target !== digest) throw new DigestMismatchError(`${this.name}: cannot push manifest ${digest} by digest ${target}`, { reference: this.name, digest: target, actual: digest });
    return withRetries(this.retryPolicy(), async () => {
      const r = await this.call('PUT', this.url('manifests', target), {
        headers: { 'content-type': mediaType, 'content-length': String(raw.length) },
        body: () => raw,
        ok: [200, 201, 202, 204],
        what: 'PUT manifest',
        ctx: { tag: target, digest },
      });
      const got = hv(r.headers, 'docker-content-digest');
      if (got && got.startsWith('sha256:') && got !== digest) throw new DigestMismatchError(`${this.name}: PUT manifest: registry stored digest ${got}, expected ${digest}`, { reference: this.name, digest, actual: got });
      return digest;
    });
  }

  // ---- blobs -------------------------------------------------------------------------------

  /** HEAD a blob: its size, or undefined when absent. */
  async headBlob(digest: string): Promise<number | undefined> {
    checkDigest(digest);
    return withRetries(this.retryPolicy(), async () => {
      const r = await this.call('HEAD', this.url('blobs', digest), { ok: [200, 404], redirects: true, what: 'HEAD blob', ctx: { digest } });
      if (r.status === 404) return undefined;
      const n = Number(hv(r.headers, 'content-length'));
      return Number.isFinite(n) ? n : -1;
    });
  }

  /**
   * A blob as a stream that errors (ERR_DIGEST_MISMATCH) unless its bytes hash to `desc.digest`
   * and number `desc.size`. Failures before the body starts are retried.
   */
  async blobStream(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<Readable> {
    checkDigest(desc.digest);
    const r = await withRetries(this.retryPolicy(), () => this.call('GET', this.url('blobs', desc.digest), { ok: [200], redirects: true, stream: true, what: 'GET blob', ctx: { digest: desc.digest } }));
    const body = r.stream!;
    const v = new VerifyingStream(desc, `${this.name}: GET blob`, { reference: this.name });
    body.on('error', (e) => {
      v.destroy(e instanceof NydusError ? e : backendError(`${this.name}: GET blob ${desc.digest}: body cut short after ${v.bytes} bytes: ${describe(e)}`, true, { reference: this.name, digest: desc.digest }, e));
    });
    v.on('close', () => {
      if (!body.destroyed) body.destroy();
    });
    body.pipe(v);
    return v;
  }

  /** A whole (small) blob in memory, digest-verified; retried as a whole. */
  async blob(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<Buffer> {
    return withRetries(this.retryPolicy(), async () => readAll(await this.blobStream(desc)));
  }

  /**
   * Try a cross-repo mount of `digest` from `fromRepo` (same registry). Returns true when
   * mounted, else the Location of the upload session the registry opened instead (or undefined).
   */
  async mountBlob(digest: string, fromRepo: string): Promise<true | string | undefined> {
    checkDigest(digest);
    const url = addQuery(this.uploadsUrl(), { mount: digest, from: fromRepo });
    const r = await withRetries(this.retryPolicy(), () => this.call('POST', url, { headers: { 'content-length': '0' }, ok: [201, 202], what: 'mount blob', ctx: { digest, from: fromRepo } }));
    if (r.status === 201) return true;
    const loc = hv(r.headers, 'location');
    return loc ? resolveLocation(loc, r.url, `${this.name}: mount blob`) : undefined;
  }

  private async startUpload(): Promise<string> {
    const r = await withRetries(this.retryPolicy(), () => this.call('POST', this.uploadsUrl(), { headers: { 'content-length': '0' }, ok: [202], what: 'start upload' }));
    return resolveLocation(hv(r.headers, 'location'), r.url, `${this.name}: POST ${redactUrl(r.url)}`, { reference: this.name });
  }

  /**
   * Upload a blob unless the registry has it. `data`: a file (streamed) or a buffer. Returns
   * what happened. The registry checks the digest; a mismatch is ERR_DIGEST_MISMATCH.
   */
  async uploadBlob(desc: Descriptor, data: { path: string } | Buffer, onProgress?: (bytes: number) => void): Promise<'exists' | 'mounted' | 'uploaded'> {
    checkDigest(desc.digest);
    let size: number;
    if (Buffer.isBuffer(data)) size = data.length;
    else {
      try {
        size = (await fs.promises.stat(data.path)).size;
      } catch (e) {
        throw new NydusError('ERR_IO', `${this.name}: cannot read ${data.path} for blob ${desc.digest}: ${(e as Error).message}`, { reference: this.name, path: data.path, digest: desc.digest });
      }
    }
    if (desc.size >= 0 && size !== desc.size) {
      throw new DigestMismatchError(`${this.name}: blob ${desc.digest}: data has ${size} bytes, its descriptor says ${desc.size}`, { reference: this.name, digest: desc.digest, size: desc.size, got: size });
    }
    if ((await this.headBlob(desc.digest)) !== undefined) {
      this.stats.skippedBlobs++;
      onProgress?.(size);
      return 'exists';
    }
    let loc: string | undefined;
    for (const from of this.opts.mountFrom ?? []) {
      if (from === this.ref.repository) continue;
      const m = await this.mountBlob(desc.digest, from);
      if (m === true) {
        this.stats.mountedBlobs++;
        onProgress?.(size);
        return 'mounted';
      }
      if (m) {
        loc = m;
        break;
      }
    }
    loc ??= await this.startUpload();
    // progress is the absolute position in the blob of the bytes handed to the socket (it can
    // step back when a chunk is sent again after a failure)
    const slice = (start: number, end: number): BodyFactory => () => {
      let pos = start;
      const progress = (n: number) => {
        pos += n;
        this.stats.uploadedBytes += n;
        onProgress?.(pos);
      };
      if (Buffer.isBuffer(data)) return withProgress(Readable.from([data.subarray(start, end)]), progress);
      return withProgress(fs.createReadStream(data.path, { start, end: end - 1, highWaterMark: 1 << 20 }), progress);
    };
    if (size <= (this.opts.monolithicMax ?? 16 * 1024 * 1024)) {
      this.stats.monolithicUploads++;
      const location = loc;
      let firstTry = true;
      await withRetries(this.retryPolicy(), async () => {
        // a retried monolithic PUT needs a fresh session: the failed one may hold partial data
        const target = firstTry ? location : await this.startUpload();
        firstTry = false;
        const r = await this.call('PUT', addQuery(target, { digest: desc.digest }), {
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
          body: size === 0 ? () => Buffer.alloc(0) : slice(0, size),
          ok: [201, 204],
          what: 'PUT blob',
          ctx: { digest: desc.digest },
        });
        this.checkStored(r, desc.digest);
      });
      return 'uploaded';
    }
    this.stats.chunkedUploads++;
    const chunk = Math.max(1, this.opts.chunkSize ?? 16 * 1024 * 1024);
    let offset = 0;
    let failures = 0;
    while (offset < size) {
      const end = Math.min(size, offset + chunk);
      try {
        const r = await this.call('PATCH', loc, {
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(end - offset), 'content-range': `${offset}-${end - 1}` },
          body: slice(offset, end),
          ok: [202, 204],
          what: 'PATCH blob chunk',
          ctx: { digest: desc.digest, offset },
        });
        loc = resolveLocation(hv(r.headers, 'location') ?? loc, r.url, `${this.name}: PATCH ${redactUrl(r.url)}`, { reference: this.name });
        const range = /^(?:bytes=)?0-(\d+)$/.exec(hv(r.headers, 'range') ?? '');
        offset = range ? Number(range[1]) + 1 : end;
      } catch (e) {
        if (!isRetryable(e) || ++failures > (this.opts.retryLimit ?? 3)) throw e;
        // ask the registry how much it has and go on from there
        const st = await this.call('GET', loc, { ok: [204], what: 'upload status', ctx: { digest: desc.digest } });
        loc = resolveLocation(hv(st.headers, 'location') ?? loc, st.url, `${this.name}: upload status`, { reference: this.name });
        const range = /^(?:bytes=)?0-(\d+)$/.exec(hv(st.headers, 'range') ?? '');
        offset = range ? Number(range[1]) + 1 : 0;
      }
    }
    const done = await withRetries(this.retryPolicy(), () =>
      this.call('PUT', addQuery(loc!, { digest: desc.digest }), { headers: { 'content-length': '0' }, body: () => Buffer.alloc(0), ok: [201, 204], what: 'PUT blob (close upload)', ctx: { digest: desc.digest } }),
    );
    this.checkStored(done, desc.digest);
    return 'uploaded';
  }

  private checkStored(r: CallResult, digest: string): void {
    const got = hv(r.headers, 'docker-content-digest');
    if (got && got !== digest) throw new DigestMismatchError(`${this.name}: blob upload: registry stored ${got}, expected ${digest}`, { reference: this.name, digest, actual: got });
  }

  /** add a repository of this registry to try cross-repo mounts from */
  addMountSource(repo: string): void {
    const list = (this.opts.mountFrom ??= []);
    if (!list.includes(repo)) list.push(repo);
  }

  /** List the repository's tags (`/v2/<repo>/tags/list`). */
  async listTags(): Promise<string[]> {
    const r = await withRetries(this.retryPolicy(), () => this.call('GET', `${this.origin}/v2/${this.ref.repository}/tags/list`, { ok: [200], redirects: true, what: 'list tags' }));
    const j = JSON.parse(r.body.toString('utf8')) as { tags?: string[] | null };
    return j.tags ?? [];
  }

  async close(): Promise<void> {
    await this.http.close();
  }
}

function describe(e: unknown): string {
  const err = e as { code?: string; message?: string; cause?: { code?: string } };
  const cause = err?.cause?.code ? ` (${err.cause.code})` : '';
  return `${err?.code ? `${err.code}: ` : ''}${err?.message ?? String(e)}${cause}`;
}

async function readBody(body: ResponseData['body'], max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += (c as Buffer).length;
    if (n > max) {
      body.destroy();
      throw new NydusError('ERR_BAD_BLOB', `reply body larger than ${max} bytes`, { max, retryable: false });
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Reads an image from a registry. `name` is the fully qualified reference. */
export class RegistryImageSource implements ImageSource {
  readonly client: RegistryClient;
  readonly name: string;
  constructor(ref: string | ImageReference, opts: RegistryClientOptions = {}) {
    this.client = new RegistryClient(ref, { ...opts, push: false });
    this.name = this.client.ref.toString();
  }
  get reference(): ImageReference {
    return this.client.ref;
  }
  /** the manifest or index the reference names, unresolved */
  root(): Promise<FetchedManifest> {
    return this.client.getManifest();
  }
  /** any manifest of the repository by tag or digest */
  fetchManifest(reference: string): Promise<FetchedManifest> {
    return this.client.getManifest(reference);
  }
  manifest(opts: { platform?: Platform; nydus?: boolean } = {}): Promise<ResolvedManifest> {
    return this.client.resolveManifest(opts);
  }
  blob(desc: Descriptor): Promise<Buffer> {
    return this.client.blob(desc);
  }
  blobStream(desc: Descriptor): Promise<Readable> {
    return this.client.blobStream(desc);
  }
  close(): Promise<void> {
    return this.client.close();
  }
}

/** Writes an image to a registry; manifests go under the reference's tag (else by digest). */
export class RegistryImageSink implements ImageSink {
  readonly client: RegistryClient;
  readonly name: string;
  constructor(ref: string | ImageReference, opts: RegistryClientOptions = {}) {
    this.client = new RegistryClient(ref, { ...opts, push: true });
    this.name = this.client.ref.toString();
  }
  get reference(): ImageReference {
    return this.client.ref;
  }
  get stats(): RegistryStats {
    return this.client.stats;
  }
  /**
   * Let blob uploads try a cross-repo mount from `src` when it is a repository of the same
   * registry (returns whether it is).
   */
  mountFromSource(src: ImageSource): boolean {
    if (!(src instanceof RegistryImageSource)) return false;
    const from = src.reference;
    if (from.registry !== this.reference.registry || from.repository === this.reference.repository) return false;
    this.client.addMountSource(from.repository);
    return true;
  }
  async hasBlob(desc: Descriptor): Promise<boolean> {
    return (await this.client.headBlob(desc.digest)) !== undefined;
  }
  async pushBlob(desc: Descriptor, data: { path: string } | Buffer, onProgress?: (bytes: number) => void): Promise<void> {
    await this.client.uploadBlob(desc, data, onProgress);
  }
  /**
   * PUT a manifest under the sink's tag, or under `reference` (a tag, or its digest for the
   * children of an index: pass `null` to push by digest). Returns its digest.
   */
  pushManifest(raw: Buffer, mediaType: string, reference?: string | null): Promise<string> {
    return this.client.putManifest(raw, mediaType, reference === null ? sha256Digest(raw) : reference);
  }
  close(): Promise<void> {
    return this.client.close();
  }
}
