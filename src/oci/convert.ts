/**
 * The nydusify half of issue 4, as a library:
 *
 *  - convert(): an OCI / Docker image → a nydus (RAFS v6) image. Every layer blob is streamed
 *    from the source through gunzip/zstd into the builder's tar reader (nothing is extracted to
 *    disk), giving one layer bootstrap and one nydus data blob per OCI layer (none when the layer
 *    adds no chunk); the layer bootstraps are merged in order (whiteouts applied by the merge),
 *    then the blobs, the bootstrap layer, the config and the manifest are pushed to the sink.
 *  - checkConversion(): what `nydusify check` does: validate the target nydus manifest, apply the
 *    source layers the way an OCI unpacker does (in memory), read the target bootstrap and every
 *    file's content through its chunks in the target's blobs, and compare entry by entry.
 *
 * Scratch files live in a private directory under `workDir` that is removed on success and on
 * failure alike; the sink is given only complete, verified blobs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { PassThrough, Readable, pipeline } from 'node:stream';
import { DecompressStream } from 'zstd-napi';
import { ImageSource, ImageSink, Descriptor, ImageConfig, ImageManifest, MediaTypes, Platform, ResolvedManifest } from './types';
import { formatPlatform, DEFAULT_PLATFORM } from './layout';
import {
  makeBootstrapLayer, makeNydusConfig, makeNydusManifest, nydusBlobDescriptor, jsonBytes, isNydusManifest,
  validateNydusManifest, extractBootstrapLayer, readNydusManifest,
} from './nydus-image';
import { createImage, mergeImages, BuildReport, VERSION, parseChunkSize } from '../builder/build';
import { readTar } from '../builder/tar-reader';
import { readBootstrap, RafsBootstrap } from '../format/bootstrap-reader';
import { readBlobMeta } from '../blob/blob-meta';
import { LocalBlobFile, decodeChunk } from '../blob/local-blob';
import { digestReady } from '../codec/digest';
import {
  CompressorName, DigesterName, DEFAULT_CHUNK_SIZE, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO,
} from '../format/constants';
import { BlobChunk, BlobEntry } from '../format/layout';
import { TreeNode, Inode, newInode, newDir, splitPath, nameKey, walkTree, isDir, isReg, isSymlink, isChr, isBlk } from '../tree/node';
import { NydusError, DigestMismatchError, invalidArgument } from '../errors';

// ---------------------------------------------------------------------------------------------
// shared helpers

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** How a source layer is compressed, from its media type; ERR_UNSUPPORTED for anything else. */
export function layerCompression(desc: Descriptor, where: string): LayerCompression {
  const mt = desc.mediaType;
  if (mt === MediaTypes.ociLayerGzip || mt === MediaTypes.dockerLayerGzip || mt === 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip') return 'gzip';
  if (mt === MediaTypes.ociLayerZstd || mt === 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd') return 'zstd';
  if (mt === MediaTypes.ociLayer || mt === 'application/vnd.docker.image.rootfs.diff.tar' || mt === 'application/vnd.oci.image.layer.nondistributable.v1.tar') return 'none';
  throw new NydusError('ERR_UNSUPPORTED', `${where}: layer media type ${mt} is not a tar layer (tar, tar+gzip or tar+zstd)`, { mediaType: mt });
}

function makeRunDir(workDir: string, prefix: string): string {
  try {
    fs.mkdirSync(workDir, { recursive: true });
    return fs.mkdtempSync(path.join(workDir, prefix));
  } catch (e) {
    throw new NydusError('ERR_IO', `--work-dir ${workDir}: ${(e as Error).message}`, { path: workDir });
  }
}

function parseConfig(raw: Buffer, where: string): ImageConfig {
  let config: ImageConfig;
  try {
    config = JSON.parse(raw.toString('utf8')) as ImageConfig;
  } catch (e) {
    throw invalidArgument(`${where}: image config is not JSON (${(e as Error).message})`);
  }
  if (!config || typeof config !== 'object' || Array.isArray(config)) throw invalidArgument(`${where}: image config is not a JSON object`);
  return config;
}

/** Wait until `w` can take more data or is gone. */
function drainOrClose(w: PassThrough): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
  });
}

/**
 * Reads a source blob stream to its end, hashing it, and forwards the bytes into `out` as long as
 * `out` is open. A consumer that stops early (the tar reader stops at the end-of-archive marker)
 * does not stop the verification: the digest and size of the whole blob are always checked.
 */
