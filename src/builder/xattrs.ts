/** Which xattrs an EROFS image can hold, and what the builder does with the rest. */
import { XATTR_PREFIXES } from '../format/constants';
import { NO_XATTRS } from '../tree/node';

export function isStorableXattr(name: string): boolean {
  return XATTR_PREFIXES.some((p) => (p.whole ? name === p.prefix : name.startsWith(p.prefix) && name.length > p.prefix.length));
}

/**
 * Keep the xattrs EROFS can store (user., trusted., security., system.posix_acl_*). Others — e.g.
 * namespace-less macOS names in tars, or system.nfs4_acl — are dropped with a warning naming
 * the entry, as GNU tar does on extraction, instead of failing the whole build.
 */
export function storableXattrs(m: Map<string, Buffer>, where: string, warn: (msg: string) => void): Map<string, Buffer> {
  if (m.size === 0) return NO_XATTRS;
  const out = new Map<string, Buffer>();
  for (const [k, v] of m) {
    if (!isStorableXattr(k)) warn(`${where}: dropped xattr "${k}" (EROFS stores only user., trusted., security. and POSIX ACL xattrs)`);
    else if (v.length > 0xffff) warn(`${where}: dropped xattr "${k}" (value of ${v.length} bytes exceeds 65535)`);
    else out.set(k, v);
  }
  return out.size ? out : NO_XATTRS;
}
