/**
 * OCI image-layout directories (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) as an
 * ImageSource / ImageSink, plus the helpers both the layout and the registry client use:
 * manifest / index parsing, platform selection (nydus alternatives per rafs-v6.md §4.1) and
 * digest-verifying streams.
 *
 * Tags of a layout are the `org.opencontainers.image.ref.name` annotations of `index.json`
 * entries (what skopeo's `oci:DIR:tag` and `crane` use). Blob writes go to a temp file in the
 * blob directory and are renamed into place once their digest is verified, so a crash never
 * leaves a truncated blob under its final name.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable, Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestMismatchError, NydusError } from '../errors';
import { checkDigest } from './reference';
import { Descriptor, ImageIndex, ImageManifest, ImageSink, ImageSource, MediaTypes, Platform, ResolvedManifest } from './types';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
export const NYDUS_OS_FEATURE = 'nydus.remoteimage.v1';

// ---------------------------------------------------------------------------------------------
// digests

export function sha256Digest(data: Buffer | string): string {
  return `sha256:${crypto.createHash('sha256').update(data).digest('hex')}`;
}

/** sha256 digest and size of a file, streamed. */
export async function digestFile(file: string): Promise<{ digest: string; size: number }> {
  const h = crypto.createHash('sha256');
  let size = 0;
  for await (const c of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

function hashFor(digest: string, where: string): { alg: string; hex: string } {
  checkDigest(digest);
  const [alg, hex] = digest.split(':');
  if (alg !== 'sha256' && alg !== 'sha512') throw new NydusError('ERR_UNSUPPORTED', `${where}: digest algorithm ${alg} is not supported (sha256, sha512)`, { digest });
  return { alg, hex };
}

/**
 * A pass-through stream that hashes what flows through and, at the end, errors with
 * DigestMismatchError (ERR_DIGEST_MISMATCH) when the digest or the size differ from `desc`.
 * More bytes than `desc.size` fail as soon as they arrive.
 */
export class VerifyingStream extends Transform {
  private readonly hash: crypto.Hash;
  private readonly hex: string;
  bytes = 0;
  constructor(private readonly desc: Pick<Descriptor, 'digest' | 'size'>, private readonly where: string, private readonly context: Record<string, unknown> = {}) {
    super();
    const { alg, hex } = hashFor(desc.digest, where);
    this.hash = crypto.createHash(alg);
    this.hex = hex;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.desc.size >= 0 && this.bytes > this.desc.size) {
      cb(new DigestMismatchError(`${this.where}: blob ${this.desc.digest} is longer than its descriptor size ${this.desc.size}`, { ...this.context, digest: this.desc.digest, size: this.desc.size, got: this.bytes }));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    if (this.desc.size >= 0 && this.bytes !== this.desc.size) {
      cb(new DigestMismatchError(`${this.where}: blob ${this.desc.digest} has ${this.bytes} bytes, its descriptor says ${this.desc.size}`, { ...this.context, digest: this.desc.digest, size: this.desc.size, got: this.bytes }));
      return;
    }
    const got = this.hash.digest('hex');
    if (got !== this.hex) {
      const [alg] = this.desc.digest.split(':');
      cb(new DigestMismatchError(`${this.where}: digest mismatch: expected ${this.desc.digest}, got ${alg}:${got}`, { ...this.context, digest: this.desc.digest, actual: `${alg}:${got}`, size: this.bytes }));
      return;
    }
    cb();
  }
}

/** Check a whole buffer against a descriptor (digest and, when >= 0, size). */
export function verifyBuffer(buf: Buffer, desc: Pick<Descriptor, 'digest' | 'size'>, where: string, context: Record<string, unknown> = {}): void {
  const { alg, hex } = hashFor(desc.digest, where);
  if (desc.size >= 0 && buf.length !== desc.size) throw new DigestMismatchError(`${where}: blob ${desc.digest} has ${buf.length} bytes, its descriptor says ${desc.size}`, { ...context, digest: desc.digest, size: desc.size, got: buf.length });
  const got = crypto.createHash(alg).update(buf).digest('hex');
  if (got !== hex) throw new DigestMismatchError(`${where}: digest mismatch: expected ${desc.digest}, got ${alg}:${got}`, { ...context, digest: desc.digest, actual: `${alg}:${got}` });
}

/** Read a whole stream into memory, failing past `max` bytes. */
export async function readAll(s: Readable, max = Infinity, where = 'stream'): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of s) {
    n += (c as Buffer).length;
    if (n > max) {
      s.destroy();
      throw new NydusError('ERR_BAD_BLOB', `${where}: more than ${max} bytes`, { max });
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

// ---------------------------------------------------------------------------------------------
// manifests, indexes, platforms

export type ManifestKind = 'manifest' | 'index';

const INDEX_TYPES = new Set<string>([MediaTypes.ociIndex, MediaTypes.dockerManifestList]);
const MANIFEST_TYPES = new Set<string>([MediaTypes.ociManifest, MediaTypes.dockerManifest, MediaTypes.nydusManifestArtifact]);

export const MANIFEST_ACCEPT = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ');

export function isIndexMediaType(mt: string | undefined): boolean {
  return !!mt && INDEX_TYPES.has(mt);
}

export function isManifestMediaType(mt: string | undefined): boolean {
  return !!mt && MANIFEST_TYPES.has(mt);
}

export interface ParsedManifest {
  kind: ManifestKind;
  mediaType: string;
  manifest?: ImageManifest;
  index?: ImageIndex;
}

/**
 * Parse manifest bytes; the media type comes from `contentType` (HTTP Content-Type / descriptor)
 * when it is a known one, else from the body (`mediaType`, or `manifests` vs `layers`).
 */
export function parseManifestBytes(raw: Buffer, contentType: string | undefined, where: string): ParsedManifest {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new NydusError('ERR_BAD_BLOB', `${where}: manifest is not valid JSON: ${(e as Error).message}`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new NydusError('ERR_BAD_BLOB', `${where}: manifest is not a JSON object`);
  const ct = contentType?.split(';')[0].trim();
  if (j.schemaVersion === 1 || ct === 'application/vnd.docker.distribution.manifest.v1+json' || ct === 'application/vnd.docker.distribution.manifest.v1+prettyjws') {
    throw new NydusError('ERR_UNSUPPORTED', `${where}: Docker schema 1 manifests are not supported`, { mediaType: ct });
  }
  const bodyType = typeof j.mediaType === 'string' ? j.mediaType : undefined;
  let mediaType = ct && (INDEX_TYPES.has(ct) || MANIFEST_TYPES.has(ct)) ? ct : bodyType;
  if (!mediaType || !(INDEX_TYPES.has(mediaType) || MANIFEST_TYPES.has(mediaType))) {
    if (Array.isArray(j.manifests)) mediaType = MediaTypes.ociIndex;
    else if (Array.isArray(j.layers) && j.config) mediaType = MediaTypes.ociManifest;
    else throw new NydusError('ERR_UNSUPPORTED', `${where}: unknown manifest media type ${JSON.stringify(ct ?? bodyType ?? null)}`, { mediaType: ct ?? bodyType });
  }
  if (j.schemaVersion !== 2) throw new NydusError('ERR_BAD_BLOB', `${where}: schemaVersion ${JSON.stringify(j.schemaVersion)}, expected 2`);
  if (INDEX_TYPES.has(mediaType)) {
    if (!Array.isArray(j.manifests)) throw new NydusError('ERR_BAD_BLOB', `${where}: index has no "manifests" array`);
    for (const d of j.manifests) checkDescriptor(d, `${where}: index entry`);
    return { kind: 'index', mediaType, index: j as unknown as ImageIndex };
  }
  if (!Array.isArray(j.layers)) throw new NydusError('ERR_BAD_BLOB', `${where}: manifest has no "layers" array`);
  checkDescriptor(j.config, `${where}: config`);
  for (const d of j.layers) checkDescriptor(d, `${where}: layer`);
  return { kind: 'manifest', mediaType, manifest: j as unknown as ImageManifest };
}

function checkDescriptor(d: unknown, where: string): void {
  const x = d as Descriptor;
  if (!x || typeof x !== 'object' || typeof x.digest !== 'string' || typeof x.size !== 'number' || typeof x.mediaType !== 'string' || !Number.isSafeInteger(x.size) || x.size < 0) {
    throw new NydusError('ERR_BAD_BLOB', `${where}: invalid descriptor ${JSON.stringify(d)?.slice(0, 200)}`);
  }
  try {
    checkDigest(x.digest);
  } catch (e) {
    throw new NydusError('ERR_BAD_BLOB', `${where}: ${(e as Error).message}`, { digest: x.digest });
  }
}

/** `linux/arm64/v8` → Platform */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `invalid platform ${JSON.stringify(s)}: expected os/arch[/variant]`, { platform: s });
  }
  return parts.length === 3 ? { os: parts[0], architecture: parts[1], variant: parts[2] } : { os: parts[0], architecture: parts[1] };
}

export function formatPlatform(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

export const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };

function normVariant(p: Platform): string | undefined {
  if (p.architecture === 'arm64' && (p.variant === undefined || p.variant === 'v8')) return 'v8';
  if (p.architecture === 'arm' && p.variant === undefined) return 'v7';
  return p.variant;
}

/** Does `have` (an index entry's platform) satisfy `want`? A wanted variant must match. */
export function platformMatches(have: Platform | undefined, want: Platform): boolean {
  if (!have) return false;
  if (have.os !== want.os || have.architecture !== want.architecture) return false;
  if (want.variant !== undefined || (want.architecture === 'arm' && have.variant !== undefined)) return normVariant(have) === normVariant(want);
  return true;
}

/** A nydus alternative manifest in an index (rafs-v6.md §4.1). */
export function isNydusDescriptor(d: Descriptor): boolean {
  return (d.platform?.['os.features'] ?? []).includes(NYDUS_OS_FEATURE) || d.artifactType === MediaTypes.nydusManifestArtifact;
}

/**
 * Pick the index entry for `platform` (default linux/amd64). Nydus alternatives are skipped
 * unless `nydus` is set, when only they are considered. Entries that are not image manifests
 * (attestations with platform unknown/unknown, nested indexes) are skipped too; an index with
 * a single platform-less manifest yields that manifest. No match → ERR_NOT_FOUND listing the
 * platforms the index has.
 */
export function selectManifest(index: ImageIndex, opts: { platform?: Platform; nydus?: boolean } = {}, where = 'index'): Descriptor {
  const want = opts.platform ?? DEFAULT_PLATFORM;
  const entries = index.manifests.filter((d) => !isIndexMediaType(d.mediaType));
  const pool = entries.filter((d) => (opts.nydus ? isNydusDescriptor(d) : !isNydusDescriptor(d)));
  const matching = pool.filter((d) => platformMatches(d.platform, want));
  if (matching.length > 0) {
    // prefer an exact variant match, then the first entry (indexes are ordered by preference)
    const exact = matching.find((d) => (d.platform?.variant ?? '') === (want.variant ?? ''));
    return exact ?? matching[0];
  }
  const noPlatform = pool.filter((d) => !d.platform);
  if (noPlatform.length === 1 && pool.length === 1) return noPlatform[0];
  const available = entries.map((d) => `${formatPlatform(d.platform)}${isNydusDescriptor(d) ? ' (nydus)' : ''}`);
  const kind = opts.nydus ? 'nydus manifest' : 'manifest';
  throw new NydusError('ERR_NOT_FOUND', `${where}: no ${kind} for platform ${formatPlatform(want)}; available: ${available.length ? available.join(', ') : 'none'}`, {
    platform: formatPlatform(want),
    nydus: !!opts.nydus,
    available,
  });
}

// ---------------------------------------------------------------------------------------------
// OCI layout directories

interface LayoutIndex extends ImageIndex {
  manifests: Descriptor[];
}

export function blobPath(dir: string, digest: string): string {
  const { alg, hex } = hashFor(digest, `oci:${dir}`);
  return path.join(dir, 'blobs', alg, hex);
}

function readLayoutIndex(dir: string): LayoutIndex {
  const f = path.join(dir, 'index.json');
  let raw: Buffer;
  try {
    raw = fs.readFileSync(f);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NydusError('ERR_NOT_FOUND', `oci:${dir}: not an OCI image layout (no index.json)`, { path: f });
    throw new NydusError('ERR_IO', `oci:${dir}: cannot read index.json: ${(e as Error).message}`, { path: f });
  }
  const p = parseManifestBytes(raw, MediaTypes.ociIndex, `oci:${dir}/index.json`);
  if (p.kind !== 'index') throw new NydusError('ERR_BAD_BLOB', `oci:${dir}: index.json is not an image index`);
  return p.index as LayoutIndex;
}

/** Write `data` to `file` atomically (temp file in the same dir, fsync, rename). */
async function atomicWrite(file: string, data: Buffer | Readable, verify?: { desc: Pick<Descriptor, 'digest' | 'size'>; where: string }, onProgress?: (n: number) => void): Promise<void> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    if (Buffer.isBuffer(data)) {
      if (verify) verifyBuffer(data, verify.desc, verify.where);
      const fh = await fs.promises.open(tmp, 'w', 0o644);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      onProgress?.(data.length);
    } else {
      const stages: NodeJS.ReadWriteStream[] = [];
      if (verify) stages.push(new VerifyingStream(verify.desc, verify.where));
      if (onProgress) {
        let n = 0;
        stages.push(
          new Transform({
            transform(c: Buffer, _e, cb) {
              n += c.length;
              onProgress(n);
              cb(null, c);
            },
          }),
        );
      }
      const out = fs.createWriteStream(tmp, { mode: 0o644 });
      await pipeline([data, ...stages, out] as NodeJS.ReadWriteStream[]);
      const fh = await fs.promises.open(tmp, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  }
}

export interface OciLayoutSourceOptions {
  /** the `org.opencontainers.image.ref.name` to read; default: the only manifest of index.json */
  tag?: string;
}

/**
 * Read an image from an OCI layout directory. `index.json` may point at an image manifest or at
 * an image index (multi-platform), which is resolved like a registry's.
 */
export class OciLayoutSource implements ImageSource {
  readonly name: string;
  constructor(readonly dir: string, readonly opts: OciLayoutSourceOptions = {}) {
    this.name = `oci:${dir}${opts.tag ? `:${opts.tag}` : ''}`;
  }

  /** the index.json entry this source reads */
  rootDescriptor(): Descriptor {
    const idx = readLayoutIndex(this.dir);
    const tag = this.opts.tag;
    if (tag !== undefined) {
      const hits = idx.manifests.filter((d) => d.annotations?.[REF_NAME_ANNOTATION] === tag);
      if (hits.length === 0) {
        const tags = idx.manifests.map((d) => d.annotations?.[REF_NAME_ANNOTATION]).filter((t): t is string => !!t);
        throw new NydusError('ERR_NOT_FOUND', `${this.name}: no manifest tagged ${JSON.stringify(tag)} in index.json; tags: ${tags.length ? tags.join(', ') : 'none'}`, { tag, tags });
      }
      return hits[hits.length - 1];
    }
    if (idx.manifests.length === 1) return idx.manifests[0];
    if (idx.manifests.length === 0) throw new NydusError('ERR_NOT_FOUND', `${this.name}: index.json lists no manifests`);
    // several entries without a tag: treat index.json itself as a multi-platform index
    return { mediaType: MediaTypes.ociIndex, digest: '', size: -1 };
  }

  /** Raw bytes + parse of a manifest / index blob. */
  async fetchManifest(desc: Descriptor): Promise<{ raw: Buffer; parsed: ParsedManifest; descriptor: Descriptor }> {
    const raw = await this.blob(desc);
    return { raw, parsed: parseManifestBytes(raw, desc.mediaType, `${this.name}@${desc.digest}`), descriptor: desc };
  }

  async manifest(opts: { platform?: Platform; nydus?: boolean } = {}): Promise<ResolvedManifest> {
    let desc = this.rootDescriptor();
    for (let depth = 0; depth < 4; depth++) {
      let parsed: ParsedManifest;
      let raw: Buffer;
      if (desc.digest === '') {
        raw = fs.readFileSync(path.join(this.dir, 'index.json'));
        parsed = parseManifestBytes(raw, MediaTypes.ociIndex, `${this.name}/index.json`);
      } else {
        ({ raw, parsed } = await this.fetchManifest(desc));
      }
      if (parsed.kind === 'manifest') {
        return { descriptor: { ...desc, mediaType: parsed.mediaType, size: raw.length }, manifest: parsed.manifest!, raw };
      }
      const chosen = selectManifest(parsed.index!, opts, this.name);
      desc = chosen;
    }
    throw new NydusError('ERR_BAD_BLOB', `${this.name}: image indexes nested too deeply`);
  }

  async blob(desc: Descriptor): Promise<Buffer> {
    const f = blobPath(this.dir, desc.digest);
    let buf: Buffer;
    try {
      buf = await fs.promises.readFile(f);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NydusError('ERR_NOT_FOUND', `${this.name}: blob ${desc.digest} not found`, { digest: desc.digest, path: f });
      throw new NydusError('ERR_IO', `${this.name}: cannot read blob ${desc.digest}: ${(e as Error).message}`, { digest: desc.digest, path: f });
    }
    verifyBuffer(buf, desc, `${this.name}`, { path: f });
    return buf;
  }

  async blobStream(desc: Descriptor): Promise<Readable> {
    const f = blobPath(this.dir, desc.digest);
    try {
      await fs.promises.access(f, fs.constants.R_OK);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NydusError('ERR_NOT_FOUND', `${this.name}: blob ${desc.digest} not found`, { digest: desc.digest, path: f });
      throw new NydusError('ERR_IO', `${this.name}: cannot read blob ${desc.digest}: ${(e as Error).message}`, { digest: desc.digest, path: f });
    }
    const v = new VerifyingStream(desc, this.name, { path: f });
    const rs = fs.createReadStream(f, { highWaterMark: 1 << 20 });
    rs.on('error', (e) => v.destroy(new NydusError('ERR_IO', `${this.name}: reading blob ${desc.digest}: ${e.message}`, { digest: desc.digest, path: f })));
    return rs.pipe(v);
  }

  /** the local file of a blob (no copy needed to push it elsewhere) */
  blobFile(desc: Pick<Descriptor, 'digest'>): string {
    return blobPath(this.dir, desc.digest);
  }
}

export interface OciLayoutSinkOptions {
  /** tag (`org.opencontainers.image.ref.name`) to record pushed manifests under; none = by digest only */
  tag?: string;
}

/** Write an image into an OCI layout directory (created when missing). */
export class OciLayoutSink implements ImageSink {
  readonly name: string;
  constructor(readonly dir: string, readonly opts: OciLayoutSinkOptions = {}) {
    this.name = `oci:${dir}${opts.tag ? `:${opts.tag}` : ''}`;
    fs.mkdirSync(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    const layoutFile = path.join(dir, 'oci-layout');
    if (!fs.existsSync(layoutFile)) fs.writeFileSync(layoutFile, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const idx = path.join(dir, 'index.json');
    if (!fs.existsSync(idx)) fs.writeFileSync(idx, JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [] }, null, 2));
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    try {
      const st = await fs.promises.stat(blobPath(this.dir, desc.digest));
      return st.isFile() && (desc.size < 0 || st.size === desc.size);
    } catch {
      return false;
    }
  }

  /** Copy a blob in (verified; temp file + rename); a no-op when present with the right size. */
  async pushBlob(desc: Descriptor, data: { path: string } | Buffer | Readable, onProgress?: (bytes: number) => void): Promise<void> {
    if (await this.hasBlob(desc)) {
      onProgress?.(desc.size);
      return;
    }
    const f = blobPath(this.dir, desc.digest);
    let src: Buffer | Readable;
    if (Buffer.isBuffer(data) || data instanceof Readable) src = data;
    else {
      try {
        await fs.promises.access(data.path, fs.constants.R_OK);
      } catch (e) {
        throw new NydusError('ERR_IO', `${this.name}: cannot read ${data.path} for blob ${desc.digest}: ${(e as Error).message}`, { path: data.path, digest: desc.digest });
      }
      src = fs.createReadStream(data.path, { highWaterMark: 1 << 20 });
    }
    await atomicWrite(f, src, { desc, where: `${this.name}: blob ${desc.digest}` }, onProgress);
  }

  /**
   * Store a manifest blob and list it in index.json under the sink's tag (or `tag`), replacing
   * the entry of the same tag; with no tag it is only added (once) by digest.
   */
  async pushManifest(raw: Buffer, mediaType: string, tag: string | null | undefined = this.opts.tag, extra: Partial<Descriptor> = {}): Promise<string> {
    // index.json is read-modified-written: one update at a time per sink
    const run = this.indexLock.then(() => this.addManifest(raw, mediaType, tag, extra));
    this.indexLock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private indexLock: Promise<void> = Promise.resolve();

  private async addManifest(raw: Buffer, mediaType: string, tag: string | null | undefined, extra: Partial<Descriptor>): Promise<string> {
    const digest = sha256Digest(raw);
    const desc: Descriptor = { mediaType, digest, size: raw.length, ...extra };
    await this.pushBlob(desc, raw);
    const idx = readLayoutIndex(this.dir);
    if (tag) {
      desc.annotations = { ...(desc.annotations ?? {}), [REF_NAME_ANNOTATION]: tag };
      idx.manifests = idx.manifests.filter((d) => d.annotations?.[REF_NAME_ANNOTATION] !== tag);
      idx.manifests.push(desc);
    } else if (!idx.manifests.some((d) => d.digest === digest)) {
      idx.manifests.push(desc);
    }
    await atomicWrite(path.join(this.dir, 'index.json'), Buffer.from(JSON.stringify(idx, null, 2)));
    return digest;
  }

  blobFile(desc: Pick<Descriptor, 'digest'>): string {
    return blobPath(this.dir, desc.digest);
  }
}
