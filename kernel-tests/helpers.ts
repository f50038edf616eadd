// Guest-side helpers for the fscache kernel tests: a small ObjectResolver backed by local image
// files (stand-in for the daemon core), async mount/umount, and an async tree snapshot.
//
// Everything that touches an EROFS-over-fscache mount must be asynchronous: the daemon that
// serves the mount runs in the same process, so a synchronous read/stat on the mount would
// block the very thread that has to answer the kernel's READ (deadlock).

import { execFile } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { readBootstrap, RafsBootstrap } from "../src/format/bootstrap-reader";
import { BlobChunk, BlobEntry } from "../src/format/layout";
import { readBlobMeta, findChunk } from "../src/blob/blob-meta";
import { LocalBlobFile, blobPath, decodeChunk } from "../src/blob/local-blob";
import { NydusError } from "../src/errors";
import type {
  BlobMetrics, BlobSession, CacheWriter, ObjectLookup, ObjectResolver, RegisteredImage,
} from "../src/daemon/interfaces";

export const NOT_IN_VM =
  "kernel tests must run inside the test VM (node dist/test/kernel-vm.test.js, see kernel-tests/README.md)";

// ------------------------------------------------------------------------------ processes

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Run a command without blocking the event loop (execFile, never execFileSync: a `mount` of an
 * fscache image waits for this very process to answer the kernel). Never throws on exit status.
 */
export function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<RunResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: "utf8" }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      const code = e ? (typeof e.code === "number" ? e.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) + (e && typeof e.code !== "number" ? ` [${e.message}]` : ""), ms: Date.now() - t0 });
    });
  });
}

/** mount -t erofs none <mnt> -o fsid=<fsid>[,domain_id=<domain>]; resolves with the result. */
export async function mountFscache(mnt: string, fsid: string, domain?: string): Promise<RunResult> {
  await fs.promises.mkdir(mnt, { recursive: true });
  const o = [`fsid=${fsid}`];
  if (domain) o.push(`domain_id=${domain}`);
  return run("mount", ["-t", "erofs", "none", mnt, "-o", o.join(",")]);
}

