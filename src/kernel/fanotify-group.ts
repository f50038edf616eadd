/**
 * The fanotify pre-content side of the kernel (spec fanotify.md): the event records, the
 * response, and setting up a cache for it — the checks that say what a kernel or a cache dir
 * lacks, the layout, the private bind mount the kernel reads blobs through, and the group with
 * its mark. The supervisor calls `openFanotifyCache` once and holds the group fd for its whole
 * life (fail-closed: while any fd of the group is open, unanswered reads stay blocked instead of
 * being allowed); the serving child inherits it.
 *
 * Cache dir layout:
 *   <cache>/blobs/<blob id>      sparse cache files; the daemon's own I/O goes here (no mark)
 *   <cache>/presence/<blob id>   presence maps (blob-cache-file.ts)
 *   <cache>/hsm/                 a private bind mount of blobs/, with the group's mount mark:
 *                                the only path EROFS is given (`device=<cache>/hsm/<blob id>`)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mountPoints } from '../sys/mount-table';
import { NydusError } from '../errors';
import {
  errnoName, fanotifyInit, fanotifyMark, getNofileLimit, mountSync, setNofileLimit, umountSync, writeRaw,
  FAN_CLASS_PRE_CONTENT, FAN_CLOEXEC, FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_NONBLOCK, FAN_PRE_ACCESS, FAN_UNLIMITED_MARKS,
  FAN_UNLIMITED_QUEUE, MS_BIND, MS_PRIVATE, O_CLOEXEC,
  errnoOf,
} from '../sys/native';

// ------------------------------------------------------------------------------ records (§3)

export const FANOTIFY_METADATA_VERSION = 3;
export const EVENT_METADATA_LEN = 24;
export const FAN_MODIFY = 0x2;
export const FAN_CLOSE_WRITE = 0x8;
export const FAN_Q_OVERFLOW = 0x4000;
export const FAN_PRE_ACCESS_MASK = 0x00100000;
export const FAN_ALLOW = 0x1;
export const FAN_DENY = 0x2;
export const FAN_EVENT_INFO_TYPE_RANGE = 6;
export const FAN_NOFD = -1;

export interface FanotifyEvent {
  mask: number;
  /** the event's fd (to answer by and to close), or < 0 (overflow, or -errno with FD_ERROR) */
  fd: number;
  pid: number;
  /** from the range record; undefined when the event has none */
  offset?: number;
  count?: number;
}

/**
 * Decode the events of one read() of the group fd. A record that breaks the framing throws
 * NydusError('ERR_KERNEL'): the rest of the batch cannot be trusted. `out` receives the events
 * decoded before that point.
 */
export function parseEvents(buf: Buffer, n: number, out: FanotifyEvent[]): void {
  let o = 0;
  while (o < n) {
    const remaining = n - o;
    if (remaining < EVENT_METADATA_LEN) throw new NydusError('ERR_KERNEL', `fanotify: ${remaining} trailing bytes, shorter than an event`);
    const len = buf.readUInt32LE(o);
    const vers = buf[o + 4];
    const metaLen = buf.readUInt16LE(o + 6);
    if (vers !== FANOTIFY_METADATA_VERSION) throw new NydusError('ERR_KERNEL', `fanotify: event metadata version ${vers} (expected ${FANOTIFY_METADATA_VERSION})`);
    if (len < EVENT_METADATA_LEN || len > remaining || metaLen < EVENT_METADATA_LEN || metaLen > len) {
      throw new NydusError('ERR_KERNEL', `fanotify: event length ${len} / metadata length ${metaLen} do not fit the ${remaining} bytes left`);
    }
    const ev: FanotifyEvent = { mask: Number(buf.readBigUInt64LE(o + 8) & 0xffffffffn), fd: buf.readInt32LE(o + 16), pid: buf.readInt32LE(o + 20) };
    for (let r = o + metaLen; r < o + len;) {
      if (o + len - r < 4) break;
      const type = buf[r];
      const rlen = buf.readUInt16LE(r + 2);
      if (rlen < 4 || r + rlen > o + len) break; // a broken record: the event is answered DENY (no range)
      if (type === FAN_EVENT_INFO_TYPE_RANGE && rlen >= 24) {
        const off = buf.readBigUInt64LE(r + 8);
        const cnt = buf.readBigUInt64LE(r + 16);
        if (off <= BigInt(Number.MAX_SAFE_INTEGER) && cnt <= BigInt(Number.MAX_SAFE_INTEGER)) {
          ev.offset = Number(off);
          ev.count = Number(cnt);
        }
      }
      r += rlen;
    }
    out.push(ev);
    o += len;
  }
}

