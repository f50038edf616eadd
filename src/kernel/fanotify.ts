/**
 * The fanotify pre-content front end (spec fanotify.md): the daemon mounts file-backed EROFS
 * itself — the bootstrap as the source, each data blob as `device=<cache>/hsm/<blob id>`, a sparse
 * cache file reached through the marked bind mount — and fills the cache files when the kernel
 * reports a read of them.
 *
 *   event thread (worker): poll(2) the group fd and a wake pipe, read() batches of events. For a
 *     read whose range the presence map (a SharedArrayBuffer per blob) covers, and where the file
 *     really holds data (SEEK_HOLE on the event fd), answer FAN_ALLOW at once (the fast path);
 *     post everything else to the main thread.
 *   main thread: resolve the blob, drop presence bits over holes, `BlobSession.ensure` (amplified,
 *     merged, verified, decompressed, written through the unmarked store path), check the map
 *     covers the range, FAN_ALLOW — any failure FAN_DENY, so the reader gets EIO. Never an allow
 *     over a range that is not filled. Then close the event fd.
 *   done blobs: once every page is present, an ignore mark (FAN_MARK_IGNORE, surviving modify)
 *     on the cache file's inode stops its events, so reads run at native speed. A FAN_MODIFY mark
 *     on the same inode tells us when someone else writes, truncates or punches it: the ignore
 *     mark is removed and holes are refetched.
 *
 * Fail-closed: the supervisor holds the group fd, so when this process dies readers stay blocked;
 * the successor denies the events this one had read but not answered (`denyStaleEvents`) and
 * serves the rest. See README "fanotify front end".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MessageChannel, MessagePort, Worker } from 'node:worker_threads';
import { NydusError } from '../errors';
import { mountPoints } from '../sys/mount-table';
import type { BlobSession, FrontendMount, ImageSource, MountOptions, KernelFrontend, PrefetchHandle, RegisteredImage, ScrubTarget } from '../daemon/interfaces';
import { LatencyHistogram } from '../daemon/blob-session';
import { BlobCacheFile, CacheFileLog, PAGE } from './blob-cache-file';
import { FanotifyCacheSpace } from './fanotify-cache';
import {
  FanotifyCacheLayout, cacheLayout, denyStaleEvents, respond, EVENT_FD_LIMIT, FAN_ALLOW, FAN_CLOSE_WRITE, FAN_DENY, FAN_MODIFY,
} from './fanotify-group';
import { FromReader, ReaderInit, SlowEvent, ToReader, READER_ROLE, now } from './fanotify-reader';
import { AccessTraceRecorder, MountTrace, FAN_MARK_FILESYSTEM, TRACE_OPEN_MASK } from './access-trace';
import {
  errnoName, fanotifyMark, newMount, pipe2, umountSync, FAN_MARK_ADD, FAN_MARK_FLUSH, FAN_MARK_IGNORE, FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_REMOVE,
  FAN_PRE_ACCESS, FSCONFIG_MAX_STRING, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, O_CLOEXEC, O_NONBLOCK,
  errnoOf,
} from '../sys/native';

// ------------------------------------------------------------------------------ front end

export interface FanotifyFrontendOptions {
  /** the cache dir (layout: fanotify-group.ts) */
  cacheDir: string;
  /** the group fd (from openFanotifyCache, usually inherited from the supervisor) */
  group: number;
  /** a successor of a serving process that died: deny its unanswered events first */
  restore?: boolean;
  /** mounts the previous serving process made (kept by the supervisor) */
  mounts?: FrontendMount[];
  log?: CacheFileLog;
  /** called whenever the set of mounts changes (the supervisor keeps it for a successor) */
  onMountsChanged?: (mounts: FrontendMount[]) => void;
  pollTimeoutMs?: number;
  /**
   * read_ahead_kb of each new mount's bdi (default 1024; 0 keeps the kernel's 128). EROFS reads
   * its blob files in readahead-sized requests, one event each: 128 KiB makes 8 events per MiB.
   */
  readaheadKb?: number;
}

const BDI_DIR = '/sys/class/bdi';
/** the EROFS bdis that exist now (file-backed EROFS mounts get one each, "erofs-<n>") */
function erofsBdis(): Set<string> {
  try {
    return new Set(fs.readdirSync(BDI_DIR).filter((n) => n.startsWith('erofs-')));
  } catch {
    return new Set();
  }
}

