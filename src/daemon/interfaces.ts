/**
 * Contracts between the daemon core (images, blobs, chunk fetching) and its users: kernel front
 * ends (fscache on-demand and fanotify pre-content, in src/kernel/) and the HTTP API. The core never
 * touches a kernel interface; a front end hands it a CacheWriter and asks for byte ranges.
 */
import type { BlobChunk, BlobEntry } from '../format/layout';

/** Where verified, uncompressed blob bytes go (the fscache cache file, a sparse store file …). */
export interface CacheWriter {
  /**
   * Write `data` at `offset` of the blob's uncompressed space. `offset` is 4 KiB aligned; the
   * length may be anything (the writer pads to its own alignment rules with zeros).
   */
  write(offset: number, data: Buffer): Promise<void>;
  /** Ranges already present when the session opens (e.g. from SEEK_DATA on a persistent file). */
  presentRanges?(): Promise<Array<[number, number]>>;
}

/** A random-access source of one blob's *compressed* bytes (local file, registry, HTTP …). */
export interface BlobBackend {
  readonly kind: string;
  /**
   * exactly `length` bytes at `offset` of blob `blobId`, or a thrown NydusError. A backend may
   * read into `into` (at least `length` bytes; the caller's reusable buffer, so a hot path touches
   * no fresh memory) and return a view of it, or ignore it and return its own buffer.
   */
  readRange(blobId: string, offset: number, length: number, into?: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

export interface BlobMetrics {
  blob_id: string;
  /** compressed bytes fetched from the backend */
  backend_bytes: number;
  backend_requests: number;
  chunks_fetched: number;
  chunks_verified: number;
  digest_failures: number;
  /** failed backend requests, and by kind (http_4xx, http_5xx, timeout, network, not_found, other) */
  backend_errors?: number;
  backend_errors_by_kind?: Record<string, number>;
  /** the backend's type (localfs, registry, …) */
  backend_kind?: string;
  /** read requests (READ / range asks) served, and their latency */
  reads: number;
  read_bytes: number;
  read_latency_ms_total: number;
  read_latency_ms_max: number;
  /** chunks present in the cache */
  chunks_ready: number;
  chunk_count: number;
}

/** One open data blob of a registered image, shared by every image that references it. */
export interface BlobSession {
  readonly blobId: string;
  readonly entry: BlobEntry;
  /** uncompressed size: the size to report to the kernel (copen) */
  readonly size: number;
  /**
   * Make [offset, offset+length) present in the CacheWriter: fetch the covering chunks (amplified
   * to the configured window), verify each digest, decompress, write. Resolves when every byte
   * of the requested range is present; rejects (NydusError) if any covering chunk failed — the
   * front end then completes the request without data so the reader gets EIO. Never writes a
   * chunk whose digest does not match. Concurrent and overlapping calls are fine.
   */
  ensure(offset: number, length: number): Promise<void>;
  /**
   * The object is open (the kernel has its size): start loading what every READ needs (the
   * blob's chunk index) so the first READ does not wait for it. Never throws; a failure is
   * retried by the first READ.
   */
  prepare?(): void;
  /**
   * The cache lost [offset, offset+length) behind the session's back (a punched or truncated
   * cache file): chunks overlapping it are no longer ready, so the next ensure() fetches them.
   */
  forget?(offset: number, length: number): void;
  /** scrub (src/daemon/scrub.ts): the blob's chunks and the digest each must have (undefined: none recorded) */
  chunkIndex?(): Promise<BlobChunk[]>;
  expectedDigest?(chunkIndex: number): Buffer | undefined;
  metrics(): BlobMetrics;
  close(): Promise<void>;
}

/** A registered image (bootstrap) as the API and front ends see it. */
export interface RegisteredImage {
  /** the fsid / registration id */
  id: string;
  domainId: string;
  bootstrapPath: string;
  bootstrapSize: number;
  blobIds: string[];
}

/** What a front end looks up when the kernel opens an object. */
export type ObjectLookup =
  | { kind: 'bootstrap'; image: RegisteredImage; read(offset: number, length: number): Promise<Buffer> }
  | { kind: 'blob'; image: RegisteredImage; open(writer: CacheWriter): Promise<BlobSession> }
  | { kind: 'unknown'; reason: string };

/** A background prefetch started for a mount (src/daemon/prefetch.ts). */
export interface PrefetchHandle {
  cancel(): void;
  /** settles when the job ends (done, cancelled or given up; never rejects) */
  readonly done: Promise<void>;
}

export interface ObjectResolver {
  /** volume = domain or fsid (without the "erofs," prefix); cookie = fsid or blob id */
  resolve(domain: string, cookie: string): ObjectLookup;
  /**
   * The front end opened `session`, a blob of `image`, for a mount (fanotify: the daemon's
   * mount; fscache: the kernel's OPEN of the blob object, after the copen): start the image's
   * background prefetch of it when its registration enables prefetch. Cancel the handle when the
   * mount goes away; closing the session also ends it.
   */
  startPrefetch?(image: RegisteredImage, session: BlobSession): PrefetchHandle | undefined;
}

/** What a kernel front end reads from the daemon core: the registered images and their blobs. */
export interface ImageSource extends ObjectResolver {
  /** a registered image by id (and domain; '' = none) */
  find(id: string, domainId: string): RegisteredImage | undefined;
  /** Open a session for a data blob of any registered image (its backend, digests, options). */
  openBlob(blobId: string, writer: CacheWriter): BlobSession;
  /** the blob's table entry (sizes, codecs) from any registered image, or undefined */
  blobEntry(blobId: string): BlobEntry | undefined;
}

/** A mount the daemon made itself (the fanotify front end mounts file-backed EROFS). */
export interface FrontendMount {
  mountpoint: string;
  id: string;
  domainId: string;
  bootstrap: string;
  blobIds: string[];
  /** ISO time of the mount */
  mountedAt: string;
}

/** Per-mount settings of `POST /api/v1/mount` (front ends that mount themselves). */
export interface MountOptions {
  /**
   * read_ahead_kb of the new mount (fanotify: the size of EROFS's reads of its blob files, so of
   * each pre-content event's range, and of mmap's read-around); 0 keeps the kernel's 128;
   * absent, the front end's default (1024)
   */
  readaheadKb?: number;
}

/**
 * A kernel front end: how the kernel asks the daemon core for bytes. Two implement it in
 * src/kernel/: fscache on-demand (/dev/cachefiles; the kernel mounts by fsid and asks for
 * objects) and fanotify pre-content events (the daemon mounts file-backed EROFS itself and fills
 * sparse cache files). The daemon core and its API know nothing else about the kernel.
 */
export interface KernelFrontend {
  /** 'fscache' | 'fanotify' */
  readonly kind: string;
  /** Serve the kernel from `images`; returns once requests can be answered. */
  start(images: ImageSource): Promise<void>;
  /** front-end counters for the metrics API */
  stats(): unknown;
  /** per-blob counters merged into the blob's metrics (events, fast/slow path, latency …) */
  blobStats?(blobId: string): Record<string, unknown> | undefined;
  /** Mount a registered image (front ends whose mounts the daemon makes). */
  mount?(image: RegisteredImage, mountpoint: string, opts?: MountOptions): Promise<FrontendMount>;
  /** Unmount (never lazily): a busy mount is an error and stays served. */
  unmount?(mountpoint: string): Promise<void>;
  mounts?(): FrontendMount[];
  /**
   * Access traces of a mount this front end made (`nydus-ts optimize`; fanotify:
   * src/kernel/access-trace.ts): start recording, read the trace so far, stop and return it.
   */
  startTrace?(mountpoint: string): Promise<unknown>;
  trace?(mountpoint: string): unknown;
  stopTrace?(mountpoint: string): Promise<unknown>;
  /** Drop a blob's cached data that no image uses. */
  cull?(blobId: string): Promise<unknown>;
  /**
   * Scrub (src/daemon/scrub.ts): the cache files of these blobs (`volumes`: the fscache volumes
   * of the registered images holding each), held open until released; the ones that cannot be
   * scrubbed come back with the reason.
   */
  scrubTargets?(blobs: Array<{ blobId: string; volumes: string[] }>): Promise<{ targets: ScrubTarget[]; skipped: Array<{ blob_id: string; reason: string }> }>;
  /** the cache dir's objects, for usage, GC and culling (src/daemon/cache-manager.ts) */
  readonly cache?: FrontendCache;
  /** Stop serving; with mounts the daemon made, they are unmounted first (busy → error). */
  stop(): Promise<void>;
}

/** One object with data in the cache dir: a blob's cache file (fscache: also a bootstrap's). */
export interface CachedObject {
  /** blob id (fscache: the cookie, a blob id or an image's fsid) */
  id: string;
  /** fscache: the volume (domain or fsid) holding the object; fanotify: undefined (one file per blob) */
  volume?: string;
  path: string;
  /** apparent size (the blob's uncompressed size) */
  size: number;
  /** st_blocks × 512 */
  diskBytes: number;
  /** bytes that hold data (presence map, or SEEK_DATA) */
  presentBytes: number;
  /** last read served from it (ms since the epoch; 0 = unknown) */
  lastAccess: number;
  /** open for a mount: never removed, only cold ranges may be evicted */
  inUse: boolean;
  /** the data ranges [start, end) */
  presentRanges(): Array<[number, number]>;
}

/** What a front end's cache can do for the cache manager (usage, GC, culling under pressure). */
export interface FrontendCache {
  /** every object with data in the cache dir, open or not */
  objects(): CachedObject[];
  /** Remove an object that is not in use; resolves with the bytes freed (throws if it is in use). */
  remove(obj: CachedObject): Promise<number>;
  /**
   * Evict the least recently read ranges of objects in use, about `bytes` in all, so that a
   * later read fetches them again (fanotify only: see README "Culling").
   */
  evictCold?(bytes: number): Promise<Array<{ id: string; bytes: number; ranges: number }>>;
  /** the daemon's handler of a full cache (make room, the kernel's culling signal) */
  setPressureHandler(h: CachePressureHandler): void;
}

export interface CachePressureHandler {
  /**
   * A cache write failed with ENOSPC/EDQUOT (fscache: ENOBUFS): free about `bytes`, sparing
   * `keep` (the object being written); resolves with the bytes freed (0: nothing could be).
   */
  makeRoom(bytes: number, keep: string): Promise<number>;
  /** the kernel asks for culling (cachefiles POLLOUT) */
  cullingNeeded(): void;
  /** an object is no longer open (unmounted): a GC may now remove it if nothing references it */
  released(id: string, volume?: string): void;
  /** bytes were written to the cache (watermarks are checked as it fills) */
  wrote(bytes: number): void;
}

/** One blob's cache file as scrub sees it (a front end builds it: scrubTargets). */
export interface ScrubTarget {
  blobId: string;
  /** the file read for verification (never a path that raises kernel events) */
  path: string;
  /** holds the chunk index, the digests, and forgets evicted chunks */
  session: BlobSession;
  /** Does the cache hold every byte of [a, b)? Only such chunks are verified. */
  present(a: number, b: number): boolean;
  /** Drop [a, b) (bad bytes) so the next read fetches it again from the backend. */
  evict(a: number, b: number): Promise<void>;
  release(): Promise<void>;
}
