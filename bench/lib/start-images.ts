/**
 * The start-up benchmark's images, built here from Debian bookworm packages and cached under
 * ${NYDUS_TS_CACHE:-.cache}/bench/start-<name> (rebuilt when the rootfs tar or the definition
 * changes):
 *
 *  - minbase: the rootfs of scripts/make-rootfs.sh as one gzip layer, as the pull benchmark
 *    has it (the same cache directory); workload `apt-cache policy`;
 *  - python:  a slim minbase layer (no apt lists, no .debs, like Docker's debian:bookworm-slim)
 *    and one layer of `apt-get install --no-install-recommends python3 …` (a RUN step's diff:
 *    what dpkg wrote, apt's lists and caches cleaned); workload
 *    `python3 -c 'import json, sqlite3, asyncio; print("ok")'`;
 *  - node:    the same with Debian's nodejs and npm; workload
 *    `node -e 'console.log(require("os").cpus().length)'`.
 *
 * A package layer is made like a container build step: an overlay (lower: the slim base,
 * upper: empty) is mounted, apt-get runs in a chroot of it (/proc, /dev and the host's
 * resolv.conf bound in, the mirror from the base's sources.list), and the upper directory
 * becomes the layer, overlayfs whiteouts (0:0 character devices, trusted.overlay.opaque
 * directories) turned into OCI `.wh.` entries. Needs root and the Debian mirror.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CACHE_DIR, sh, unmountAll, requireCommands } from './harness';
import { buildRootfsLayout, cachedLayout, fileStamp, LayoutInfo, ROOT_PATH, SLIM_EXCLUDES, TAR_C, TAR_X, writeLayout } from './oci-layout';

export type ImageName = 'python' | 'node' | 'minbase';
export const IMAGE_NAMES: readonly ImageName[] = ['python', 'node', 'minbase'];

export interface ImageDef {
  name: ImageName;
  title: string;
  /** the container's command (no shell) */
  workload: string[];
  /** apt packages of the second layer; none: the one-layer minbase */
  packages?: string[];
}

export const IMAGES: Record<ImageName, ImageDef> = {
  python: {
    name: 'python',
    title: 'Python 3.11 (Debian bookworm slim + python3, pip, numpy, pandas, yaml, requests, cryptography)',
    workload: ['python3', '-c', 'import json, sqlite3, asyncio; print("ok")'],
    packages: ['python3', 'python3-pip', 'python3-numpy', 'python3-pandas', 'python3-yaml', 'python3-requests', 'python3-cryptography'],
  },
  node: {
    name: 'node',
    title: "Node.js 18 (Debian bookworm slim + Debian's nodejs and npm)",
    workload: ['node', '-e', 'console.log(require("os").cpus().length)'],
    packages: ['nodejs', 'npm'],
  },
  minbase: {
    name: 'minbase',
    title: 'Debian bookworm minbase (debootstrap, one layer)',
    workload: ['apt-cache', 'policy'],
  },
};

/** bump when the way images are built changes: cached layouts are rebuilt */
const BUILD_VERSION = 1;

/** The image's OCI layout, from the cache or built now from the rootfs tar. */
export async function ensureImage(def: ImageDef, rootfsTar: string, o: { rebuild?: boolean; log: (m: string) => void }): Promise<LayoutInfo> {
  if (!def.packages) {
    // shared with the pull benchmark's one-layer image
    return cachedLayout(path.join(CACHE_DIR, 'bench', 'pull-oci-1l'), { tar: fileStamp(rootfsTar), layers: 1, slim: false },
      (dir) => buildRootfsLayout(rootfsTar, dir, { layers: 1, slim: false, log: o.log }), o);
  }
  const stamp = { tar: fileStamp(rootfsTar), packages: def.packages, workload: def.workload, version: BUILD_VERSION };
  return cachedLayout(path.join(CACHE_DIR, 'bench', `start-${def.name}`), stamp, (dir) => buildPackageImage(def, rootfsTar, dir, o.log), o);
}

