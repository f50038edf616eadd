/**
 * Scrub: re-read every chunk the cache holds, check its digest against the bootstrap's chunk
 * table (the check a fetch makes), and evict a damaged one so the next read fetches good bytes
 * from the backend again. Runs in the serving daemon, started through the API
 * (`POST /api/v1/cache/scrub`, `nydus-ts cache scrub`) or periodically (`--scrub-interval`),
 * never faster than its rate (bytes/s).
 *
 * What each front end hands over (KernelFrontend.scrubTargets): the cache file to read — the
 * fanotify store path (unmarked, so reading raises no event), or cachefiles' backing file in
 * `cache/I<volume>/@xx/D<blob>` — whether a range is present, and how to evict one (fanotify:
 * presence bits cleared, then the pages punched; fscache: the pages punched, which cachefiles
 * sees as a hole and turns into a READ). The blob session forgets the chunk either way.
 *
 * Only chunks fully present are checked. The file is read with O_DIRECT where the filesystem
 * allows it: what is on disk is checked, and the scrub does not push other data out of the page
 * cache. A mismatch is read again before it counts (a range evicted meanwhile by culling, or
 * refilled, is not a finding). What scrub cannot reach — bytes already in the page cache of a
 * mounted file — is described in the README ("Scrub").
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { NydusError } from '../errors';
import { blobCodecs } from '../blob/local-blob';
import { digest, digestReady } from '../codec/digest';
import { alignedBuffer } from '../sys/native';
import type { BlobChunk } from '../format/layout';
import type { KernelFrontend, ScrubTarget } from './interfaces';

const PAGE = 4096;
const READ_WINDOW = 4 << 20;
/** findings listed in a report (all are counted, logged and evicted) */
const MAX_FINDINGS = 1000;
const alignDown = (n: number): number => n - (n % PAGE);
const alignUp = (n: number): number => Math.ceil(n / PAGE) * PAGE;

export interface ScrubFinding {
  blob_id: string;
  chunk_index: number;
  /** the chunk's offset and size in the blob's uncompressed space (= in the cache file) */
  offset: number;
  size: number;
  expected_digest: string;
  /** null when the chunk could not be read */
  actual_digest: string | null;
  error?: string;
  cache_file: string;
  /** evicted: the next read fetches the chunk again */
  evicted: boolean;
  found_at: string;
}

export interface ScrubReport {
  id: string;
  state: 'running' | 'done' | 'failed' | 'cancelled';
  trigger: 'api' | 'periodic';
  image: string | null;
  /** 0 = unlimited */
  rate_bytes_per_sec: number;
  started_at: string;
  finished_at: string | null;
  blobs_total: number;
  blobs_done: number;
  chunks_total: number;
  /** chunks looked at (present or not) */
  chunks_done: number;
  chunks_verified: number;
  bytes_verified: number;
  /** chunks not fully present in the cache (nothing to check) */
  chunks_absent: number;
  /** chunks whose digest the bootstrap does not record */
  chunks_unverifiable: number;
  /** damaged chunks found (and evicted); `findings` lists the first MAX_FINDINGS of them */
  damaged_chunks: number;
  findings: ScrubFinding[];
  skipped: Array<{ blob_id: string; reason: string }>;
  error: string | null;
}

export interface ScrubStats {
  running: boolean;
  runs_total: number;
  runs_failed_total: number;
  chunks_verified_total: number;
  bytes_verified_total: number;
  mismatches_total: number;
  read_errors_total: number;
  evicted_bytes_total: number;
  blobs_skipped_total: number;
  /** Unix time (s) of the end of the last finished run; null before one */
  last_run_finished_at: number | null;
  last_run_findings: number | null;
  periodic_interval_s: number | null;
  periodic_rate_bytes_per_sec: number | null;
}

type Log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

export interface ScrubManagerOptions {
  frontend: KernelFrontend;
  /** the blobs to scrub (of one image, or of every registered image) and their fscache volumes; throws for an unknown image */
  blobsOf(image?: string): Array<{ blobId: string; volumes: string[] }>;
  log: Log;
  /** periodic background scrub: every `intervalMs`, at `rateBytes` per second */
  periodic?: { intervalMs: number; rateBytes: number };
}

