/**
 * Access traces of the fanotify front end (for `nydus-ts optimize`): what a workload reads from
 * one daemon mount, in the order the kernel reported it.
 *
 * Two kinds of event share the front end's one fanotify queue, so their order is exact:
 *   - reads: every pre-content event on one of the mount's blob cache files (fast path and slow
 *     path alike) — a byte range of the blob's uncompressed space, and the reading pid;
 *   - opens: while a trace runs, the mount's EROFS superblock carries a filesystem mark for
 *     FAN_OPEN_PERM / FAN_OPEN_EXEC_PERM (answered FAN_ALLOW at once by the event thread). The
 *     event's file gives (st_dev, st_ino); on EROFS st_ino is the inode's nid, so the client maps
 *     it to a path through the bootstrap. A filesystem mark (not a mount mark) also sees opens
 *     through an overlayfs or a bind mount in another mount namespace (a container's rootfs).
 * Mapping blob ranges to files and byte ranges is the client's job (src/optimize/access-list.ts):
 * the daemon only holds the bootstrap's tables, not its inodes.
 *
 * Only reads that reach the blob files are seen: pages already in the mount's page cache raise
 * nothing, so a trace should start before the workload touches the mount (a fresh mount).
 */
import type { FrontendMount } from '../daemon/interfaces';

export const FAN_OPEN_PERM = 0x10000;
export const FAN_OPEN_EXEC_PERM = 0x40000;
export const FAN_MARK_FILESYSTEM = 0x100;
/** the mark a trace puts on the traced mount's superblock */
export const TRACE_OPEN_MASK = BigInt(FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM);

/**
 * events kept per trace; later ones are counted in `dropped` (memory stays bounded: ~25 MiB).
 * A read event covers at least a page and usually a readahead window, so this is ≥ 1 GiB read.
 */
export const TRACE_EVENT_LIMIT = 1 << 18;

export interface TraceOpenEvent {
  seq: number;
  t: 'open';
  pid: number;
  /** st_ino of the opened file = its EROFS nid */
  ino: number;
  /** opened for execution (execve, the ELF interpreter) */
  exec: boolean;
}

export interface TraceReadEvent {
  seq: number;
  t: 'read';
  pid: number;
  blob: string;
  /** range of the blob's uncompressed space the kernel read */
  offset: number;
  length: number;
}

export type TraceEvent = TraceOpenEvent | TraceReadEvent;

/** `GET|DELETE /api/v1/trace?mountpoint=M`: the trace of one mount, events in kernel order. */
export interface MountTrace {
  mountpoint: string;
  /** registered image id (fsid) and its bootstrap */
  id: string;
  bootstrap: string;
  blob_ids: string[];
  started_at: string;
  stopped_at: string | null;
  active: boolean;
  /** events beyond TRACE_EVENT_LIMIT that were not kept */
  dropped: number;
  events: TraceEvent[];
}

export class AccessTraceRecorder {
  private readonly events: TraceEvent[] = [];
  private readonly blobs: Set<string>;
  private readonly devPrefix: string;
  private readonly startedAt = new Date().toISOString();
  private stoppedAt: string | null = null;
  private dropped = 0;

  /** `dev`: st_dev of the mount's root (as the event thread prints it in its `<dev>:<ino>` keys) */
  constructor(readonly mount: FrontendMount, dev: string) {
    this.blobs = new Set(mount.blobIds);
    this.devPrefix = `${dev}:`;
  }

  get active(): boolean {
    return this.stoppedAt === null;
  }

  hasBlob(blobId: string): boolean {
    return this.blobs.has(blobId);
  }

  private push(e: TraceEvent): void {
    if (!this.active) return;
    if (this.events.length >= TRACE_EVENT_LIMIT) this.dropped++;
    else this.events.push(e);
  }

  /** an open on some EROFS mount; kept if it is this mount's superblock */
  addOpen(seq: number, key: string, pid: number, exec: boolean): void {
    if (!key.startsWith(this.devPrefix)) return;
    this.push({ seq, t: 'open', pid, ino: Number(key.slice(this.devPrefix.length)), exec });
  }

  /** a pre-content event on a blob cache file; kept if the blob is one of this mount's */
  addRead(seq: number, blobId: string, offset: number, length: number, pid: number): void {
    if (!this.blobs.has(blobId) || offset < 0 || length <= 0) return;
    this.push({ seq, t: 'read', pid, blob: blobId, offset, length });
  }

  stop(): void {
    this.stoppedAt ??= new Date().toISOString();
  }

  snapshot(): MountTrace {
    const events = [...this.events].sort((a, b) => a.seq - b.seq);
    return {
      mountpoint: this.mount.mountpoint, id: this.mount.id, bootstrap: this.mount.bootstrap, blob_ids: [...this.mount.blobIds],
      started_at: this.startedAt, stopped_at: this.stoppedAt, active: this.active, dropped: this.dropped, events,
    };
  }
}
