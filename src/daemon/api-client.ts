/**
 * Client of the nydusd HTTP API (ours or a real nydusd) over its unix socket: one typed method per
 * endpoint of the fscache subset (spec rafs-v6.md §3.7). Connections are kept alive and reused.
 * A non-2xx answer or a transport failure is a DaemonApiError (code ERR_DAEMON) carrying the
 * HTTP status (0 for transport errors) and the server's message.
 */
import * as http from 'node:http';
import { NydusError } from '../errors';
import type { BuildInfo, DaemonStateName } from './api-server';
import type { BlobCacheEntryJson } from './config';
import type { MountTrace } from '../kernel/access-trace';

export interface DaemonInfo {
  version: BuildInfo;
  id: string | null;
  supervisor: string | null;
  state: DaemonStateName;
  /** present (null in fscache mode) on /api/v1/daemon only */
  backend_collection?: unknown;
  [extra: string]: unknown;
}

export interface ApiResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** the parsed JSON body, or the text if it is not JSON, or null when empty */
  body: unknown;
  text: string;
}

export interface ApiClientOptions {
  /** per-request timeout (default 30 s); 0 = none */
  timeoutMs?: number;
  /** reuse connections (default true) */
  keepAlive?: boolean;
}

/** The substring nydus-snapshotter matches to tell "already gone" from a real failure. */
export const CACHE_ENTRY_NOT_FOUND = 'blob_cache: cache entry not found';

export class DaemonApiError extends NydusError {
  /** HTTP status, 0 when no response was received */
  readonly status: number;
  /** the server's error message (`message` of the JSON error body), '' if none */
  readonly serverMessage: string;
  constructor(message: string, status: number, serverMessage: string, context: Record<string, unknown> = {}, cause?: unknown) {
    super('ERR_DAEMON', message, { ...context, status, serverMessage }, cause === undefined ? undefined : { cause });
    this.name = 'DaemonApiError';
    this.status = status;
    this.serverMessage = serverMessage;
  }
}

/** Did the daemon answer that the blob / image is not registered? */
export function isCacheEntryNotFound(e: unknown): boolean {
  return e instanceof DaemonApiError && e.serverMessage.includes(CACHE_ENTRY_NOT_FOUND);
}

function q(params: Record<string, string | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v!)}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

export class DaemonApiClient {
  private readonly agent: http.Agent;
  private readonly timeoutMs: number;

  constructor(readonly socketPath: string, opts: ApiClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.agent = new http.Agent({ keepAlive: opts.keepAlive ?? true, maxSockets: 4 });
  }

  /** Drop pooled connections. */
  close(): void {
    this.agent.destroy();
  }

