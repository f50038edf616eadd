/**
 * Registration bodies of nydusd in fscache (singleton) mode: `PUT /api/v2/blobs` with a
 * `BlobCacheEntry` and the `--config FILE` list `{"blobs": [BlobCacheEntry, …]}` (spec
 * rafs-v6.md §3.5). Both the legacy flat `config` object (what nydus-snapshotter sends) and the
 * `config_v2` object are parsed into one normalized, fully defaulted structure. Unknown keys are
 * ignored (the snapshotter sends e.g. `readahead`); a known key of the wrong type, a missing
 * required key or an unusable path is an ERR_INVALID_ARGUMENT naming the field (as a JSON path
 * such as `config.backend_config.host`) and the reason.
 *
 * JSON only; the TOML form nydusd also accepts is not supported.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NydusError } from '../errors';

export const MiB = 1024 * 1024;
/** user-IO amplification when the entry has no RAFS section (always, for blob entries) */
export const DEFAULT_AMPLIFY_IO = MiB;
export const DEFAULT_PREFETCH_THREADS = 8;
export const DEFAULT_PREFETCH_BATCH_SIZE = MiB;
/** upper bounds that catch nonsense values (a prefetch batch / amplification window) */
export const MAX_BATCH_SIZE = 256 * MiB;
export const MAX_PREFETCH_THREADS = 1024;

export const BACKEND_TYPES = ['localfs', 'registry', 'http-proxy', 's3', 'oss', 'localdisk'] as const;
export type BackendType = (typeof BACKEND_TYPES)[number];

/** `proxy` section of the network backends (a P2P / dragonfly proxy in front of the source). */
export interface ProxyConfig {
  /** '' = no proxy */
  url: string;
  ping_url: string;
  /** fall back to the source when the proxy is unhealthy */
  fallback: boolean;
  /** seconds between health checks */
  check_interval: number;
  use_http: boolean;
  /** seconds */
  check_pause_elapsed: number;
  dragonfly_scheduler_endpoint?: string;
}

export interface LocalFsBackendConfig {
  /** directory holding `<blob id>` files (or use blob_file) */
  dir?: string;
  /** more directories searched after `dir` */
  alt_dirs: string[];
  /** a single file serving every blob id */
  blob_file?: string;
}

/** Fields every network backend shares. Times in seconds. */
export interface NetworkBackendCommon {
  skip_verify: boolean;
  ca_cert_files: string[];
  timeout: number;
  connect_timeout: number;
  retry_limit: number;
  proxy: ProxyConfig;
}

export interface RegistryBackendConfig extends NetworkBackendCommon {
  scheme: 'http' | 'https';
  host: string;
  /** e.g. `library/ubuntu` */
  repo: string;
  /** base64 `user:password` */
  auth?: string;
  /** bearer token */
  registry_token?: string;
  blob_url_scheme?: string;
  blob_redirected_host?: string;
}

export interface HttpProxyBackendConfig extends NetworkBackendCommon {
  /** http(s) URL or an absolute unix socket path */
  addr: string;
  /** URL prefix: blob URL = addr + path + '/' + blob id */
  path: string;
}

export interface OssBackendConfig extends NetworkBackendCommon {
  scheme: 'http' | 'https';
  endpoint: string;
  bucket_name: string;
  /** object key = object_prefix + blob id */
  object_prefix: string;
  access_key_id: string;
  access_key_secret: string;
}

export interface S3BackendConfig extends OssBackendConfig {
  region: string;
}

export interface LocalDiskBackendConfig {
  device_path: string;
  disable_gpt: boolean;
}

export type BackendConfig =
  | { type: 'localfs'; config: LocalFsBackendConfig }
  | { type: 'registry'; config: RegistryBackendConfig }
  | { type: 'http-proxy'; config: HttpProxyBackendConfig }
  | { type: 's3'; config: S3BackendConfig }
  | { type: 'oss'; config: OssBackendConfig }
  | { type: 'localdisk'; config: LocalDiskBackendConfig };