class VerifiedFeed {
  readonly out = new PassThrough({ highWaterMark: 1 << 20 });
  bytes = 0;
  error: unknown = null;
  private aborted = false;
  readonly done: Promise<void>;
  constructor(private readonly raw: Readable, private readonly desc: Descriptor, private readonly where: string, onBytes?: (n: number) => void) {
    this.done = this.run(onBytes).catch((e) => {
      if (this.aborted) return;
      this.error = e;
      this.out.destroy(e as Error);
      throw e;
    });
    this.done.catch(() => undefined); // observed by the caller
  }
  private async run(onBytes?: (n: number) => void): Promise<void> {
    const h = crypto.createHash('sha256');
    try {
      await this.pump(h, onBytes);
    } catch (e) {
      // name the layer / blob, whatever the source's own message says
      if (e instanceof NydusError && !e.message.startsWith(this.where)) {
        const src = this.where.slice(0, this.where.indexOf(': ') + 2); // "<source name>: "
        const msg = src && e.message.startsWith(src) ? e.message.slice(src.length) : e.message;
        throw new NydusError(e.code, `${this.where}: ${msg}`, e.context, { cause: e });
      }
      if (!(e instanceof NydusError)) throw new NydusError('ERR_BACKEND', `${this.where}: ${(e as Error)?.message ?? String(e)}`, {}, { cause: e });
      throw e;
    }
    const got = 'sha256:' + h.digest('hex');
    if (this.bytes !== this.desc.size) throw new DigestMismatchError(`${this.where}: ${this.bytes} bytes, its descriptor says ${this.desc.size}`, { digest: this.desc.digest });
    if (got !== this.desc.digest) throw new DigestMismatchError(`${this.where}: content digest ${got} does not match ${this.desc.digest}`, { digest: this.desc.digest });
    if (!this.out.destroyed) this.out.end();
  }
  private async pump(h: crypto.Hash, onBytes?: (n: number) => void): Promise<void> {
    for await (const chunk of this.raw) {
      const b = chunk as Buffer;
      h.update(b);
      this.bytes += b.length;
      if (this.bytes > this.desc.size) throw new DigestMismatchError(`${this.where}: more than the ${this.desc.size} bytes its descriptor says`, { digest: this.desc.digest });
      onBytes?.(this.bytes);
      if (!this.out.destroyed && !this.out.writableEnded && !this.out.write(b)) await drainOrClose(this.out);
    }
  }
  /** The consumer is finished: stop forwarding (the blob is still read to its end and verified). */
  consumerDone(): void {
    if (!this.out.destroyed) this.out.destroy();
  }
  /** Give up: stop reading the source. */
  abort(): void {
    this.aborted = true;
    this.out.destroy();
    this.raw.destroy();
  }
}

/** The uncompressed tar stream of a layer fed by `feed`. */
function tarStream(feed: VerifiedFeed, compression: LayerCompression): { stream: Readable; gzip: boolean } {
  if (compression === 'zstd') {
    const dz = new DecompressStream();
    return { stream: pipeline(feed.out, dz, () => undefined) as unknown as Readable, gzip: false };
  }
  return { stream: feed.out, gzip: compression === 'gzip' };
}

/** A blob's byte stream from the source; failures other than NydusErrors become ERR_BACKEND naming `where`. */
async function openBlobStream(source: ImageSource, desc: Descriptor, where: string): Promise<Readable> {
  try {
    return await source.blobStream(desc);
  } catch (e) {
    if (e instanceof NydusError) throw e;
    throw new NydusError('ERR_BACKEND', `${where}: ${(e as Error).message}`, { digest: desc.digest });
  }
}

/** Stream a blob into `file` (temp name + rename), verifying digest and size. */
export async function downloadBlob(source: ImageSource, desc: Descriptor, file: string, onBytes?: (n: number) => void): Promise<void> {
  const tmp = `${file}.${process.pid}.part`;
  const where = `${source.name}: blob ${desc.digest}`;
  const raw = await openBlobStream(source, desc, where);
  const feed = new VerifiedFeed(raw, desc, where, onBytes);
  const out = fs.createWriteStream(tmp, { mode: 0o644 });
  try {
    await new Promise<void>((resolve, reject) => {
      pipeline(feed.out, out, (err) => (err ? reject(err) : resolve()));
    });
    await feed.done;
    fs.renameSync(tmp, file);
  } catch (e) {
    feed.abort();
    fs.rmSync(tmp, { force: true });
    throw feed.error ?? e;
  }
}

