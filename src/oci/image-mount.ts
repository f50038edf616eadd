/**
 * `nydus-ts mount --image REF`, the library half: everything between an image reference and a
 * registration body for the daemon, without the daemon or the kernel.
 *
 *   REF ──parseReference──▶ registry / repository / tag|digest
 *       ──GET manifest────▶ a nydus image manifest (an index is resolved: the nydus alternative
 *                            for the platform per rafs-v6.md §4.1, else the platform's manifest,
 *                            which must itself be a nydus image)
 *       ──readNydusManifest▶ data-blob layers + the bootstrap layer
 *       ──GET bootstrap layer, extractBootstrap──▶ <work dir>/bootstraps/sha256/<layer hex>.boot
 *                            (content-addressed by the bootstrap layer digest, written under a
 *                            temporary name, fsync'ed and renamed; a present file is reused)
 *       ──▶ BlobCacheEntry: backend `registry` {scheme, host, repo, auth | registry_token}, as
 *           nydus-snapshotter builds it (legacy `config`, §4.4) or as `config_v2`.
 *
 * Credentials, first match wins: explicit options (`--creds USER:PASSWORD`, `--registry-token`),
 * then `$NYDUS_TS_REGISTRY_CREDS` / `$NYDUS_TS_REGISTRY_TOKEN`, then the Docker CLI config
 * (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`). They are put into the
 * registration (as the snapshotter does), because the daemon may run with another environment.
 *
 * Errors are NydusError with the reference in the message and `reference` in the context:
 * ERR_INVALID_ARGUMENT (bad reference / flags / not a nydus image), ERR_NOT_FOUND (no such tag,
 * repository or platform), ERR_BACKEND (registry unreachable, 401 …), ERR_BAD_BOOTSTRAP.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageReference, isLoopbackHost, parseReference } from './reference';
import { RegistryImageSource } from './registry-client';
import { readNydusManifest, extractBootstrapLayer, isNydusManifest, NydusManifestParts } from './nydus-image';
import { formatPlatform, isIndexMediaType, isNydusDescriptor, parsePlatform, selectManifest } from './layout';
import { Descriptor, ImageIndex, ImageManifest, Platform } from './types';
import { decodeBasicAuth, dockerConfigAuth } from '../backends/auth';
import { BlobCacheEntryJson } from '../daemon/config';
import { EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET } from '../format/constants';
import { NydusError } from '../errors';
import { DEFAULT_IMAGE_WORK_DIR } from './defaults';

/** Default root of `mount --image` state (defined in ./defaults, light enough for the CLI's help). */
export { DEFAULT_IMAGE_WORK_DIR };

export type RegistrationFormat = 'legacy' | 'v2';

export interface CredentialOptions {
  /** `USER:PASSWORD` (as skopeo --creds) */
  creds?: string;
  /** base64 `USER:PASSWORD` */
  auth?: string;
  /** a ready bearer token */
  registryToken?: string;
  /** Docker CLI config.json to consult (default `$DOCKER_CONFIG/config.json` or ~/.docker/config.json); false = never */
  dockerConfig?: string | false;
  /** environment to read NYDUS_TS_REGISTRY_CREDS / NYDUS_TS_REGISTRY_TOKEN from (default process.env) */
  env?: NodeJS.ProcessEnv;
}

export interface ResolvedCredentials {
  /** base64 `user:password` */
  auth?: string;
  registryToken?: string;
  /** where they came from (for reports; never the secret itself) */
  source: 'flags' | 'env' | 'docker-config' | 'none';
  /** the user name of Basic credentials */
  username?: string;
}

function credsToAuth(creds: string, what: string): string {
  const colon = creds.indexOf(':');
  if (colon <= 0) throw new NydusError('ERR_INVALID_ARGUMENT', `${what}: expected USER:PASSWORD`, { field: what });
  return Buffer.from(creds).toString('base64');
}