interface BlobCounters {
  /** pre-content events for this blob */
  events: number;
  /** answered from the presence map by the event thread */
  fast_path: number;
  /** filled by the main thread (fetch, verify, write) before the answer */
  slow_path: number;
  /** answered FAN_DENY (the reader got EIO) */
  denials: number;
  /** someone else modified the cache file (truncate, punch, write) */
  foreign_modifications: number;
  /** presence bits dropped because the file had a hole there */
  holes_found: number;
}

interface OpenBlob {
  id: string;
  file: BlobCacheFile;
  session: BlobSession;
  slot: number;
  key: string;
  refs: number;
  done: boolean;
  c: BlobCounters;
  hist: LatencyHistogram;
}

export interface FanotifyStats {
  frontend: 'fanotify';
  cache_dir: string;
  mounts: number;
  blobs_open: number;
  events: number;
  fast_path: number;
  slow_path: number;
  denials: number;
  unknown_files: number;
  queue_overflows: number;
  stale_events_denied: number;
  event_latency: ReturnType<LatencyHistogram['toJSON']>;
}

const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));
export class FanotifyFrontend implements KernelFrontend {
  readonly kind = 'fanotify';
  private readonly layout: FanotifyCacheLayout;
  private readonly log: CacheFileLog;
  private images?: ImageSource;
  private worker?: Worker;
  private workerExited?: Promise<void>;
  private port?: MessagePort;
  private readonly stopFlag = new SharedArrayBuffer(4);
  private wake?: [number, number];
  private readonly blobs = new Map<string, OpenBlob>();
  private readonly byKey = new Map<string, OpenBlob>();
  private readonly bySlot = new Map<number, OpenBlob>();
  private nextSlot = 1;
  private readonly mountTable = new Map<string, FrontendMount>();
  /** background prefetch of each mount's blobs (cancelled when it is unmounted) */
  private readonly prefetches = new Map<string, PrefetchHandle[]>();
  /** access traces by mount point (access-trace.ts; `nydus-ts optimize`) */
  private readonly traces = new Map<string, AccessTraceRecorder>();
  private readonly handlers = new Set<Promise<void>>();
  private stopped = false;
  private readonly hist = new LatencyHistogram();
  private readonly st = { events: 0, fast_path: 0, slow_path: 0, denials: 0, unknown_files: 0, queue_overflows: 0, stale_events_denied: 0 };

  /** usage, GC and culling of the cache dir (fanotify-cache.ts) */
  readonly cache: FanotifyCacheSpace;

  constructor(private readonly opts: FanotifyFrontendOptions) {
    this.layout = cacheLayout(opts.cacheDir);
    this.log = opts.log ?? (() => undefined);
    this.cache = new FanotifyCacheSpace({
      dir: this.layout.dir, open: () => this.blobs.values(), log: this.log,
      // a complete blob raises no events: switch them back on before any of its bits is cleared
      beforeEvict: (id) => {
        const b = this.blobs.get(id);
        if (b?.done) this.unmarkDone(b);
      },
    });
  }

