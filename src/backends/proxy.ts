/**
 * The `proxy` section of the network backends (registry, http-proxy, s3, oss; spec rafs-v6.md
 * §3.5): a Dragonfly peer (dfdaemon) or any caching HTTP proxy in front of the blob source.
 *
 * Semantics (those of nydusd's `storage/src/backend/connection.rs`, plus stricter health rules):
 * - **Transport.** `proxy.url` is an HTTP forward proxy. A blob request for an `http://` URL is
 *   sent to the proxy with the absolute URL in the request line (`GET http://host/path
 *   HTTP/1.1`), the original `Host` and the original headers (Range, Authorization, signatures),
 *   exactly what dfdaemon's proxy matches its rules against and caches. `https://` URLs go through
 *   a CONNECT tunnel (the proxy then sees nothing to cache), unless `use_http` is true: then the
 *   request is made to the `http://` form of the source URL (nydusd does the same rewrite), so a
 *   proxy that fetches from the real https origin itself can serve it.
 * - **Health.** With `ping_url`, a `GET ping_url` (directly, not through the proxy; timeout =
 *   `connect_timeout`) runs every `check_interval` seconds; 2xx/3xx = healthy. Pings pause while
 *   no read arrived for `check_pause_elapsed` seconds (0 = never pause). The proxy starts
 *   healthy (as in nydusd).
 * - **Failure of a request through the proxy** (connection refused or reset, timeout, 5xx, short
 *   body …): the proxy is marked unhealthy at once and is not asked again until a ping that
 *   *started after the failure* succeeds. Without `ping_url`, the proxy is tried again by one
 *   request after `check_interval` seconds. A non-retryable answer (e.g. 404 or a bad
 *   Content-Range from the proxy) does not mark it unhealthy, but the read still falls back.
 * - **fallback = true** (default): a read the proxy failed is served by the origin, and while the
 *   proxy is unhealthy reads go straight to the origin; a read fails only if the origin fails
 *   too. Requests through the proxy are not retried (the origin is the retry); the origin uses
 *   `retry_limit`.
 * - **fallback = false**: requests through the proxy get the `retry_limit` retries; a failure
 *   is returned as an ERR_BACKEND naming the proxy, and while the proxy is unhealthy reads fail at
 *   once with a retryable ERR_BACKEND ("proxy … is unhealthy …; proxy.fallback is false").
 *   (nydusd goes to the origin while the ping fails even then; we keep the origin untouched.)
 * - `dragonfly_scheduler_endpoint` is accepted and ignored.
 */
import { BlobBackend } from '../daemon/interfaces';
import { BackendConfig, HttpProxyBackendConfig, NetworkBackendCommon, OssBackendConfig, ProxyConfig, RegistryBackendConfig, S3BackendConfig } from '../daemon/config';
import { NydusError } from '../errors';
import { HttpClient, HttpProxyBackend, HttpTuning, backendError, isRetryable, redactUrl } from './http';
import { RegistryBackend, RegistryTuning } from './registry';
import { ObjectStorageTuning, OssBackend, S3Backend } from './object-storage';

export type LogFn = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

export interface ProxyTuning {
  /** overrides `check_interval` (seconds) */
  checkIntervalMs?: number;
  /** ping timeout; default `connect_timeout` */
  pingTimeoutMs?: number;
  /** overrides `check_pause_elapsed` (seconds) */
  checkPauseElapsedMs?: number;
  log?: LogFn;
}

export interface ProxyStats {
  healthy: boolean;
  /** reads served through the proxy */
  proxyReads: number;
  /** reads served by the origin (fallbacks and reads while unhealthy) */
  originReads: number;
  /** reads the proxy failed and the origin was asked instead */
  fallbacks: number;
  /** requests through the proxy that failed */
  proxyFailures: number;
  pings: number;
  pingFailures: number;
  /** why the proxy was last marked unhealthy */
  lastError?: string;
}

export interface ProxiedBackendOptions {
  proxy: ProxyConfig;
  /** the backend reading from the source directly */
  origin: BlobBackend;
  /** the same backend with its requests going through the proxy */
  viaProxy: BlobBackend;
  /** TLS settings and default ping timeout (seconds) of the backend */
  net: Pick<NetworkBackendCommon, 'skip_verify' | 'ca_cert_files' | 'connect_timeout'>;
  tuning?: ProxyTuning;
}

const now = () => performance.now();

/** the proxy URL for messages: no credentials, no query, no lone trailing slash */
function shown(url: string): string {
  const r = redactUrl(url);
  return r.endsWith('/') && /^[a-z]+:\/\/[^/]+\/$/i.test(r) ? r.slice(0, -1) : r;
}