/** Paces reads to `rate` bytes/s (0 = unlimited); always yields to the event loop. */
class Pacer {
  private readonly t0 = performance.now();
  private bytes = 0;
  constructor(private readonly rate: number) {}
  async take(n: number): Promise<void> {
    this.bytes += n;
    const due = this.rate > 0 ? this.t0 + (this.bytes / this.rate) * 1000 - performance.now() : 0;
    await new Promise((r) => (due > 1 ? setTimeout(r, due) : setImmediate(r)));
  }
}

function readAt(fd: number, buf: Buffer, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const step = (): void => {
      fs.read(fd, buf, got, len - got, pos + got, (err, n) => {
        if (err) return reject(err);
        got += n;
        if (n === 0 || got >= len) resolve(got);
        else step();
      });
    };
    step();
  });
}

/** Open for reading, with O_DIRECT where the filesystem allows it. */
function openForScrub(file: string): { fd: number; direct: boolean } {
  const direct = fs.constants.O_DIRECT ?? 0;
  if (direct) {
    try {
      return { fd: fs.openSync(file, fs.constants.O_RDONLY | direct), direct: true };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    }
  }
  return { fd: fs.openSync(file, fs.constants.O_RDONLY), direct: false };
}

const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class ScrubManager {
  private current?: { report: ScrubReport; cancelled: boolean; done: Promise<void> };
  private last?: ScrubReport;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readonly st: Omit<ScrubStats, 'running' | 'periodic_interval_s' | 'periodic_rate_bytes_per_sec'> = {
    runs_total: 0, runs_failed_total: 0, chunks_verified_total: 0, bytes_verified_total: 0, mismatches_total: 0,
    read_errors_total: 0, evicted_bytes_total: 0, blobs_skipped_total: 0, last_run_finished_at: null, last_run_findings: null,
  };

  constructor(private readonly opts: ScrubManagerOptions) {
    const p = opts.periodic;
    if (p && p.intervalMs > 0) {
      this.timer = setInterval(() => {
        if (this.current || this.closed) return;
        try {
          this.start({ rateBytes: p.rateBytes, trigger: 'periodic' });
        } catch (e) {
          opts.log('warn', `periodic scrub: ${errMsg(e)}`);
        }
      }, p.intervalMs);
      this.timer.unref();
    }
  }

  stats(): ScrubStats {
    const p = this.opts.periodic;
    return {
      running: !!this.current, ...this.st,
      periodic_interval_s: p ? p.intervalMs / 1000 : null, periodic_rate_bytes_per_sec: p ? p.rateBytes : null,
    };
  }

  /** The running scrub, else the last one (null before the first). */
  status(): ScrubReport | null {
    return this.current?.report ?? this.last ?? null;
  }

  /** Start a scrub in the background; a second one while one runs is refused (409). */
  start(req: { image?: string; rateBytes?: number; trigger?: 'api' | 'periodic' }): ScrubReport {
    if (this.closed) throw new NydusError('ERR_DAEMON', 'the daemon is stopping', { httpStatus: 503 });
    if (this.current) throw new NydusError('ERR_DAEMON', `a scrub is already running (${this.current.report.id}, started ${this.current.report.started_at}); wait for it or cancel it (DELETE /api/v1/cache/scrub)`, { httpStatus: 409 });
    const rate = req.rateBytes ?? 0;
    if (!Number.isFinite(rate) || rate < 0) throw new NydusError('ERR_INVALID_ARGUMENT', `scrub rate ${req.rateBytes} must be a number of bytes per second ≥ 0 (0 = unlimited)`, { httpStatus: 400 });
    if (!this.opts.frontend.scrubTargets) throw new NydusError('ERR_UNSUPPORTED', `the ${this.opts.frontend.kind} front end cannot scrub its cache`, { httpStatus: 501 });
    const blobs = this.opts.blobsOf(req.image); // throws for an unknown image
    const report: ScrubReport = {
      id: crypto.randomUUID(), state: 'running', trigger: req.trigger ?? 'api', image: req.image ?? null, rate_bytes_per_sec: rate,
      started_at: new Date().toISOString(), finished_at: null, blobs_total: 0, blobs_done: 0, chunks_total: 0, chunks_done: 0,
      chunks_verified: 0, bytes_verified: 0, chunks_absent: 0, chunks_unverifiable: 0, damaged_chunks: 0, findings: [], skipped: [], error: null,
    };
    const job = { report, cancelled: false, done: Promise.resolve() };
    this.current = job;
    this.opts.log('info', `scrub ${report.id} started (${report.trigger}${req.image ? `, image ${req.image}` : ''}, ${blobs.length} blob(s), ${rate ? `${(rate / 1e6).toFixed(1)} MB/s` : 'unlimited rate'})`);
    job.done = this.run(job, blobs, rate).catch((e) => {
      report.state = 'failed';
      report.error = errMsg(e);
      this.opts.log('error', `scrub ${report.id} failed: ${report.error}`);
    }).finally(() => {
      if (report.state === 'running') report.state = job.cancelled ? 'cancelled' : 'done';
      report.finished_at = new Date().toISOString();
      if (report.state === 'done') this.st.runs_total++;
      else this.st.runs_failed_total++;
      this.st.last_run_finished_at = Date.now() / 1000;
      this.st.last_run_findings = report.damaged_chunks;
      this.last = report;
      this.current = undefined;
      this.opts.log(report.damaged_chunks ? 'warn' : 'info', `scrub ${report.id} ${report.state}: ${report.chunks_verified} chunk(s) verified (${report.bytes_verified} bytes), ${report.damaged_chunks} damaged chunk(s) evicted, ${report.skipped.length} blob(s) skipped`);
    });
    return report;
  }

  /** Cancel the running scrub (its report says `cancelled`); false if none runs. */
  async cancel(): Promise<boolean> {
    const j = this.current;
    if (!j) return false;
    j.cancelled = true;
    await j.done;
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.cancel();
  }

  private async run(job: NonNullable<ScrubManager['current']>, blobs: Array<{ blobId: string; volumes: string[] }>, rate: number): Promise<void> {
    await digestReady();
    const r = job.report;
    const { targets, skipped } = await this.opts.frontend.scrubTargets!(blobs);
    r.skipped.push(...skipped);
    this.st.blobs_skipped_total += skipped.length;
    for (const s of skipped) this.opts.log('info', `scrub ${r.id}: blob ${s.blob_id} skipped: ${s.reason}`, { blobId: s.blob_id });
    r.blobs_total = targets.length;
    r.chunks_total = targets.reduce((n, t) => n + t.session.entry.chunkCount, 0);
    const pacer = new Pacer(rate);
    try {
      for (const t of targets) {
        if (job.cancelled) break;
        try {
          await this.scrubBlob(job, t, pacer);
        } catch (e) {
          r.skipped.push({ blob_id: t.blobId, reason: errMsg(e) });
          this.st.blobs_skipped_total++;
          this.opts.log('error', `scrub ${r.id}: blob ${t.blobId} (${t.path}): ${errMsg(e)}`, { blobId: t.blobId });
        }
        r.blobs_done++;
      }
    } finally {
      for (const t of targets) await t.release().catch((e) => this.opts.log('warn', `scrub: releasing blob ${t.blobId}: ${errMsg(e)}`));
    }
  }

  private async scrubBlob(job: NonNullable<ScrubManager['current']>, t: ScrubTarget, pacer: Pacer): Promise<void> {
    const r = job.report;
    if (!t.session.chunkIndex || !t.session.expectedDigest) throw new NydusError('ERR_UNSUPPORTED', 'its session cannot list chunks and digests');
    const chunks = await t.session.chunkIndex();
    const { digester } = blobCodecs(t.session.entry);
    const { fd } = openForScrub(t.path);
    const evictions: Promise<void>[] = [];
    let buf = alignedBuffer(READ_WINDOW, PAGE);
    try {
      let i = 0;
      while (i < chunks.length && !job.cancelled) {
        // a window: adjacent present chunks, read with one request
        const batch: BlobChunk[] = [];
        let start = -1;
        let end = -1;
        for (; i < chunks.length; i++) {
          const c = chunks[i];
          const a = c.uncompressedOffset;
          const b = a + c.uncompressedSize;
          if (!t.present(a, b)) {
            r.chunks_absent++;
            r.chunks_done++;
            if (batch.length) {
              i++;
              break;
            }
            continue;
          }
          if (batch.length && (alignDown(a) < end || alignUp(b) - start > buf.length)) break;
          if (!batch.length) start = alignDown(a);
          batch.push(c);
          end = alignUp(b);
        }
        if (!batch.length) continue;
        if (end - start > buf.length) buf = alignedBuffer(alignUp(end - start), PAGE); // one chunk over the window
        let got: number;
        let readError: string | undefined;
        try {
          got = await readAt(fd, buf, end - start, start);
        } catch (e) {
          got = 0;
          readError = errMsg(e);
        }
        for (const c of batch) {
          r.chunks_done++;
          const a = c.uncompressedOffset;
          const expected = t.session.expectedDigest(c.index);
          if (!expected) {
            r.chunks_unverifiable++;
            continue;
          }
          const rel = a - start;
          const short = readError ?? (rel + c.uncompressedSize > got ? `short read (${got} bytes from ${start})` : undefined);
          const actual = short ? null : digest(digester, buf.subarray(rel, rel + c.uncompressedSize));
          if (actual && actual.equals(expected)) {
            r.chunks_verified++;
            r.bytes_verified += c.uncompressedSize;
            this.st.chunks_verified_total++;
            this.st.bytes_verified_total += c.uncompressedSize;
            continue;
          }
          const confirmed = await this.confirm(fd, t, c, expected, digester);
          if (!confirmed) continue;
          const finding: ScrubFinding = {
            blob_id: t.blobId, chunk_index: c.index, offset: a, size: c.uncompressedSize, expected_digest: expected.toString('hex'),
            actual_digest: confirmed.actual, ...(confirmed.error ? { error: confirmed.error } : {}), cache_file: t.path, evicted: false, found_at: new Date().toISOString(),
          };
          r.damaged_chunks++;
          if (r.findings.length < MAX_FINDINGS) r.findings.push(finding);
          if (confirmed.error) this.st.read_errors_total++;
          else this.st.mismatches_total++;
          this.opts.log('error', `scrub: blob ${t.blobId} chunk ${c.index} at ${a}+${c.uncompressedSize} in ${t.path}: ${confirmed.error ? `cannot be read (${confirmed.error})` : `digest ${confirmed.actual} != expected ${finding.expected_digest}`}; evicting it, the next read fetches it again`, { blobId: t.blobId, chunk: c.index, offset: a });
          evictions.push(t.evict(a, a + c.uncompressedSize).then(() => {
            finding.evicted = true;
            this.st.evicted_bytes_total += alignUp(c.uncompressedSize);
          }, (e) => {
            finding.error = `eviction failed: ${errMsg(e)}`;
            this.opts.log('error', `scrub: evicting blob ${t.blobId} chunk ${c.index}: ${errMsg(e)}`, { blobId: t.blobId, chunk: c.index });
          }));
        }
        await pacer.take(end - start);
      }
      await Promise.all(evictions);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Read a chunk that failed once again, on its own: a finding only if it is still present
   * before and after the read and still wrong (culling may have evicted it meanwhile, or a
   * fill rewritten it).
   */
  private async confirm(fd: number, t: ScrubTarget, c: BlobChunk, expected: Buffer, digester: ReturnType<typeof blobCodecs>['digester']): Promise<{ actual: string | null; error?: string } | undefined> {
    const a = c.uncompressedOffset;
    const b = a + c.uncompressedSize;
    if (!t.present(a, b)) return undefined;
    const start = alignDown(a);
    const len = alignUp(b) - start;
    const buf = alignedBuffer(len, PAGE);
    let actual: Buffer | null = null;
    let error: string | undefined;
    try {
      const got = await readAt(fd, buf, len, start);
      if (a - start + c.uncompressedSize > got) error = `short read (${got} of ${len} bytes at ${start})`;
      else actual = digest(digester, buf.subarray(a - start, a - start + c.uncompressedSize));
    } catch (e) {
      error = errMsg(e);
    }
    if (!t.present(a, b)) return undefined;
    if (actual && actual.equals(expected)) return undefined;
    return { actual: actual ? actual.toString('hex') : null, error };
  }
}