/** The credentials to use for `ref` (see the module comment for the order). */
export function resolveCredentials(ref: ImageReference, o: CredentialOptions = {}): ResolvedCredentials {
  const env = o.env ?? process.env;
  const basic = (auth: string, source: ResolvedCredentials['source'], what: string): ResolvedCredentials => {
    const { username } = decodeBasicAuth(auth, what);
    return { auth, source, username };
  };
  if ([o.creds, o.auth].filter((x) => x !== undefined).length > 1) throw new NydusError('ERR_INVALID_ARGUMENT', 'give the registry credentials once (creds or auth)');
  if (o.creds !== undefined) return basic(credsToAuth(o.creds, '--creds'), 'flags', '--creds');
  if (o.auth !== undefined) return basic(o.auth, 'flags', 'auth');
  if (o.registryToken) return { registryToken: o.registryToken, source: 'flags' };
  if (env.NYDUS_TS_REGISTRY_CREDS) return basic(credsToAuth(env.NYDUS_TS_REGISTRY_CREDS, '$NYDUS_TS_REGISTRY_CREDS'), 'env', '$NYDUS_TS_REGISTRY_CREDS');
  if (env.NYDUS_TS_REGISTRY_TOKEN) return { registryToken: env.NYDUS_TS_REGISTRY_TOKEN, source: 'env' };
  if (o.dockerConfig !== false) {
    // the registry as written in references (docker.io) and the host names clients talk to
    for (const host of new Set([ref.registry, ref.apiHost, ref.daemonHost])) {
      const a = dockerConfigAuth(host, o.dockerConfig);
      if (a) return basic(a, 'docker-config', `Docker config auth for ${host}`);
    }
  }
  return { source: 'none' };
}

/** The daemon's `registry` backend section (rafs-v6.md §3.5) for an image. */
export interface RegistryBackendJson {
  scheme: 'http' | 'https';
  host: string;
  repo: string;
  auth?: string;
  registry_token?: string;
  [extra: string]: unknown;
}

/**
 * Scheme: `http` with `insecure` and for loopback registries (what the registry client used to
 * read the manifest), else `https`. Host: `index.docker.io` for Docker Hub (as the snapshotter).
 */
export function registryBackendFor(ref: ImageReference, o: { insecure?: boolean; credentials?: ResolvedCredentials } = {}): RegistryBackendJson {
  const b: RegistryBackendJson = { scheme: schemeFor(ref, o.insecure), host: ref.daemonHost, repo: ref.repository };
  if (o.credentials?.auth) b.auth = o.credentials.auth;
  if (o.credentials?.registryToken) b.registry_token = o.credentials.registryToken;
  return b;
}

export function schemeFor(ref: ImageReference, insecure?: boolean): 'http' | 'https' {
  return insecure || isLoopbackHost(ref.registry) ? 'http' : 'https';
}

/** The default fsid of an image: the hex of its manifest digest (same image → same cache volume). */
export function defaultFsid(manifestDigest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(manifestDigest);
  if (!m) throw new NydusError('ERR_INVALID_ARGUMENT', `manifest digest ${JSON.stringify(manifestDigest)} is not sha256:<64 hex>`);
  return m[1];
}

export interface RegistrationOptions {
  fsid: string;
  domainId?: string;
  /** fscache work dir of this registration (exists) */
  workDir: string;
  bootstrapPath: string;
  backend: RegistryBackendJson;
  /** default 'legacy' (the nydus-snapshotter shape) */
  format?: RegistrationFormat;
  /** background prefetch at mount (default off, as nydusd) */
  prefetch?: RegistrationPrefetch;
  /**
   * the window a small read is widened to, bytes (nydusd `rafs.batch_size`, alias of
   * `user_io_batch_size`; default 1 MiB). Only the v2 shape carries it: setting it picks v2.
   */
  amplifyIo?: number;
}

/** nydusd's prefetch settings, as `mount --prefetch…` sets them (src/daemon/prefetch.ts). */
export interface RegistrationPrefetch {
  enable: boolean;
  /** after the prefetch table's files, the whole blob(s) */
  all?: boolean;
  /** concurrent prefetch requests (default 8) */
  threads?: number;
  /** the largest merged prefetch request, bytes (default 1 MiB) */
  mergingSize?: number;
  /** bytes/s, 0 = unlimited */
  bandwidthRate?: number;
}

/**
 * The `PUT /api/v2/blobs` body. `legacy` is the body nydus-snapshotter sends (rafs-v6.md §4.4),
 * `v2` the same as `config_v2`.
 */
