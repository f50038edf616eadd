/**
 * The cachefiles "on-demand" front end: EROFS-over-fscache images are served by answering the
 * kernel's requests on /dev/cachefiles (spec kernel.md §1–2, rafs-v6.md §3.3–3.6).
 *
 *   open:   open /dev/cachefiles, `dir <path>`, `tag <tag>`, `bind ondemand` (one write each);
 *           or take over an inherited, already bound fd and write `restore` (failover).
 *   loop:   a worker thread polls the device (POLLIN) and read()s messages, one per read, until
 *           read returns 0; it posts each message to the main thread, which dispatches it without
 *           waiting for earlier requests (many READs in flight).
 *   OPEN:   volume key "erofs,<domain>", cookie key → ObjectResolver: the bootstrap is answered
 *           `copen <msg_id>,<bootstrap size>`, a data blob gets a BlobSession over an AnonFdWriter
 *           on the OPEN's anonymous fd and `copen <msg_id>,<blob size>`, an unknown key
 *           `copen <msg_id>,-2` (ENOENT) and its fd is closed.
 *   READ:   bootstrap bytes are written from the image, blob bytes by `session.ensure()`; in every
 *           case the request is then completed with ioctl(anon fd, READ_COMPLETE, msg_id). A
 *           failed READ is completed without data, so the reader gets EIO.
 *   CLOSE:  the object's fd is closed (after its READs in flight finished) and its session closed.
 *
 * The poller is a worker_thread (not a libuv threadpool job), so it holds no threadpool thread
 * while it waits and `stop()` wakes it through a pipe.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { NydusError } from '../errors';
import { BlobSession, ImageSource, KernelFrontend, ObjectLookup, ObjectResolver, ScrubTarget } from '../daemon/interfaces';
import { LatencyHistogram } from '../daemon/blob-session';
import { AnonFdWriter, AlignedBufferPool } from './cache-writer';
import { fsTypeOf } from './fanotify-group';
import { errnoName, errnoOf, ioctl, pipe2, poll, setCloexec, O_CLOEXEC, O_NONBLOCK, POLLIN, POLLOUT, POLLNVAL, POLLERR, POLLHUP } from '../sys/native';
import { CachefilesCacheSpace, CachefilesLimits } from './cachefiles-cache';

// ------------------------------------------------------------------------------ protocol

export const CACHEFILES_DEVICE = '/dev/cachefiles';
export const CACHEFILES_OP_OPEN = 0;
export const CACHEFILES_OP_CLOSE = 1;
export const CACHEFILES_OP_READ = 2;
/** _IOW(0x98, 1, int) on x86/arm64/riscv */
export const CACHEFILES_IOC_READ_COMPLETE = 0x40049801;
/** the largest message the kernel sends */
export const CACHEFILES_MSG_MAX_SIZE = 1024;
const MSG_HEADER_SIZE = 16;
const OPEN_HEADER_SIZE = 32;
const READ_MSG_SIZE = 32;

const E = os.constants.errno;

export type CachefilesMessage =
  | { opcode: 'OPEN'; msgId: number; objectId: number; len: number; volumeKey: string; cookieKey: string; cookieKeyRaw: Buffer; fd: number; flags: number }
  | { opcode: 'CLOSE'; msgId: number; objectId: number; len: number }
  | { opcode: 'READ'; msgId: number; objectId: number; len: number; off: number; length: number };

const LE = os.endianness() === 'LE';
const u32 = (b: Buffer, o: number): number => (LE ? b.readUInt32LE(o) : b.readUInt32BE(o));
const u64 = (b: Buffer, o: number): bigint => (LE ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o));

/**
 * Decode one message as returned by one read() of the device (host byte order). Throws
 * NydusError('ERR_KERNEL') for a malformed message; for a malformed OPEN whose header holds an
 * fd, the error's context carries `fd` and `msgId` so the caller can fail it and close the fd.
 */
export function parseMessage(buf: Buffer): CachefilesMessage {
  const bad = (why: string, ctx: Record<string, unknown> = {}): never => {
    throw new NydusError('ERR_KERNEL', `malformed cachefiles message (${buf.length} bytes): ${why}`, ctx);
  };
  if (buf.length < MSG_HEADER_SIZE) bad('shorter than the 16-byte header');
  const msgId = u32(buf, 0);
  const op = u32(buf, 4);
  const len = u32(buf, 8);
  const objectId = u32(buf, 12);
  const hdr = { msgId, opcode: op, objectId, len };
  if (len !== buf.length) bad(`header length ${len} != bytes read`, hdr);
  switch (op) {
    case CACHEFILES_OP_OPEN: {
      if (len < OPEN_HEADER_SIZE) bad('OPEN shorter than 32 bytes', hdr);
      const vks = u32(buf, 16);
      const cks = u32(buf, 20);
      const fd = u32(buf, 24);
      const flags = u32(buf, 28);
      const ctx = { ...hdr, fd };
      if (OPEN_HEADER_SIZE + vks + cks !== len) bad(`OPEN key sizes ${vks}+${cks} do not add up to length ${len}`, ctx);
      let vol = buf.subarray(OPEN_HEADER_SIZE, OPEN_HEADER_SIZE + vks);
      while (vol.length && vol[vol.length - 1] === 0) vol = vol.subarray(0, vol.length - 1);
      if (vol.includes(0)) bad('OPEN volume key has an embedded NUL', ctx);
      const cookieKeyRaw = Buffer.from(buf.subarray(OPEN_HEADER_SIZE + vks, len));
      return { opcode: 'OPEN', msgId, objectId, len, volumeKey: vol.toString('utf8'), cookieKey: cookieKeyRaw.toString('utf8'), cookieKeyRaw, fd, flags };
    }
    case CACHEFILES_OP_CLOSE:
      if (len !== MSG_HEADER_SIZE) bad(`CLOSE of length ${len} (expected 16)`, hdr);
      return { opcode: 'CLOSE', msgId, objectId, len };
    case CACHEFILES_OP_READ: {
      if (len !== READ_MSG_SIZE) bad(`READ of length ${len} (expected 32)`, hdr);
      const off = u64(buf, 16);
      const length = u64(buf, 24);
      if (off > BigInt(Number.MAX_SAFE_INTEGER) || length > BigInt(Number.MAX_SAFE_INTEGER)) bad(`READ range ${off}+${length} is out of range`, hdr);
      return { opcode: 'READ', msgId, objectId, len, off: Number(off), length: Number(length) };
    }
    default:
      return bad(`unknown opcode ${op}`, hdr);
  }
}