export interface PrefetchConfig {
  enable: boolean;
  threads: number;
  /** bytes per prefetch request */
  batchSize: number;
  /** bytes per second, 0 = unlimited */
  bandwidthLimit: number;
  /** legacy default true, v2 default false (informational in fscache mode) */
  prefetchAll: boolean;
}

/** The JSON shape of a BlobCacheEntry as a client sends it (validated by parseBlobCacheEntry). */
export interface BlobCacheEntryJson {
  type: 'bootstrap';
  id: string;
  domain_id?: string;
  /** legacy flat config (nydus-snapshotter) */
  config?: Record<string, unknown>;
  /** v2 config; wins over `config` when both are present */
  config_v2?: Record<string, unknown>;
  [extra: string]: unknown;
}

/** One registration (a bootstrap and the blobs it references), validated and defaulted. */
export interface NormalizedEntry {
  /** the entry id: the fsid the image is mounted with (cookie of the bootstrap object) */
  id: string;
  /** '' when absent (then the kernel volume is named after the fsid) */
  domainId: string;
  /** the config's own `id` (metrics are keyed by it); defaults to the entry id */
  configId: string;
  /** absolute path of the bootstrap (`metadata_path`), an existing file */
  bootstrapPath: string;
  /** absolute path of the per-image work directory (`cache…work_dir`), an existing directory */
  workDir: string;
  backend: BackendConfig;
  prefetch: PrefetchConfig;
  /** bytes: a user READ is extended to at least this window */
  amplifyIo: number;
  /** verify chunk digests (v2 `cache.validate`; always false for legacy configs) */
  validate: boolean;
  /** which config form the entry used */
  format: 'legacy' | 'v2';
  /** the original JSON value, kept for failover re-registration */
  raw: unknown;
}

export interface ParseOptions {
  /**
   * Check that metadata_path is an existing file and work_dir an existing directory (default
   * true, as nydusd does on registration).
   */
  checkPaths?: boolean;
  /** prefix for field names in error messages, e.g. `blobs[2]` */
  where?: string;
}

// ------------------------------------------------------------------------------------------------
// field readers

type Obj = Record<string, unknown>;

function fail(field: string, reason: string, context: Record<string, unknown> = {}): never {
  throw new NydusError('ERR_INVALID_ARGUMENT', `${field || 'registration'}: ${reason}`, { field, ...context });
}