async function pLimit<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>, onFail?: (e: unknown) => void): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  let failed = false;
  let firstError: unknown;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i], i);
      } catch (e) {
        if (!failed) {
          failed = true;
          firstError = e;
          onFail?.(e);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw firstError;
  return results;
}

// ---------------------------------------------------------------------------------------------
// convert

export type ConvertProgress =
  | { phase: 'layer'; index: number; count: number; digest: string; bytes: number; total: number; done: boolean }
  | { phase: 'merge' }
  | { phase: 'push'; what: string; digest: string; bytes: number; total: number; done: boolean };

export interface ConvertOptions {
  platform?: Platform;
  compressor?: CompressorName;
  digester?: DigesterName;
  chunkSize?: number;
  /** a chunk-dictionary bootstrap file: chunks found in it are not stored again */
  chunkDictBootstrap?: string;
  /**
   * the nydus image the chunk dictionary comes from: its bootstrap is used when
   * `chunkDictBootstrap` is not given, and dictionary blobs the image uses are copied from it
   * into the sink when the sink lacks them
   */
  chunkDictSource?: ImageSource;
  /** scratch space (a private subdirectory is made and removed) */
  workDir: string;
  /** layers converted at once (default 2); they are always merged in order */
  concurrency?: number;
  /** worker threads per layer build (default: CPU count) */
  threads?: number;
  onProgress?: (p: ConvertProgress) => void;
  onWarning?: (msg: string) => void;
  /**
   * `--prefetch-list` (nydus-ts optimize): put these reads' chunks first in the blobs this
   * conversion makes, in this order, and name the files in the prefetch table
   */
  prefetchOrder?: import('../optimize/access-list').AccessOrder;
}

export interface ConvertLayerSummary {
  index: number;
  source_digest: string;
  source_media_type: string;
  source_size: number;
  /** the nydus blob this layer produced (null when it adds no chunk) */
  blob_id: string | null;
  blob_size: number;
  files: number;
  chunks: number;
  new_chunks: number;
  dedup_chunks: number;
  bootstrap_size: number;
  warnings: string[];
}

export interface ConvertSummary {
  version: string;
  source: string;
  target: string;
  platform: string;
  source_manifest_digest: string;
  target_manifest_digest: string;
  config_digest: string;
  compressor: CompressorName;
  digester: DigesterName;
  chunk_size: number;
  layers: ConvertLayerSummary[];
  /** the manifest's data layers, in order */
  blobs: { blob_id: string; size: number; pushed: boolean; reference: boolean; from_layer: number | null }[];
  bootstrap: { digest: string; size: number; diff_id: string; bootstrap_size: number; inodes: number; pushed: boolean };
  bytes: { source_layers: number; blobs: number; pushed: number; bootstrap_layer: number };
  duration_s: number;
}

interface LayerResult {
  desc: Descriptor;
  bootstrap: string;
  report: BuildReport;
  blobFile: string | null;
}

async function convertLayer(
  source: ImageSource, desc: Descriptor, index: number, count: number, run: string, opts: ConvertOptions,
  chunkDict: string | undefined, active: Set<VerifiedFeed>,
): Promise<LayerResult> {
  const where = `${source.name}: layer ${index} (${desc.digest})`;
  const compression = layerCompression(desc, where);
  const progress = (bytes: number, done: boolean): void => opts.onProgress?.({ phase: 'layer', index, count, digest: desc.digest, bytes, total: desc.size, done });
  const raw = await openBlobStream(source, desc, where);
  const feed = new VerifiedFeed(raw, desc, where, (n) => progress(n, false));
  active.add(feed);
  const bootstrap = path.join(run, `layer-${index}.boot`);
  const blobDir = path.join(run, 'blobs');
  const { stream, gzip } = tarStream(feed, compression);
  let report: BuildReport;
  try {
    try {
      report = await createImage({
        type: gzip ? 'targz' : 'tar', source: '-', stdin: stream, stdinName: where, bootstrap, blobDir,
        chunkSize: opts.chunkSize, compressor: opts.compressor, digester: opts.digester, chunkDict,
        threads: opts.threads, onWarning: (m) => opts.onWarning?.(m),
      });
    } catch (e) {
      // A broken download is the cause of whatever the tar reader then saw.
      await Promise.race([feed.done.catch(() => undefined), new Promise((r) => setTimeout(r, 50))]);
      feed.abort();
      throw feed.error ?? e;
    }
    feed.consumerDone();
    try {
      await feed.done;
    } catch (e) {
      fs.rmSync(bootstrap, { force: true });
      if (report.blob_id) fs.rmSync(path.join(blobDir, report.blob_id), { force: true });
      throw e;
    }
  } finally {
    active.delete(feed);
  }
  progress(desc.size, true);
  return { desc, bootstrap, report, blobFile: report.blob_id ? path.join(blobDir, report.blob_id) : null };
}

/** Fetch a nydus image's bootstrap into `file`; returns the parsed manifest parts. */
export async function fetchNydusBootstrap(source: ImageSource, file: string, platform?: Platform): Promise<{ manifest: ResolvedManifest; blobs: Descriptor[]; bootstrap: Buffer }> {
  const m = await source.manifest({ platform, nydus: true });
  const parts = readNydusManifest(m.manifest, `${source.name}: manifest ${m.descriptor.digest}`);
  const layer = await source.blob(parts.bootstrap);
  const { bootstrap } = await extractBootstrapLayer(layer, `${source.name}: bootstrap layer ${parts.bootstrap.digest}`);
  fs.writeFileSync(file, bootstrap);
  return { manifest: m, blobs: parts.blobs, bootstrap };
}

/**
 * `--prefetch-list`: rewrite this conversion's own blobs with the start-up chunks first (never a
 * chunk-dictionary blob) and the merged bootstrap with the prefetch table; the layer results and
 * the merge report are updated to the new blob ids (src/optimize/relayout.ts).
 */
async function relayoutConverted(merged: string, blobDir: string, results: LayerResult[], mergeReport: { blobs: string[] }, opts: ConvertOptions): Promise<void> {
  const { relayoutImage } = await import('../optimize/relayout');
  const own = new Set(results.map((r) => r.report.blob_id).filter((id): id is string => id !== null));
  const r = await relayoutImage({
    bootstrap: merged, blobDir, order: opts.prefetchOrder!, outputBootstrap: merged, outputBlobDir: blobDir, onlyBlobs: own, onWarning: opts.onWarning,
  });
  const renamed = new Map(r.blobs.filter((b) => b.changed).map((b) => [b.source_id, b]));
  for (const l of results) {
    const b = l.report.blob_id ? renamed.get(l.report.blob_id) : undefined;
    if (!b) continue;
    l.report.blob_id = b.blob_id;
    l.report.stats.blob_compressed_size = b.compressed_size;
    l.blobFile = path.join(blobDir, b.blob_id);
  }
  mergeReport.blobs = mergeReport.blobs.map((id) => renamed.get(id)?.blob_id ?? id);
}

/** Convert `source` into a nydus image pushed to `sink`. */
export async function convert(source: ImageSource, sink: ImageSink, opts: ConvertOptions): Promise<ConvertSummary> {
  const t0 = performance.now();
  const compressor = opts.compressor ?? 'zstd';
  const digester = opts.digester ?? 'blake3';
  const chunkSize = parseChunkSize(opts.chunkSize ?? DEFAULT_CHUNK_SIZE);
  if (compressor === 'gzip') throw invalidArgument('--compressor gzip: use zstd, lz4_block or none');
  await digestReady();

  const src = await source.manifest({ platform: opts.platform });
  const srcName = `${source.name}: manifest ${src.descriptor.digest}`;
  if (isNydusManifest(src.manifest)) throw invalidArgument(`${srcName}: the source is already a nydus image`);
  const layers = Array.isArray(src.manifest.layers) ? src.manifest.layers : [];
  if (layers.length === 0) throw invalidArgument(`${srcName}: the image has no layers`);
  layers.forEach((l, i) => layerCompression(l, `${source.name}: layer ${i} (${l.digest})`));
  const config = parseConfig(await source.blob(src.manifest.config), `${source.name}: config ${src.manifest.config.digest}`);

  const run = makeRunDir(opts.workDir, '.nydus-convert-');
  const active = new Set<VerifiedFeed>();
  try {
    fs.mkdirSync(path.join(run, 'blobs'));
    // chunk dictionary
    let chunkDict = opts.chunkDictBootstrap;
    const dictLayers = new Map<string, Descriptor>();
    if (opts.chunkDictSource) {
      const file = path.join(run, 'chunk-dict.boot');
      const d = await fetchNydusBootstrap(opts.chunkDictSource, file, opts.platform);
      for (const b of d.blobs) dictLayers.set(b.digest.slice(7), b);
      chunkDict ??= file;
    }

    // layers: converted up to `concurrency` at once, each into its own bootstrap and blob
    const results = await pLimit(layers, opts.concurrency ?? 2, (desc, i) => convertLayer(source, desc, i, layers.length, run, { ...opts, compressor, digester, chunkSize }, chunkDict, active),
      () => {
        for (const f of active) f.abort();
      });

    // merge, lower to upper
    opts.onProgress?.({ phase: 'merge' });
    const merged = path.join(run, 'image.boot');
    const mergeReport = mergeImages({ bootstraps: results.map((r) => r.bootstrap), output: merged });
    if (opts.prefetchOrder) await relayoutConverted(merged, path.join(run, 'blobs'), results, mergeReport, opts);
    const bootstrapBytes = fs.readFileSync(merged);
    const boot = readBootstrap(bootstrapBytes, { name: merged });
    const entryById = new Map<string, BlobEntry>(boot.blobs.map((b) => [b.blobId, b]));
    const ownBlobs = new Map<string, number>();
    results.forEach((r, i) => {
      if (r.report.blob_id && !ownBlobs.has(r.report.blob_id)) ownBlobs.set(r.report.blob_id, i);
    });

    // push the data blobs (those the merged image references, in its blob-table order)
    const blobSummaries: ConvertSummary['blobs'] = [];
    const blobDescs: Descriptor[] = [];
    const referenceIds: string[] = [];
    let pushedBytes = 0;
    let blobBytes = 0;
    for (const id of mergeReport.blobs) {
      const layerIndex = ownBlobs.get(id);
      const own = layerIndex !== undefined;
      const file = own ? results[layerIndex].blobFile! : undefined;
      const size = own ? fs.statSync(file!).size : dictLayers.get(id)?.size ?? entryById.get(id)!.compressedSize;
      const desc = nydusBlobDescriptor(id, size);
      blobDescs.push(desc);
      if (!own) referenceIds.push(id);
      blobBytes += size;
      let pushed = false;
      if (!(await sink.hasBlob(desc))) {
        let from = file;
        if (!own) {
          const dictDesc = dictLayers.get(id);
          if (!opts.chunkDictSource || !dictDesc) {
            throw new NydusError('ERR_NOT_FOUND', `${sink.name}: chunk-dictionary blob ${id} is used by the image but missing in the target, and the dictionary image does not list it as a layer to copy it from`, { blobId: id });
          }
          from = path.join(run, `dict-${id}`);
          await downloadBlob(opts.chunkDictSource, dictDesc, from);
        }
        const what = own ? `blob of layer ${layerIndex}` : 'chunk-dictionary blob';
        await sink.pushBlob(desc, { path: from! }, (n) => opts.onProgress?.({ phase: 'push', what, digest: desc.digest, bytes: n, total: size, done: false }));
        opts.onProgress?.({ phase: 'push', what, digest: desc.digest, bytes: size, total: size, done: true });
        pushed = true;
        pushedBytes += size;
      }
      blobSummaries.push({ blob_id: id, size, pushed, reference: !own, from_layer: own ? layerIndex : null });
    }

    // bootstrap layer, config, manifest
    const bl = makeBootstrapLayer(bootstrapBytes, { referenceBlobIds: referenceIds });
    let bootstrapPushed = false;
    if (!(await sink.hasBlob(bl.descriptor))) {
      await sink.pushBlob(bl.descriptor, bl.gzip);
      bootstrapPushed = true;
      pushedBytes += bl.gzip.length;
    }
    const nydusConfig = makeNydusConfig(config, blobDescs.map((d) => d.digest), bl.diffId);
    const cfg = jsonBytes(nydusConfig);
    const configDesc: Descriptor = { mediaType: MediaTypes.ociConfig, digest: cfg.digest, size: cfg.raw.length };
    if (!(await sink.hasBlob(configDesc))) await sink.pushBlob(configDesc, cfg.raw);
    const man = makeNydusManifest({ config: configDesc, blobs: blobDescs, bootstrap: bl.descriptor });
    const problems = validateNydusManifest(man.manifest, nydusConfig);
    if (problems.length) throw new Error(`internal: the manifest made does not validate: ${problems.join('; ')}`);
    const targetDigest = await sink.pushManifest(man.raw, MediaTypes.ociManifest);

    const layerSummaries: ConvertLayerSummary[] = results.map((r, i) => ({
      index: i,
      source_digest: r.desc.digest,
      source_media_type: r.desc.mediaType,
      source_size: r.desc.size,
      blob_id: r.report.blob_id,
      blob_size: r.report.stats.blob_compressed_size,
      files: r.report.stats.files,
      chunks: r.report.stats.chunks,
      new_chunks: r.report.stats.new_chunks,
      dedup_chunks: r.report.stats.dedup_chunks,
      bootstrap_size: r.report.stats.bootstrap_size,
      warnings: r.report.warnings,
    }));
    return {
      version: VERSION,
      source: source.name,
      target: sink.name,
      platform: formatPlatform(opts.platform ?? DEFAULT_PLATFORM),
      source_manifest_digest: src.descriptor.digest,
      target_manifest_digest: targetDigest,
      config_digest: cfg.digest,
      compressor,
      digester,
      chunk_size: chunkSize,
      layers: layerSummaries,
      blobs: blobSummaries,
      bootstrap: { digest: bl.digest, size: bl.gzip.length, diff_id: bl.diffId, bootstrap_size: bootstrapBytes.length, inodes: mergeReport.inodes, pushed: bootstrapPushed },
      bytes: {
        source_layers: layers.reduce((n, l) => n + l.size, 0),
        blobs: blobBytes,
        pushed: pushedBytes,
        bootstrap_layer: bl.gzip.length,
      },
      duration_s: (performance.now() - t0) / 1000,
    };
  } finally {
    for (const f of active) f.abort();
    fs.rmSync(run, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// check: source layers applied like an unpacker vs the nydus image read through its blobs

export interface CheckImageOptions {
  platform?: Platform;
  workDir: string;
  onProgress?: (msg: string) => void;
}

export interface CheckImageReport {
  version: string;
  ok: boolean;
  source: string;
  target: string;
  platform: string;
  source_manifest_digest: string | null;
  target_manifest_digest: string | null;
  /** what is wrong with the target image as a nydus image (manifest, config, bootstrap, blobs) */
  errors: string[];
  /** tree differences, `<path>: <what> <source> != <target>` */
  differences: string[];
  warnings: string[];
  entries: { source: number; target: number };
  files_compared: number;
  bytes_compared: number;
}

type ContentHashes = Map<Inode, string>;

function inodeFromTar(e: { type: string; mode: number; uid: number; gid: number; mtime: number; mtimeNsec: number; xattrs: Map<string, Buffer>; devMajor: number; devMinor: number; linkTarget?: Buffer; size: number }): Inode {
  const bits: Record<string, number> = { file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, chardev: S_IFCHR, blockdev: S_IFBLK, fifo: S_IFIFO };
  const inode = newInode(bits[e.type] | (e.type === 'symlink' ? 0o777 : e.mode & 0o7777), {
    uid: e.uid, gid: e.gid, mtime: e.mtime, mtimeNsec: e.mtimeNsec, xattrs: new Map(e.xattrs),
  });
  if (e.type === 'chardev' || e.type === 'blockdev') {
    inode.rdevMajor = e.devMajor;
    inode.rdevMinor = e.devMinor;
  }
  if (e.type === 'symlink') {
    inode.symlink = e.linkTarget ?? Buffer.alloc(0);
    inode.size = inode.symlink.length;
  }
  if (e.type === 'file') inode.size = e.size;
  return inode;
}

/**
 * Apply one OCI layer tar onto `root` the way an image unpacker extracts it into a snapshot
 * (written independently of the builder's merge, so that it checks it): entries replace what is
 * there (a directory entry over a directory only updates its metadata), `.wh.<name>` removes
 * `<name>`, `.wh..wh..opq` removes everything below its directory that this layer did not itself
 * put there, parents missing from the archive are created 0755 root:root.
 */
async function applyLayerTar(root: TreeNode, input: Readable, gzip: boolean, name: string, hashes: ContentHashes, warn: (m: string) => void): Promise<void> {
  const touched = new Set<TreeNode>([root]);
  const parentOf = (parts: Buffer[]): TreeNode | undefined => {
    let cur = root;
    for (const p of parts) {
      const k = nameKey(p);
      let next = cur.children!.get(k);
      if (!next) {
        next = newDir(Buffer.from(p));
        cur.children!.set(k, next);
      } else if (!next.children) {
        return undefined;
      }
      touched.add(next);
      cur = next;
    }
    return cur;
  };
  const prune = (dir: TreeNode): void => {
    for (const [k, c] of dir.children!) {
      if (!touched.has(c)) dir.children!.delete(k);
      else if (c.children) prune(c);
    }
  };
  for await (const e of readTar(input, { name, gzip })) {
    const parts = splitPath(e.path);
    const shown = e.rawPath.toString('latin1');
    if (parts.length === 0) {
      if (e.type === 'dir') root.inode = inodeFromTar(e);
      continue;
    }
    const parent = parentOf(parts.slice(0, -1));
    if (!parent) {
      warn(`${name}: ${shown}: a parent is not a directory; entry skipped`);
      continue;
    }
    const base = nameKey(parts[parts.length - 1]);
    if (base === '.wh..wh..opq') {
      prune(parent);
      continue;
    }
    if (base.startsWith('.wh.')) {
      parent.children!.delete(base.slice(4));
      continue;
    }
    let node: TreeNode;
    if (e.type === 'hardlink') {
      let target: TreeNode | undefined = root;
      for (const p of splitPath(e.linkTarget ?? Buffer.alloc(0))) target = target?.children?.get(nameKey(p));
      if (!target || target === root || isDir(target.inode)) {
        warn(`${name}: ${shown}: hardlink target ${(e.linkTarget ?? Buffer.alloc(0)).toString('latin1')} is not an existing non-directory; entry skipped`);
        continue;
      }
      node = { name: Buffer.from(parts[parts.length - 1]), inode: target.inode };
    } else if (e.type === 'dir') {
      const existing = parent.children!.get(base);
      if (existing?.children) {
        existing.inode = inodeFromTar(e);
        touched.add(existing);
        continue;
      }
      node = { name: Buffer.from(parts[parts.length - 1]), inode: inodeFromTar(e), children: new Map() };
    } else {
      node = { name: Buffer.from(parts[parts.length - 1]), inode: inodeFromTar(e) };
      if (e.type === 'file') {
        const h = crypto.createHash('sha256');
        for await (const piece of e.body()) h.update(piece);
        hashes.set(node.inode, h.digest('hex'));
      }
    }
    parent.children!.set(base, node);
    touched.add(node);
  }
}

const oct = (m: number): string => (m & 0o7777).toString(8).padStart(4, '0');
const typeName = (i: Inode): string => {
  switch (i.mode & S_IFMT) {
    case S_IFDIR: return 'dir';
    case S_IFREG: return 'file';
    case S_IFLNK: return 'symlink';
    case S_IFCHR: return 'chardev';
    case S_IFBLK: return 'blockdev';
    case S_IFIFO: return 'fifo';
    default: return 'socket';
  }
};
const hexOrText = (b: Buffer): string => (b.every((x) => x >= 0x20 && x < 0x7f) ? JSON.stringify(b.toString('latin1')) : `0x${b.toString('hex')}`);

/** Differences between two trees, `<path>: <what> <source> != <target>`, sorted by path. */
export function compareTrees(src: TreeNode, srcHashes: ContentHashes, dst: TreeNode, dstHashes: ContentHashes): string[] {
  const index = (root: TreeNode): { byPath: Map<string, TreeNode>; links: Map<Inode, string[]> } => {
    const byPath = new Map<string, TreeNode>();
    const links = new Map<Inode, string[]>();
    for (const { node, path: p } of walkTree(root)) {
      byPath.set(p, node);
      if (!isDir(node.inode)) {
        const l = links.get(node.inode) ?? [];
        l.push(p);
        links.set(node.inode, l);
      }
    }
    return { byPath, links };
  };
  const a = index(src);
  const b = index(dst);
  const out: [string, string][] = [];
  const add = (p: string, msg: string): void => {
    out.push([p, `${p}: ${msg}`]);
  };
  for (const [p, na] of a.byPath) {
    const nb = b.byPath.get(p);
    if (!nb) {
      add(p, 'missing in the target');
      continue;
    }
    const x = na.inode;
    const y = nb.inode;
    if ((x.mode & S_IFMT) !== (y.mode & S_IFMT)) {
      add(p, `type ${typeName(x)} != ${typeName(y)}`);
      continue;
    }
    if ((x.mode & 0o7777) !== (y.mode & 0o7777)) add(p, `mode ${oct(x.mode)} != ${oct(y.mode)}`);
    if (x.uid !== y.uid) add(p, `uid ${x.uid} != ${y.uid}`);
    if (x.gid !== y.gid) add(p, `gid ${x.gid} != ${y.gid}`);
    // Directory mtimes are not compared: an unpacker changes them whenever it applies a whiteout.
    if (!isDir(x) && (x.mtime !== y.mtime || x.mtimeNsec !== y.mtimeNsec)) add(p, `mtime ${x.mtime}.${String(x.mtimeNsec).padStart(9, '0')} != ${y.mtime}.${String(y.mtimeNsec).padStart(9, '0')}`);
    if ((isReg(x) || isSymlink(x)) && x.size !== y.size) add(p, `size ${x.size} != ${y.size}`);
    if (isSymlink(x) && !(x.symlink ?? Buffer.alloc(0)).equals(y.symlink ?? Buffer.alloc(0))) add(p, `symlink target ${hexOrText(x.symlink ?? Buffer.alloc(0))} != ${hexOrText(y.symlink ?? Buffer.alloc(0))}`);
    if ((isChr(x) || isBlk(x)) && (x.rdevMajor !== y.rdevMajor || x.rdevMinor !== y.rdevMinor)) add(p, `rdev ${x.rdevMajor}:${x.rdevMinor} != ${y.rdevMajor}:${y.rdevMinor}`);
    const names = [...new Set([...x.xattrs.keys(), ...y.xattrs.keys()])].sort();
    for (const n of names) {
      const xv = x.xattrs.get(n);
      const yv = y.xattrs.get(n);
      if (xv && yv && xv.equals(yv)) continue;
      if (!yv) add(p, `xattr ${JSON.stringify(n)} missing in the target`);
      else if (!xv) add(p, `xattr ${JSON.stringify(n)} not in the source`);
      else add(p, `xattr ${JSON.stringify(n)} ${hexOrText(xv)} != ${hexOrText(yv)}`);
    }
    if (isReg(x) && x.size === y.size) {
      const hx = srcHashes.get(x);
      const hy = dstHashes.get(y);
      if (hx !== hy) add(p, `content sha256 ${hx ?? '(unread)'} != ${hy ?? '(unreadable)'}`);
    }
    if (!isDir(x)) {
      const lx = [...(a.links.get(x) ?? [])].sort();
      const ly = [...(b.links.get(y) ?? [])].sort();
      if (lx.join('\0') !== ly.join('\0')) add(p, `hardlinks [${lx.join(', ')}] != [${ly.join(', ')}]`);
    }
  }
  for (const p of b.byPath.keys()) if (!a.byPath.has(p)) add(p, 'not in the source (extra in the target)');
  return out
    .map((v, i) => [v, i] as const)
    .sort((u, v) => (u[0][0] < v[0][0] ? -1 : u[0][0] > v[0][0] ? 1 : u[1] - v[1]))
    .map((v) => v[0][1]);
}

/** sha256 of every regular file of `boot`, read chunk by chunk from the blob files (digests verified). */
async function hashTargetFiles(boot: RafsBootstrap, blobFiles: Map<number, LocalBlobFile>, errors: string[]): Promise<{ hashes: ContentHashes; bytes: number }> {
  const hashes: ContentHashes = new Map();
  const metas = new Map<number, Map<number, BlobChunk> | null>();
  const metaOf = async (i: number): Promise<Map<number, BlobChunk> | null> => {
    if (metas.has(i)) return metas.get(i)!;
    const f = blobFiles.get(i);
    let m: Map<number, BlobChunk> | null = null;
    if (f) {
      try {
        const meta = await readBlobMeta(boot.blobs[i], f.readAt);
        m = new Map(meta.chunks.map((c) => [c.index, c]));
      } catch (e) {
        errors.push(`blob ${boot.blobs[i].blobId}: ${(e as Error).message}`);
      }
    }
    metas.set(i, m);
    return m;
  };
  let bytes = 0;
  for (const { node, path: p } of walkTree(boot.root)) {
    const inode = node.inode;
    if (!isReg(inode) || hashes.has(inode)) continue;
    const h = crypto.createHash('sha256');
    let got = 0;
    let ok = true;
    for (const c of inode.chunks) {
      const ci = await metaOf(c.blobIndex);
      const f = blobFiles.get(c.blobIndex);
      const entry = boot.blobs[c.blobIndex];
      if (!ci || !f) {
        ok = false;
        break;
      }
      const bc = ci.get(c.ciIndex);
      if (!bc) {
        errors.push(`${p}: chunk ci ${c.ciIndex} is not in blob ${entry.blobId}`);
        ok = false;
        break;
      }
      try {
        const data = decodeChunk(entry, bc, f.readAtSync(bc.compressedOffset, bc.compressedSize), c.digest.some((x) => x !== 0) ? c.digest : undefined);
        const want = Math.min(data.length, inode.size - got);
        h.update(want === data.length ? data : data.subarray(0, want));
        got += want;
      } catch (e) {
        errors.push(`${p}: ${(e as Error).message}`);
        ok = false;
        break;
      }
    }
    if (!ok) continue;
    if (got !== inode.size) {
      errors.push(`${p}: its chunks hold ${got} bytes, the inode says ${inode.size}`);
      continue;
    }
    bytes += got;
    hashes.set(inode, h.digest('hex'));
  }
  return { hashes, bytes };
}

function countEntries(root: TreeNode): number {
  let n = 0;
  for (const _ of walkTree(root)) n++;
  return n;
}

/** `nydusify check`: is `target` a valid nydus image with exactly the content of `source`? */
export async function checkConversion(source: ImageSource, target: ImageSource, opts: CheckImageOptions): Promise<CheckImageReport> {
  await digestReady();
  const errors: string[] = [];
  const warnings: string[] = [];
  const report: CheckImageReport = {
    version: VERSION, ok: false, source: source.name, target: target.name, platform: formatPlatform(opts.platform ?? DEFAULT_PLATFORM),
    source_manifest_digest: null, target_manifest_digest: null, errors, differences: [], warnings,
    entries: { source: 0, target: 0 }, files_compared: 0, bytes_compared: 0,
  };
  const say = (m: string): void => opts.onProgress?.(m);
  const run = makeRunDir(opts.workDir, '.nydus-check-');
  const blobFiles = new Map<number, LocalBlobFile>();
  try {
    // ---- the target as a nydus image
    say('target manifest');
    const tm = await target.manifest({ platform: opts.platform, nydus: true });
    report.target_manifest_digest = tm.descriptor.digest;
    const tname = `${target.name}`;
    let tconfig: ImageConfig | undefined;
    try {
      tconfig = parseConfig(await target.blob(tm.manifest.config), `${tname}: config ${tm.manifest.config?.digest}`);
    } catch (e) {
      errors.push((e as Error).message);
    }
    for (const p of validateNydusManifest(tm.manifest, tconfig)) errors.push(`${tname}: ${p}`);
    const layers = Array.isArray(tm.manifest.layers) ? tm.manifest.layers : [];
    const bootDesc = layers[layers.length - 1];
    let boot: RafsBootstrap | undefined;
    if (bootDesc && typeof bootDesc.digest === 'string') {
      try {
        say('target bootstrap');
        const layer = await target.blob(bootDesc);
        const ex = await extractBootstrapLayer(layer, `${tname}: bootstrap layer ${bootDesc.digest}`);
        const diffIds = tconfig?.rootfs?.diff_ids;
        if (Array.isArray(diffIds) && diffIds.length > 0 && diffIds[diffIds.length - 1] !== ex.diffId) {
          errors.push(`${tname}: config: the last diff_id ${diffIds[diffIds.length - 1]} is not the bootstrap layer's uncompressed digest ${ex.diffId}`);
        }
        boot = readBootstrap(ex.bootstrap, { name: `${tname}: ${ex.path}` });
      } catch (e) {
        if (!(e instanceof NydusError)) throw e;
        errors.push(e.message);
      }
    }
    if (boot) {
      // every blob the bootstrap uses must be a layer (that is how it reaches the snapshotter)
      const byDigest = new Map(layers.slice(0, -1).map((l) => [l.digest, l]));
      const used = new Set<string>();
      for (let i = 0; i < boot.blobs.length; i++) {
        const b = boot.blobs[i];
        const desc = byDigest.get('sha256:' + b.blobId);
        used.add('sha256:' + b.blobId);
        if (!desc) {
          errors.push(`${tname}: the bootstrap uses blob ${b.blobId}, which is not a layer of the manifest`);
          continue;
        }
        if (desc.size !== b.compressedSize) errors.push(`${tname}: blob layer ${desc.digest} is ${desc.size} bytes, the bootstrap's blob table says ${b.compressedSize}`);
        const file = path.join(run, b.blobId);
        try {
          say(`target blob ${b.blobId}`);
          await downloadBlob(target, desc, file);
          blobFiles.set(i, new LocalBlobFile(file));
        } catch (e) {
          if (!(e instanceof NydusError)) throw e;
          errors.push(e.message);
        }
      }
      for (const l of layers.slice(0, -1)) if (!used.has(l.digest)) warnings.push(`${tname}: blob layer ${l.digest} is not used by the bootstrap`);
    }

    // ---- the source, applied layer by layer
    say('source manifest');
    const sm = await source.manifest({ platform: opts.platform });
    report.source_manifest_digest = sm.descriptor.digest;
    if (isNydusManifest(sm.manifest)) throw invalidArgument(`${source.name}: the source is a nydus image; give the original OCI image`);
    const srcRoot = newDir(Buffer.from('/'));
    const srcHashes: ContentHashes = new Map();
    for (let i = 0; i < sm.manifest.layers.length; i++) {
      const desc = sm.manifest.layers[i];
      const where = `${source.name}: layer ${i} (${desc.digest})`;
      say(`source layer ${i + 1}/${sm.manifest.layers.length}`);
      const compression = layerCompression(desc, where);
      const feed = new VerifiedFeed(await source.blobStream(desc), desc, where);
      const { stream, gzip } = tarStream(feed, compression);
      try {
        await applyLayerTar(srcRoot, stream, gzip, where, srcHashes, (m) => warnings.push(m));
      } catch (e) {
        await Promise.race([feed.done.catch(() => undefined), new Promise((r) => setTimeout(r, 50))]);
        feed.abort();
        throw feed.error ?? e;
      }
      feed.consumerDone();
      await feed.done;
    }

    // ---- compare
    if (boot) {
      say('reading target files');
      const { hashes, bytes } = await hashTargetFiles(boot, blobFiles, errors);
      report.bytes_compared = bytes;
      report.entries.target = countEntries(boot.root);
      report.entries.source = countEntries(srcRoot);
      report.differences = compareTrees(srcRoot, srcHashes, boot.root, hashes);
      const counted = new Set<Inode>();
      for (const { node } of walkTree(srcRoot)) if (isReg(node.inode)) counted.add(node.inode);
      report.files_compared = counted.size;
    } else {
      errors.push(`${tname}: no usable bootstrap, the trees were not compared`);
    }
  } finally {
    for (const f of blobFiles.values()) f.close();
    fs.rmSync(run, { recursive: true, force: true });
  }
  report.ok = errors.length === 0 && report.differences.length === 0;
  return report;
}

export type { ImageManifest };
