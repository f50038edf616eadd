/**
 * Directories and mounts as containerd's overlayfs snapshotter makes them:
 *
 *   <root>/snapshots/<id>/fs     the snapshot's files (an active snapshot's upperdir)
 *   <root>/snapshots/<id>/work   overlayfs' workdir (active snapshots only)
 *
 * - active, no parent        → bind <id>/fs, rw
 * - active, with parents     → overlay lowerdir=<parents' fs, nearest first>,upperdir,workdir
 * - view, no parent          → bind <id>/fs (empty), ro
 * - view, one parent         → bind <parent>/fs, ro
 * - view, several parents    → overlay lowerdir only (read-only by construction)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { failedPrecondition } from './errors';
import type { SnapshotKind } from './metadata-store';

export interface Mount {
  type: string;
  source: string;
  options: string[];
}

export class SnapshotLayout {
  readonly snapshotsDir: string;
  constructor(readonly root: string) {
    this.snapshotsDir = path.join(root, 'snapshots');
  }
  dir(id: string): string {
    return path.join(this.snapshotsDir, id);
  }
  fs(id: string): string {
    return path.join(this.snapshotsDir, id, 'fs');
  }
  work(id: string): string {
    return path.join(this.snapshotsDir, id, 'work');
  }
}

// The kernel copies mount options into one page; containerd's mount code (in containerd and in
// the shim) switches to paths relative to the lowerdirs' common directory once the options pass
// a page minus 512 bytes. Past a page even then, or past overlayfs' 500 layers, no mount works:
// we refuse the snapshot with a clear error instead of letting the container start fail later.
const PAGE_SIZE = 4096;
const CONTAINERD_COMPACT_AT = PAGE_SIZE - 512;
const OVERLAY_MAX_LOWERS = 500;

// containerd adds index=off wherever the overlay module has the parameter: with the index on, a
// lower layer shared by several overlays with different uppers makes later mounts fail.
let indexParamKnown: boolean | undefined;
function overlayHasIndexParam(): boolean {
  indexParamKnown ??= fs.existsSync('/sys/module/overlay/parameters/index');
  return indexParamKnown;
}

/** The default mounts of an active snapshot or view; `parentIds` nearest first. */
export function defaultMounts(layout: SnapshotLayout, kind: SnapshotKind, id: string, parentIds: string[]): Mount[] {
  if (parentIds.length === 0) {
    return [{ type: 'bind', source: layout.fs(id), options: ['rbind', kind === 'view' ? 'ro' : 'rw'] }];
  }
  if (kind === 'view' && parentIds.length === 1) {
    return [{ type: 'bind', source: layout.fs(parentIds[0]), options: ['rbind', 'ro'] }];
  }
  const options = overlayHasIndexParam() ? ['index=off'] : [];
  if (kind === 'active') options.push(`workdir=${layout.work(id)}`, `upperdir=${layout.fs(id)}`);
  options.push(`lowerdir=${parentIds.map((p) => layout.fs(p)).join(':')}`);
  return [{ type: 'overlay', source: 'overlay', options }];
}

/**
 * Refuse a chain that no mount(2) could take: more lowers than overlayfs stacks, or options
 * longer than a page even with the lowerdirs relative to <root>/snapshots.
 */
export function checkMountable(layout: SnapshotLayout, key: string, kind: SnapshotKind, id: string, parentIds: string[]): void {
  if (parentIds.length > OVERLAY_MAX_LOWERS) {
    throw failedPrecondition(`snapshot ${key}: ${parentIds.length} parent layers, overlayfs stacks at most ${OVERLAY_MAX_LOWERS}`, { key, layers: parentIds.length });
  }
  const mount = defaultMounts(layout, kind, id, parentIds)[0];
  if (mount.type !== 'overlay') return;
  const full = mount.options.join(',').length;
  if (full < CONTAINERD_COMPACT_AT) return;
  const relative = mount.options.map((o) => (o.startsWith('lowerdir=') ? `lowerdir=${parentIds.map((p) => `${p}/fs`).join(':')}` : o)).join(',').length;
  if (relative >= PAGE_SIZE) {
    throw failedPrecondition(
      `snapshot ${key}: ${parentIds.length} parent layers need ${relative} bytes of overlay options even as relative lowerdirs, more than one page (${PAGE_SIZE}); use a shorter --root or fewer layers`,
      { key, layers: parentIds.length, bytes: relative },
    );
  }
}
