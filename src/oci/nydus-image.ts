/**
 * The nydus image format on top of OCI (spec rafs-v6.md §4.1), both ways:
 *
 *  - making it: the bootstrap layer (a gzip tar holding `image/image.boot`), the data-blob layer
 *    descriptors, the image config derived from the source config and the manifest;
 *  - reading it: validating a manifest (and its config) as a nydus image, splitting it into blob
 *    layers and the bootstrap layer, and extracting the bootstrap from the bootstrap layer.
 *
 * Everything here is pure (buffers in, buffers out) and deterministic: the same bootstrap gives
 * the same bootstrap layer bytes, so re-converting an image gives the same digests.
 */
import * as zlib from 'node:zlib';
import { Readable } from 'node:stream';
import { MediaTypes, NydusAnnotations, Descriptor, ImageManifest, ImageConfig } from './types';
import { sha256Digest } from './layout';
import { tarHeader, padLen, TAR_TRAILER } from '../tools/tar-writer';
import { readTar } from '../builder/tar-reader';
import { EROFS_SUPER_OFFSET, EROFS_SUPER_MAGIC } from '../format/constants';
import { NydusError, BadTarError, BadBootstrapError } from '../errors';

/** Where the bootstrap lives in the bootstrap layer, and the legacy location at the tar root. */
export const BOOTSTRAP_DIR = 'image';
export const BOOTSTRAP_PATH = 'image/image.boot';
export const LEGACY_BOOTSTRAP_PATH = 'image.boot';
/** Fixed mtime of the bootstrap layer's entries (reproducible layer digests). */
export const BOOTSTRAP_TAR_MTIME = 0;

export const NYDUS_HISTORY = { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' } as const;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const HEX64_RE = /^[0-9a-f]{64}$/;

/** The manifest layer of one nydus data blob; the blob id is the sha256 of the blob file. */
export function nydusBlobDescriptor(blobId: string, size: number): Descriptor {
  const hex = blobId.replace(/^sha256:/, '');
  if (!HEX64_RE.test(hex)) throw new NydusError('ERR_INVALID_ARGUMENT', `blob id "${blobId}" is not a sha256 hex digest`);
  return {
    mediaType: MediaTypes.nydusBlob,
    digest: 'sha256:' + hex,
    size,
    annotations: { [NydusAnnotations.blob]: 'true' },
  };
}

export interface BootstrapLayer {
  /** the layer as stored in the registry (gzip) */
  gzip: Buffer;
  /** the uncompressed tar */
  tar: Buffer;
  /** sha256 of `gzip` */
  digest: string;
  /** sha256 of `tar`: the config's diff_id */
  diffId: string;
  descriptor: Descriptor;
}

/** The uncompressed bootstrap-layer tar: dir `image` (0755) and `image/image.boot` (0444), root-owned, mtime 0. */
export function bootstrapTar(bootstrap: Buffer): Buffer {
  const common = { uid: 0, gid: 0, mtime: BOOTSTRAP_TAR_MTIME, mtimeNsec: 0 };
  return Buffer.concat([
    tarHeader({ ...common, path: Buffer.from(BOOTSTRAP_DIR + '/'), type: '5', mode: 0o755, size: 0 }),
    tarHeader({ ...common, path: Buffer.from(BOOTSTRAP_PATH), type: '0', mode: 0o444, size: bootstrap.length }),
    bootstrap,
    Buffer.alloc(padLen(bootstrap.length)),
    TAR_TRAILER,
  ]);
}

/**
 * The bootstrap layer for a merged bootstrap. `referenceBlobIds` (chunk-dict blobs the image uses)
 * go into the `nydus-reference-blob-ids` annotation as nydusify writes it: a JSON array of hex ids.
 */
export function makeBootstrapLayer(bootstrap: Buffer, opts: { referenceBlobIds?: string[]; mediaType?: string } = {}): BootstrapLayer {
  if (bootstrap.length < EROFS_SUPER_OFFSET + 4 || bootstrap.readUInt32LE(EROFS_SUPER_OFFSET) !== EROFS_SUPER_MAGIC) {
    throw new BadBootstrapError('bootstrap layer: the bootstrap is not a RAFS v6 (EROFS) bootstrap');
  }
  const tar = bootstrapTar(bootstrap);
  // zlib writes mtime 0 and no file name into the gzip header: the bytes depend on the input only.
  const gzip = zlib.gzipSync(tar, { level: 9 });
  const digest = sha256Digest(gzip);
  const annotations: Record<string, string> = {
    [NydusAnnotations.bootstrap]: 'true',
    [NydusAnnotations.fsVersion]: '6',
  };
  if (opts.referenceBlobIds && opts.referenceBlobIds.length > 0) {
    annotations[NydusAnnotations.referenceBlobIds] = JSON.stringify(opts.referenceBlobIds.map((b) => b.replace(/^sha256:/, '')));
  }
  return {
    gzip, tar, digest, diffId: sha256Digest(tar),
    descriptor: { mediaType: opts.mediaType ?? MediaTypes.ociLayerGzip, digest, size: gzip.length, annotations },
  };
}

/**
 * The nydus image config: the source config with `rootfs.diff_ids` = the blob digests then the
 * bootstrap layer's diff_id, and the nydus history entry appended; every other field is kept.
 */
export function makeNydusConfig(source: ImageConfig, blobDigests: string[], bootstrapDiffId: string): ImageConfig {
  const copy = JSON.parse(JSON.stringify(source)) as ImageConfig;
  copy.rootfs = { type: 'layers', diff_ids: [...blobDigests.map((d) => (d.startsWith('sha256:') ? d : 'sha256:' + d)), bootstrapDiffId] };
  copy.history = [...(Array.isArray(copy.history) ? copy.history : []), { ...NYDUS_HISTORY }];
  return copy;
}

/** Canonical bytes of a JSON document (as pushed) and its digest. */
export function jsonBytes(value: unknown): { raw: Buffer; digest: string } {
  const raw = Buffer.from(JSON.stringify(value));
  return { raw, digest: sha256Digest(raw) };
}

/** An OCI image manifest: data-blob layers, then the bootstrap layer last. */
export function makeNydusManifest(opts: { config: Descriptor; blobs: Descriptor[]; bootstrap: Descriptor; annotations?: Record<string, string> }): { manifest: ImageManifest; raw: Buffer; digest: string } {
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: opts.config,
    layers: [...opts.blobs, opts.bootstrap],
  };
  if (opts.annotations && Object.keys(opts.annotations).length > 0) manifest.annotations = opts.annotations;
  const { raw, digest } = jsonBytes(manifest);
  return { manifest, raw, digest };
}