export function buildRegistration(o: RegistrationOptions): BlobCacheEntryJson {
  const domainId = o.domainId ?? '';
  const p = { enable: o.prefetch?.enable ?? false, all: o.prefetch?.all ?? false, threads: o.prefetch?.threads ?? 8, merge: o.prefetch?.mergingSize ?? 1 << 20, rate: o.prefetch?.bandwidthRate ?? 0 };
  if ((o.format ?? (o.amplifyIo ? 'v2' : 'legacy')) === 'legacy') {
    if (o.amplifyIo) throw new NydusError('ERR_INVALID_ARGUMENT', 'an amplification window (rafs.batch_size) needs the v2 registration shape');
    return {
      type: 'bootstrap',
      id: o.fsid,
      domain_id: domainId,
      config: {
        id: o.fsid,
        backend_type: 'registry',
        backend_config: { ...o.backend },
        cache_type: 'fscache',
        cache_config: { work_dir: o.workDir },
        prefetch_config: { enable: p.enable, threads_count: p.threads, merging_size: p.merge, bandwidth_rate: p.rate, prefetch_all: p.all },
        metadata_path: o.bootstrapPath,
      },
    };
  }
  return {
    type: 'bootstrap',
    id: o.fsid,
    domain_id: domainId,
    config_v2: {
      version: 2,
      id: o.fsid,
      backend: { type: 'registry', registry: { ...o.backend } },
      cache: {
        type: 'fscache', fscache: { work_dir: o.workDir },
        prefetch: { enable: p.enable, threads: p.threads, batch_size: p.merge, bandwidth_limit: p.rate, prefetch_all: p.all },
      },
      ...(o.amplifyIo ? { rafs: { batch_size: o.amplifyIo } } : {}),
      metadata_path: o.bootstrapPath,
    },
  };
}

/** The registration with secrets replaced (for logs and reports). */
export function redactRegistration(entry: BlobCacheEntryJson): BlobCacheEntryJson {
  const copy = JSON.parse(JSON.stringify(entry)) as BlobCacheEntryJson;
  const backend = (copy.config?.backend_config ?? (copy.config_v2 as { backend?: { registry?: unknown } } | undefined)?.backend?.registry) as Record<string, unknown> | undefined;
  if (backend) {
    if (backend.auth) backend.auth = '<redacted>';
    if (backend.registry_token) backend.registry_token = '<redacted>';
  }
  return copy;
}

// ---------------------------------------------------------------------------------------------
// the bootstrap cache

/** `<workDir>/bootstraps/sha256/<hex>.boot`: the cached bootstrap of a bootstrap layer. */
export function bootstrapCachePath(workDir: string, layerDigest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(layerDigest);
  if (!m) throw new NydusError('ERR_INVALID_ARGUMENT', `bootstrap layer digest ${JSON.stringify(layerDigest)} is not sha256:<64 hex>`, { digest: layerDigest });
  return path.join(path.resolve(workDir), 'bootstraps', 'sha256', `${m[1]}.boot`);
}

function looksLikeBootstrap(file: string): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size < EROFS_SUPER_OFFSET + 4) return false;
    const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, EROFS_SUPER_OFFSET);
    return b.readUInt32LE(0) === EROFS_SUPER_MAGIC;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Write `data` to `file` atomically: a uniquely named temporary file in the same directory,
 * fsync, rename, fsync of the directory. Concurrent writers of the same content are safe (the
 * last rename wins, every reader sees a whole file).
 */
export function storeFileAtomic(file: string, data: Buffer): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', 0o644);
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new NydusError('ERR_IO', `cannot write ${file}: ${(e as Error).message}`, { path: file });
  }
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // some filesystems refuse fsync on directories; the rename is still atomic
  }
}

// ---------------------------------------------------------------------------------------------
// resolving the image

export interface ResolvedNydusImage {
  reference: ImageReference;
  /** what the reference names: the index or the manifest */
  root: { digest: string; mediaType: string };
  /** the nydus image manifest */
  manifestDigest: string;
  manifest: ImageManifest;
  /** the index entry's platform when resolved through an index */
  platform?: Platform;
  /** how the manifest was found */
  via: 'manifest' | 'index-nydus-alternative' | 'index-platform';
  parts: NydusManifestParts;
}

