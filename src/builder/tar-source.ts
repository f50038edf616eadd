/**
 * Turns a streamed layer tar into a TreeNode tree, feeding file bodies into the chunk pipeline
 * as they stream past (no extraction to disk). Semantics follow an OCI unpacker: parent dirs
 * are created implicitly, a later duplicate replaces an earlier entry (directories merge),
 * hardlinks must point at an earlier non-directory entry of the same archive.
 */
import { readTar, TarEntry } from './tar-reader';
import { TreeNode, Inode, newInode, newDir, splitPath, nameKey, isDir } from '../tree/node';
import { S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO } from '../format/constants';
import { BadTarError } from '../errors';
import { ChunkSink } from './chunk-sink';
import { storableXattrs } from './xattrs';

const TYPE_BITS: Record<string, number> = {
  file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, chardev: S_IFCHR, blockdev: S_IFBLK, fifo: S_IFIFO,
};

export async function buildTreeFromTar(
  input: NodeJS.ReadableStream | AsyncIterable<Buffer>,
  opts: { name: string; gzip: boolean | 'auto'; warn: (msg: string) => void },
  sink: ChunkSink,
): Promise<TreeNode> {
  const root = newDir(Buffer.from('/'));
  // Until the archive says otherwise, the root and implicit dirs are 0755 root:root, mtime 0.
  const parentOf = (parts: Buffer[], e: TarEntry): TreeNode => {
    let cur = root;
    for (const part of parts.slice(0, -1)) {
      const k = nameKey(part);
      let next = cur.children!.get(k);
      if (!next) {
        next = newDir(Buffer.from(part));
        cur.children!.set(k, next);
      } else if (!next.children) {
        throw new BadTarError(`${opts.name}: entry "${e.rawPath.toString('latin1')}" needs "${part.toString('latin1')}" to be a directory, but an earlier entry made it a ${isDir(next.inode) ? 'dir' : 'non-directory'}`, { entry: e.rawPath.toString('latin1'), offset: e.headerOffset });
      }
      cur = next;
    }
    return cur;
  };

  for await (const e of readTar(input, { name: opts.name, gzip: opts.gzip })) {
    const parts = splitPath(e.path);
    const where = `${opts.name}: ${e.rawPath.toString('latin1')}`;
    if (e.type === 'hardlink') {
      const target = lookup(root, splitPath(e.linkTarget ?? Buffer.alloc(0)));
      if (!target) throw new BadTarError(`${where}: hardlink target "${(e.linkTarget ?? Buffer.alloc(0)).toString('latin1')}" is not an earlier entry of this archive`, { entry: e.rawPath.toString('latin1'), offset: e.headerOffset });
      if (isDir(target.inode)) throw new BadTarError(`${where}: hardlink to a directory`, { entry: e.rawPath.toString('latin1') });
      if (parts.length === 0) throw new BadTarError(`${where}: hardlink cannot replace the root`, {});
      const parent = parentOf(parts, e);
      const name = parts[parts.length - 1];
      parent.children!.set(nameKey(name), { name: Buffer.from(name), inode: target.inode });
      continue;
    }
    const bits = TYPE_BITS[e.type];
    if (bits === undefined) throw new BadTarError(`${where}: unsupported entry type ${e.type}`, {});
    // Linux symlinks always have mode 0777, whatever the archive says (macOS tars say 0755).
    const perm = e.type === 'symlink' ? 0o777 : e.mode & 0o7777;
    const inode: Inode = newInode(bits | perm, {
      uid: e.uid, gid: e.gid, mtime: e.mtime, mtimeNsec: e.mtimeNsec, xattrs: storableXattrs(e.xattrs, where, opts.warn),
      rdevMajor: e.devMajor, rdevMinor: e.devMinor,
    });
    if (e.type === 'symlink') {
      const target = e.linkTarget ?? Buffer.alloc(0);
      inode.symlink = target;
      inode.size = target.length;
    }
    if (parts.length === 0) {
      if (e.type !== 'dir') throw new BadTarError(`${where}: the archive root must be a directory`, {});
      root.inode = inode;
      continue;
    }
    const parent = parentOf(parts, e);
    const name = parts[parts.length - 1];
    const key = nameKey(name);
    const existing = parent.children!.get(key);
    if (e.type === 'dir') {
      if (existing?.children) existing.inode = inode; // re-declared directory keeps its children
      else parent.children!.set(key, { name: Buffer.from(name), inode, children: new Map() });
      continue;
    }
    parent.children!.set(key, { name: Buffer.from(name), inode });
    if (e.type === 'file') {
      inode.size = e.size;
      await sink.addFile(inode, e.body(), where);
    }
  }
  return root;
}

function lookup(root: TreeNode, parts: Buffer[]): TreeNode | undefined {
  let cur: TreeNode | undefined = root;
  for (const p of parts) {
    cur = cur?.children?.get(nameKey(p));
    if (!cur) return undefined;
  }
  return cur;
}