  async start(images: ImageSource): Promise<void> {
    if (this.worker) throw new NydusError('ERR_DAEMON', 'fanotify front end already started');
    this.images = images;
    if (this.opts.restore) {
      // before reading anything: the numbers the dead process used are the only handles left
      this.st.stale_events_denied = denyStaleEvents(this.opts.group, EVENT_FD_LIMIT);
      if (this.st.stale_events_denied) this.log('warn', `fanotify: denied ${this.st.stale_events_denied} event(s) the previous serving process had read but not answered (EROFS retries them once; this process serves the retry)`);
    }
    // A predecessor's access traces died with it: drop their open marks (this group marks
    // filesystems for nothing else), so opens on those mounts stop waiting for an answer.
    try {
      fanotifyMark(this.opts.group, FAN_MARK_FLUSH | FAN_MARK_FILESYSTEM, 0n, '/');
    } catch (e) {
      this.log('warn', `fanotify: cannot flush access-trace marks: ${errMsg(e)}`);
    }
    for (const m of this.opts.mounts ?? []) this.adopt(m);
    this.wake = pipe2(O_CLOEXEC | O_NONBLOCK);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const init: ReaderInit = { role: READER_ROLE, group: this.opts.group, wakeFd: this.wake[0], stop: this.stopFlag, port: port2, pollTimeoutMs: this.opts.pollTimeoutMs ?? 1000 };
    // trackUnmanagedFds off: the event fds come from read(2) on the group, not from fs.open here
    const w = new Worker(require.resolve('./fanotify-reader'), { workerData: init, transferList: [port2], stdout: false, stderr: false, trackUnmanagedFds: false });
    this.worker = w;
    this.workerExited = new Promise((resolve) => w.once('exit', () => resolve()));
    w.on('message', (m: FromReader) => this.onReader(m));
    w.on('error', (e) => this.log('error', `fanotify event thread failed: ${errMsg(e)}`));
    w.once('exit', (code) => {
      if (this.stopped) return;
      // Without it nobody answers the kernel: end this process (mounts and group stay), so the
      // supervisor starts a successor that denies the stale events and serves the rest.
      this.log('error', `fanotify event thread exited (code ${code}); ending this serving process so that a new one takes over`);
      setImmediate(() => process.exit(70));
    });
    for (const b of this.blobs.values()) this.tellReader(b);
  }

  /** A mount the previous serving process made: open its blobs so their events are served. */
  private adopt(m: FrontendMount): void {
    if (!mountPoints().has(m.mountpoint)) {
      this.log('warn', `fanotify: ${m.mountpoint} (image ${m.id}) is no longer mounted; forgetting it`);
      return;
    }
    const opened: OpenBlob[] = [];
    try {
      for (const id of m.blobIds) opened.push(this.acquire(id));
      this.mountTable.set(m.mountpoint, m);
      const image = this.images?.find(m.id, m.domainId);
      if (image) this.startPrefetch(m.mountpoint, image, opened);
    } catch (e) {
      for (const b of opened) void this.release(b);
      this.log('error', `fanotify: cannot serve ${m.mountpoint} (image ${m.id}) after a restart: ${errMsg(e)}; its reads get EIO until it is remounted`);
    }
  }

  private tellReader(b: OpenBlob): void {
    this.port?.postMessage({ t: 'blob', key: b.key, slot: b.slot, bits: b.file.bits, size: b.file.size } satisfies ToReader);
    this.kick();
  }

  private kick(): void {
    if (!this.wake) return;
    try {
      fs.writeSync(this.wake[1], 'x');
    } catch {
      // pipe full: the event thread is awake anyway
    }
  }

  // -------------------------------------------------------------------- blobs

  /** Open (or share) a blob's cache file and session. */
  private acquire(blobId: string): OpenBlob {
    const have = this.blobs.get(blobId);
    if (have) {
      const problem = have.file.identityProblem();
      if (!problem) {
        have.refs++;
        return have;
      }
      throw new NydusError('ERR_DAEMON', `cache file ${have.file.path} was ${problem} while mounted; unmount the images using blob ${blobId} first`, { blobId });
    }
    const images = this.images!;
    const entry = images.blobEntry(blobId);
    if (!entry) throw new NydusError('ERR_NOT_FOUND', `no registered image has blob ${blobId}`, { blobId });
    const file = BlobCacheFile.open({ storeDir: this.layout.blobs, presenceDir: this.layout.presence, blobId, size: entry.uncompressedSize, log: this.log });
    let session: BlobSession;
    try {
      session = images.openBlob(blobId, file);
    } catch (e) {
      void file.close();
      throw e;
    }
    const b: OpenBlob = {
      id: blobId, file, session, slot: this.nextSlot++, key: `${file.dev}:${file.ino}`, refs: 1, done: false,
      c: { events: 0, fast_path: 0, slow_path: 0, denials: 0, foreign_modifications: 0, holes_found: 0 }, hist: new LatencyHistogram(),
    };
    this.blobs.set(blobId, b);
    this.byKey.set(b.key, b);
    this.bySlot.set(b.slot, b);
    this.cache.opened(b);
    file.onComplete = () => this.markDone(b);
    if (file.complete) this.markDone(b);
    session.prepare?.(); // the chunk index (from the work dir when cached): first reads wait only for chunks
    this.tellReader(b);
    return b;
  }

