/**
 * Image references (`[host[:port]/]path[:tag][@digest]`) parsed the way the Docker CLI /
 * distribution's `reference.ParseNormalizedNamed` does:
 *
 * - the first `/`-separated component is a registry host when it contains `.` or `:`, is
 *   `localhost`, or contains an upper-case letter (then it cannot be a repository component);
 *   otherwise the registry is Docker Hub (`docker.io`);
 * - Docker Hub names with a single component get the `library/` prefix (`ubuntu` →
 *   `docker.io/library/ubuntu`), and `index.docker.io` / `registry-1.docker.io` are spelled
 *   `docker.io`;
 * - the tag defaults to `latest` only when there is neither a tag nor a digest;
 * - repository components are lower case `[a-z0-9]+` joined by `.`, `_`, `__` or `-`…; a tag is
 *   `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest is `algorithm:hex` (sha256 → 64 lower-case hex).
 *
 * Docker Hub has three host names: `docker.io` (the name in references), `registry-1.docker.io`
 * (the API host clients talk to) and `index.docker.io` (what nydus-snapshotter writes into the
 * nydusd `backend.config.host` for docker.io images). All three are exposed.
 *
 * An optional `docker://` prefix (skopeo / containers-image transport syntax) is accepted.
 */
import { NydusError } from '../errors';

export const DOCKER_HUB = 'docker.io';
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
export const DOCKER_HUB_DAEMON_HOST = 'index.docker.io';

export interface ImageReference {
  /** canonical registry name: `docker.io`, `ghcr.io`, `localhost:5000`, `[::1]:5000` */
  readonly registry: string;
  /** repository path without the registry: `library/ubuntu` */
  readonly repository: string;
  /** the tag, if the reference has one (`latest` when neither tag nor digest was given) */
  readonly tag?: string;
  /** `sha256:<hex>` when the reference pins a digest */
  readonly digest?: string;
  /** host[:port] to send Distribution API requests to (`registry-1.docker.io` for Docker Hub) */
  readonly apiHost: string;
  /** host nydus-snapshotter puts into the nydusd registry backend config (`index.docker.io` for Docker Hub) */
  readonly daemonHost: string;
  /** what to ask `/v2/<repo>/manifests/<…>` for: the digest when pinned, else the tag */
  readonly manifestReference: string;
  /** `registry/repository` */
  readonly name: string;
  /** the short Docker CLI form (`ubuntu:latest`, `user/app@sha256:…`, `ghcr.io/x/y:1`) */
  familiar(): string;
  /** `registry/repository[:tag][@digest]`, fully qualified */
  toString(): string;
  /** the same repository with another tag / digest */
  withTag(tag: string): ImageReference;
  withDigest(digest: string): ImageReference;
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}$/;
const NAME_TOTAL_MAX = 255;

function invalid(ref: string, reason: string): NydusError {
  return new NydusError('ERR_INVALID_ARGUMENT', `invalid image reference ${JSON.stringify(ref)}: ${reason}`, { reference: ref, reason });
}

/** `host`, `host:port`, `[v6]` or `[v6]:port`; returns a reason when invalid */
function checkDomain(d: string): string | undefined {
  let host = d;
  let port: string | undefined;
  if (d.startsWith('[')) {
    const close = d.indexOf(']');
    if (close < 0) return `unterminated IPv6 address in registry ${JSON.stringify(d)}`;
    const v6 = d.slice(1, close);
    if (!/^[0-9A-Fa-f:.]+$/.test(v6) || !v6.includes(':')) return `invalid IPv6 address in registry ${JSON.stringify(d)}`;
    const rest = d.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) return `invalid registry ${JSON.stringify(d)}`;
    port = rest ? rest.slice(1) : undefined;
    host = '';
  } else {
    const colon = d.lastIndexOf(':');
    if (colon >= 0) {
      host = d.slice(0, colon);
      port = d.slice(colon + 1);
    }
    if (host === '') return `empty registry host in ${JSON.stringify(d)}`;
    for (const c of host.split('.')) {
      if (!DOMAIN_COMPONENT.test(c)) return `invalid registry host ${JSON.stringify(host)}`;
    }
  }
  if (port !== undefined && (!/^[0-9]+$/.test(port) || Number(port) < 1 || Number(port) > 65535)) return `invalid registry port ${JSON.stringify(port)}`;
  return undefined;
}

/** Validate a digest string (`sha256:` + 64 lower-case hex, or another well-formed algorithm:hex). */
export function checkDigest(digest: string, what = 'digest'): void {
  if (!DIGEST.test(digest)) throw new NydusError('ERR_INVALID_ARGUMENT', `invalid ${what} ${JSON.stringify(digest)}: expected algorithm:hex`, { digest });
  const [alg, hex] = digest.split(':');
  if (alg === 'sha256' && !/^[0-9a-f]{64}$/.test(hex)) throw new NydusError('ERR_INVALID_ARGUMENT', `invalid ${what} ${JSON.stringify(digest)}: sha256 needs 64 lower-case hex digits`, { digest });
  if (alg === 'sha512' && !/^[0-9a-f]{128}$/.test(hex)) throw new NydusError('ERR_INVALID_ARGUMENT', `invalid ${what} ${JSON.stringify(digest)}: sha512 needs 128 lower-case hex digits`, { digest });
}