function join(where: string, key: string): string {
  return where ? `${where}.${key}` : key;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v)}`;
  return `${typeof v} ${typeof v === 'object' ? '' : String(v)}`.trim();
}

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function asObj(v: unknown, field: string): Obj {
  if (!isObj(v)) fail(field, `must be a JSON object, got ${describe(v)}`);
  return v;
}

/** an optional object section; undefined/null → {} */
function section(o: Obj, key: string, where: string): Obj {
  const v = o[key];
  if (v === undefined || v === null) return {};
  return asObj(v, join(where, key));
}

function optStr(o: Obj, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') fail(join(where, key), `must be a string, got ${describe(v)}`);
  return v;
}

function str(o: Obj, key: string, where: string, def: string): string {
  return optStr(o, key, where) ?? def;
}

/** optional string where '' means "not set" */
function optNonEmpty(o: Obj, key: string, where: string): string | undefined {
  const v = optStr(o, key, where);
  return v === '' ? undefined : v;
}

function reqStr(o: Obj, key: string, where: string): string {
  const v = optStr(o, key, where);
  if (v === undefined || v === '') fail(join(where, key), 'is required (a non-empty string)');
  return v;
}

function bool(o: Obj, key: string, where: string, def: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'boolean') fail(join(where, key), `must be true or false, got ${describe(v)}`);
  return v;
}

function uint(o: Obj, key: string, where: string, def: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(join(where, key), `must be a non-negative integer, got ${describe(v)}`);
  if (v > max) fail(join(where, key), `must be at most ${max}, got ${v}`);
  return v;
}

function strArray(o: Obj, key: string, where: string): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  const field = join(where, key);
  if (!Array.isArray(v)) fail(field, `must be an array of strings, got ${describe(v)}`);
  return v.map((x, i) => {
    if (typeof x !== 'string') fail(`${field}[${i}]`, `must be a string, got ${describe(x)}`);
    return x;
  });
}

function scheme(o: Obj, key: string, where: string): 'http' | 'https' {
  const v = str(o, key, where, 'https') || 'https';
  if (v !== 'http' && v !== 'https') fail(join(where, key), `must be "http" or "https", got ${JSON.stringify(v)}`);
  return v;
}

/** An id that becomes part of an fscache key and a file name. */
function checkId(v: string, field: string): void {
  if (v.includes('/')) fail(field, `must not contain '/', got ${JSON.stringify(v)}`);
  if (v.includes('\0')) fail(field, 'must not contain NUL characters');
}

function existing(p: string, field: string, kind: 'file' | 'directory'): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    fail(field, code === 'ENOENT' ? `${p} does not exist (must be an existing ${kind})` : `cannot stat ${p}: ${(e as Error).message}`, { path: p });
  }
  if (kind === 'file' && !st.isFile()) fail(field, `${p} is not a regular file`, { path: p });
  if (kind === 'directory' && !st.isDirectory()) fail(field, `${p} is not a directory`, { path: p });
}

// ------------------------------------------------------------------------------------------------
// backends

function proxyConfig(o: Obj, where: string): ProxyConfig {
  const p = section(o, 'proxy', where);
  const w = join(where, 'proxy');
  const out: ProxyConfig = {
    url: str(p, 'url', w, ''),
    ping_url: str(p, 'ping_url', w, ''),
    fallback: bool(p, 'fallback', w, true),
    check_interval: uint(p, 'check_interval', w, 5),
    use_http: bool(p, 'use_http', w, false),
    check_pause_elapsed: uint(p, 'check_pause_elapsed', w, 300),
  };
  const df = optNonEmpty(p, 'dragonfly_scheduler_endpoint', w);
  if (df !== undefined) out.dragonfly_scheduler_endpoint = df;
  return out;
}

function networkCommon(o: Obj, where: string): NetworkBackendCommon {
  return {
    skip_verify: bool(o, 'skip_verify', where, false),
    ca_cert_files: strArray(o, 'ca_cert_files', where),
    timeout: uint(o, 'timeout', where, 5),
    connect_timeout: uint(o, 'connect_timeout', where, 5),
    retry_limit: uint(o, 'retry_limit', where, 0),
    proxy: proxyConfig(o, where),
  };
}

function withOptional<T extends object>(base: T, extra: Record<string, string | undefined>): T {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) (base as Record<string, unknown>)[k] = v;
  return base;
}

function parseBackend(type: string, o: Obj, where: string): BackendConfig {
  switch (type) {
    case 'localfs': {
      const cfg: LocalFsBackendConfig = withOptional(
        { alt_dirs: strArray(o, 'alt_dirs', where) },
        { dir: optNonEmpty(o, 'dir', where), blob_file: optNonEmpty(o, 'blob_file', where) },
      );
      if (cfg.dir === undefined && cfg.blob_file === undefined) fail(join(where, 'dir'), 'localfs backend needs "dir" (or "blob_file")');
      return { type, config: cfg };
    }
    case 'registry': {
      const cfg: RegistryBackendConfig = withOptional(
        { ...networkCommon(o, where), scheme: scheme(o, 'scheme', where), host: reqStr(o, 'host', where), repo: reqStr(o, 'repo', where) },
        {
          auth: optNonEmpty(o, 'auth', where),
          registry_token: optNonEmpty(o, 'registry_token', where),
          blob_url_scheme: optNonEmpty(o, 'blob_url_scheme', where),
          blob_redirected_host: optNonEmpty(o, 'blob_redirected_host', where),
        },
      );
      return { type, config: cfg };
    }
    case 'http-proxy': {
      const addr = reqStr(o, 'addr', where);
      if (!/^https?:\/\//.test(addr) && !path.isAbsolute(addr)) fail(join(where, 'addr'), `must be an http(s) URL or an absolute unix socket path, got ${JSON.stringify(addr)}`);
      return { type, config: { ...networkCommon(o, where), addr, path: str(o, 'path', where, '') } };
    }
    case 'oss':
    case 's3': {
      const common: OssBackendConfig = {
        ...networkCommon(o, where),
        scheme: scheme(o, 'scheme', where),
        endpoint: type === 'oss' ? reqStr(o, 'endpoint', where) : str(o, 'endpoint', where, ''),
        bucket_name: reqStr(o, 'bucket_name', where),
        object_prefix: str(o, 'object_prefix', where, ''),
        access_key_id: str(o, 'access_key_id', where, ''),
        access_key_secret: str(o, 'access_key_secret', where, ''),
      };
      if (type === 'oss') return { type, config: common };
      return { type, config: { ...common, region: reqStr(o, 'region', where) } };
    }
    case 'localdisk':
      return { type, config: { device_path: reqStr(o, 'device_path', where), disable_gpt: bool(o, 'disable_gpt', where, false) } };
    default:
      throw new Error(`unreachable backend type ${type}`);
  }
}

function backendType(v: unknown, field: string): BackendType {
  if (typeof v !== 'string' || v === '') fail(field, `is required: one of ${BACKEND_TYPES.join(', ')}`);
  if (!(BACKEND_TYPES as readonly string[]).includes(v)) fail(field, `unknown backend type ${JSON.stringify(v)} (expected one of ${BACKEND_TYPES.join(', ')})`);
  return v as BackendType;
}

function checkPrefetch(p: PrefetchConfig, where: string, threadsKey: string): PrefetchConfig {
  if (p.enable && (p.threads < 1 || p.threads > MAX_PREFETCH_THREADS)) fail(join(where, threadsKey), `must be between 1 and ${MAX_PREFETCH_THREADS} when prefetch is enabled, got ${p.threads}`);
  return p;
}

function checkCacheType(v: string | undefined, field: string): void {
  if (v !== 'fscache') fail(field, `must be "fscache" for a daemon in fscache mode, got ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
}

