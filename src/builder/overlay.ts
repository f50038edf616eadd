/**
 * Applies an upper layer onto a lower tree the way an OCI image unpacker / overlayfs does
 * (spec rafs-v6.md §5.5): `.wh..wh..opq` makes a directory opaque, `.wh.<name>` deletes `<name>`,
 * other entries replace or (directories) merge. Whiteout markers never reach the result.
 * Overlayfs-style markers (char 0:0, trusted.overlay.opaque=y) are honoured with spec 'overlayfs'.
 */
import { TreeNode, isDir, isChr, nameKey } from '../tree/node';

export type WhiteoutSpec = 'oci' | 'overlayfs' | 'none';

const OPAQUE = '.wh..wh..opq';
const WH_PREFIX = '.wh.';
const OVL_OPAQUE_XATTR = 'trusted.overlay.opaque';

function isOverlayWhiteout(n: TreeNode): boolean {
  return isChr(n.inode) && n.inode.rdevMajor === 0 && n.inode.rdevMinor === 0;
}

function isOpaque(upperDir: TreeNode, spec: WhiteoutSpec): boolean {
  if (spec === 'oci') return upperDir.children?.has(OPAQUE) ?? false;
  if (spec === 'overlayfs') return upperDir.inode.xattrs.get(OVL_OPAQUE_XATTR)?.toString() === 'y';
  return false;
}

/** Whiteout target of an upper entry, or undefined when it is an ordinary entry. */
function whiteoutTarget(name: string, n: TreeNode, spec: WhiteoutSpec): string | undefined {
  if (spec === 'oci') {
    if (name === OPAQUE) return '';
    if (name.startsWith(WH_PREFIX)) return name.slice(WH_PREFIX.length);
  } else if (spec === 'overlayfs' && isOverlayWhiteout(n)) {
    return name;
  }
  return undefined;
}

/** Copy of an upper subtree with whiteout markers removed (they have nothing to hide below). */
export function stripWhiteouts(n: TreeNode, spec: WhiteoutSpec): TreeNode {
  if (!n.children || spec === 'none') return n;
  const out: TreeNode = { name: n.name, inode: n.inode, children: new Map() };
  if (spec === 'overlayfs' && n.inode.xattrs.has(OVL_OPAQUE_XATTR)) {
    out.inode = { ...n.inode, xattrs: new Map(n.inode.xattrs) };
    out.inode.xattrs.delete(OVL_OPAQUE_XATTR);
  }
  for (const [k, c] of n.children) {
    if (whiteoutTarget(k, c, spec) !== undefined) continue;
    out.children!.set(k, stripWhiteouts(c, spec));
  }
  return out;
}

/** Merge `upper` (a layer's directory) into `lower` (the tree so far), in place. */
export function applyLayer(lower: TreeNode, upper: TreeNode, spec: WhiteoutSpec): void {
  if (!lower.children || !upper.children) throw new Error('applyLayer needs two directories');
  // The directory's own metadata comes from the upper layer.
  lower.inode = spec === 'overlayfs' && upper.inode.xattrs.has(OVL_OPAQUE_XATTR)
    ? { ...upper.inode, xattrs: new Map([...upper.inode.xattrs].filter(([k]) => k !== OVL_OPAQUE_XATTR)) }
    : upper.inode;
  if (isOpaque(upper, spec)) lower.children.clear();
  for (const [k, c] of upper.children) {
    const target = whiteoutTarget(k, c, spec);
    if (target !== undefined) {
      if (target !== '') lower.children.delete(target);
    }
  }
  for (const [k, c] of upper.children) {
    if (whiteoutTarget(k, c, spec) !== undefined) continue;
    const l = lower.children.get(k);
    if (l && isDir(l.inode) && isDir(c.inode)) {
      applyLayer(l, c, spec);
    } else {
      lower.children.set(k, stripWhiteouts(c, spec));
    }
  }
}

/** Deep copy of the directory structure (inodes shared) so merges never alias a source tree. */
export function cloneTree(n: TreeNode): TreeNode {
  if (!n.children) return { name: n.name, inode: n.inode };
  const out: TreeNode = { name: n.name, inode: n.inode, children: new Map() };
  for (const [k, c] of n.children) out.children!.set(k, cloneTree(c));
  return out;
}

export { nameKey };