function notNydus(ref: ImageReference, digest: string, m: ImageManifest, how: string, hint = ''): NydusError {
  const types = [...new Set((m.layers ?? []).map((l) => l.mediaType))].join(', ') || 'none';
  const target = ref.tag !== undefined ? ref.withTag(`${ref.tag}-nydus`).toString() : `${ref.name}:nydus`;
  return new NydusError(
    'ERR_INVALID_ARGUMENT',
    `${ref}: not a nydus image (${how}manifest ${digest} has ${m.layers?.length ?? 0} layers of ${types} and no nydus bootstrap layer)${hint}; ` +
      `convert it first: nydus-ts convert --source ${ref} --target ${target}`,
    { reference: ref.toString(), digest, reason: 'not-nydus' },
  );
}

function withRef(ref: ImageReference, e: unknown, what: string): unknown {
  if (!(e instanceof NydusError)) return e;
  const name = ref.toString();
  if (e.code === 'ERR_NOT_FOUND' && e.context.status === 404) {
    const codes = (e.context.registryCodes as string[] | undefined) ?? [];
    let msg: string;
    if (codes.includes('NAME_UNKNOWN')) msg = `image not found: the registry has no repository ${ref.repository}`;
    else if (what !== 'manifest') msg = `the registry has no ${what} (a broken or partly deleted image)`;
    else if (ref.digest) msg = `image not found: the registry has no manifest ${ref.digest} in ${ref.repository}`;
    else msg = `image not found: the registry has no tag ${JSON.stringify(ref.tag)} in ${ref.repository}`;
    return new NydusError('ERR_NOT_FOUND', `${name}: ${msg} (${e.message})`, { ...e.context, reference: name }, { cause: e });
  }
  if (e.message.includes(name)) return e;
  return new NydusError(e.code, `${name}: ${e.message}`, { ...e.context, reference: name }, { cause: e });
}

/**
 * Find the nydus image manifest `ref` names. An index: its nydus alternative for `platform`
 * (rafs-v6.md §4.1: `os.features` nydus.remoteimage.v1 or the nydus artifactType), else its
 * manifest for `platform`, which must be a nydus image itself.
 */
export async function resolveNydusImage(source: RegistryImageSource, platform: Platform): Promise<ResolvedNydusImage> {
  const ref = source.reference;
  let root;
  try {
    root = await source.root();
  } catch (e) {
    throw withRef(ref, e, 'manifest');
  }
  const rootInfo = { digest: root.descriptor.digest, mediaType: root.parsed.mediaType };
  let manifest: ImageManifest;
  let manifestDigest: string;
  let via: ResolvedNydusImage['via'] = 'manifest';
  let entry: Descriptor | undefined;
  if (root.parsed.kind === 'index' || isIndexMediaType(root.parsed.mediaType)) {
    const index = root.parsed.index as ImageIndex;
    const where = `${ref}: index ${root.descriptor.digest}`;
    try {
      entry = selectManifest(index, { platform, nydus: true }, where);
      via = 'index-nydus-alternative';
    } catch (e) {
      if (!(e instanceof NydusError) || e.code !== 'ERR_NOT_FOUND') throw e;
      try {
        entry = selectManifest(index, { platform }, where);
      } catch (e2) {
        if (e2 instanceof NydusError && e2.code === 'ERR_NOT_FOUND') {
          throw new NydusError('ERR_NOT_FOUND', `${e2.message} (choose one with --platform)`, { ...e2.context, reference: ref.toString() });
        }
        throw e2;
      }
      via = 'index-platform';
    }
    let m;
    try {
      m = await source.fetchManifest(entry.digest);
    } catch (e) {
      throw withRef(ref, e, `manifest ${entry.digest} listed in its index`);
    }
    if (m.parsed.kind !== 'manifest' || !m.parsed.manifest) {
      throw new NydusError('ERR_UNSUPPORTED', `${ref}: index entry ${entry.digest} for ${formatPlatform(platform)} is not an image manifest`, { reference: ref.toString() });
    }
    manifest = m.parsed.manifest;
    manifestDigest = m.descriptor.digest;
    if (via === 'index-platform' && !isNydusManifest(manifest)) {
      const others = index.manifests.filter((d) => isNydusDescriptor(d)).map((d) => formatPlatform(d.platform));
      const hint = others.length ? ` (the index has nydus alternatives for ${others.join(', ')} only)` : ' (the index has no nydus alternative)';
      throw notNydus(ref, manifestDigest, manifest, `the index's ${formatPlatform(platform)} `, hint);
    }
  } else {
    manifest = root.parsed.manifest as ImageManifest;
    manifestDigest = root.descriptor.digest;
    if (!isNydusManifest(manifest)) throw notNydus(ref, manifestDigest, manifest, '');
  }
  const parts = readNydusManifest(manifest, `${ref}: manifest ${manifestDigest}`);
  return { reference: ref, root: rootInfo, manifestDigest, manifest, platform: entry?.platform, via, parts };
}