// ------------------------------------------------------------------------------------------------
// the two config forms

interface ConfigPart {
  configId?: string;
  bootstrapPath: string;
  workDir: string;
  backend: BackendConfig;
  prefetch: PrefetchConfig;
  amplifyIo: number;
  validate: boolean;
}

function metadataPath(c: Obj, where: string): string {
  const v = optStr(c, 'metadata_path', where);
  if (v === undefined || v === '') {
    const hint = typeof c.metadata_file === 'string' ? ' (found "metadata_file"; the field is named "metadata_path")' : '';
    fail(join(where, 'metadata_path'), `is required: the path of the bootstrap${hint}`);
  }
  return v;
}

/** legacy flat `config` (nydus-snapshotter's BlobCacheEntry config) */
function parseLegacy(c: Obj, where: string): ConfigPart {
  const type = backendType(c.backend_type, join(where, 'backend_type'));
  if (type === 'http-proxy') fail(join(where, 'backend_type'), 'the "http-proxy" backend is only available in "config_v2"');
  const backend = parseBackend(type, section(c, 'backend_config', where), join(where, 'backend_config'));
  checkCacheType(optStr(c, 'cache_type', where), join(where, 'cache_type'));
  if (bool(c, 'cache_compressed', where, false)) fail(join(where, 'cache_compressed'), 'compressed caches are not supported by fscache (must be false)');
  const cc = section(c, 'cache_config', where);
  const workDir = reqStr(cc, 'work_dir', join(where, 'cache_config'));
  const pw = join(where, 'prefetch_config');
  const pc = section(c, 'prefetch_config', where);
  const prefetch = checkPrefetch(
    {
      enable: bool(pc, 'enable', pw, false),
      threads: uint(pc, 'threads_count', pw, DEFAULT_PREFETCH_THREADS),
      batchSize: uint(pc, 'merging_size', pw, DEFAULT_PREFETCH_BATCH_SIZE, MAX_BATCH_SIZE),
      bandwidthLimit: uint(pc, 'bandwidth_rate', pw, 0),
      prefetchAll: bool(pc, 'prefetch_all', pw, true),
    },
    pw,
    'threads_count',
  );
  return {
    configId: optNonEmpty(c, 'id', where),
    bootstrapPath: metadataPath(c, where),
    workDir,
    backend,
    prefetch,
    amplifyIo: DEFAULT_AMPLIFY_IO,
    validate: false,
  };
}