export interface NydusManifestParts {
  /** data-blob layers, in manifest order */
  blobs: Descriptor[];
  /** blob ids (hex) of `blobs` */
  blobIds: string[];
  bootstrap: Descriptor;
  /** chunk-dict blob ids (hex) from the bootstrap layer's annotation */
  referenceBlobIds: string[];
}

function isBootstrapLayer(d: Descriptor): boolean {
  return d.annotations?.[NydusAnnotations.bootstrap] === 'true';
}

function checkDescriptor(d: Descriptor | undefined, what: string, problems: string[]): boolean {
  if (!d || typeof d !== 'object') {
    problems.push(`${what}: missing`);
    return false;
  }
  let ok = true;
  if (typeof d.digest !== 'string' || !DIGEST_RE.test(d.digest)) {
    problems.push(`${what}: digest ${JSON.stringify(d.digest)} is not sha256:<64 hex>`);
    ok = false;
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size <= 0) {
    problems.push(`${what}: size ${JSON.stringify(d.size)} is not a positive integer`);
    ok = false;
  }
  if (typeof d.mediaType !== 'string') {
    problems.push(`${what}: no mediaType`);
    ok = false;
  }
  return ok;
}

function parseReferenceIds(value: string | undefined, problems: string[]): string[] {
  if (value === undefined) return [];
  let ids: unknown;
  try {
    ids = JSON.parse(value);
  } catch {
    problems.push(`bootstrap layer: annotation ${NydusAnnotations.referenceBlobIds} is not JSON: ${JSON.stringify(value)}`);
    return [];
  }
  if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string' || !HEX64_RE.test(x.replace(/^sha256:/, '')))) {
    problems.push(`bootstrap layer: annotation ${NydusAnnotations.referenceBlobIds} must be a JSON array of sha256 hex blob ids, got ${value}`);
    return [];
  }
  return (ids as string[]).map((x) => x.replace(/^sha256:/, ''));
}