  private async release(b: OpenBlob): Promise<void> {
    if (--b.refs > 0) return;
    this.cache.closing(b);
    this.blobs.delete(b.id);
    this.byKey.delete(b.key);
    this.bySlot.delete(b.slot);
    this.port?.postMessage({ t: 'drop', key: b.key } satisfies ToReader);
    if (b.done) this.unmarkDone(b);
    await b.session.close().catch((e) => this.log('warn', `blob ${b.id}: closing its session: ${errMsg(e)}`));
    await b.file.close();
  }

  /**
   * Every page is present: stop this blob's events (an ignore mark on its inode that survives
   * modify — one that does not survive is not honoured for pre-content events on 6.18), and
   * watch it for changes by others instead: FAN_MODIFY (writes, punched holes) and
   * FAN_CLOSE_WRITE (truncate(2) raises no FAN_MODIFY on 6.18, but tools that truncate open the
   * file for writing). A raw truncate(2) by path is not seen; EROFS then fails the short read
   * with EIO (no zeros), and the next mount refetches (BlobCacheFile.open checks the size).
   */
  private markDone(b: OpenBlob): void {
    if (b.done || this.stopped || !this.blobs.has(b.id)) return;
    if (this.traced(b.id)) return; // an access trace needs its events; marked when the trace stops
    try {
      fanotifyMark(this.opts.group, FAN_MARK_ADD, BigInt(FAN_MODIFY | FAN_CLOSE_WRITE), b.file.path);
      fanotifyMark(this.opts.group, FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY, FAN_PRE_ACCESS, b.file.path);
      b.done = true;
      this.log('info', `blob ${b.id}: complete in the cache; its reads no longer raise events`, { blobId: b.id });
    } catch (e) {
      this.log('warn', `blob ${b.id}: complete, but its events cannot be switched off: ${errMsg(e)}`, { blobId: b.id });
    }
  }

  private unmarkDone(b: OpenBlob): void {
    b.done = false;
    for (const [flags, mask] of [[FAN_MARK_REMOVE | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY, FAN_PRE_ACCESS], [FAN_MARK_REMOVE, BigInt(FAN_MODIFY | FAN_CLOSE_WRITE)]] as const) {
      try {
        fanotifyMark(this.opts.group, flags, mask, b.file.path);
      } catch {
        // the mark went with the inode
      }
    }
  }

  /** Someone else wrote, truncated or punched a cache file: events back on, holes refetched. */
  private onForeignModify(key: string): void {
    const b = this.byKey.get(key);
    if (!b) return;
    b.c.foreign_modifications++;
    if (b.done) this.unmarkDone(b);
    const dropped = b.file.dropHoles(0, b.file.size);
    for (const [s, e] of dropped) b.session.forget?.(s, e - s);
    b.c.holes_found += dropped.length;
    this.log('warn', `blob ${b.id}: cache file ${b.file.path} was modified by another process; ${dropped.length} hole range(s) will be fetched again`, { blobId: b.id });
  }

  // -------------------------------------------------------------------- events

  private onReader(m: FromReader): void {
    switch (m.t) {
      case 'slow':
        for (const ev of m.evs) {
          const p = this.serve(ev);
          this.handlers.add(p);
          void p.finally(() => this.handlers.delete(p));
        }
        break;
      case 'fast':
        for (let i = 0; i < m.slots.length; i++) {
          const ms = m.us[i] / 1000;
          this.st.events++;
          this.st.fast_path++;
          this.hist.add(ms);
          const b = this.bySlot.get(m.slots[i]);
          if (b) {
            b.c.events++;
            b.c.fast_path++;
            b.hist.add(ms);
            this.cache.touch(b.id, (m as { off?: number[] }).off?.[i] ?? -1, (m as { cnt?: number[] }).cnt?.[i] ?? -1);
            if (this.traces.size) for (const t of this.traces.values()) t.addRead(m.seq[i], b.id, m.off[i], m.cnt[i], m.pid[i]);
          }
        }
        break;
      case 'open':
        for (const t of this.traces.values()) for (const ev of m.evs) t.addOpen(ev.seq, ev.key, ev.pid, ev.exec);
        break;
      case 'modify':
        for (const k of m.keys) this.onForeignModify(k);
        break;
      case 'overflow':
        this.st.queue_overflows++;
        this.log('error', 'ALARM: fanotify queue overflow: the kernel let some reads through unchecked; cached zeros may be served until the affected images are remounted');
        break;
      case 'log':
        this.log(m.level, m.msg);
        break;
      case 'dead':
        if (!this.stopped) this.log('error', `fanotify: ${m.msg}; no more reads are served`);
        break;
    }
  }