  /** One request; resolves with any HTTP status, rejects (status 0) only on transport errors. */
  request(method: string, path: string, body?: unknown): Promise<ApiResponse> {
    const data = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = { Host: 'localhost', Accept: 'application/json' };
      if (data) {
        headers['Content-Type'] = 'application/json';
        headers['Content-Length'] = data.length;
      }
      const req = http.request({ socketPath: this.socketPath, method, path, headers, agent: this.agent }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('error', (e) => reject(this.transportError(method, path, e)));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          let parsed: unknown = null;
          if (text !== '') {
            try {
              parsed = JSON.parse(text);
            } catch {
              parsed = text;
            }
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed, text });
        });
      });
      if (this.timeoutMs > 0) {
        req.setTimeout(this.timeoutMs, () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      }
      req.on('error', (e) => reject(this.transportError(method, path, e)));
      req.end(data);
    });
  }

  private transportError(method: string, path: string, e: Error): DaemonApiError {
    const errno = (e as NodeJS.ErrnoException).code;
    return new DaemonApiError(`daemon API ${this.socketPath}: ${method} ${path}: ${e.message}`, 0, '', { socket: this.socketPath, method, path, errno }, e);
  }

  /** A request that must succeed (2xx); returns the parsed body (undefined for 204). */
  async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const r = await this.request(method, path, body);
    if (r.status >= 200 && r.status < 300) return r.status === 204 ? undefined : r.body;
    const b = r.body as { message?: unknown } | null;
    const serverMessage = b && typeof b === 'object' && typeof b.message === 'string' ? b.message : r.text;
    throw new DaemonApiError(`daemon API ${method} ${path}: HTTP ${r.status}: ${serverMessage || '(no message)'}`, r.status, serverMessage, {
      socket: this.socketPath,
      method,
      path,
    });
  }

  // --- daemon -----------------------------------------------------------------------------------

  /** GET /api/v1/daemon */
  async daemonInfo(): Promise<DaemonInfo> {
    return (await this.call('GET', '/api/v1/daemon')) as DaemonInfo;
  }

  /** GET /api/v2/daemon */
  async daemonInfoV2(): Promise<DaemonInfo> {
    return (await this.call('GET', '/api/v2/daemon')) as DaemonInfo;
  }

  /** PUT /api/v1/daemon {"log_level"} */
  async setLogLevel(level: string): Promise<void> {
    await this.call('PUT', '/api/v1/daemon', { log_level: level });
  }

  /** PUT /api/v1/daemon/start */
  async start(): Promise<void> {
    await this.call('PUT', '/api/v1/daemon/start');
  }

  /** PUT /api/v1/daemon/exit */
  async exit(): Promise<void> {
    await this.call('PUT', '/api/v1/daemon/exit');
  }

  /** PUT /api/v1/daemon/fuse/sendfd */
  async sendfd(): Promise<void> {
    await this.call('PUT', '/api/v1/daemon/fuse/sendfd');
  }

  /** PUT /api/v1/daemon/fuse/takeover */
  async takeover(): Promise<void> {
    await this.call('PUT', '/api/v1/daemon/fuse/takeover');
  }

  /** GET /api/v1/daemon/events */
  async events(): Promise<unknown[]> {
    return (await this.call('GET', '/api/v1/daemon/events')) as unknown[];
  }

  // --- blobs ------------------------------------------------------------------------------------

  /** PUT /api/v2/blobs: register a bootstrap (and its data blobs) */
  async registerBlob(entry: BlobCacheEntryJson | Record<string, unknown>): Promise<void> {
    await this.call('PUT', '/api/v2/blobs', entry);
  }

  /**
   * DELETE /api/v2/blobs?domain_id=D[&blob_id=B]: unregister image B of domain D, or every
   * entry of domain D.
   */
  async unregisterBlob(domainId: string, blobId?: string): Promise<void> {
    await this.call('DELETE', `/api/v2/blobs${q({ domain_id: domainId, blob_id: blobId })}`);
  }

  /** DELETE /api/v2/blobs?blob_id=B: cull the cache files of cookie B */
  async cullBlob(blobId: string): Promise<void> {
    await this.call('DELETE', `/api/v2/blobs${q({ blob_id: blobId })}`);
  }

  // --- metrics ----------------------------------------------------------------------------------

  /** GET /api/v1/metrics[?id=] */
  metrics(id?: string): Promise<unknown> {
    return this.call('GET', `/api/v1/metrics${q({ id })}`);
  }

  /** GET /api/v1/metrics/blobcache[?id=] */
  blobcacheMetrics(id?: string): Promise<unknown> {
    return this.call('GET', `/api/v1/metrics/blobcache${q({ id })}`);
  }

  /** GET /api/v1/metrics/backend[?id=] */
  backendMetrics(id?: string): Promise<unknown> {
    return this.call('GET', `/api/v1/metrics/backend${q({ id })}`);
  }

  // --- access traces (fanotify front end; `nydus-ts optimize`) -----------------------------------

  /** POST /api/v1/trace?mountpoint=M: start recording what is read from a daemon mount */
  async startTrace(mountpoint: string): Promise<MountTrace> {
    return (await this.call('POST', `/api/v1/trace${q({ mountpoint })}`)) as MountTrace;
  }

  /** GET /api/v1/trace?mountpoint=M: the trace so far */
  async getTrace(mountpoint: string): Promise<MountTrace> {
    return (await this.call('GET', `/api/v1/trace${q({ mountpoint })}`)) as MountTrace;
  }

  /** DELETE /api/v1/trace?mountpoint=M: stop recording; returns the trace */
  async stopTrace(mountpoint: string): Promise<MountTrace> {
    return (await this.call('DELETE', `/api/v1/trace${q({ mountpoint })}`)) as MountTrace;
  }

  // --- helpers ----------------------------------------------------------------------------------

  /** Does a daemon answer GET /api/v1/daemon? */
  async isAlive(): Promise<boolean> {
    try {
      await this.daemonInfo();
      return true;
    } catch {
      return false;
    }
  }

  /** Poll GET /api/v1/daemon until `state` (as the snapshotter does); returns the last info. */
  async waitForState(state: DaemonStateName, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<DaemonInfo> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    let last: DaemonInfo | undefined;
    let lastErr: unknown;
    for (;;) {
      try {
        last = await this.daemonInfo();
        if (last.state === state) return last;
      } catch (e) {
        lastErr = e;
      }
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
    }
    const why = last ? `state is ${last.state}` : `no answer (${lastErr instanceof Error ? lastErr.message : String(lastErr)})`;
    throw new DaemonApiError(`daemon API ${this.socketPath}: timed out waiting for state ${state}: ${why}`, 0, '', { socket: this.socketPath, want: state });
  }
}