/** A BlobBackend that reads through a proxy, health-checks it and falls back to the origin. */
export class ProxiedBackend implements BlobBackend {
  readonly kind: string;
  private healthy = true;
  /** monotonic time of the last failure through the proxy (pings older than that don't count) */
  private failedAt = -Infinity;
  /** monotonic time the proxy last became healthy again (failures of older requests are stale) */
  private recoveredAt = -Infinity;
  private lastRequest = now();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readonly pingClient?: HttpClient;
  private readonly intervalMs: number;
  private readonly pauseMs: number;
  private lastFallbackLog = -Infinity;
  private readonly counters: Omit<ProxyStats, 'healthy' | 'lastError'> = { proxyReads: 0, originReads: 0, fallbacks: 0, proxyFailures: 0, pings: 0, pingFailures: 0 };
  private lastError?: string;

  constructor(private readonly opts: ProxiedBackendOptions) {
    this.kind = opts.origin.kind;
    const t = opts.tuning ?? {};
    this.intervalMs = t.checkIntervalMs ?? Math.max(1, opts.proxy.check_interval) * 1000;
    this.pauseMs = t.checkPauseElapsedMs ?? opts.proxy.check_pause_elapsed * 1000;
    if (opts.proxy.ping_url) {
      const timeoutMs = t.pingTimeoutMs ?? (opts.net.connect_timeout || 5) * 1000;
      this.pingClient = new HttpClient({ timeoutMs, connectTimeoutMs: timeoutMs, skipVerify: opts.net.skip_verify, caCertFiles: opts.net.ca_cert_files, maxConnections: 1 });
      this.schedulePing(0);
    }
  }

  get proxyUrl(): string {
    return this.opts.proxy.url;
  }

  stats(): ProxyStats {
    return { healthy: this.healthy, ...this.counters, ...(this.lastError ? { lastError: this.lastError } : {}) };
  }

  private log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>): void {
    this.opts.tuning?.log?.(level, msg, { proxy: shown(this.proxyUrl), ...ctx });
  }

  /** may a request go through the proxy now? */
  private usable(): boolean {
    if (this.healthy) return true;
    // without a ping URL, one request probes the proxy again after check_interval
    return !this.pingClient && now() - this.failedAt >= this.intervalMs;
  }

  private markUnhealthy(reason: string, requestStart: number): void {
    if (requestStart < this.recoveredAt) return; // a request from before the last recovery
    this.failedAt = now();
    this.lastError = reason;
    if (this.healthy) this.log('warn', `proxy unhealthy: ${reason}`);
    this.healthy = false;
  }

  private markHealthy(how: string): void {
    if (!this.healthy) {
      this.recoveredAt = now();
      this.log('info', `proxy recovered (${how})`);
    }
    this.healthy = true;
  }

  private schedulePing(delayMs: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.pingOnce(), delayMs);
    this.timer.unref();
  }

  private async pingOnce(): Promise<void> {
    try {
      if (this.pauseMs > 0 && now() - this.lastRequest > this.pauseMs) return; // idle: paused
      const started = now();
      this.counters.pings++;
      let ok = false;
      let why = '';
      try {
        const r = await this.pingClient!.send(this.opts.proxy.ping_url, {}, 'ping');
        ok = r.status >= 200 && r.status < 400;
        if (!ok) why = `ping ${redactUrl(this.opts.proxy.ping_url)}: HTTP ${r.status}`;
      } catch (e) {
        why = (e as Error).message;
      }
      if (this.closed) return;
      if (ok) {
        // only a ping sent after the last failure proves the proxy answers again
        if (started >= this.failedAt) this.markHealthy('ping answered');
      } else {
        this.counters.pingFailures++;
        this.markUnhealthy(why, now());
      }
    } finally {
      this.schedulePing(this.intervalMs);
    }
  }

  async readRange(blobId: string, offset: number, length: number): Promise<Buffer> {
    this.lastRequest = now();
    const fallback = this.opts.proxy.fallback;
    if (this.usable()) {
      const start = now();
      try {
        const data = await this.opts.viaProxy.readRange(blobId, offset, length);
        this.counters.proxyReads++;
        if (!this.healthy && !this.pingClient) this.markHealthy('a request succeeded');
        return data;
      } catch (e) {
        if (e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT') throw e; // a bad request, not a proxy problem
        this.counters.proxyFailures++;
        const msg = (e as Error).message;
        if (isRetryable(e) || !(e instanceof NydusError)) this.markUnhealthy(msg, start);
        if (!fallback) {
          const ctx = e instanceof NydusError ? e.context : { retryable: true };
          throw new NydusError('ERR_BACKEND', `proxy ${shown(this.proxyUrl)}: ${msg}`, { ...ctx, proxy: shown(this.proxyUrl), blobId }, { cause: e });
        }
        this.counters.fallbacks++;
        if (now() - this.lastFallbackLog > 2000) {
          this.lastFallbackLog = now();
          this.log('warn', `request through the proxy failed, falling back to the origin: ${msg}`, { blobId });
        }
        return this.fromOrigin(blobId, offset, length, msg);
      }
    }
    if (!fallback) {
      throw backendError(
        `proxy ${shown(this.proxyUrl)} is unhealthy (${this.lastError ?? 'unknown'}); proxy.fallback is false, so the origin is not asked: try again once the proxy answers ${this.opts.proxy.ping_url ? 'its ping' : 'again'}`,
        true,
        { proxy: shown(this.proxyUrl), blobId, unhealthy: true },
      );
    }
    return this.fromOrigin(blobId, offset, length);
  }

  private async fromOrigin(blobId: string, offset: number, length: number, proxyError?: string): Promise<Buffer> {
    try {
      const data = await this.opts.origin.readRange(blobId, offset, length);
      this.counters.originReads++;
      return data;
    } catch (e) {
      if (e instanceof NydusError && proxyError) throw new NydusError(e.code, `${e.message} (after the proxy failed: ${proxyError})`, { ...e.context, proxyError }, { cause: e.cause });
      throw e;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.all([this.opts.origin.close(), this.opts.viaProxy.close(), this.pingClient?.close()]);
  }
}

function checkHttpUrl(v: string, field: string): void {
  let u: URL | undefined;
  try {
    u = new URL(v);
  } catch {
    u = undefined;
  }
  if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) throw new NydusError('ERR_INVALID_ARGUMENT', `${field}: must be an http(s) URL, got ${JSON.stringify(v)}`, { field });
}

