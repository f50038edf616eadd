/**
 * `registry` backend (spec rafs-v6.md §3.5): a blob is
 * `GET {scheme}://{host}/v2/{repo}/blobs/sha256:{blob_id}` with `Range: bytes=start-end`.
 * Redirects (301/302/303/307/308) are followed here, dropping the Authorization header when the
 * target is another host (object storage with a pre-signed URL). Authentication: anonymous,
 * Basic (`auth`, or `~/.docker/config.json` when nothing is configured), a ready `registry_token`,
 * or Bearer tokens from the WWW-Authenticate challenge (see auth.ts).
 */
import { LRUCache } from 'lru-cache';
import { BlobBackend } from '../daemon/interfaces';
import { RegistryBackendConfig } from '../daemon/config';
import { NydusError } from '../errors';
import { RegistryAuth, dockerConfigAuth } from './auth';
import { BodyLimits, HttpClient, HttpReply, HttpTuning, backendError, checkRangeArgs, checkRangeResponse, clientOptionsFrom, headerValue, rangeHeader, rangeLimits, redactUrl, withRetries } from './http';

export interface RegistryTuning extends HttpTuning {
  /** Docker CLI config consulted when neither auth nor registry_token is configured (default: $DOCKER_CONFIG or ~/.docker/config.json); false = never */
  dockerConfig?: string | false;
  /** most redirects followed per request (default 5) */
  maxRedirects?: number;
  /**
   * how long (ms) a blob's redirect target on another host (a pre-signed object-storage URL) is
   * reused for later ranges, skipping the registry round trip (default 60 000; 0 = never).
   * A failing cached target is dropped and the registry asked again.
   */
  redirectCacheMs?: number;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export class RegistryBackend implements BlobBackend {
  readonly kind = 'registry';
  readonly auth: RegistryAuth;
  private readonly client: HttpClient;
  private readonly origin: string;
  private readonly redirects: LRUCache<string, string> | undefined;
  /** reads served from a cached redirect target (metrics / tests) */
  redirectCacheHits = 0;

  constructor(private readonly cfg: RegistryBackendConfig, private readonly tuning: RegistryTuning = {}) {
    if (!cfg.host) throw new NydusError('ERR_INVALID_ARGUMENT', 'registry backend needs "host"');
    if (!cfg.repo) throw new NydusError('ERR_INVALID_ARGUMENT', 'registry backend needs "repo"');
    const scheme = cfg.scheme || 'https';
    this.origin = `${scheme}://${cfg.host}`;
    try {
      new URL(this.origin);
    } catch {
      throw new NydusError('ERR_INVALID_ARGUMENT', `registry backend: invalid host ${JSON.stringify(cfg.host)}`);
    }
    this.client = new HttpClient(clientOptionsFrom(cfg, tuning));
    let basic = cfg.auth;
    if (!basic && !cfg.registry_token && tuning.dockerConfig !== false) basic = dockerConfigAuth(cfg.host, tuning.dockerConfig);
    const ttl = tuning.redirectCacheMs ?? 60_000;
    this.redirects = ttl > 0 ? new LRUCache<string, string>({ max: 1024, ttl }) : undefined;
    this.auth = new RegistryAuth({ repo: cfg.repo, basic, registryToken: cfg.registry_token, client: this.client });
  }

  blobUrl(blobId: string): string {
    const repo = this.cfg.repo.replace(/^\/+|\/+$/g, '');
    return `${this.origin}/v2/${repo}/blobs/sha256:${blobId}`;
  }

  async readRange(blobId: string, offset: number, length: number): Promise<Buffer> {
    checkRangeArgs(this.kind, blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    try {
      return await withRetries({ retryLimit: this.cfg.retry_limit, backoffBaseMs: this.tuning.backoffBaseMs, backoffMaxMs: this.tuning.backoffMaxMs }, async () => {
        const range = rangeHeader(offset, length);
        const limits = rangeLimits(length, this.tuning.maxWholeBody);
        const target = this.redirects?.get(blobId);
        if (target) {
          try {
            const data = checkRangeResponse(await this.client.send(target, { range }, 'GET', limits), offset, length, this.tuning.maxWholeBody);
            this.redirectCacheHits++;
            return data;
          } catch {
            this.redirects!.delete(blobId); // expired signature, moved object …: ask the registry
          }
        }
        const r = await this.fetch(this.blobUrl(blobId), range, limits);
        const data = checkRangeResponse(r, offset, length, this.tuning.maxWholeBody);
        if (this.redirects && new URL(r.url).host !== new URL(this.origin).host) this.redirects.set(blobId, r.url);
        return data;
      });
    } catch (e) {
      if (e instanceof NydusError) throw new NydusError(e.code, `registry: ${e.message}`, { ...e.context, blobId }, { cause: e.cause });
      throw e;
    }
  }

  /** One logical GET: authentication round trips and redirects included, no status checks. */
  private async fetch(url: string, range: string, limits: BodyLimits): Promise<HttpReply> {
    const registryHost = new URL(this.origin).host;
    let authRetried = false;
    let redirects = 0;
    let current = url;
    for (;;) {
      const sameHost = new URL(current).host === registryHost;
      const headers: Record<string, string> = { range };
      let sent: string | undefined;
      if (sameHost) {
        sent = await this.auth.header();
        if (sent) headers.authorization = sent;
      }
      const r = await this.client.send(current, headers, 'GET', limits);
      if (r.status === 401 && sameHost && !authRetried) {
        authRetried = true;
        if (await this.auth.unauthorized(r.headers['www-authenticate'], sent)) continue;
      }
      if (r.status === 401 && sameHost) {
        throw backendError(`GET ${redactUrl(current)}: HTTP 401 unauthorized${sent ? ' (credentials or token rejected)' : ' (no credentials configured)'}`, false, { url: redactUrl(current), status: 401 });
      }
      if (REDIRECTS.has(r.status)) {
        const loc = headerValue(r.headers, 'location');
        if (!loc) throw backendError(`GET ${redactUrl(current)}: HTTP ${r.status} redirect without a Location header`, false, { url: redactUrl(current), status: r.status });
        if (++redirects > (this.tuning.maxRedirects ?? 5)) throw backendError(`GET ${redactUrl(url)}: more than ${this.tuning.maxRedirects ?? 5} redirects`, false, { url: redactUrl(url), status: r.status });
        let next: URL;
        try {
          next = new URL(loc, current);
        } catch {
          throw backendError(`GET ${redactUrl(current)}: HTTP ${r.status} redirect to invalid Location ${JSON.stringify(loc)}`, false, { url: redactUrl(current) });
        }
        if (next.protocol !== 'http:' && next.protocol !== 'https:') throw backendError(`GET ${redactUrl(current)}: redirect to unsupported scheme ${next.protocol}`, false, { url: redactUrl(current) });
        current = next.toString();
        continue;
      }
      return r;
    }
  }

  async close(): Promise<void> {
    this.redirects?.clear();
    await this.client.close();
  }
}