/** The reply to an OPEN: `copen <msg_id>,<size>` (size < 0: the OPEN fails with -size). */
export function copenCommand(msgId: number, size: number): string {
  if (!Number.isSafeInteger(size)) throw new NydusError('ERR_INVALID_ARGUMENT', `copen: bad size ${size}`);
  return `copen ${msgId >>> 0},${size}`;
}

// ------------------------------------------------------------------------------ device setup

export type CachefilesLog = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

export interface CachefilesOpenOptions {
  /** cache directory (on ext4/xfs/btrfs: cachefiles needs tmpfile, user xattrs and sync_fs) */
  dir: string;
  /** cache tag (default: the kernel's "CacheFiles") */
  tag?: string;
  /** default /dev/cachefiles */
  device?: string;
  /** culling limits written before `bind` (cachefiles-cache.ts limitsForWatermarks) */
  limits?: CachefilesLimits;
}

/** Write one text command to the device: exactly one write(2), the whole string. */
export function writeCommand(fd: number, cmd: string): void {
  if (cmd.includes('\n') || cmd.includes('\0')) throw new NydusError('ERR_INVALID_ARGUMENT', `cachefiles command ${JSON.stringify(cmd)} contains a newline or NUL`);
  const b = Buffer.from(cmd, 'utf8');
  for (;;) {
    try {
      const n = fs.writeSync(fd, b, 0, b.length);
      if (n !== b.length) throw new NydusError('ERR_KERNEL', `cachefiles command "${cmd}": short write (${n} of ${b.length} bytes)`, { command: cmd });
      return;
    } catch (e) {
      if (errnoOf(e) === E.EINTR) continue;
      throw e;
    }
  }
}

function kernelError(what: string, e: unknown, hint: string, ctx: Record<string, unknown> = {}): NydusError {
  if (e instanceof NydusError) return e;
  const errno = errnoOf(e);
  const code = errno ? errnoName(errno) : 'error';
  return new NydusError('ERR_KERNEL', `${what}: ${code}${hint ? ` — ${hint}` : ''}`, { ...ctx, errno, code }, { cause: e });
}

function fsTypeName(dir: string): string {
  try {
    return fsTypeOf(dir);
  } catch {
    return 'an unknown filesystem';
  }
}

/**
 * Open the cachefiles device and bind a cache in on-demand mode: `dir <realpath>`, `tag <tag>`,
 * `bind ondemand`. Returns the device fd (O_CLOEXEC). Errors are NydusError('ERR_KERNEL') saying
 * what is missing (kernel option, permission, another daemon, an unsuitable cache directory).
 */