/**
 * Everything wrong with `manifest` (and, given, its `config`) as a RAFS v6 nydus image the way
 * nydus-snapshotter reads it; empty when it is well-formed. Each message names the layer.
 */
export function validateNydusManifest(manifest: ImageManifest, config?: ImageConfig): string[] {
  const problems: string[] = [];
  if (!manifest || typeof manifest !== 'object') return ['manifest: not a JSON object'];
  if (manifest.schemaVersion !== 2) problems.push(`manifest: schemaVersion ${JSON.stringify(manifest.schemaVersion)}, expected 2`);
  if (manifest.mediaType !== undefined && manifest.mediaType !== MediaTypes.ociManifest && manifest.mediaType !== MediaTypes.dockerManifest) {
    problems.push(`manifest: mediaType ${manifest.mediaType} is not an image manifest`);
  }
  if (checkDescriptor(manifest.config, 'config', problems)) {
    const ok: string[] = [MediaTypes.ociConfig, MediaTypes.dockerConfig, MediaTypes.nydusConfig];
    if (!ok.includes(manifest.config.mediaType)) problems.push(`config: mediaType ${manifest.config.mediaType} is not an image config`);
  }
  const layers = Array.isArray(manifest.layers) ? manifest.layers : [];
  if (layers.length === 0) {
    problems.push('manifest: no layers (a nydus image has data-blob layers and a bootstrap layer last)');
    return problems;
  }
  const last = layers.length - 1;
  const seen = new Set<string>();
  layers.forEach((d, i) => {
    const what = i === last ? `layer ${i} (bootstrap)` : `layer ${i}`;
    const descOk = checkDescriptor(d, what, problems);
    if (!d || typeof d !== 'object') return;
    if (descOk) {
      if (seen.has(d.digest)) problems.push(`${what}: digest ${d.digest} appears twice`);
      seen.add(d.digest);
    }
    const ann = d.annotations ?? {};
    if (i === last) {
      if (d.mediaType !== MediaTypes.ociLayerGzip && d.mediaType !== MediaTypes.dockerLayerGzip) {
        problems.push(`${what}: mediaType ${d.mediaType}, expected ${MediaTypes.ociLayerGzip} or ${MediaTypes.dockerLayerGzip}`);
      }
      if (ann[NydusAnnotations.bootstrap] !== 'true') problems.push(`${what}: annotation ${NydusAnnotations.bootstrap} is ${JSON.stringify(ann[NydusAnnotations.bootstrap])}, expected "true" (the bootstrap layer must be last)`);
      if (ann[NydusAnnotations.fsVersion] !== '6') problems.push(`${what}: annotation ${NydusAnnotations.fsVersion} is ${JSON.stringify(ann[NydusAnnotations.fsVersion])}, expected "6"`);
      parseReferenceIds(ann[NydusAnnotations.referenceBlobIds], problems);
    } else {
      if (isBootstrapLayer(d)) problems.push(`${what}: a second bootstrap layer (only the last layer may be the bootstrap)`);
      if (d.mediaType !== MediaTypes.nydusBlob) problems.push(`${what}: mediaType ${d.mediaType}, expected ${MediaTypes.nydusBlob}`);
      if (ann[NydusAnnotations.blob] !== 'true') problems.push(`${what}: annotation ${NydusAnnotations.blob} is ${JSON.stringify(ann[NydusAnnotations.blob])}, expected "true"`);
    }
  });
  if (config !== undefined) {
    const diffIds = config?.rootfs?.diff_ids;
    if (!config || typeof config !== 'object' || config.rootfs?.type !== 'layers' || !Array.isArray(diffIds)) {
      problems.push('config: rootfs must be {"type":"layers","diff_ids":[…]}');
    } else {
      if (diffIds.length !== layers.length) problems.push(`config: ${diffIds.length} diff_ids for ${layers.length} layers`);
      diffIds.forEach((id, i) => {
        if (typeof id !== 'string' || !DIGEST_RE.test(id)) problems.push(`config: diff_ids[${i}] ${JSON.stringify(id)} is not sha256:<64 hex>`);
        else if (i < last && i < diffIds.length && layers[i] && id !== layers[i].digest) problems.push(`config: diff_ids[${i}] ${id} differs from the blob layer digest ${layers[i].digest} (a nydus blob is its own uncompressed form)`);
      });
      const h = config.history;
      if (h !== undefined && !Array.isArray(h)) problems.push('config: history is not an array');
    }
  }
  return problems;
}

