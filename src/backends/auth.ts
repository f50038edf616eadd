/**
 * Registry authentication (Docker Registry HTTP API v2 token flow):
 * - parseWwwAuthenticate: RFC 7235 challenges (`Bearer realm="…",service="…",scope="…"`, `Basic realm="…"`)
 * - dockerConfigAuth: `auths[host].auth` from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
 * - RegistryAuth: the Authorization header to send; Basic, a configured `registry_token`, or a
 *   Bearer token fetched from the challenge's realm, cached for its `expires_in`, refreshed a
 *   little (with jitter) before expiry and on 401, single-flight so that many concurrent reads
 *   trigger one token request.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { HttpClient, backendError, bodyExcerpt, isRetryableStatus, redactUrl } from './http';

export interface AuthChallenge {
  /** lower case: 'bearer', 'basic', … */
  scheme: string;
  /** parameter names lower case */
  params: Record<string, string>;
}

/** Parse a WWW-Authenticate header value (possibly several challenges) into challenges. */
export function parseWwwAuthenticate(header: string | string[] | undefined): AuthChallenge[] {
  if (header === undefined) return [];
  if (Array.isArray(header)) return header.flatMap((h) => parseWwwAuthenticate(h));
  const out: AuthChallenge[] = [];
  const s = header;
  let i = 0;
  const ws = () => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++;
  };
  const token = () => {
    const m = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/.exec(s.slice(i));
    if (!m) return '';
    i += m[0].length;
    return m[0];
  };
  let cur: AuthChallenge | undefined;
  while (i < s.length) {
    ws();
    if (s[i] === ',') {
      i++;
      continue;
    }
    const name = token();
    if (!name) {
      i++; // skip garbage
      continue;
    }
    ws();
    if (s[i] === '=' && cur) {
      // a parameter (or token68 padding, which we do not need)
      i++;
      ws();
      let value = '';
      if (s[i] === '"') {
        i++;
        while (i < s.length && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < s.length) i++;
          value += s[i++];
        }
        i++; // closing quote
      } else {
        const m = /^[^,\s]*/.exec(s.slice(i))!;
        value = m[0];
        i += m[0].length;
      }
      cur.params[name.toLowerCase()] = value;
    } else {
      // a new challenge: auth-scheme, then its parameters (token68 forms are not needed here)
      cur = { scheme: name.toLowerCase(), params: {} };
      out.push(cur);
    }
  }
  return out;
}