export function openCachefilesDevice(opts: CachefilesOpenOptions): number {
  const device = opts.device ?? CACHEFILES_DEVICE;
  let dir: string;
  try {
    dir = fs.realpathSync(opts.dir);
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `cachefiles cache directory ${opts.dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { dir: opts.dir });
  }
  if (!fs.statSync(dir).isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `cachefiles cache directory ${dir} is not a directory`, { dir });
  if (/\s/.test(dir) || dir.length > 4000) throw new NydusError('ERR_INVALID_ARGUMENT', `cachefiles cache directory "${dir}" must not contain whitespace`, { dir });
  if (opts.tag !== undefined && !/^[^\s\0]{1,255}$/.test(opts.tag)) throw new NydusError('ERR_INVALID_ARGUMENT', `cachefiles tag "${opts.tag}" must be 1-255 characters without whitespace`, { tag: opts.tag });

  let fd: number;
  try {
    fd = fs.openSync(device, fs.constants.O_RDWR | O_CLOEXEC);
  } catch (e) {
    const errno = errnoOf(e);
    const hints: Record<number, string> = {
      [E.ENOENT]: `${device} does not exist: the kernel lacks CONFIG_CACHEFILES (or the cachefiles module is not loaded: modprobe cachefiles)`,
      [E.ENODEV]: `no cachefiles driver behind ${device}: the kernel lacks CONFIG_CACHEFILES (modprobe cachefiles)`,
      [E.ENXIO]: `no cachefiles driver behind ${device}: the kernel lacks CONFIG_CACHEFILES (modprobe cachefiles)`,
      [E.EBUSY]: `${device} is held by another daemon (cachefilesd, nydusd, another nydus-ts), or the anonymous fds of a previous instance are still open; only one cache instance may exist`,
      [E.EPERM]: `opening ${device} needs CAP_SYS_ADMIN (run as root)`,
      [E.EACCES]: `opening ${device} needs root (CAP_SYS_ADMIN) and permission on the device node`,
    };
    throw kernelError(`cannot open ${device}`, e, hints[errno] ?? '', { device });
  }
  try {
    try {
      writeCommand(fd, `dir ${dir}`);
    } catch (e) {
      throw kernelError(`cachefiles "dir ${dir}"`, e, '', { dir });
    }
    if (opts.tag !== undefined) {
      try {
        writeCommand(fd, `tag ${opts.tag}`);
      } catch (e) {
        throw kernelError(`cachefiles "tag ${opts.tag}"`, e, '', { tag: opts.tag });
      }
    }
    for (const [k, v] of Object.entries(opts.limits ?? {})) {
      try {
        writeCommand(fd, `${k} ${v}%`);
      } catch (e) {
        throw kernelError(`cachefiles "${k} ${v}%"`, e, 'culling limits need 0 <= stop < cull < run < 100', { [k]: v });
      }
    }
    try {
      writeCommand(fd, 'bind ondemand');
    } catch (e) {
      const errno = errnoOf(e);
      const hints: Record<number, string> = {
        [E.EINVAL]: 'the kernel lacks CONFIG_CACHEFILES_ONDEMAND (on-demand mode, Linux ≥ 5.19), or the cache dir was not accepted',
        [E.EOPNOTSUPP]: `cache directory ${dir} is on ${fsTypeName(dir)}, which cachefiles cannot use (it needs tmpfile, user xattrs and sync_fs: ext4, xfs or btrfs; not tmpfs, 9p, nfs or overlayfs)`,
        [E.EROFS]: `cache directory ${dir} is on a read-only filesystem`,
        [E.EBUSY]: 'the cache is already bound',
        [E.ERANGE]: 'the culling limits (brun/bcull/bstop, frun/fcull/fstop) are inconsistent',
        [E.ENOENT]: `cache directory ${dir} vanished`,
        [E.EACCES]: `cachefiles cannot create cache/ and graveyard/ in ${dir}`,
      };
      throw kernelError(`cachefiles "bind ondemand" on ${dir}`, e, hints[errno] ?? '', { dir, device });
    }
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return fd;
}

// ------------------------------------------------------------------------------ fscache names

const rol32 = (x: number, n: number): number => ((x << n) | (x >>> (32 - n))) >>> 0;
const hash32 = (v: number): number => Math.imul(v, 0x61c88647) >>> 0;

/** The kernel's fscache_hash(salt, data) over little-endian u32 words (data padded to 4 bytes). */
export function fscacheHash(salt: number, data: Buffer): number {
  let x = 0;
  let y = salt >>> 0;
  for (let i = 0; i + 4 <= data.length; i += 4) {
    x = (x ^ data.readUInt32LE(i)) >>> 0;
    y = (y ^ x) >>> 0;
    x = rol32(x, 7);
    x = (x + y) >>> 0;
    y = rol32(y, 20);
    y = Math.imul(y, 9) >>> 0;
  }
  return hash32((y ^ hash32(x)) >>> 0);
}

/** Hash of a volume key ("erofs,<domain>"): [len][key][NUL…] padded to 4 bytes, salt 0. */
export function volumeKeyHash(volumeKey: string): number {
  const k = Buffer.from(volumeKey, 'utf8');
  const b = Buffer.alloc(Math.ceil((k.length + 2) / 4) * 4);
  b[0] = k.length & 0xff;
  k.copy(b, 1);
  return fscacheHash(0, b);
}

/** Fan-out directory ("@xx") of a cookie inside its volume directory. */
export function cookieFanout(volumeKey: string, cookieKey: string): string {
  const k = Buffer.from(cookieKey, 'utf8');
  const b = Buffer.alloc(Math.ceil(k.length / 4) * 4);
  k.copy(b);
  const h = fscacheHash(volumeKeyHash(volumeKey), b);
  return `@${(h & 0xff).toString(16).padStart(2, '0')}`;
}

/** Cache file name of a cookie key made of printable bytes ("D<key>"); other keys are encoded differently. */
export function cookieFileName(cookieKey: string): string {
  const k = Buffer.from(cookieKey, 'utf8');
  if (k.length === 0 || !k.every((c) => (c >= 0x21 && c <= 0x2e) || (c >= 0x30 && c <= 0x7f))) {
    throw new NydusError('ERR_UNSUPPORTED', `cookie key "${cookieKey}" is not stored as a plain "D<key>" file name`, { cookie: cookieKey });
  }
  return `D${cookieKey}`;
}

// ------------------------------------------------------------------------------ poller thread

const READER_ROLE = 'nydus-ts:cachefiles-reader';

interface ReaderInit {
  role: typeof READER_ROLE;
  devFd: number;
  wakeFd: number;
  /** Int32Array[0] != 0: stop; [1] != 0: watch for POLLOUT (culling needed) */
  stop: SharedArrayBuffer;
  pollTimeoutMs: number;
}

type ReaderPost =
  | { t: 'msg'; data: Uint8Array }
  | { t: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; msg: string; ctx?: Record<string, unknown> }
  | { t: 'read-error'; errno: number }
  | { t: 'dead'; msg: string }
  | { t: 'culling' };

/**
 * The poll/read loop, run in a worker thread: poll(2) the device and the wake pipe, then read()
 * messages until read returns 0 and post each to the main thread.
 */
function runReader(init: ReaderInit): void {
  const port = parentPort!;
  const stop = new Int32Array(init.stop);
  const post = (m: ReaderPost): void => port.postMessage(m);
  const stopped = (): boolean => Atomics.load(stop, 0) !== 0;
  const sleep = (ms: number): void => {
    Atomics.wait(stop, 0, 0, ms);
  };
  let buf = Buffer.alloc(4 * CACHEFILES_MSG_MAX_SIZE);
  let errorsInRow = 0;
  let emptyPolls = 0;
  const wakeBuf = Buffer.alloc(64);
  while (!stopped()) {
    // Drain: one message per read(), 0 when nothing is pending.
    let got = 0;
    for (;;) {
      if (stopped()) return;
      let n: number;
      try {
        n = fs.readSync(init.devFd, buf, 0, buf.length, null);
        errorsInRow = 0;
      } catch (e) {
        const errno = errnoOf(e);
        if (errno === E.EINTR) continue;
        if (errno === E.EAGAIN) break;
        if (errno === E.EMSGSIZE) {
          // The message stays queued: retry with a larger buffer.
          if (buf.length < 1 << 16) {
            post({ t: 'log', level: 'warn', msg: `cachefiles: a message exceeds ${buf.length} bytes (EMSGSIZE); retrying with ${buf.length * 2}` });
            buf = Buffer.alloc(buf.length * 2);
            continue;
          }
          post({ t: 'log', level: 'error', msg: `cachefiles: a message exceeds ${buf.length} bytes (EMSGSIZE); it cannot be read` });
          sleep(1000);
          break;
        }
        if (errno === E.EBADF) {
          post({ t: 'dead', msg: 'cachefiles device fd is closed (EBADF)' });
          return;
        }
        // EMFILE/ENFILE (no fd for an OPEN), ENOMEM, EFAULT, EEXIST: the kernel has failed that
        // request already; keep serving the others.
        post({ t: 'read-error', errno });
        if (++errorsInRow > 50) {
          sleep(100);
          errorsInRow = 0;
        }
        continue;
      }
      if (n === 0) break;
      got++;
      post({ t: 'msg', data: new Uint8Array(buf.subarray(0, n)) }); // a copy
    }
    if (stopped()) return;
    let r;
    try {
      // POLLOUT is level-triggered "culling needed": watched once, until the main thread re-arms it
      const watchCull = Atomics.load(stop, 1) !== 0;
      r = poll([{ fd: init.devFd, events: POLLIN | (watchCull ? POLLOUT : 0) }, { fd: init.wakeFd, events: POLLIN }], init.pollTimeoutMs);
    } catch (e) {
      post({ t: 'log', level: 'error', msg: `cachefiles: ${(e as Error).message}` });
      sleep(100);
      continue;
    }
    const dev = r.revents[0];
    if (dev & POLLOUT && Atomics.compareExchange(stop, 1, 1, 0) === 1) post({ t: 'culling' });
    if (dev & POLLNVAL) {
      post({ t: 'dead', msg: 'cachefiles device fd is not open (POLLNVAL)' });
      return;
    }
    if (r.revents[1]) {
      try {
        while (fs.readSync(init.wakeFd, wakeBuf, 0, wakeBuf.length, null) > 0) {
          /* drain */
        }
      } catch {
        // EAGAIN: drained
      }
    }
    // POLLIN with nothing to read happens briefly (a READ for a closed object turns into a
    // re-OPEN); back off if it persists, and on POLLERR/POLLHUP, so this never spins.
    if ((dev & POLLIN && got === 0) || dev & (POLLERR | POLLHUP)) {
      if (++emptyPolls > 3) sleep(Math.min(100, emptyPolls * 2));
    } else emptyPolls = 0;
  }
}

if (!isMainThread && (workerData as ReaderInit | undefined)?.role === READER_ROLE) {
  runReader(workerData as ReaderInit);
}

// ------------------------------------------------------------------------------ front end

export interface CachefilesFrontendOptions extends CachefilesOpenOptions {
  /** an already bound device fd (handed over by a supervisor); no dir/tag/bind is written */
  inheritedFd?: number;
  /** with `inheritedFd`: write `restore` so the kernel re-sends outstanding requests (default true) */
  restore?: boolean;
  log?: CachefilesLog;
  /** after a bootstrap OPEN, copy the whole bootstrap into the cache in the background (default true, like nydusd) */
  prefillBootstrap?: boolean;
  /** aligned buffers for the cache writers (default: the process-wide pool) */
  pool?: AlignedBufferPool;
  /** poll timeout of the reader thread: how often it checks for stop() if the wake pipe fails (default 1000) */
  pollTimeoutMs?: number;
}

export interface CachefilesStats {
  objects_open: number;
  bootstrap_objects: number;
  blob_objects: number;
  opens: number;
  opens_failed: number;
  opens_unknown: number;
  closes: number;
  reads: number;
  bootstrap_reads: number;
  blob_reads: number;
  reads_in_flight: number;
  reads_completed: number;
  reads_failed: number;
  /** sum of READ lengths */
  read_bytes: number;
  /** READ length (bytes) → count */
  read_sizes: Record<string, number>;
  bad_messages: number;
  read_errors: number;
  /** READ latency, arrival to completion */
  read_latency?: ReturnType<LatencyHistogram['toJSON']>;
}

interface CacheObject {
  id: number;
  kind: 'bootstrap' | 'blob';
  volume: string;
  cookie: string;
  fd: number;
  writer: AnonFdWriter;
  lookup: ObjectLookup;
  session?: BlobSession;
  /** READ handlers (and the bootstrap prefill) in flight: the fd stays open until they finish */
  inflight: Set<Promise<void>>;
  closing: boolean;
}

const defaultLog: CachefilesLog = (level, msg, ctx) => {
  if (level === 'warn' || level === 'error') {
    try {
      fs.writeSync(2, `${level.toUpperCase()} ${msg}${ctx && Object.keys(ctx).length ? ' ' + JSON.stringify(ctx) : ''}\n`);
    } catch {
      // never let logging fail the daemon
    }
  }
};

const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class CachefilesFrontend implements KernelFrontend {
  readonly kind = 'fscache';
  private readonly log: CachefilesLog;
  private readonly objects = new Map<number, CacheObject>();
  private readonly handlers = new Set<Promise<void>>();
  private resolver?: ObjectResolver;
  private worker?: Worker;
  private workerExited?: Promise<void>;
  private stopFlag = new SharedArrayBuffer(8);
  /** usage, GC and culling of the cache dir (cachefiles-cache.ts) */
  readonly cache: CachefilesCacheSpace;
  private wake?: [number, number];
  private stopping?: Promise<void>;
  private deviceClosed = false;
  private readonly st: CachefilesStats = {
    objects_open: 0, bootstrap_objects: 0, blob_objects: 0, opens: 0, opens_failed: 0, opens_unknown: 0, closes: 0,
    reads: 0, bootstrap_reads: 0, blob_reads: 0, reads_in_flight: 0, reads_completed: 0, reads_failed: 0, read_bytes: 0,
    read_sizes: {}, bad_messages: 0, read_errors: 0,
  };
  private readonly readHist = new LatencyHistogram();

  private constructor(
    private readonly devFd: number,
    private readonly opts: CachefilesFrontendOptions,
  ) {
    this.log = opts.log ?? defaultLog;
    Atomics.store(new Int32Array(this.stopFlag), 1, 1);
    this.cache = new CachefilesCacheSpace({
      dir: opts.dir, log: this.log,
      open: () => [...this.objects.values()].filter((o) => !o.writer.isClosed).map((o) => ({
        volume: o.volume, cookie: o.cookie, fd: o.fd, size: o.session?.size ?? (o.lookup.kind === 'bootstrap' ? o.lookup.image.bootstrapSize : 0),
      })),
      pathOf: (volume, cookie) => path.join(opts.dir, 'cache', `Ierofs,${volume}`, cookieFanout(`erofs,${volume}`, cookie), cookieFileName(cookie)),
      cull: (cookie, volume) => this.cull(cookie, volume),
      rearmCullingSignal: () => {
        Atomics.store(new Int32Array(this.stopFlag), 1, 1);
        if (this.wake) {
          try {
            fs.writeSync(this.wake[1], 'x');
          } catch {
            // the poll timeout picks it up
          }
        }
      },
    });
  }

  /**
   * Open and bind the cache (dir, tag, bind ondemand), or take over `inheritedFd` (writing
   * `restore` unless `restore: false`). Throws NydusError('ERR_KERNEL') with the reason.
   */
  static open(opts: CachefilesFrontendOptions): CachefilesFrontend {
    if (opts.inheritedFd !== undefined) {
      const fd = opts.inheritedFd;
      try {
        fs.fstatSync(fd);
      } catch (e) {
        throw kernelError(`inherited cachefiles fd ${fd}`, e, 'the fd is not open in this process', { fd });
      }
      if (opts.restore ?? true) {
        try {
          writeCommand(fd, 'restore');
        } catch (e) {
          const errno = errnoOf(e);
          const hints: Record<number, string> = {
            [E.EOPNOTSUPP]: 'the fd is not a cache bound in on-demand mode, or the kernel lacks failover support (Linux ≥ 6.8)',
            [E.EINVAL]: 'the kernel lacks failover support (`restore`, Linux ≥ 6.8)',
            [E.EIO]: 'the cache is dead (its device fd was closed by every holder)',
          };
          throw kernelError(`cachefiles "restore" on inherited fd ${fd}`, e, hints[errno] ?? '', { fd });
        }
      }
      return new CachefilesFrontend(fd, opts);
    }
    return new CachefilesFrontend(openCachefilesDevice(opts), opts);
  }

  /** The device fd (to hand to a supervisor / fd store for failover). */
  get fd(): number {
    return this.devFd;
  }

  /** Start serving requests with `resolver`. Returns at once; the loop runs until `stop()`. */
  async start(resolver: ObjectResolver): Promise<void> {
    if (this.worker) throw new NydusError('ERR_DAEMON', 'cachefiles front end already started');
    if (this.stopping) throw new NydusError('ERR_DAEMON', 'cachefiles front end is stopped');
    this.resolver = resolver;
    this.wake = pipe2(O_CLOEXEC | O_NONBLOCK);
    const init: ReaderInit = { role: READER_ROLE, devFd: this.devFd, wakeFd: this.wake[0], stop: this.stopFlag, pollTimeoutMs: this.opts.pollTimeoutMs ?? 1000 };
    const w = new Worker(__filename, { workerData: init, stdout: false, stderr: false });
    this.worker = w;
    this.workerExited = new Promise((resolve) => w.once('exit', () => resolve()));
    w.on('message', (m: ReaderPost) => this.onReader(m));
    w.on('error', (e) => this.log('error', `cachefiles reader thread failed: ${errMsg(e)}`));
    w.once('exit', (code) => {
      if (!this.stopping) this.log('error', `cachefiles reader thread exited (code ${code}); no more kernel requests are served`);
    });
  }

  private onReader(m: ReaderPost): void {
    switch (m.t) {
      case 'msg':
        this.dispatch(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
        break;
      case 'log':
        this.log(m.level, m.msg, m.ctx);
        break;
      case 'read-error':
        this.st.read_errors++;
        this.log('error', `cachefiles: read() of a request failed: ${errnoName(m.errno)} (the kernel failed that request; EMFILE/ENFILE: raise RLIMIT_NOFILE)`, { errno: m.errno });
        break;
      case 'dead':
        if (!this.stopping) this.log('error', `cachefiles: ${m.msg}; no more kernel requests are served`);
        break;
      case 'culling':
        if (!this.stopping) this.cache.cullingSignal();
        break;
    }
  }

  private track(p: Promise<void>, obj?: CacheObject): void {
    this.handlers.add(p);
    obj?.inflight.add(p);
    p.finally(() => {
      this.handlers.delete(p);
      obj?.inflight.delete(p);
    }).catch(() => undefined); // handlers log their own errors
  }

  /** Decode and dispatch one message; never throws. */
  private dispatch(buf: Buffer): void {
    let msg: CachefilesMessage;
    try {
      msg = parseMessage(buf);
    } catch (e) {
      this.st.bad_messages++;
      const ctx = (e as NydusError).context ?? {};
      this.log('error', `cachefiles: ${errMsg(e)}`, ctx);
      // A broken OPEN still installed an fd: fail the OPEN and close it.
      if (ctx.opcode === CACHEFILES_OP_OPEN && typeof ctx.fd === 'number') {
        this.reply(ctx.msgId as number, -E.EINVAL);
        this.closeFd(ctx.fd);
      }
      return;
    }
    try {
      switch (msg.opcode) {
        case 'OPEN':
          this.track(this.onOpen(msg).catch((e) => this.log('error', `cachefiles OPEN ${msg.msgId}: ${errMsg(e)}`)));
          break;
        case 'READ':
          this.onRead(msg);
          break;
        case 'CLOSE':
          this.track(this.onClose(msg).catch((e) => this.log('error', `cachefiles CLOSE of object ${msg.objectId}: ${errMsg(e)}`)));
          break;
      }
    } catch (e) {
      this.log('error', `cachefiles: handling ${msg.opcode} ${msg.msgId} failed: ${errMsg(e)}`);
    }
  }

  private closeFd(fd: number): void {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
  }

  /** Write `copen`; returns false (and logs) if the kernel refused it. */
  private reply(msgId: number, size: number, what = ''): boolean {
    if (this.deviceClosed) return false;
    const cmd = copenCommand(msgId, size);
    try {
      writeCommand(this.devFd, cmd);
      return true;
    } catch (e) {
      const errno = errnoOf(e);
      this.log('error', `cachefiles: "${cmd}"${what ? ` (${what})` : ''} failed: ${errno ? errnoName(errno) : errMsg(e)}`, { msgId, size, errno });
      return false;
    }
  }

  private async onOpen(msg: Extract<CachefilesMessage, { opcode: 'OPEN' }>): Promise<void> {
    this.st.opens++;
    const { msgId, objectId, fd } = msg;
    try {
      setCloexec(fd); // anonymous fds come without O_CLOEXEC: keep them out of child processes
    } catch (e) {
      this.log('warn', `cachefiles: cannot set FD_CLOEXEC on fd ${fd}: ${errMsg(e)}`);
    }
    const what = `volume "${msg.volumeKey}" cookie "${msg.cookieKey}"`;
    if (this.stopping) {
      // Not answered: with the device kept open, the next daemon's `restore` re-sends it.
      this.closeFd(fd);
      return;
    }
    const fail = (errno: number, level: 'warn' | 'error', why: string): void => {
      this.st.opens_failed++;
      this.log(level, `cachefiles: OPEN of ${what} (object ${objectId}) failed: ${why}`, { volume: msg.volumeKey, cookie: msg.cookieKey, objectId, msgId });
      this.reply(msgId, -errno, `fail the OPEN of ${what}`);
      this.closeFd(fd);
    };
    if (!msg.volumeKey.startsWith('erofs,')) return fail(E.ENOENT, 'warn', 'not an EROFS volume (expected "erofs,<domain or fsid>")');
    if (this.objects.has(objectId)) return fail(E.EALREADY, 'error', `object id ${objectId} is already open`);
    const domain = msg.volumeKey.slice('erofs,'.length);
    const cookie = msg.cookieKey;
    let lookup: ObjectLookup;
    try {
      lookup = this.resolver!.resolve(domain, cookie);
    } catch (e) {
      lookup = { kind: 'unknown', reason: errMsg(e) };
    }
    if (lookup.kind === 'unknown') {
      this.st.opens_unknown++;
      return fail(E.ENOENT, 'warn', `no such image or blob: ${lookup.reason}`);
    }
    const writer = new AnonFdWriter(fd, { pool: this.opts.pool, name: `${msg.volumeKey}/${cookie}`, onNoSpace: this.cache.noSpace(domain, cookie) });
    const obj: CacheObject = { id: objectId, kind: lookup.kind, volume: domain, cookie, fd, writer, lookup, inflight: new Set(), closing: false };
    let size: number;
    if (lookup.kind === 'bootstrap') {
      size = lookup.image.bootstrapSize;
    } else {
      try {
        obj.session = await lookup.open(writer);
      } catch (e) {
        this.st.opens_failed++;
        this.log('error', `cachefiles: OPEN of blob ${cookie} (${what}): cannot open a session: ${errMsg(e)}`, { blobId: cookie, volume: msg.volumeKey });
        this.reply(msgId, -E.EIO, `fail the OPEN of ${what}`);
        writer.close();
        return;
      }
      size = obj.session.size;
      if (this.stopping) {
        void obj.session.close().catch(() => undefined);
        writer.close();
        return;
      }
    }
    this.objects.set(objectId, obj);
    this.countObjects();
    if (!this.reply(msgId, size, `answer the OPEN of ${what}`)) {
      this.st.opens_failed++;
      this.objects.delete(objectId);
      this.countObjects();
      const sp = obj.session?.close();
      writer.close();
      await sp;
      return;
    }
    this.log('debug', `cachefiles: OPEN ${what} → object ${objectId}, ${obj.kind}, size ${size}`, { objectId, size });
    // after the copen: the chunk index load looks at what the cache file already holds
    obj.session?.prepare?.();
    // nydusd starts a blob's prefetch here too; it ends with the object (CLOSE closes the session)
    if (obj.session && lookup.kind === 'blob') this.resolver?.startPrefetch?.(lookup.image, obj.session);
    if (lookup.kind === 'bootstrap' && (this.opts.prefillBootstrap ?? true) && size > 0) {
      const read = lookup.read;
      const p = (async () => {
        try {
          // An existing cache file (a remount) already holds it: SEEK_DATA covers [0, size).
          const present = await writer.presentRanges();
          if (present.some(([s, e]) => s === 0 && e >= size)) return;
          const data = await read(0, size);
          if (!obj.closing) await writer.write(0, data);
        } catch (e) {
          if (!obj.closing) this.log('warn', `cachefiles: prefilling bootstrap ${what} failed (it is served by READs instead): ${errMsg(e)}`);
        }
      })();
      this.track(p, obj);
    }
  }

  private onRead(msg: Extract<CachefilesMessage, { opcode: 'READ' }>): void {
    const { msgId, objectId, off, length } = msg;
    this.st.reads++;
    this.st.read_bytes += length;
    this.st.read_sizes[length] = (this.st.read_sizes[length] ?? 0) + 1;
    const obj = this.objects.get(objectId);
    if (!obj) {
      // Without an fd of that object the READ cannot be completed; the kernel cancels it when
      // the object goes away.
      this.st.reads_failed++;
      this.log('error', `cachefiles: READ ${off}+${length} (msg ${msgId}) for unknown object ${objectId}`, { objectId, msgId });
      return;
    }
    if (obj.closing) return; // CLOSE already read: the kernel cancels this READ
    this.cache.touch(obj.volume, obj.cookie);
    if (obj.kind === 'blob') this.st.blob_reads++;
    else this.st.bootstrap_reads++;
    this.st.reads_in_flight++;
    const t0 = performance.now();
    const p = (async () => {
      let ok = false;
      try {
        if (obj.kind === 'blob') {
          await obj.session!.ensure(off, length);
        } else {
          const lookup = obj.lookup as Extract<ObjectLookup, { kind: 'bootstrap' }>;
          const start = off - (off % 4096);
          const data = await lookup.read(start, off + length - start);
          await obj.writer.write(start, data);
        }
        ok = true;
      } catch (e) {
        this.log('error', `cachefiles: READ ${off}+${length} of ${obj.kind === 'blob' ? `blob ${obj.cookie}` : `bootstrap ${obj.cookie}`} (volume erofs,${obj.volume}) failed, completing without data (the reader gets EIO): ${errMsg(e)}`,
          { [obj.kind === 'blob' ? 'blobId' : 'fsid']: obj.cookie, off, length, msgId });
      } finally {
        this.st.reads_in_flight--;
        this.readHist.add(performance.now() - t0);
        if (ok) this.st.reads_completed++;
        else this.st.reads_failed++;
        if (!obj.writer.isClosed) {
          try {
            ioctl(obj.fd, CACHEFILES_IOC_READ_COMPLETE, msgId, `cache object ${obj.volume}/${obj.cookie}`);
          } catch (e) {
            // EINVAL: the request was cancelled meanwhile (object closed / dropped)
            this.log(obj.closing ? 'debug' : 'warn', `cachefiles: READ_COMPLETE ${msgId}: ${errMsg(e)}`, { msgId, objectId });
          }
        }
      }
    })();
    this.track(p, obj);
  }

  private async onClose(msg: Extract<CachefilesMessage, { opcode: 'CLOSE' }>): Promise<void> {
    const obj = this.objects.get(msg.objectId);
    if (!obj) {
      this.log('debug', `cachefiles: CLOSE of unknown object ${msg.objectId}`);
      return;
    }
    this.st.closes++;
    this.objects.delete(msg.objectId);
    this.countObjects();
    this.log('debug', `cachefiles: CLOSE object ${obj.id} (erofs,${obj.volume}/${obj.cookie})`);
    await this.release(obj);
    this.cache.closed(obj.volume, obj.cookie);
  }

  /** Close an object: wait for its READs in flight (they use its fd), then its session and fd. */
  private async release(obj: CacheObject): Promise<void> {
    obj.closing = true;
    await Promise.allSettled([...obj.inflight]);
    const sp = obj.session?.close();
    obj.writer.close(); // the fd is closed once the writes in flight are done
    try {
      await sp;
    } catch (e) {
      this.log('warn', `cachefiles: closing the session of blob ${obj.cookie}: ${errMsg(e)}`);
    }
  }

  private countObjects(): void {
    let b = 0;
    for (const o of this.objects.values()) if (o.kind === 'bootstrap') b++;
    this.st.objects_open = this.objects.size;
    this.st.bootstrap_objects = b;
    this.st.blob_objects = this.objects.size - b;
  }

  stats(): CachefilesStats {
    return { ...this.st, read_sizes: { ...this.st.read_sizes }, read_latency: this.readHist.toJSON() };
  }

  /** Scrub (src/daemon/scrub.ts): the backing files of these blobs in the cache dir (cachefiles-scrub.ts). */
  async scrubTargets(blobs: Array<{ blobId: string; volumes: string[] }>): Promise<{ targets: ScrubTarget[]; skipped: Array<{ blob_id: string; reason: string }> }> {
    const { cachefilesScrubTargets } = await import('./cachefiles-scrub');
    const images = this.resolver as Partial<ImageSource> | undefined;
    return cachefilesScrubTargets(blobs, {
      cacheRoot: path.join(fs.realpathSync(this.opts.dir), 'cache'),
      openObjects: (volume, cookie) => [...this.objects.values()]
        .filter((o) => o.kind === 'blob' && !o.closing && o.session && o.volume === volume && o.cookie === cookie)
        .map((o) => ({ fd: o.fd, session: o.session! })),
      openBlob: images?.openBlob ? (id, w) => images.openBlob!(id, w) : undefined,
    });
  }

  /**
   * Stop serving: stop the reader thread, let requests in flight finish (up to `timeoutMs`),
   * close every object (its fd and session) and, unless `keepDevice`, the device fd — which
   * unbinds the cache and fails every outstanding request. Keep the device (or let a supervisor
   * hold a copy) to hand over to a new daemon that writes `restore`.
   */
  stop(opts: { keepDevice?: boolean; timeoutMs?: number } = {}): Promise<void> {
    this.stopping ??= (async () => {
      Atomics.store(new Int32Array(this.stopFlag), 0, 1);
      Atomics.notify(new Int32Array(this.stopFlag), 0);
      if (this.wake) {
        try {
          fs.writeSync(this.wake[1], 'x');
        } catch {
          // full or closed: the poll timeout wakes the reader anyway
        }
      }
      if (this.worker && this.workerExited) {
        const w = this.worker;
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([this.workerExited, new Promise<void>((r) => (timer = setTimeout(r, (this.opts.pollTimeoutMs ?? 1000) + 2000)))]);
        clearTimeout(timer);
        await w.terminate().catch(() => undefined);
      }
      // messages the reader posted before it exited are dispatched by now (OPENs: fd closed)
      await new Promise((r) => setImmediate(r));
      const deadline = opts.timeoutMs ?? 5000;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled([...this.handlers]), new Promise((r) => (timer = setTimeout(r, deadline)))]);
      clearTimeout(timer);
      const objs = [...this.objects.values()];
      this.objects.clear();
      this.countObjects();
      await Promise.allSettled(objs.map((o) => this.release(o)));
      this.cache.close();
      if (this.wake) {
        this.closeFd(this.wake[0]);
        this.closeFd(this.wake[1]);
      }
      if (!opts.keepDevice) {
        this.deviceClosed = true;
        this.closeFd(this.devFd);
      }
    })();
    return this.stopping;
  }

  /**
   * Delete a cache file that is not in use: `cull D<cookie>` written with the process cwd in the
   * cookie's fan-out directory (kernel.md §1.2, §1.15). Looks in volume `erofs,<domain>` or, if
   * no domain is given, in every volume. Returns the paths removed. Needs the main thread (chdir).
   */
  async cull(cookie: string, domain?: string): Promise<string[]> {
    if (!isMainThread) throw new NydusError('ERR_UNSUPPORTED', 'cull needs process.chdir, which only the main thread may call');
    if (this.deviceClosed) throw new NydusError('ERR_DAEMON', 'cachefiles front end is stopped');
    const name = cookieFileName(cookie);
    const cacheRoot = path.join(fs.realpathSync(this.opts.dir), 'cache');
    let volumes: string[];
    if (domain !== undefined) volumes = [`erofs,${domain}`];
    else {
      try {
        volumes = fs.readdirSync(cacheRoot).filter((n) => n.startsWith('I')).map((n) => n.slice(1));
      } catch (e) {
        throw new NydusError('ERR_NOT_FOUND', `cache directory ${cacheRoot}: ${errMsg(e)}`);
      }
    }
    const removed: string[] = [];
    for (const vol of volumes) {
      const dir = path.join(cacheRoot, `I${vol}`, cookieFanout(vol, cookie));
      if (!fs.existsSync(path.join(dir, name))) continue;
      const cwd = process.cwd();
      try {
        process.chdir(dir);
        writeCommand(this.devFd, `cull ${name}`);
        removed.push(path.join(dir, name));
      } catch (e) {
        const errno = errnoOf(e);
        if (errno === E.EBUSY) throw new NydusError('ERR_DAEMON', `cache file ${path.join(dir, name)} is in use (a mounted image uses it)`, { cookie, volume: vol });
        throw kernelError(`cachefiles "cull ${name}" in ${dir}`, e, '', { cookie, volume: vol });
      } finally {
        process.chdir(cwd);
      }
    }
    if (removed.length === 0) throw new NydusError('ERR_NOT_FOUND', `no cache file for "${cookie}"${domain !== undefined ? ` in volume erofs,${domain}` : ''} under ${cacheRoot}`, { cookie });
    return removed;
  }
}