/**
 * `build(cfg, tuning)` alone when the config has no proxy; otherwise a ProxiedBackend over an
 * origin instance and a through-the-proxy instance (`httpForm` gives the config of the latter
 * when `use_http` is set).
 */
export function withProxy<C extends NetworkBackendCommon, T extends HttpTuning>(cfg: C, build: (cfg: C, tuning: T) => BlobBackend, httpForm: (cfg: C) => C, tuning: T, proxyTuning: ProxyTuning = {}): BlobBackend {
  const p = cfg.proxy;
  if (!p || !p.url) return build(cfg, tuning);
  checkHttpUrl(p.url, 'proxy.url');
  if (p.ping_url) checkHttpUrl(p.ping_url, 'proxy.ping_url');
  const origin = build(cfg, tuning);
  const proxiedCfg = { ...(p.use_http ? httpForm(cfg) : cfg), retry_limit: p.fallback ? 0 : cfg.retry_limit };
  const viaProxy = build(proxiedCfg, { ...tuning, viaProxy: p.url });
  return new ProxiedBackend({ proxy: p, origin, viaProxy, net: cfg, tuning: proxyTuning });
}

export interface NetworkTuning extends RegistryTuning, ObjectStorageTuning {
  proxy?: ProxyTuning;
}

const toHttp = (u: string) => u.replace(/^https:\/\//i, 'http://');

/** The backend of a network backend config (registry, http-proxy, s3, oss), with its proxy. */
export function makeNetworkBackend(b: BackendConfig, tuning: NetworkTuning = {}): BlobBackend {
  const { proxy: pt, ...t } = tuning;
  switch (b.type) {
    case 'registry':
      return withProxy<RegistryBackendConfig, NetworkTuning>(b.config, (c, tt) => new RegistryBackend(c, tt), (c) => ({ ...c, scheme: 'http' }), t, pt);
    case 'http-proxy':
      if (b.config.proxy?.url && !/^https?:\/\//i.test(b.config.addr)) {
        throw new NydusError('ERR_INVALID_ARGUMENT', `http-proxy: a proxy (proxy.url) cannot be used with a unix socket addr ${JSON.stringify(b.config.addr)}`, { field: 'proxy.url' });
      }
      return withProxy<HttpProxyBackendConfig, NetworkTuning>(b.config, (c, tt) => new HttpProxyBackend(c, tt), (c) => ({ ...c, addr: toHttp(c.addr) }), t, pt);
    case 's3':
      return withProxy<S3BackendConfig, NetworkTuning>(b.config, (c, tt) => new S3Backend(c, tt), (c) => ({ ...c, scheme: 'http', endpoint: toHttp(c.endpoint) }), t, pt);
    case 'oss':
      return withProxy<OssBackendConfig, NetworkTuning>(b.config, (c, tt) => new OssBackend(c, tt), (c) => ({ ...c, scheme: 'http', endpoint: toHttp(c.endpoint) }), t, pt);
    default:
      throw new NydusError('ERR_UNSUPPORTED', `backend type "${b.type}" is not a network backend`, { backend: b.type });
  }
}