  /** The slow path: fill, check, answer, close. Never throws. */
  private async serve(ev: SlowEvent): Promise<void> {
    this.st.events++;
    let b = this.byKey.get(ev.key);
    let allow = false;
    let why = '';
    try {
      if (!b) {
        this.st.unknown_files++;
        throw new NydusError('ERR_DAEMON', `a read of ${this.describeFd(ev.fd)}, which is not an open blob cache file`);
      }
      b.c.events++;
      this.cache.touch(b.id, ev.offset, ev.count);
      if (this.traces.size) for (const t of this.traces.values()) t.addRead(ev.seq, b.id, ev.offset, ev.count, ev.pid);
      if (ev.offset < 0 || ev.count < 0) throw new NydusError('ERR_KERNEL', 'a pre-content event without a range record');
      const a = ev.offset - (ev.offset % PAGE);
      const e = Math.min(ev.offset + ev.count, b.file.size);
      if (a < e) {
        // The map may claim pages the file lost (the event thread found a hole): drop those bits
        // first. Then fill until the map covers the range; pages just written are not re-checked.
        if (b.file.covers(a, e)) {
          const dropped = b.file.dropHoles(a, e);
          for (const [s, t] of dropped) b.session.forget?.(s, t - s);
          b.c.holes_found += dropped.length;
        }
        for (let attempt = 0; !b.file.covers(a, e); attempt++) {
          if (attempt === 2) throw new NydusError('ERR_DAEMON', `range ${a}+${e - a} is still not present after filling it`);
          await b.session.ensure(a, e - a);
        }
      }
      allow = true;
    } catch (e) {
      why = errMsg(e);
    }
    const r = respond(this.opts.group, ev.fd, allow ? FAN_ALLOW : FAN_DENY);
    try {
      fs.closeSync(ev.fd);
    } catch {
      // closed already
    }
    const ms = now() - ev.t0;
    this.hist.add(ms);
    if (allow) this.st.slow_path++;
    else this.st.denials++;
    if (b) {
      b.hist.add(ms);
      if (allow) b.c.slow_path++;
      else b.c.denials++;
    }
    if (!allow) this.log('error', `fanotify: read ${ev.offset}+${ev.count} by pid ${ev.pid}${b ? ` of blob ${b.id}` : ''} denied (the reader gets EIO): ${why}`, b ? { blobId: b.id } : {});
    if (r < 0) this.log('warn', `fanotify: answering event fd ${ev.fd}: ${errnoName(-r)}`);
  }

