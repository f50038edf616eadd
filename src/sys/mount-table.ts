/** The calling process's mount table, from /proc/self/mountinfo (octal escapes decoded). */
import * as fs from 'node:fs';

export interface MountInfo {
  fstype: string;
  source: string;
  /** the mounted subtree's root within its filesystem */
  root: string;
}

const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mount point → what is mounted there (the last mount on a path wins, as the kernel shows it). */
export function mountPoints(): Map<string, MountInfo> {
  const out = new Map<string, MountInfo>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    const f = pre.split(' ');
    const g = (post ?? '').split(' ');
    out.set(unescape(f[4]), { fstype: g[0], source: unescape(g[1] ?? ''), root: unescape(f[3]) });
  }
  return out;
}