const responseBuf = Buffer.alloc(8);
/**
 * Answer a permission event (write the 8-byte response; the kernel finds the event by fd
 * number). Returns 0 or -errno (ENOENT: nothing pending under that fd — answered or stale).
 * Close the event fd only after this.
 */
export function respond(group: number, fd: number, response: number): number {
  responseBuf.writeInt32LE(fd, 0);
  responseBuf.writeUInt32LE(response >>> 0, 4);
  for (;;) {
    const r = writeRaw(group, responseBuf);
    if (r === -os.constants.errno.EINTR) continue;
    return r < 0 ? r : 0;
  }
}

/**
 * A successor's first act (spec §8): deny every event the dead serving process had read but not
 * answered. They can only be named by fd number, so every number below `maxFd` is tried;
 * numbers with nothing pending fail with ENOENT. Their readers get EIO or, through EROFS's one
 * internal retry, a fresh event this process serves. Returns how many were pending.
 */
export function denyStaleEvents(group: number, maxFd: number): number {
  let denied = 0;
  for (let fd = 0; fd < maxFd; fd++) if (respond(group, fd, FAN_DENY) === 0) denied++;
  return denied;
}

// ------------------------------------------------------------------------------ checks and setup

/** statfs magic → name, for the filesystems a cache dir must not be on */
const FS_NAMES: Record<number, string> = {
  0x01021994: 'tmpfs', 0x01021997: '9p', 0x6969: 'nfs', 0x794c7630: 'overlayfs', 0x858458f6: 'ramfs',
  0xef53: 'ext4', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0xe0f5e1e2: 'erofs', 0x65735546: 'fuse', 0x73717368: 'squashfs',
};
/** filesystems that set SB_I_ALLOW_HSM (pre-content events), spec §1 */
const HSM_FILESYSTEMS = new Set(['ext4', 'xfs', 'btrfs']);

export function fsTypeOf(dir: string): string {
  const t = fs.statfsSync(dir).type;
  return FS_NAMES[t] ?? `filesystem type 0x${t.toString(16)}`;
}

/** Does this process have CAP_SYS_ADMIN (bit 21 of CapEff)? */
export function hasCapSysAdmin(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return !!m && (BigInt('0x' + m[1]) & (1n << 21n)) !== 0n;
}

function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(os.release());
  if (!m) return true;
  return Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor);
}

export interface FanotifyCacheLayout {
  dir: string;
  blobs: string;
  presence: string;
  hsm: string;
}

export function cacheLayout(dir: string): FanotifyCacheLayout {
  return { dir, blobs: path.join(dir, 'blobs'), presence: path.join(dir, 'presence'), hsm: path.join(dir, 'hsm') };
}

/** Mount points in this namespace (from /proc/self/mountinfo, octal escapes decoded). */
function kernelLacks(what: string, e: unknown, ctx: Record<string, unknown> = {}): NydusError {
  return new NydusError('ERR_KERNEL', what, { ...ctx, errno: errnoOf(e) }, { cause: e });
}

/** Checks that need no group: privilege, kernel version, EROFS, the cache dir's filesystem. */
export function checkFanotifySupport(cacheDir: string): void {
  if (!hasCapSysAdmin()) throw new NydusError('ERR_KERNEL', 'the fanotify front end needs CAP_SYS_ADMIN (fanotify pre-content groups and mount(2)): run the daemon as root');
  if (!kernelAtLeast(6, 14)) throw new NydusError('ERR_KERNEL', `kernel ${os.release()} has no fanotify pre-content events (FAN_PRE_ACCESS needs Linux ≥ 6.14)`);
  const filesystems = fs.readFileSync('/proc/filesystems', 'utf8');
  if (!/\terofs$/m.test(filesystems)) throw new NydusError('ERR_KERNEL', 'the kernel has no EROFS (CONFIG_EROFS_FS; try `modprobe erofs`)');
  const type = fsTypeOf(cacheDir);
  if (!HSM_FILESYSTEMS.has(type)) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `cache dir ${cacheDir} is on ${type}, which has no pre-content event support: put it on ext4, xfs or btrfs`, { dir: cacheDir, fstype: type });
  }
}

/**
 * Raise RLIMIT_NOFILE: every event in flight holds an fd. The soft limit goes to the hard limit
 * (at most 65536, which also bounds the stale-event sweep of a successor).
 */