  private describeFd(fd: number): string {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return `fd ${fd}`;
    }
  }

  // -------------------------------------------------------------------- mounts

  /** `device=` path of a blob: through the marked bind mount (or its fd, for a long path). */
  private devicePath(blobId: string): string {
    return path.join(this.layout.hsm, blobId);
  }

  async mount(image: RegisteredImage, mountpoint: string, opts: MountOptions = {}): Promise<FrontendMount> {
    if (this.stopped || !this.images) throw new NydusError('ERR_DAEMON', 'fanotify front end is not serving');
    const mnt = path.resolve(mountpoint);
    if (this.mountTable.has(mnt)) throw new NydusError('ERR_INVALID_ARGUMENT', `${mnt} is already mounted by this daemon (image ${this.mountTable.get(mnt)!.id})`, { mountpoint: mnt, httpStatus: 409 });
    let st: fs.Stats;
    try {
      st = fs.statSync(mnt);
    } catch (e) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `mount point ${mnt}: ${(e as NodeJS.ErrnoException).code ?? errMsg(e)}`, { mountpoint: mnt, httpStatus: 400 });
    }
    if (!st.isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `mount point ${mnt} is not a directory`, { mountpoint: mnt, httpStatus: 400 });
    const opened: OpenBlob[] = [];
    const fds: number[] = [];
    try {
      for (const id of image.blobIds) opened.push(this.acquire(id));
      // fsconfig takes at most 255 bytes per value: longer paths go through /proc/self/fd
      const shortPath = (p: string, flags: number): string => {
        if (Buffer.byteLength(p) <= FSCONFIG_MAX_STRING) return p;
        const fd = fs.openSync(p, flags);
        fds.push(fd);
        return `/proc/self/fd/${fd}`;
      };
      const O_PATH = 0o10000000;
      const hsmDir = Buffer.byteLength(this.devicePath(image.blobIds[0] ?? '')) > FSCONFIG_MAX_STRING ? shortPath(this.layout.hsm, O_PATH | fs.constants.O_DIRECTORY) : this.layout.hsm;
      const params: Array<[string, string]> = [['source', shortPath(image.bootstrapPath, fs.constants.O_RDONLY)]];
      for (const id of image.blobIds) params.push(['device', path.join(hsmDir, id)]);
      const bdisBefore = erofsBdis();
      try {
        newMount('erofs', mnt, { params, attrs: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID });
        this.tuneReadahead(mnt, bdisBefore, opts.readaheadKb);
      } catch (e) {
        const errno = errnoOf(e);
        if (errno === 15 /* ENOTBLK */) throw new NydusError('ERR_KERNEL', `mount ${mnt}: the kernel cannot mount EROFS from a regular file (CONFIG_EROFS_FS_BACKED_BY_FILE, Linux ≥ 6.12)`, { mountpoint: mnt }, { cause: e });
        throw new NydusError('ERR_KERNEL', `mount ${mnt} (image ${image.id}, bootstrap ${image.bootstrapPath}, ${image.blobIds.length} blob(s)): ${errMsg(e)}`, { mountpoint: mnt, id: image.id }, { cause: e });
      }
    } catch (e) {
      for (const b of opened) await this.release(b);
      throw e;
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    const rec: FrontendMount = { mountpoint: mnt, id: image.id, domainId: image.domainId, bootstrap: image.bootstrapPath, blobIds: [...image.blobIds], mountedAt: new Date().toISOString() };
    this.mountTable.set(mnt, rec);
    this.log('info', `mounted image ${image.id} on ${mnt} (${image.blobIds.length} blob(s) through ${this.layout.hsm})`, { mountpoint: mnt, id: image.id });
    this.startPrefetch(mnt, image, opened);
    this.opts.onMountsChanged?.(this.mounts());
    return rec;
  }

  /**
   * Larger reads, fewer events: set read_ahead_kb on the bdi the mount just created (the one
   * EROFS bdi that did not exist before; mounts are made one at a time here). Best effort.
   */
  private tuneReadahead(mnt: string, before: Set<string>, perMount?: number): void {
    const env = Number(process.env.NYDUS_TS_FANOTIFY_READAHEAD_KB);
    const kb = perMount ?? this.opts.readaheadKb ?? (process.env.NYDUS_TS_FANOTIFY_READAHEAD_KB && Number.isFinite(env) && env >= 0 ? env : 1024);
    if (!kb) return;
    const fresh = [...erofsBdis()].filter((n) => !before.has(n));
    if (fresh.length !== 1) {
      this.log('debug', `fanotify: cannot tell the bdi of ${mnt} (${fresh.length} new EROFS bdis); read_ahead_kb stays`);
      return;
    }
    try {
      fs.writeFileSync(path.join(BDI_DIR, fresh[0], 'read_ahead_kb'), String(kb));
    } catch (e) {
      this.log('warn', `fanotify: cannot set read_ahead_kb of ${mnt} (${fresh[0]}): ${errMsg(e)}`);
    }
  }

  async unmount(mountpoint: string): Promise<void> {
    const mnt = path.resolve(mountpoint);
    const rec = this.mountTable.get(mnt);
    if (!rec) throw new NydusError('ERR_NOT_FOUND', `${mnt} is not mounted by this daemon`, { mountpoint: mnt, httpStatus: 404 });
    try {
      umountSync(mnt);
    } catch (e) {
      const errno = errnoOf(e);
      if (errno === 16 /* EBUSY */) {
        throw new NydusError('ERR_DAEMON', `${mnt} is busy (open files or readers inside); it stays mounted and served — it is never detached lazily`, { mountpoint: mnt, httpStatus: 409, busy: true });
      }
      if (errno !== 22 /* EINVAL: not a mount point any more */) throw e;
      this.log('warn', `${mnt} was already unmounted behind the daemon's back`);
    }
    this.mountTable.delete(mnt);
    for (const h of this.prefetches.get(mnt) ?? []) h.cancel();
    this.prefetches.delete(mnt);
    this.endTrace(mnt, false); // its superblock, and the open mark on it, are gone
    const blobs = rec.blobIds.map((id) => this.blobs.get(id)).filter((b): b is OpenBlob => !!b);
    for (const b of blobs) await this.release(b);
    this.log('info', `unmounted ${mnt} (image ${rec.id})`, { mountpoint: mnt });
    this.opts.onMountsChanged?.(this.mounts());
  }

  mounts(): FrontendMount[] {
    return [...this.mountTable.values()];
  }

  /** The image's background prefetch of the blobs this mount uses (when its registration enables it). */
  private startPrefetch(mnt: string, image: RegisteredImage, blobs: OpenBlob[]): void {
    const handles: PrefetchHandle[] = [];
    for (const b of blobs) {
      const h = this.images?.startPrefetch?.(image, b.session);
      if (h) handles.push(h);
    }
    if (handles.length) this.prefetches.set(mnt, handles);
  }

  // -------------------------------------------------------------------- access traces

  private traced(blobId: string): boolean {
    for (const t of this.traces.values()) if (t.hasBlob(blobId)) return true;
    return false;
  }

  private traceOf(mountpoint: string): AccessTraceRecorder {
    const mnt = path.resolve(mountpoint);
    const t = this.traces.get(mnt);
    if (!t) throw new NydusError('ERR_NOT_FOUND', `no access trace of ${mnt}${this.mountTable.has(mnt) ? '' : ' (not mounted by this daemon)'}: start one first (POST /api/v1/trace?mountpoint=…)`, { mountpoint: mnt, httpStatus: 404 });
    return t;
  }

  /**
   * Record what is read from a mount of this daemon (access-trace.ts): its blobs' events (done
   * blobs raise events again while traced) and, through a filesystem mark, its opens.
   */
  async startTrace(mountpoint: string): Promise<MountTrace> {
    const mnt = path.resolve(mountpoint);
    const rec = this.mountTable.get(mnt);
    if (!rec) throw new NydusError('ERR_NOT_FOUND', `${mnt} is not mounted by this daemon`, { mountpoint: mnt, httpStatus: 404 });
    if (this.traces.has(mnt)) throw new NydusError('ERR_INVALID_ARGUMENT', `${mnt} is already traced: stop that trace first`, { mountpoint: mnt, httpStatus: 409 });
    const dev = fs.statSync(mnt, { bigint: true }).dev;
    const t = new AccessTraceRecorder(rec, String(dev));
    this.traces.set(mnt, t);
    try {
      fanotifyMark(this.opts.group, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, TRACE_OPEN_MASK, mnt);
    } catch (e) {
      this.traces.delete(mnt);
      throw new NydusError('ERR_KERNEL', `cannot trace opens on ${mnt}: ${errMsg(e)}`, { mountpoint: mnt }, { cause: e });
    }
    for (const id of rec.blobIds) {
      const b = this.blobs.get(id);
      if (b?.done) this.unmarkDone(b);
    }
    this.log('info', `access trace of ${mnt} (image ${rec.id}) started`, { mountpoint: mnt });
    return t.snapshot();
  }

  /** the trace so far (it keeps recording) */
  trace(mountpoint: string): MountTrace {
    return this.traceOf(mountpoint).snapshot();
  }

  /** Stop recording and return the trace (it is forgotten). */
  async stopTrace(mountpoint: string): Promise<MountTrace> {
    const t = this.traceOf(mountpoint);
    return this.endTrace(t.mount.mountpoint, true)!;
  }

  private endTrace(mnt: string, unmark: boolean): MountTrace | undefined {
    const t = this.traces.get(mnt);
    if (!t) return undefined;
    t.stop();
    this.traces.delete(mnt);
    if (unmark) {
      try {
        fanotifyMark(this.opts.group, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, TRACE_OPEN_MASK, mnt);
      } catch (e) {
        this.log('warn', `fanotify: removing the open mark of ${mnt}: ${errMsg(e)}`);
      }
    }
    for (const id of t.mount.blobIds) {
      const b = this.blobs.get(id);
      if (b && b.file.complete) this.markDone(b);
    }
    const snap = t.snapshot();
    this.log('info', `access trace of ${mnt} stopped: ${snap.events.length} events${snap.dropped ? `, ${snap.dropped} dropped` : ''}`, { mountpoint: mnt });
    return snap;
  }

  // -------------------------------------------------------------------- scrub

  /**
   * Scrub (src/daemon/scrub.ts) reads the cache files through the unmarked store path. A blob
   * not mounted is opened for the scrub (and so shares its file and session with a mount made
   * meanwhile); one without a cache file has nothing to check.
   */
  async scrubTargets(blobs: Array<{ blobId: string }>): Promise<{ targets: ScrubTarget[]; skipped: Array<{ blob_id: string; reason: string }> }> {
    const targets: ScrubTarget[] = [];
    const skipped: Array<{ blob_id: string; reason: string }> = [];
    for (const { blobId } of blobs) {
      if (!this.blobs.has(blobId) && !fs.existsSync(path.join(this.layout.blobs, blobId))) {
        skipped.push({ blob_id: blobId, reason: 'nothing cached (no cache file)' });
        continue;
      }
      let b: OpenBlob;
      try {
        b = this.acquire(blobId);
      } catch (e) {
        skipped.push({ blob_id: blobId, reason: errMsg(e) });
        continue;
      }
      targets.push({
        blobId, path: b.file.path, session: b.session,
        present: (x, y) => b.file.covers(x, y),
        evict: async (x, y) => {
          // a complete blob raises no events: switch them back on before the range is gone
          if (b.done) this.unmarkDone(b);
          const gone = b.file.evict(x, y); // clears the bits at once, punches after the grace period
          b.session.forget?.(x, y - x);
          await gone;
        },
        release: () => this.release(b),
      });
    }
    return { targets, skipped };
  }

  // -------------------------------------------------------------------- metrics, stop

  stats(): FanotifyStats {
    return {
      frontend: 'fanotify', cache_dir: this.layout.dir, mounts: this.mountTable.size, blobs_open: this.blobs.size, ...this.st,
      event_latency: this.hist.toJSON(),
    };
  }

  blobStats(blobId: string): Record<string, unknown> | undefined {
    const b = this.blobs.get(blobId);
    if (!b) return undefined;
    const h = b.hist.toJSON();
    return {
      ...b.c, done: b.done, pages_present: b.file.presentPages, pages: b.file.pages, cache_file: b.file.path,
      event_latency: { count: h.count, p50_ms: h.p50_ms, p90_ms: h.p90_ms, p99_ms: h.p99_ms, max_ms: h.max_ms },
    };
  }

  /**
   * Stop: unmount every mount first (a busy one is an error: the front end keeps serving and the
   * caller may try again), then the event thread, then close the blobs (their maps are flushed).
   * The group fd is not closed here: its holder (the supervisor) closes it after this.
   */
  async stop(): Promise<void> {
    const busy: string[] = [];
    for (const mnt of [...this.mountTable.keys()]) {
      try {
        await this.unmount(mnt);
      } catch (e) {
        busy.push(errMsg(e));
      }
    }
    if (busy.length) throw new NydusError('ERR_DAEMON', `cannot stop: ${busy.join('; ')}`, { httpStatus: 409, busy: true });
    if (this.stopped) return;
    this.stopped = true;
    Atomics.store(new Int32Array(this.stopFlag), 0, 1);
    this.kick();
    if (this.worker && this.workerExited) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.workerExited, new Promise<void>((r) => (timer = setTimeout(r, (this.opts.pollTimeoutMs ?? 1000) + 2000)))]);
      clearTimeout(timer);
      await this.worker.terminate().catch(() => undefined);
    }
    await Promise.allSettled([...this.handlers]);
    for (const b of [...this.blobs.values()]) {
      b.refs = 1;
      await this.release(b);
    }
    this.cache.close();
    this.port?.close();
    if (this.wake) for (const fd of this.wake) fs.closeSync(fd);
  }
}