async function buildPackageImage(def: ImageDef, rootfsTar: string, layoutDir: string, log: (m: string) => void): Promise<LayoutInfo> {
  requireCommands([['getfattr', 'attr'], ['chroot', 'coreutils'], ['tar', 'tar']]);
  const scratch = fs.mkdtempSync(path.join(path.dirname(layoutDir), `.${path.basename(layoutDir)}-work-`));
  try {
    // the slim base: the rootfs without apt's lists and downloaded .debs
    const base = path.join(scratch, 'base');
    fs.mkdirSync(base);
    log(`${def.name}: unpacking ${rootfsTar}`);
    sh('tar', [...TAR_X, '-C', base, '-xf', rootfsTar]);
    const baseTar = path.join(scratch, 'base.tar');
    sh('tar', ['-cf', baseTar, ...TAR_C, '--anchored', '--wildcards', ...SLIM_EXCLUDES, '-C', base, '.']);
    for (const d of ['var/lib/apt/lists', 'var/cache/apt/archives']) {
      for (const e of fs.readdirSync(path.join(base, d))) if (e.includes('_')) fs.rmSync(path.join(base, d, e), { force: true });
    }
    // the package layer: apt-get in a chroot of an overlay over the base
    const upper = path.join(scratch, 'upper');
    const merged = path.join(scratch, 'merged');
    for (const d of [upper, merged, path.join(scratch, 'ovl-work')]) fs.mkdirSync(d);
    sh('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${base},upperdir=${upper},workdir=${path.join(scratch, 'ovl-work')},index=off,metacopy=off,redirect_dir=off,xino=off`, merged]);
    try {
      sh('mount', ['-t', 'proc', 'proc', path.join(merged, 'proc')]);
      sh('mount', ['--bind', '/dev', path.join(merged, 'dev')]);
      sh('mount', ['--bind', '/etc/resolv.conf', path.join(merged, 'etc', 'resolv.conf')]);
      // no service starts in a build step
      const policy = path.join(merged, 'usr', 'sbin', 'policy-rc.d');
      fs.writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
      const script = `set -e; apt-get update -q; apt-get install -y -q --no-install-recommends ${def.packages!.join(' ')}; apt-get clean; rm -rf /var/lib/apt/lists/*`;
      log(`${def.name}: apt-get install ${def.packages!.join(' ')} (in a chroot; a few minutes the first time)`);
      sh('chroot', [merged, '/bin/sh', '-c', script], { env: { PATH: ROOT_PATH, HOME: '/root', LANG: 'C', DEBIAN_FRONTEND: 'noninteractive' }, stdio: 'inherit' });
      fs.rmSync(policy);
    } finally {
      unmountAll(merged);
    }
    const whiteouts = overlayToOci(upper);
    log(`${def.name}: package layer: ${sh('du', ['-sh', upper]).split('\t')[0]}, ${whiteouts} whiteout(s)`);
    const pkgTar = path.join(scratch, 'packages.tar');
    sh('tar', ['-cf', pkgTar, ...TAR_C, '--xattrs-exclude=trusted.overlay.*', '-C', upper, '.']);
    return await writeLayout(layoutDir, [
      { file: baseTar, createdBy: 'debootstrap --variant=minbase bookworm, without apt lists and .debs (slim)' },
      { file: pkgTar, createdBy: `RUN apt-get install --no-install-recommends ${def.packages!.join(' ')} && apt-get clean && rm -rf /var/lib/apt/lists/*` },
    ], { cmd: def.workload, log });
  } finally {
    unmountAll(scratch);
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/**
 * Turn an overlayfs upper directory into an OCI layer tree in place: a whiteout (character
 * device 0:0) becomes an empty `.wh.NAME` file, an opaque directory (trusted.overlay.opaque=y)
 * gets a `.wh..wh..opq` entry. Returns how many of either it made.
 */
function overlayToOci(upper: string): number {
  let n = 0;
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isCharacterDevice() && fs.lstatSync(p).rdev === 0) {
        fs.rmSync(p);
        fs.writeFileSync(path.join(dir, `.wh.${e.name}`), '', { mode: 0o600 });
        n++;
      } else if (e.isDirectory()) walk(p);
    }
  };
  walk(upper);
  const dump = sh('getfattr', ['-R', '-h', '-P', '--absolute-names', '-d', '-m', '^trusted\\.overlay\\.opaque$', upper]);
  let file = '';
  for (const line of dump.split('\n')) {
    if (line.startsWith('# file: ')) file = line.slice(8);
    else if (/^trusted\.overlay\.opaque="y"$/.test(line) && file) {
      fs.writeFileSync(path.join(file, '.wh..wh..opq'), '', { mode: 0o600 });
      n++;
    }
  }
  return n;
}