export const EVENT_FD_LIMIT = 65536;
export function raiseNofileLimit(): number {
  const [soft, hard] = getNofileLimit();
  const want = Math.min(hard, EVENT_FD_LIMIT);
  if (want < 1024) throw new NydusError('ERR_KERNEL', `RLIMIT_NOFILE hard limit is ${hard}: too low for serving events (each holds an fd); raise it to at least 1024 (ulimit -Hn)`);
  if (soft !== want) setNofileLimit(want, hard);
  return want;
}

export interface FanotifyCache {
  layout: FanotifyCacheLayout;
  /** the group fd (O_CLOEXEC; pass it on purpose to the serving child) */
  group: number;
  /** close the group, then drop the bind mount if no EROFS mount uses it (best effort) */
  close(): void;
}

/**
 * Set up a cache dir for the fanotify front end and create the group: checks, layout, the private
 * bind mount `hsm/` and its mount mark — before any image is mounted (spec §4: a mount made
 * before the mark never raises events, and its readers get zeros). A bind mount left by an
 * earlier daemon is reused and marked again, so its EROFS mounts get events again.
 */
export function openFanotifyCache(cacheDir: string): FanotifyCache {
  let dir: string;
  try {
    dir = fs.realpathSync(cacheDir);
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `cache dir ${cacheDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { dir: cacheDir });
  }
  if (!fs.statSync(dir).isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `cache dir ${dir} is not a directory`, { dir });
  checkFanotifySupport(dir);
  raiseNofileLimit();
  const layout = cacheLayout(dir);
  for (const d of [layout.blobs, layout.presence, layout.hsm]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  const mp = mountPoints().get(layout.hsm);
  if (!mp) {
    mountSync(layout.blobs, layout.hsm, null, MS_BIND);
    mountSync(null, layout.hsm, null, MS_PRIVATE);
  } else if (!HSM_FILESYSTEMS.has(mp.fstype)) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${layout.hsm} is already a mount point (${mp.fstype} from ${mp.source}), not our bind mount of ${layout.blobs}`, { dir });
  }
  let group: number;
  try {
    group = fanotifyInit(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS, fs.constants.O_RDONLY | O_CLOEXEC);
  } catch (e) {
    const errno = errnoOf(e);
    const E = os.constants.errno;
    if (errno === E.ENOSYS) throw kernelLacks('the kernel has no fanotify (CONFIG_FANOTIFY)', e);
    if (errno === E.EINVAL) throw kernelLacks('the kernel refuses a pre-content fanotify group (CONFIG_FANOTIFY_ACCESS_PERMISSIONS)', e);
    if (errno === E.EPERM) throw kernelLacks('fanotify_init(FAN_CLASS_PRE_CONTENT) needs CAP_SYS_ADMIN in the initial user namespace', e);
    if (errno === E.EMFILE) throw kernelLacks('too many fanotify groups (fs.fanotify.max_user_groups)', e);
    throw e;
  }
  try {
    fanotifyMark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_PRE_ACCESS, layout.hsm);
  } catch (e) {
    fs.closeSync(group);
    const errno = errnoOf(e);
    const E = os.constants.errno;
    if (errno === E.EINVAL) throw kernelLacks(`the kernel has no fanotify pre-content events (FAN_PRE_ACCESS, Linux ≥ 6.14): marking ${layout.hsm} failed with EINVAL`, e);
    if (errno === E.EOPNOTSUPP) throw kernelLacks(`cache dir ${dir} is on ${fsTypeOf(dir)}, which does not allow pre-content events (EOPNOTSUPP): use ext4, xfs or btrfs`, e, { dir });
    throw kernelLacks(`fanotify_mark(${layout.hsm}): ${errnoName(errno)}`, e);
  }
  return {
    layout,
    group,
    close(): void {
      try {
        fs.closeSync(group);
      } catch {
        // already closed
      }
      // Unmount the bind mount only when nothing uses it; a busy one stays for the next daemon.
      // An EROFS mount unmounted just before lets go of its blob files a moment later (the
      // kernel's deferred fput), so EBUSY is retried for up to 2 s before giving up.
      const sleeper = new Int32Array(new SharedArrayBuffer(4));
      for (let attempt = 0; attempt < 20; attempt++) {
        try {
          umountSync(layout.hsm);
          break;
        } catch (e) {
          if (errnoOf(e) !== os.constants.errno.EBUSY) break; // not mounted any more, or nothing we can fix
          Atomics.wait(sleeper, 0, 0, 100);
        }
      }
    },
  };
}