// ---------------------------------------------------------------------------------------------
// all of it

export interface PrepareImageOptions extends CredentialOptions {
  /** plain http to the registry */
  insecure?: boolean;
  /** `os/arch[/variant]` or a Platform; default: this machine's (linux/amd64, linux/arm64 …) */
  platform?: string | Platform;
  /** root of the bootstrap cache (default DEFAULT_IMAGE_WORK_DIR) */
  workDir?: string;
  /** registry client tuning (tests) */
  timeoutMs?: number;
  retryLimit?: number;
}

export interface PreparedImage {
  /** the fully qualified reference */
  reference: string;
  ref: ImageReference;
  root: { digest: string; mediaType: string };
  manifestDigest: string;
  via: ResolvedNydusImage['via'];
  platform: string;
  /** data blobs: id (hex) and compressed size */
  blobs: Array<{ id: string; size: number }>;
  blobIds: string[];
  bootstrap: {
    /** the cached bootstrap file */
    path: string;
    layerDigest: string;
    layerSize: number;
    size: number;
    /** true when the file was already in the cache (nothing fetched) */
    cached: boolean;
  };
  backend: RegistryBackendJson;
  credentials: ResolvedCredentials['source'];
  /** the fsid `mount` uses unless told otherwise */
  defaultFsid: string;
  timingsMs: { resolve: number; bootstrap: number };
}

/** This machine's platform in OCI terms. */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch };
}

/**
 * Resolve `reference` to a nydus image, put its bootstrap into the cache and work out the
 * daemon's registry backend; nothing is registered or mounted.
 */
export async function prepareImage(reference: string, o: PrepareImageOptions = {}): Promise<PreparedImage> {
  const t0 = performance.now();
  const ref = parseReference(reference);
  const platform = o.platform === undefined ? hostPlatform() : typeof o.platform === 'string' ? parsePlatform(o.platform) : o.platform;
  const credentials = resolveCredentials(ref, o);
  const scheme = schemeFor(ref, o.insecure);
  const source = new RegistryImageSource(ref, {
    scheme,
    auth: credentials.auth,
    registryToken: credentials.registryToken,
    dockerConfig: false,
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
    ...(o.retryLimit !== undefined ? { retryLimit: o.retryLimit } : {}),
  });
  try {
    const img = await resolveNydusImage(source, platform);
    const t1 = performance.now();
    const layer = img.parts.bootstrap;
    const file = bootstrapCachePath(o.workDir ?? DEFAULT_IMAGE_WORK_DIR, layer.digest);
    const cached = looksLikeBootstrap(file);
    if (!cached) {
      let data: Buffer;
      try {
        data = await source.blob(layer);
      } catch (e) {
        throw withRef(ref, e, `bootstrap layer ${layer.digest}`);
      }
      const { bootstrap } = await extractBootstrapLayer(data, `${ref}: bootstrap layer ${layer.digest}`);
      storeFileAtomic(file, bootstrap);
    }
    const t2 = performance.now();
    return {
      reference: ref.toString(),
      ref,
      root: img.root,
      manifestDigest: img.manifestDigest,
      via: img.via,
      platform: formatPlatform(img.platform ?? platform),
      blobs: img.parts.blobs.map((b, i) => ({ id: img.parts.blobIds[i], size: b.size })),
      blobIds: img.parts.blobIds,
      bootstrap: { path: file, layerDigest: layer.digest, layerSize: layer.size, size: fs.statSync(file).size, cached },
      backend: registryBackendFor(ref, { insecure: o.insecure, credentials }),
      credentials: credentials.source,
      defaultFsid: defaultFsid(img.manifestDigest),
      timingsMs: { resolve: Math.round(t1 - t0), bootstrap: Math.round(t2 - t1) },
    };
  } finally {
    await source.close().catch(() => undefined);
  }
}