export function isLoopbackHost(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

class Ref implements ImageReference {
  constructor(readonly registry: string, readonly repository: string, readonly tag: string | undefined, readonly digest: string | undefined) {}
  get apiHost(): string {
    return this.registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : this.registry;
  }
  get daemonHost(): string {
    return this.registry === DOCKER_HUB ? DOCKER_HUB_DAEMON_HOST : this.registry;
  }
  get manifestReference(): string {
    return this.digest ?? this.tag ?? 'latest';
  }
  get name(): string {
    return `${this.registry}/${this.repository}`;
  }
  private suffix(): string {
    return `${this.tag !== undefined ? `:${this.tag}` : ''}${this.digest !== undefined ? `@${this.digest}` : ''}`;
  }
  familiar(): string {
    let n = this.name;
    if (this.registry === DOCKER_HUB) n = this.repository.startsWith('library/') && this.repository.split('/').length === 2 ? this.repository.slice(8) : this.repository;
    return n + this.suffix();
  }
  toString(): string {
    return this.name + this.suffix();
  }
  toJSON(): Record<string, unknown> {
    return { registry: this.registry, repository: this.repository, tag: this.tag, digest: this.digest, apiHost: this.apiHost, daemonHost: this.daemonHost, reference: this.toString() };
  }
  withTag(tag: string): ImageReference {
    if (!TAG.test(tag)) throw invalid(`${this.name}:${tag}`, `invalid tag ${JSON.stringify(tag)}`);
    return new Ref(this.registry, this.repository, tag, undefined);
  }
  withDigest(digest: string): ImageReference {
    checkDigest(digest);
    return new Ref(this.registry, this.repository, this.tag, digest);
  }
}

/**
 * Parse an image reference; throws NydusError('ERR_INVALID_ARGUMENT') naming the reference and
 * the reason (upper case in the repository, bad tag or digest, empty components, too long…).
 */
export function parseReference(input: string): ImageReference {
  if (typeof input !== 'string') throw invalid(String(input), 'not a string');
  let s = input;
  if (s.startsWith('docker://')) s = s.slice('docker://'.length);
  if (s === '') throw invalid(input, 'empty reference');
  if (/\s/.test(s)) throw invalid(input, 'contains white space');
  if (s.includes('://')) throw invalid(input, 'a reference has no URL scheme (write host/repo:tag)');

  let digest: string | undefined;
  const at = s.indexOf('@');
  if (at >= 0) {
    digest = s.slice(at + 1);
    s = s.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(input, `invalid digest ${JSON.stringify(digest)} (expected algorithm:hex, e.g. sha256:<64 hex>)`);
    try {
      checkDigest(digest);
    } catch (e) {
      throw invalid(input, (e as Error).message);
    }
  }

  // a tag is after the last ':' that follows the last '/'
  let tag: string | undefined;
  const slash = s.lastIndexOf('/');
  const colon = s.lastIndexOf(':');
  if (colon > slash) {
    tag = s.slice(colon + 1);
    s = s.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `invalid tag ${JSON.stringify(tag)} (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})`);
  }
  if (s === '') throw invalid(input, 'empty repository name');

  // registry host or Docker Hub
  let registry: string;
  let repo: string;
  const first = s.indexOf('/');
  const head = first < 0 ? '' : s.slice(0, first);
  if (first >= 0 && (head.includes('.') || head.includes(':') || head === 'localhost' || head.startsWith('[') || head.toLowerCase() !== head)) {
    registry = head;
    repo = s.slice(first + 1);
    const why = checkDomain(registry);
    if (why) throw invalid(input, why);
  } else {
    registry = DOCKER_HUB;
    repo = s;
  }
  if (registry === DOCKER_HUB_DAEMON_HOST || registry === DOCKER_HUB_API_HOST) registry = DOCKER_HUB;
  if (repo === '') throw invalid(input, 'empty repository name');
  const parts = repo.split('/');
  for (const p of parts) {
    if (p === '') throw invalid(input, `empty path component in repository ${JSON.stringify(repo)}`);
    if (!PATH_COMPONENT.test(p)) {
      if (p.toLowerCase() !== p && PATH_COMPONENT.test(p.toLowerCase())) throw invalid(input, `repository name must be lower case (${JSON.stringify(repo)})`);
      throw invalid(input, `invalid repository path component ${JSON.stringify(p)} (allowed: lower-case letters, digits, and . _ __ - separators between them)`);
    }
  }
  if (registry === DOCKER_HUB && parts.length === 1) repo = `library/${repo}`;
  if (`${registry}/${repo}`.length > NAME_TOTAL_MAX) throw invalid(input, `repository name longer than ${NAME_TOTAL_MAX} characters`);
  if (tag === undefined && digest === undefined) tag = 'latest';
  return new Ref(registry, repo, tag, digest);
}

/** Accept an ImageReference or parse a string. */
export function toReference(r: string | ImageReference): ImageReference {
  return typeof r === 'string' ? parseReference(r) : r;
}
