/**
 * `create` and `merge`: from a directory / tar / tar.gz (optionally on top of a parent bootstrap
 * and with a chunk dictionary) to a RAFS v6 bootstrap plus one new data blob; and merging
 * per-layer bootstraps into one image. Outputs are written under temporary names and renamed,
 * so a failure never leaves a half-written bootstrap or blob behind.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import {
  CompressorName, DigesterName, DEFAULT_CHUNK_SIZE, SuperFlags,
  compressorSuperFlag, RAFS_MAX_BLOBS, COMPRESSOR_IDS, DIGESTER_IDS, BlobFeature,
} from '../format/constants';
import { BlobEntry } from '../format/layout';
import { writeBootstrap, writeBootstrapFile, BootstrapFileOutput } from '../format/bootstrap-writer';
import type { RafsBootstrap } from '../format/bootstrap-reader';
import { TreeNode, Inode, walkTree, forEachNode } from '../tree/node';
import { ChunkPool } from '../codec/chunk-pool';
import { digestReady } from '../codec/digest';
import { BlobWriter, FinishedBlob } from '../blob/blob-writer';
import { plainChunkRef } from '../blob/chunk-table';
import { ChunkSink, SinkStats, dedupKey } from './chunk-sink';
import { scanDirectory, walkDirectory, openDirFile, DirFile } from './dir-source';
import { applyLayer, cloneTree, stripWhiteouts, WhiteoutSpec } from './overlay';
import { NydusError, invalidArgument } from '../errors';
import { writeFileAtomic, writeAtomically } from '../util/atomic-file';
import { VERSION } from '../version';
import { parseChunkSize } from './chunk-size';

export type SourceType = 'dir' | 'tar' | 'targz';

export interface CreateOptions {
  type: SourceType;
  /** directory, tar or tar.gz path; '-' reads the tar from `stdin` */
  source: string;
  bootstrap: string;
  blobDir: string;
  chunkSize?: number;
  compressor?: CompressorName;
  digester?: DigesterName;
  parentBootstrap?: string;
  chunkDict?: string;
  prefetchPatterns?: string[];
  whiteoutSpec?: WhiteoutSpec;
  /** write chunk digests + TOC into the blob (nydus `--features blob-toc`); default true */
  blobToc?: boolean;
  threads?: number;
  stdin?: NodeJS.ReadableStream;
  /** name of the `stdin` stream in messages (default `<stdin>`), e.g. an OCI layer digest */
  stdinName?: string;
  onProgress?: (s: SinkStats) => void;
  onWarning?: (msg: string) => void;
}

export interface BuildReport {
  version: string;
  bootstrap: string;
  /** blob-table order, as nydus-image's output JSON */
  blobs: string[];
  /** the blob written by this build, if it holds any new chunk */
  blob_id: string | null;
  fs_version: '6';
  compressor: CompressorName;
  digester: DigesterName;
  chunk_size: number;
  trace: {
    consumed_time: Record<string, number>;
    registered_events: Record<string, number | string>;
  };
  /** things the build dropped or changed, each naming the entry */
  warnings: string[];
  stats: {
    inodes: number;
    files: number;
    chunks: number;
    new_chunks: number;
    dedup_chunks: number;
    dedup_uncompressed_size: number;
    blob_compressed_size: number;
    blob_uncompressed_size: number;
    bootstrap_size: number;
    blob_sizes: Record<string, { compressed: number; uncompressed: number; chunks: number }>;
  };
}

export { VERSION };
export { parseChunkSize };

// Loaded when a build needs them (a directory build needs neither the tar reader nor the
// bootstrap reader): less start-up and less heap for the common case.
/* eslint-disable @typescript-eslint/no-require-imports */
const readBootstrap = (...a: Parameters<typeof import('../format/bootstrap-reader').readBootstrap>): RafsBootstrap =>
  (require('../format/bootstrap-reader') as typeof import('../format/bootstrap-reader')).readBootstrap(...a);
const buildTreeFromTar = (...a: Parameters<typeof import('./tar-source').buildTreeFromTar>): ReturnType<typeof import('./tar-source').buildTreeFromTar> =>
  (require('./tar-source') as typeof import('./tar-source')).buildTreeFromTar(...a);
/* eslint-enable @typescript-eslint/no-require-imports */