export async function mountFscacheOk(mnt: string, fsid: string, domain?: string): Promise<RunResult> {
  const r = await mountFscache(mnt, fsid, domain);
  if (r.code !== 0) throw new Error(`mount fsid=${fsid}${domain ? ` domain_id=${domain}` : ""} on ${mnt} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

export async function umount(mnt: string): Promise<RunResult> {
  const r = await run("umount", [mnt]);
  if (r.code !== 0) throw new Error(`umount ${mnt} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

/** Is `mnt` a mount point right now (from /proc/self/mounts; async). */
export async function isMounted(mnt: string): Promise<boolean> {
  const m = await fs.promises.readFile("/proc/self/mounts", "utf8");
  return m.split("\n").some((l) => l.split(" ")[1] === mnt);
}

/** Wait until `cond()` holds (polling every 20 ms), or throw after `ms`. */
export async function waitFor(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ------------------------------------------------------------------------------ tree snapshots

export interface Entry {
  type: "file" | "dir" | "symlink" | "other";
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  sha256?: string;
  target?: string;
}

/** sha256 of a file, read sequentially in `bufSize` pieces through a FileHandle (async). */
export async function hashFileAsync(file: string, bufSize = 1 << 20): Promise<{ sha256: string; bytes: number }> {
  const h = crypto.createHash("sha256");
  const fh = await fs.promises.open(file, "r");
  const buf = Buffer.allocUnsafe(bufSize);
  let pos = 0;
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { sha256: h.digest("hex"), bytes: pos };
}

/** Walk a tree (no symlink following) with async calls only, one at a time. */
export async function snapshotAsync(root: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const walk = async (abs: string, rel: string): Promise<void> => {
    const st = await fs.promises.lstat(abs, { bigint: true });
    const type: Entry["type"] = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : "other";
    const e: Entry = { type, mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size), mtimeNs: st.mtimeNs };
    if (type === "file") e.sha256 = (await hashFileAsync(abs)).sha256;
    if (type === "symlink") e.target = await fs.promises.readlink(abs);
    out.set(rel, e);
    if (type === "dir") {
      const names = (await fs.promises.readdir(abs)).sort();
      for (const n of names) await walk(path.join(abs, n), rel === "/" ? `/${n}` : `${rel}/${n}`);
    }
  };
  await walk(root, "/");
  return out;
}

/** Differences between two snapshots ("<path>: …"); the root and directory sizes/mtimes are not compared. */
export function diffSnapshots(expected: Map<string, Entry>, actual: Map<string, Entry>): string[] {
  const out: string[] = [];
  for (const [p, e] of expected) {
    if (p === "/") continue;
    const a = actual.get(p);
    if (!a) {
      out.push(`${p}: missing`);
      continue;
    }
    const cmp = (k: string, x: unknown, y: unknown): void => {
      if (x !== y) out.push(`${p}: ${k} ${String(x)} != ${String(y)}`);
    };
    cmp("type", e.type, a.type);
    cmp("mode", e.mode.toString(8), a.mode.toString(8));
    cmp("uid", e.uid, a.uid);
    cmp("gid", e.gid, a.gid);
    if (e.type !== "dir") {
      cmp("size", e.size, a.size);
      cmp("mtime", e.mtimeNs, a.mtimeNs);
    }
    cmp("sha256", e.sha256, a.sha256);
    cmp("target", e.target, a.target);
  }
  for (const p of actual.keys()) if (!expected.has(p)) out.push(`${p}: unexpected`);
  return out;
}

// ------------------------------------------------------------------------------ test resolver

/** What the test resolver saw: OPENs resolved, bootstrap reads, blob ensures. */
export interface ResolverEvent {
  kind: "open" | "unknown" | "bootstrap-read" | "ensure" | "session-open" | "session-close";
  domain: string;
  cookie: string;
  off?: number;
  len?: number;
}

interface TestImage {
  id: string;
  domain: string;
  bootstrapPath: string;
  bootstrap: Buffer;
  boot: RafsBootstrap;
  blobDir: string;
}

/**
 * A minimal BlobSession over a local blob file: reads the blob's ci array (readBlobMeta), and for
 * each chunk covering a requested range reads the compressed bytes, decodes them, verifies the
 * digest from the bootstrap's chunk table (decodeChunk) and writes them to the CacheWriter.
 * Idempotent; no amplification, no sharing of in-flight chunks (the real core does that).
 */
export class LocalTestBlobSession implements BlobSession {
  readonly blobId: string;
  readonly size: number;
  private meta?: Promise<BlobChunk[]>;
  private readonly written = new Set<number>();
  private readonly file: LocalBlobFile;
  private closed = false;
  private readonly m: BlobMetrics;

  constructor(
    readonly entry: BlobEntry,
    file: string,
    private readonly writer: CacheWriter,
    private readonly digests: Map<number, Buffer>,
    private readonly hooks: { onEnsure?: (off: number, len: number) => void; shouldFail?: () => string | undefined } = {},
  ) {
    this.blobId = entry.blobId;
    this.size = entry.uncompressedSize;
    this.file = new LocalBlobFile(file);
    this.m = {
      blob_id: entry.blobId, backend_bytes: 0, backend_requests: 0, chunks_fetched: 0, chunks_verified: 0, digest_failures: 0,
      reads: 0, read_bytes: 0, read_latency_ms_total: 0, read_latency_ms_max: 0, chunks_ready: 0, chunk_count: entry.chunkCount,
    };
  }

  async ensure(offset: number, length: number): Promise<void> {
    this.hooks.onEnsure?.(offset, length);
    const why = this.hooks.shouldFail?.();
    if (why) throw new NydusError("ERR_BACKEND", `blob ${this.blobId}: ${why}`);
    if (this.closed) throw new NydusError("ERR_DAEMON", `blob ${this.blobId}: session closed`);
    const t0 = performance.now();
    this.meta ??= readBlobMeta(this.entry, this.file.readAt).then((m) => m.chunks);
    const chunks = await this.meta;
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return;
    const first = findChunk(chunks, offset);
    const last = findChunk(chunks, end - 1);
    if (first < 0 || last < 0) throw new NydusError("ERR_BAD_BLOB", `blob ${this.blobId}: ${offset}+${length} is not covered by a chunk`);
    for (let i = first; i <= last; i++) {
      if (this.written.has(i)) continue;
      const c = chunks[i];
      const raw = this.file.readAtSync(c.compressedOffset, c.compressedSize);
      this.m.backend_requests++;
      this.m.backend_bytes += raw.length;
      const expected = this.digests.get(c.index);
      const data = decodeChunk(this.entry, c, raw, expected);
      this.m.chunks_fetched++;
      if (expected) this.m.chunks_verified++;
      await this.writer.write(c.uncompressedOffset, data);
      if (!this.written.has(i)) this.m.chunks_ready++;
      this.written.add(i);
    }
    const ms = performance.now() - t0;
    this.m.reads++;
    this.m.read_bytes += end - offset;
    this.m.read_latency_ms_total += ms;
    this.m.read_latency_ms_max = Math.max(this.m.read_latency_ms_max, ms);
  }

  metrics(): BlobMetrics {
    return { ...this.m };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.file.close();
  }
}

/** An ObjectResolver over images registered from local files (bootstrap + blob directory). */
export class TestResolver implements ObjectResolver {
  private readonly images: TestImage[] = [];
  readonly events: ResolverEvent[] = [];
  /** "<volume>/<cookie>" of blobs whose ensure() must fail (value: the reason) */
  readonly failing = new Map<string, string>();

  /** Register an image: `id` = fsid, `domain` = domain_id ('' for none). */
  add(id: string, domain: string, bootstrapPath: string, blobDir: string): RegisteredImage {
    const bootstrap = fs.readFileSync(bootstrapPath);
    const boot = readBootstrap(bootstrap, { name: bootstrapPath });
    const img: TestImage = { id, domain, bootstrapPath, bootstrap, boot, blobDir };
    this.images.push(img);
    return this.view(img);
  }

  private view(img: TestImage): RegisteredImage {
    return { id: img.id, domainId: img.domain, bootstrapPath: img.bootstrapPath, bootstrapSize: img.bootstrap.length, blobIds: img.boot.blobs.map((b) => b.blobId) };
  }

  count(kind: ResolverEvent["kind"], filter: { domain?: string; cookie?: string } = {}): number {
    return this.events.filter((e) => e.kind === kind && (filter.domain === undefined || e.domain === filter.domain) && (filter.cookie === undefined || e.cookie === filter.cookie)).length;
  }

  resolve(domain: string, cookie: string): ObjectLookup {
    const inVolume = this.images.filter((i) => (i.domain || i.id) === domain);
    const img = inVolume.find((i) => i.id === cookie);
    if (img) {
      this.events.push({ kind: "open", domain, cookie });
      return {
        kind: "bootstrap",
        image: this.view(img),
        read: async (offset, length) => {
          this.events.push({ kind: "bootstrap-read", domain, cookie, off: offset, len: length });
          const out = Buffer.alloc(length);
          if (offset < img.bootstrap.length) img.bootstrap.copy(out, 0, offset, Math.min(img.bootstrap.length, offset + length));
          return out;
        },
      };
    }
    for (const owner of inVolume) {
      const idx = owner.boot.blobs.findIndex((b) => b.blobId === cookie);
      if (idx < 0) continue;
      this.events.push({ kind: "open", domain, cookie });
      const entry = owner.boot.blobs[idx];
      const digests = new Map<number, Buffer>();
      for (const c of owner.boot.chunkTable) if (c.blobIndex === idx) digests.set(c.index, c.digest);
      return {
        kind: "blob",
        image: this.view(owner),
        open: async (writer: CacheWriter) => {
          this.events.push({ kind: "session-open", domain, cookie });
          const s = new LocalTestBlobSession(entry, blobPath(owner.blobDir, cookie), writer, digests, {
            onEnsure: (off, len) => this.events.push({ kind: "ensure", domain, cookie, off, len }),
            shouldFail: () => this.failing.get(`${domain}/${cookie}`),
          });
          const close = s.close.bind(s);
          s.close = async () => {
            this.events.push({ kind: "session-close", domain, cookie });
            await close();
          };
          return s;
        },
      };
    }
    this.events.push({ kind: "unknown", domain, cookie });
    return { kind: "unknown", reason: `no test image in volume "erofs,${domain}" has an object "${cookie}"` };
  }
}