/** Split a nydus manifest into its parts; throws ERR_BAD_MANIFEST listing every problem. */
export function readNydusManifest(manifest: ImageManifest, name = 'manifest', config?: ImageConfig): NydusManifestParts {
  const problems = validateNydusManifest(manifest, config);
  if (problems.length > 0) {
    throw new NydusError('ERR_BAD_MANIFEST', `${name}: not a valid nydus (RAFS v6) image: ${problems.join('; ')}`, { problems });
  }
  const blobs = manifest.layers.slice(0, -1);
  const bootstrap = manifest.layers[manifest.layers.length - 1];
  return {
    blobs,
    blobIds: blobs.map((b) => b.digest.slice('sha256:'.length)),
    bootstrap,
    referenceBlobIds: parseReferenceIds(bootstrap.annotations?.[NydusAnnotations.referenceBlobIds], []),
  };
}

/** True when a manifest looks like a nydus image (a layer carries the bootstrap annotation). */
export function isNydusManifest(manifest: ImageManifest): boolean {
  return Array.isArray(manifest?.layers) && manifest.layers.some((l) => isBootstrapLayer(l) || l.mediaType === MediaTypes.nydusBlob);
}

export interface ExtractedBootstrap {
  bootstrap: Buffer;
  /** the tar path it was found at (`image/image.boot` or the legacy `image.boot`) */
  path: string;
  /** sha256 of the uncompressed tar (must equal the config's last diff_id) */
  diffId: string;
}

/**
 * Take the bootstrap out of a bootstrap layer (gzip tar; plain tar accepted too). Accepts
 * `image/image.boot` and the legacy `image.boot` at the root; the first wins if both are there.
 */
export async function extractBootstrapLayer(layer: Buffer, name = 'bootstrap layer'): Promise<ExtractedBootstrap> {
  let tar: Buffer;
  if (layer.length >= 2 && layer[0] === 0x1f && layer[1] === 0x8b) {
    try {
      tar = zlib.gunzipSync(layer);
    } catch (e) {
      throw new BadTarError(`${name}: cannot gunzip (${(e as Error).message})`, { layer: name });
    }
  } else {
    tar = layer;
  }
  const found = new Map<string, Buffer>();
  for await (const e of readTar(Readable.from([tar]), { name, gzip: false })) {
    const p = e.path.toString('latin1');
    if ((p === BOOTSTRAP_PATH || p === LEGACY_BOOTSTRAP_PATH) && !found.has(p)) {
      if (e.type !== 'file') throw new BadTarError(`${name}: ${p} is a ${e.type}, expected a regular file`, { layer: name });
      const parts: Buffer[] = [];
      for await (const piece of e.body()) parts.push(Buffer.from(piece));
      found.set(p, Buffer.concat(parts));
    }
  }
  const p = found.has(BOOTSTRAP_PATH) ? BOOTSTRAP_PATH : found.has(LEGACY_BOOTSTRAP_PATH) ? LEGACY_BOOTSTRAP_PATH : undefined;
  if (!p) throw new BadTarError(`${name}: neither ${BOOTSTRAP_PATH} nor ${LEGACY_BOOTSTRAP_PATH} is in the layer`, { layer: name });
  const bootstrap = found.get(p)!;
  if (bootstrap.length < EROFS_SUPER_OFFSET + 4 || bootstrap.readUInt32LE(EROFS_SUPER_OFFSET) !== EROFS_SUPER_MAGIC) {
    const v5 = bootstrap.length >= 4 && bootstrap.readUInt32LE(0) === 0x53464152;
    throw new BadBootstrapError(`${name}: ${p} is ${v5 ? 'a RAFS v5 bootstrap; only RAFS v6 is supported' : 'not a RAFS v6 bootstrap (no EROFS magic at offset 1024)'}`, { layer: name });
  }
  return { bootstrap, path: p, diffId: sha256Digest(tar) };
}

/** The bootstrap bytes of a bootstrap layer (see extractBootstrapLayer). */
export async function extractBootstrap(layer: Buffer, name = 'bootstrap layer'): Promise<Buffer> {
  return (await extractBootstrapLayer(layer, name)).bootstrap;
}