/** `config_v2` */
function parseV2(c: Obj, where: string): ConfigPart {
  const version = c.version;
  if (version !== undefined && version !== 2) fail(join(where, 'version'), `must be 2, got ${describe(version)}`);
  const bw = join(where, 'backend');
  const b = asObj(c.backend, bw);
  const type = backendType(b.type, join(bw, 'type'));
  // the section is named after the type; accept http_proxy as a spelling of http-proxy
  const key = type === 'http-proxy' && b['http-proxy'] === undefined && b.http_proxy !== undefined ? 'http_proxy' : type;
  if (b[key] === undefined || b[key] === null) fail(join(bw, type), `is required for backend type "${type}"`);
  const backend = parseBackend(type, asObj(b[key], join(bw, key)), join(bw, key));

  const cw = join(where, 'cache');
  const cache = asObj(c.cache, cw);
  checkCacheType(optStr(cache, 'type', cw), join(cw, 'type'));
  if (bool(cache, 'compressed', cw, false)) fail(join(cw, 'compressed'), 'compressed caches are not supported by fscache (must be false)');
  const fw = join(cw, 'fscache');
  const workDir = reqStr(asObj(cache.fscache, fw), 'work_dir', fw);
  const pw = join(cw, 'prefetch');
  const pc = section(cache, 'prefetch', cw);
  const prefetch = checkPrefetch(
    {
      enable: bool(pc, 'enable', pw, false),
      threads: uint(pc, 'threads', pw, DEFAULT_PREFETCH_THREADS),
      batchSize: uint(pc, 'batch_size', pw, DEFAULT_PREFETCH_BATCH_SIZE, MAX_BATCH_SIZE),
      bandwidthLimit: uint(pc, 'bandwidth_limit', pw, 0),
      prefetchAll: bool(pc, 'prefetch_all', pw, false),
    },
    pw,
    'threads',
  );
  // an explicit RAFS section may widen the amplification window; 0 / absent = default
  const rafs = section(c, 'rafs', where);
  const batch = uint(rafs, 'batch_size', join(where, 'rafs'), 0, MAX_BATCH_SIZE);
  return {
    configId: optNonEmpty(c, 'id', where),
    bootstrapPath: metadataPath(c, where),
    workDir,
    backend,
    prefetch,
    amplifyIo: batch > 0 ? batch : DEFAULT_AMPLIFY_IO,
    validate: bool(cache, 'validate', cw, false),
  };
}

// ------------------------------------------------------------------------------------------------
// public entry points