/** Decode base64 `user:password` (the `auth` field), or throw naming the field. */
export function decodeBasicAuth(b64: string, field = 'auth'): { username: string; password: string } {
  const text = Buffer.from(b64.trim(), 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) throw new NydusError('ERR_INVALID_ARGUMENT', `${field}: must be base64 of "user:password"`, { field });
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

/**
 * The base64 `auth` for `host` from a Docker CLI config file (`$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`), or undefined. Keys tried: `host`, `https://host`, `http://host`, and
 * the Docker Hub legacy key for docker.io hosts. Credential helpers are not run.
 */
export function dockerConfigAuth(host: string, file?: string): string | undefined {
  const f = file ?? path.join(process.env.DOCKER_CONFIG || path.join(os.homedir(), '.docker'), 'config.json');
  let cfg: unknown;
  try {
    cfg = JSON.parse(fs.readFileSync(f, 'utf8'));
  } catch {
    return undefined;
  }
  const auths = (cfg as { auths?: Record<string, { auth?: unknown; username?: unknown; password?: unknown }> })?.auths;
  if (!auths || typeof auths !== 'object') return undefined;
  const keys = [host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
  if (host === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io') keys.push('https://index.docker.io/v1/', 'docker.io', 'index.docker.io');
  for (const k of keys) {
    const e = auths[k];
    if (!e || typeof e !== 'object') continue;
    if (typeof e.auth === 'string' && e.auth !== '') return e.auth;
    if (typeof e.username === 'string' && typeof e.password === 'string') return Buffer.from(`${e.username}:${e.password}`).toString('base64');
  }
  return undefined;
}

export interface RegistryAuthOptions {
  /** `library/ubuntu`: the default token scope is `repository:<repo>:pull` */
  repo: string;
  /** base64 `user:password` */
  basic?: string;
  /** a ready bearer token (`registry_token`) */
  registryToken?: string;
  /** used to GET the token realm */
  client: HttpClient;
  /**
   * token scopes to always ask for (e.g. `repository:<repo>:pull,push` for a push), sent as
   * separate `scope` parameters together with the challenge's (space-separated) scopes. Unset:
   * only the challenge's scope, or `repository:<repo>:pull`, as one parameter.
   */
  scopes?: string[];
  /** token lifetime when the token server does not say (seconds, default 60 as in the spec) */
  defaultExpiresIn?: number;
  /** clock (tests) */
  now?: () => number;
}

interface Token {
  value: string;
  expiresAt: number;
  refreshAt: number;
}

/**
 * Decides the Authorization header of registry requests. Flow: `header()` before each request;
 * on a 401 from the registry call `unauthorized(wwwAuthenticate, headerThatWasSent)`, which
 * returns true when a retry with a new `header()` makes sense.
 */
export class RegistryAuth {
  private mode: 'none' | 'basic' | 'bearer';
  private challenge: Record<string, string> | undefined;
  private token: Token | undefined;
  private inflight: Promise<void> | undefined;
  /** token requests made (metrics / tests) */
  tokenRequests = 0;
  private readonly now: () => number;

  constructor(private readonly opts: RegistryAuthOptions) {
    this.now = opts.now ?? Date.now;
    if (opts.basic) decodeBasicAuth(opts.basic);
    if (opts.registryToken) {
      this.mode = 'bearer';
      this.token = { value: opts.registryToken, expiresAt: Infinity, refreshAt: Infinity };
    } else {
      // send Basic pre-emptively when configured; a Bearer challenge switches modes
      this.mode = opts.basic ? 'basic' : 'none';
    }
  }

  /** The Authorization header value for the next request (refreshing a stale token first). */
  async header(): Promise<string | undefined> {
    if (this.mode === 'basic') return `Basic ${this.opts.basic}`;
    if (this.mode === 'none') return undefined;
    const t = this.token;
    if (t && this.now() < t.refreshAt) return `Bearer ${t.value}`;
    if (this.challenge) {
      try {
        await this.refresh(t);
      } catch (e) {
        // the old token may still be valid: use it, a 401 will surface the problem
        if (!t || this.now() >= t.expiresAt) throw e;
      }
    }
    return this.token ? `Bearer ${this.token.value}` : undefined;
  }

  /**
   * React to a 401 (its WWW-Authenticate header and the Authorization header that was sent).
   * Returns true when the request should be retried with a new `header()`.
   */
  async unauthorized(wwwAuthenticate: string | string[] | undefined, sent: string | undefined): Promise<boolean> {
    const challenges = parseWwwAuthenticate(wwwAuthenticate);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (bearer && bearer.params.realm) {
      this.challenge = bearer.params;
      this.mode = 'bearer';
      const t = this.token;
      // someone already replaced the token that failed: just retry with the new one
      if (t && sent !== `Bearer ${t.value}`) return true;
      await this.refresh(t);
      return true;
    }
    if (basic && this.opts.basic) {
      if (this.mode === 'basic' && sent === `Basic ${this.opts.basic}`) return false; // wrong credentials
      this.mode = 'basic';
      return true;
    }
    return false;
  }

  /** Single-flight token fetch: replaces `stale` (the token seen by the caller). */
  private refresh(stale: Token | undefined): Promise<void> {
    if (this.inflight) return this.inflight;
    if (this.token !== stale) return Promise.resolve();
    const p = this.fetchToken().finally(() => {
      if (this.inflight === p) this.inflight = undefined;
    });
    this.inflight = p;
    return p;
  }

  private async fetchToken(): Promise<void> {
    const ch = this.challenge!;
    let url: URL;
    try {
      url = new URL(ch.realm);
    } catch {
      throw backendError(`auth: invalid token realm ${JSON.stringify(ch.realm)} in WWW-Authenticate`, false);
    }
    if (ch.service) url.searchParams.set('service', ch.service);
    if (this.opts.scopes && this.opts.scopes.length > 0) {
      const scopes = new Set<string>(this.opts.scopes);
      for (const sc of (ch.scope ?? '').split(' ')) if (sc) scopes.add(sc);
      for (const sc of scopes) url.searchParams.append('scope', sc);
    } else {
      url.searchParams.set('scope', ch.scope || `repository:${this.opts.repo}:pull`);
    }
    const headers: Record<string, string> = {};
    if (this.opts.basic) headers.authorization = `Basic ${this.opts.basic}`;
    this.tokenRequests++;
    const issued = this.now();
    const r = await this.opts.client.send(url.toString(), headers, 'token GET', { maxBody: () => 1024 * 1024 });
    if (r.status !== 200) {
      throw backendError(`auth: token GET ${redactUrl(url.toString())}: HTTP ${r.status}${r.status === 401 || r.status === 403 ? ' (credentials rejected)' : ''}${bodyExcerpt(r.body)}`, isRetryableStatus(r.status), { url: redactUrl(url.toString()), status: r.status });
    }
    let j: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      j = JSON.parse(r.body.toString('utf8'));
    } catch (e) {
      throw backendError(`auth: token GET ${redactUrl(url.toString())}: malformed JSON reply: ${(e as Error).message}`, false);
    }
    const value = typeof j.token === 'string' && j.token ? j.token : typeof j.access_token === 'string' ? j.access_token : '';
    if (!value) throw backendError(`auth: token GET ${redactUrl(url.toString())}: reply has no "token"`, false);
    const life = (typeof j.expires_in === 'number' && j.expires_in > 0 ? j.expires_in : this.opts.defaultExpiresIn ?? 60) * 1000;
    // refresh ahead of expiry: 20% of the lifetime (≤ 60 s) plus up to 5% (≤ 5 s) of jitter
    const margin = Math.min(60_000, life * 0.2) + Math.random() * Math.min(5_000, life * 0.05);
    this.token = { value, expiresAt: issued + life, refreshAt: issued + life - margin };
  }
}