function readBootstrapFile(file: string, what: string): RafsBootstrap {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${what} ${file}: ${(e as Error).message}`, { path: file });
  }
  return readBootstrap(data, { name: file });
}

export { writeFileAtomic };

export function superFlagsFor(compressor: CompressorName, digester: DigesterName, allBlobsHaveDigests: boolean): number {
  let f = compressorSuperFlag(compressor) | (digester === 'blake3' ? SuperFlags.HASH_BLAKE3 : SuperFlags.HASH_SHA256);
  f |= SuperFlags.EXPLICIT_UID_GID | SuperFlags.ENCRYPTION_NONE;
  if (allBlobsHaveDigests) f |= SuperFlags.INLINED_CHUNK_DIGEST;
  return f;
}

/**
 * Keep only blobs referenced by some chunk, in their current order, and rewrite chunk blob
 * indexes accordingly. Returns the compacted blob list.
 */
export function compactBlobs(root: TreeNode, blobs: (BlobEntry | undefined)[]): BlobEntry[] {
  const used = new Set<number>();
  forEachNode(root, (n) => {
    for (const c of n.inode.chunks) used.add(c.blobIndex);
  });
  const map = new Map<number, number>();
  const out: BlobEntry[] = [];
  let identity = true;
  blobs.forEach((b, i) => {
    if (used.has(i)) {
      if (!b) throw new Error(`internal: chunk refers to missing blob slot ${i}`);
      map.set(i, out.length);
      if (i !== out.length) identity = false;
      out.push({ ...b, blobIndex: out.length });
    }
  });
  if (out.length > RAFS_MAX_BLOBS) throw invalidArgument(`the image would reference ${out.length} blobs; RAFS v6 allows ${RAFS_MAX_BLOBS}`);
  if (identity) return out; // nothing moves (every new single-layer build): no copy of every chunk
  const inodes = new Set<Inode>();
  forEachNode(root, (n) => inodes.add(n.inode));
  // (plainChunkRef: a new build's chunks are ChunkAt objects, whose fields are getters)
  for (const i of inodes) i.chunks = i.chunks.map((c) => plainChunkRef(c, { blobIndex: map.get(c.blobIndex)! }));
  return out;
}

export async function createImage(opts: CreateOptions): Promise<BuildReport> {
  const t0 = performance.now();
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  parseChunkSize(chunkSize);
  const compressor = opts.compressor ?? 'zstd';
  const digester = opts.digester ?? 'blake3';
  if (!(compressor in COMPRESSOR_IDS) || compressor === 'gzip') throw invalidArgument(`--compressor ${compressor}: use zstd, lz4_block or none`);
  if (!(digester in DIGESTER_IDS)) throw invalidArgument(`--digester ${digester}: use blake3 or sha256`);
  const whiteoutSpec = opts.whiteoutSpec ?? 'oci';
  await digestReady();
  const threads = opts.threads ?? os.availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) throw invalidArgument(`--threads ${opts.threads}: must be a positive integer`);

  // Blob slots: parent blobs, then this build's new blob, then chunk-dict blobs as referenced.
  const slots: (BlobEntry | undefined)[] = [];
  let lower: TreeNode | undefined;
  const parent = opts.parentBootstrap ? readBootstrapFile(opts.parentBootstrap, 'parent bootstrap') : undefined;
  const dict = opts.chunkDict ? readBootstrapFile(opts.chunkDict.replace(/^bootstrap=/, ''), 'chunk dict') : undefined;
  for (const b of [parent, dict]) {
    if (b && b.chunkSize !== chunkSize) throw invalidArgument(`${b === parent ? 'parent bootstrap' : 'chunk dict'} uses chunk size 0x${b.chunkSize.toString(16)}, this build 0x${chunkSize.toString(16)}`);
    if (b && b.digester !== digester) throw invalidArgument(`${b === parent ? 'parent bootstrap' : 'chunk dict'} uses digester ${b.digester}, this build ${digester}`);
  }
  if (parent) {
    parent.blobs.forEach((b) => slots.push(b));
    lower = cloneTree(parent.root);
  }
  const newSlot = slots.length;
  slots.push(undefined);

  // The workers load while the source is scanned; what is submitted meanwhile waits for them.
  // This thread compresses too (ChunkSink `inline`), so the pool has one worker fewer than
  // --threads: each worker is a V8 isolate (~10 MiB, and its start-up). Small young
  // generations: the workers allocate little (their data is on shared memory).
  const { pool, ready } = ChunkPool.start({ threads: Math.max(1, threads - 1), resourceLimits: { maxYoungGenerationSizeMb: 2 } });
  let writer: BlobWriter;
  try {
    writer = new BlobWriter({ dir: opts.blobDir, compressor, digester, chunkSize, toc: opts.blobToc ?? true });
  } catch (e) {
    await pool.close();
    throw e;
  }
  const sink = new ChunkSink(pool, writer, newSlot, chunkSize, compressor, digester, { onProgress: opts.onProgress, inline: true });
  // Dedup sources: parent chunks, then the chunk dict (which wins, as in nydus-image).
  if (parent) for (const { node } of walkTree(parent.root)) for (const c of node.inode.chunks) sink.dedup.set(dedupKey(c.digest, c.uncompressedSize), c);
  if (dict) {
    const dictSlot = new Map<number, number>();
    for (const c of dict.chunkTable) {
      let slot = dictSlot.get(c.blobIndex);
      if (slot === undefined) {
        const existing = slots.findIndex((s) => s?.blobId === dict.blobs[c.blobIndex].blobId);
        slot = existing >= 0 ? existing : slots.push(dict.blobs[c.blobIndex]) - 1;
        dictSlot.set(c.blobIndex, slot);
      }
      sink.dedup.set(dedupKey(c.digest, c.uncompressedSize), {
        blobIndex: slot, ciIndex: c.index, digest: c.digest, compressedOffset: c.compressedOffset,
        compressedSize: c.compressedSize, uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize, compressed: (c.flags & 1) !== 0, fileOffset: 0,
      });
    }
  }

  let layer: TreeNode;
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    opts.onWarning?.(m);
  };
  const tBuild = performance.now();
  try {
    if (opts.type === 'dir') {
      if (opts.source === '-') throw invalidArgument('a directory source cannot be read from stdin');
      // Without a prefetch list, files are chunked while the walk goes on (same BFS order).
      const { root, files } = opts.prefetchPatterns?.length
        ? scanDirectory(opts.source, opts.prefetchPatterns, warn)
        : walkDirectory(opts.source, warn);
      layer = root;
      for (const f of files as Iterable<DirFile>) {
        const file = openDirFile(f);
        try {
          await sink.addFileFrom(f.inode, file.read, file.isHole);
        } finally {
          file.close();
        }
      }
    } else {
      let input: NodeJS.ReadableStream;
      if (opts.source === '-') input = opts.stdin ?? process.stdin;
      else {
        try {
          fs.accessSync(opts.source, fs.constants.R_OK);
        } catch (e) {
          throw invalidArgument(`source ${opts.source}: ${(e as Error).message}`, { path: opts.source });
        }
        input = fs.createReadStream(opts.source, { highWaterMark: 1 << 20 });
      }
      layer = await buildTreeFromTar(input, { name: opts.source === '-' ? opts.stdinName ?? '<stdin>' : opts.source, gzip: opts.type === 'targz' ? true : 'auto', warn }, sink);
    }
    await sink.drain();
    await ready;
    sink.release();
  } catch (e) {
    await sink.cancel(e);
    writer.abort();
    await pool.close();
    throw e;
  }
  const tDrained = performance.now();
  await pool.close();
  const tDump = performance.now();
  // The blob's fsync runs on the libuv pool while the bootstrap is laid out.
  let finished: FinishedBlob | undefined;
  try {
    finished = writer.seal();
  } catch (e) {
    writer.abort();
    throw e;
  }
  if (finished) slots[newSlot] = finished.entry;

  let root: TreeNode;
  if (lower) {
    applyLayer(lower, layer, whiteoutSpec);
    root = lower;
  } else {
    root = layer;
  }
  let blobs: BlobEntry[];
  let boot: BootstrapFileOutput;
  let tLaidOut = 0;
  let tPersisted = 0;
  try {
    blobs = compactBlobs(root, slots);
    const allDigests = blobs.length > 0 && blobs.every((b) => (b.features & BlobFeature.INLINED_CHUNK_DIGEST) !== 0);
    const input = { root, blobs, chunkSize, flags: superFlagsFor(compressor, digester, allDigests), prefetchPaths: opts.prefetchPatterns };
    // Written under a temporary name while the blob's fsync ends; named after the blob is.
    boot = await writeAtomically(opts.bootstrap, async (fd) => {
      const b = writeBootstrapFile(input, fd);
      tLaidOut = performance.now();
      if (finished) await writer.persist();
      tPersisted = performance.now();
      return b;
    });
  } catch (e) {
    writer.abort();
    throw e;
  }
  const t1 = performance.now();

  const blobSizes: BuildReport['stats']['blob_sizes'] = {};
  for (const b of blobs) blobSizes[b.blobId] = { compressed: b.compressedSize, uncompressed: b.uncompressedSize, chunks: b.chunkCount };
  const s = sink.stats;
  return {
    version: VERSION,
    bootstrap: opts.bootstrap,
    blobs: blobs.map((b) => b.blobId),
    blob_id: finished?.blobId ?? null,
    fs_version: '6',
    compressor,
    digester,
    chunk_size: chunkSize,
    warnings,
    trace: {
      consumed_time: {
        total_build: (t1 - t0) / 1000,
        build_bootstrap: (tDump - tBuild) / 1000,
        dump_blob: (tDump - tBuild) / 1000,
        dump_bootstrap: (t1 - tDump) / 1000,
        // after the data (bench/README.md): stopping the workers; laying out and writing the
        // bootstrap; waiting for the blob's fsync; the bootstrap's fsync and rename
        stop_workers: (tDump - tDrained) / 1000,
        layout_bootstrap: (tLaidOut - tDump) / 1000,
        blob_sync_wait: (tPersisted - tLaidOut) / 1000,
        write_bootstrap: (t1 - tPersisted) / 1000,
      },
      registered_events: {
        blob_uncompressed_size: finished?.entry.uncompressedSize ?? 0,
        dedup_chunks: s.dedupChunks,
        dedup_uncompressed_size: s.dedupBytes,
        euid: String(process.geteuid?.() ?? 0),
        egid: String(process.getegid?.() ?? 0),
      },
    },
    stats: {
      inodes: boot.inodeCount,
      files: s.files,
      chunks: s.chunks,
      new_chunks: s.newChunks,
      dedup_chunks: s.dedupChunks,
      dedup_uncompressed_size: s.dedupBytes,
      blob_compressed_size: finished?.entry.compressedSize ?? 0,
      blob_uncompressed_size: finished?.entry.uncompressedSize ?? 0,
      bootstrap_size: boot.size,
      blob_sizes: blobSizes,
    },
  };
}

export interface MergeOptions {
  bootstraps: string[];
  output: string;
  /** replaces the (single) blob id of each source bootstrap, in order */
  blobDigests?: string[];
  parentBootstrap?: string;
  prefetchPatterns?: string[];
}

export interface MergeReport {
  version: string;
  bootstrap: string;
  blobs: string[];
  fs_version: '6';
  compressor: CompressorName;
  inodes: number;
}

/** Merge per-layer bootstraps, lower to upper, applying OCI whiteouts. */
export function mergeImages(opts: MergeOptions): MergeReport {
  if (opts.bootstraps.length === 0) throw invalidArgument('merge needs at least one bootstrap');
  if (opts.blobDigests && opts.blobDigests.length !== opts.bootstraps.length) {
    throw invalidArgument(`--blob-digests has ${opts.blobDigests.length} entries for ${opts.bootstraps.length} bootstraps`);
  }
  const sources = [...(opts.parentBootstrap ? [opts.parentBootstrap] : []), ...opts.bootstraps];
  const images = sources.map((f) => readBootstrapFile(f, 'bootstrap'));
  const first = images[0];
  const slots: BlobEntry[] = [];
  const slotById = new Map<string, number>();
  let root: TreeNode | undefined;
  images.forEach((img, li) => {
    const name = sources[li];
    if (img.chunkSize !== first.chunkSize) throw invalidArgument(`${name}: chunk size 0x${img.chunkSize.toString(16)} differs from 0x${first.chunkSize.toString(16)}`);
    if (img.digester !== first.digester) throw invalidArgument(`${name}: digester ${img.digester} differs from ${first.digester}`);
    const digestIdx = li - (opts.parentBootstrap ? 1 : 0);
    const rename = digestIdx >= 0 ? opts.blobDigests?.[digestIdx]?.replace(/^sha256:/, '') : undefined;
    if (rename !== undefined && !/^[0-9a-f]{64}$/.test(rename)) throw invalidArgument(`--blob-digests: "${rename}" is not a sha256 digest`);
    if (rename !== undefined && img.blobs.length > 1) {
      throw invalidArgument(`${name}: --blob-digests needs each bootstrap to have exactly one blob, this one has ${img.blobs.length}`);
    }
    const map = img.blobs.map((b) => {
      const id = rename ?? b.blobId;
      let slot = slotById.get(id);
      if (slot === undefined) {
        slot = slots.length;
        slots.push({ ...b, blobId: id });
        slotById.set(id, slot);
      }
      return slot;
    });
    const inodes = new Set<Inode>();
    for (const { node } of walkTree(img.root)) inodes.add(node.inode);
    for (const i of inodes) i.chunks = i.chunks.map((c) => ({ ...c, blobIndex: map[c.blobIndex] }));
    // Whiteouts in the bottom layer have nothing to hide; strip them like an unpacker would.
    if (!root) root = stripWhiteouts(cloneTree(img.root), 'oci');
    else applyLayer(root, img.root, 'oci');
  });
  const blobs = compactBlobs(root!, slots);
  const allDigests = blobs.length > 0 && blobs.every((b) => (b.features & BlobFeature.INLINED_CHUNK_DIGEST) !== 0);
  const flags = superFlagsFor(first.compressor, first.digester, allDigests);
  const boot = writeBootstrap({ root: root!, blobs, chunkSize: first.chunkSize, flags, prefetchPaths: opts.prefetchPatterns });
  writeFileAtomic(opts.output, boot.data);
  return { version: VERSION, bootstrap: opts.output, blobs: blobs.map((b) => b.blobId), fs_version: '6', compressor: first.compressor, inodes: boot.inodeCount };
}