/** Parse JSON text into a value, as an ERR_INVALID_ARGUMENT on malformed input. */
export function parseJsonText(text: string | Buffer, what = 'registration'): unknown {
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${what}: malformed JSON: ${(e as Error).message}`);
  }
}

/**
 * Validate and normalize one BlobCacheEntry (a parsed JSON value, or JSON text).
 * Throws NydusError('ERR_INVALID_ARGUMENT') naming the offending field.
 */
export function parseBlobCacheEntry(input: unknown, opts: ParseOptions = {}): NormalizedEntry {
  const where = opts.where ?? '';
  const raw = typeof input === 'string' || Buffer.isBuffer(input) ? parseJsonText(input, where || 'registration') : input;
  const e = asObj(raw, where);

  const typeField = join(where, 'type');
  const type = e.type;
  if (type === undefined || type === null) fail(typeField, 'is required and must be "bootstrap"');
  if (type === 'datablob') fail(typeField, '"datablob" entries cannot be registered through the API; register the "bootstrap" that references the blob');
  if (type !== 'bootstrap') fail(typeField, `must be "bootstrap", got ${describe(type)}`);

  const id = reqStr(e, 'id', where);
  checkId(id, join(where, 'id'));
  const domainId = str(e, 'domain_id', where, '');
  checkId(domainId, join(where, 'domain_id'));

  let part: ConfigPart;
  let format: 'legacy' | 'v2';
  if (e.config_v2 !== undefined && e.config_v2 !== null) {
    const w = join(where, 'config_v2');
    part = parseV2(asObj(e.config_v2, w), w);
    format = 'v2';
  } else if (e.config !== undefined && e.config !== null) {
    const w = join(where, 'config');
    part = parseLegacy(asObj(e.config, w), w);
    format = 'legacy';
  } else {
    fail(join(where, 'config'), 'is required: give "config" (legacy) or "config_v2"');
  }

  const bootstrapPath = path.resolve(part.bootstrapPath);
  const workDir = path.resolve(part.workDir);
  if (opts.checkPaths !== false) {
    existing(bootstrapPath, join(where, format === 'v2' ? 'config_v2.metadata_path' : 'config.metadata_path'), 'file');
    existing(workDir, join(where, format === 'v2' ? 'config_v2.cache.fscache.work_dir' : 'config.cache_config.work_dir'), 'directory');
  }

  return {
    id,
    domainId,
    configId: part.configId ?? id,
    bootstrapPath,
    workDir,
    backend: part.backend,
    prefetch: part.prefetch,
    amplifyIo: part.amplifyIo,
    validate: part.validate,
    format,
    raw,
  };
}

/**
 * The entries of a nydusd singleton `--config` file value: `{"blobs": [BlobCacheEntry…]}`.
 * Returns the raw entries (unvalidated) so that a caller can register them one by one and report
 * each failure on its own; see parseBlobCacheConfig for the validated form.
 */
export function blobListOf(value: unknown, what = 'config'): unknown[] {
  const o = asObj(value, what);
  if (o.blobs === undefined || o.blobs === null) return [];
  if (!Array.isArray(o.blobs)) fail(`${what}.blobs`, `must be an array of BlobCacheEntry objects, got ${describe(o.blobs)}`);
  return o.blobs;
}

/** Validate every entry of a `{"blobs": […]}` value (or JSON text); errors name `blobs[i].…`. */
export function parseBlobCacheConfig(input: unknown, opts: Omit<ParseOptions, 'where'> = {}): NormalizedEntry[] {
  const value = typeof input === 'string' || Buffer.isBuffer(input) ? parseJsonText(input, 'config') : input;
  return blobListOf(value, 'config').map((b, i) => parseBlobCacheEntry(b, { ...opts, where: `blobs[${i}]` }));
}

/** Read and validate a nydusd singleton `--config FILE`. */
export function readBlobCacheConfigFile(file: string, opts: Omit<ParseOptions, 'where'> = {}): NormalizedEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${file}: ${(e as Error).message}`, { path: file });
  }
  try {
    return parseBlobCacheConfig(text, opts);
  } catch (e) {
    if (e instanceof NydusError) throw new NydusError(e.code, `--config ${file}: ${e.message}`, { ...e.context, path: file });
    throw e;
  }
}
