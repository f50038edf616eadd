/**
 * OCI image layouts for the benchmarks, built from tar files (gzip layers, a config with
 * diff_ids and history, a manifest tagged `latest`), and a cache of them under .cache/bench that
 * is rebuilt when what it was built from changes (a stamp: the source tar's path, size and
 * mtime, and whatever else the builder names).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import * as zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { MiB } from './harness';

export interface LayoutLayer { digest: string; size: number; diff_id: string; uncompressed: number; created_by?: string }

export interface LayoutInfo {
  dir: string;
  tag: string;
  manifest_digest: string;
  layers: LayoutLayer[];
}

/** written into every layout: what it holds (read back by the VM's benchmark and the cache) */
export const LAYOUT_INFO = 'bench-layout.json';
const LAYOUT_STAMP = 'bench-layout-source.json';

export const ROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** GNU tar options to unpack a layer as a runtime does (owners, modes, xattrs) */
export const TAR_X = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--same-owner', '--same-permissions'];
/** GNU tar options to make a reproducible layer */
export const TAR_C = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--sort=name', '--format=posix', '--pax-option=delete=atime,delete=ctime'];

function writeBlob(layoutDir: string, data: Buffer): string {
  const hex = crypto.createHash('sha256').update(data).digest('hex');
  fs.writeFileSync(path.join(layoutDir, 'blobs', 'sha256', hex), data);
  return `sha256:${hex}`;
}

/** gzip `tarFile` (level 6) into the layout's blobs; digest, size, diff_id. */
async function gzipIntoLayout(tarFile: string, layoutDir: string): Promise<LayoutLayer> {
  const tmp = path.join(layoutDir, `.layer-${process.pid}.tmp`);
  const diff = crypto.createHash('sha256');
  const comp = crypto.createHash('sha256');
  let size = 0;
  let uncompressed = 0;
  await pipeline(
    fs.createReadStream(tarFile, { highWaterMark: MiB }),
    new Transform({ transform(c: Buffer, _e, cb) { diff.update(c); uncompressed += c.length; cb(null, c); } }),
    zlib.createGzip({ level: 6 }),
    new Transform({ transform(c: Buffer, _e, cb) { comp.update(c); size += c.length; cb(null, c); } }),
    fs.createWriteStream(tmp),
  );
  const hex = comp.digest('hex');
  fs.renameSync(tmp, path.join(layoutDir, 'blobs', 'sha256', hex));
  return { digest: `sha256:${hex}`, size, diff_id: `sha256:${diff.digest('hex')}`, uncompressed };
}

/**
 * A fresh OCI layout at `layoutDir` (tag `latest`) with one gzip layer per tar, bottom first.
 * `cmd`: the image's default command.
 */
export async function writeLayout(layoutDir: string, tars: Array<{ file: string; createdBy: string }>, o: { cmd: string[]; log?: (m: string) => void }): Promise<LayoutInfo> {
  fs.rmSync(layoutDir, { recursive: true, force: true });
  fs.mkdirSync(path.join(layoutDir, 'blobs', 'sha256'), { recursive: true });
  const layers: LayoutLayer[] = [];
  for (const t of tars) {
    o.log?.(`gzip ${path.basename(t.file)} (${(fs.statSync(t.file).size / MiB).toFixed(1)} MiB)`);
    layers.push({ ...(await gzipIntoLayout(t.file, layoutDir)), created_by: t.createdBy });
  }
  const config = {
    created: '2024-01-01T00:00:00Z', architecture: 'amd64', os: 'linux',
    config: { Env: [`PATH=${ROOT_PATH}`], Cmd: o.cmd, WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diff_id) },
    history: tars.map((t) => ({ created: '2024-01-01T00:00:00Z', created_by: t.createdBy })),
  };
  const configRaw = Buffer.from(JSON.stringify(config));
  const manifest = {
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: writeBlob(layoutDir, configRaw), size: configRaw.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
  };
  const manifestRaw = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = writeBlob(layoutDir, manifestRaw);
  fs.writeFileSync(path.join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(path.join(layoutDir, 'index.json'), JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [{ mediaType: manifest.mediaType, digest: manifestDigest, size: manifestRaw.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
  }));
  const info: LayoutInfo = { dir: layoutDir, tag: 'latest', manifest_digest: manifestDigest, layers };
  fs.writeFileSync(path.join(layoutDir, LAYOUT_INFO), JSON.stringify(info, null, 2) + '\n');
  return info;
}

/** The info a layout was written with, its `dir` set to where it is now. */
export function readLayout(dir: string): LayoutInfo {
  const info = JSON.parse(fs.readFileSync(path.join(dir, LAYOUT_INFO), 'utf8')) as LayoutInfo;
  return { ...info, dir };
}

/** What a cached layout depends on: a source file (path, size, mtime) and anything else. */
export function fileStamp(file: string): { file: string; size: number; mtime_ms: number } {
  const st = fs.statSync(file);
  return { file: path.resolve(file), size: st.size, mtime_ms: Math.floor(st.mtimeMs) };
}

/**
 * The layout cached at `dir` if it was built from `stamp` (compared as JSON), else `build(dir)`
 * and record the stamp. `rebuild` forces a build.
 */
export async function cachedLayout(dir: string, stamp: unknown, build: (dir: string) => Promise<LayoutInfo>, o: { rebuild?: boolean; log: (m: string) => void }): Promise<LayoutInfo> {
  const stampFile = path.join(dir, LAYOUT_STAMP);
  const want = JSON.stringify(stamp);
  if (!o.rebuild && fs.existsSync(path.join(dir, LAYOUT_INFO)) && fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8').trim() === want) {
    o.log(`using the cached OCI layout ${dir}`);
    return readLayout(dir);
  }
  o.log(`building the OCI layout ${dir}`);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const t0 = Date.now();
  const info = await build(dir);
  fs.writeFileSync(stampFile, want + '\n');
  o.log(`OCI layout ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${info.layers.map((l) => `${l.digest.slice(7, 19)} ${(l.size / MiB).toFixed(1)} MiB gzip (${(l.uncompressed / MiB).toFixed(1)} MiB tar)`).join(', ')}`);
  return info;
}

/**
 * An OCI layout of the rootfs tar (scripts/make-rootfs.sh): one gzip layer of the tar as it
 * is, or (layers = 2, or slim) the tree unpacked and re-tarred: everything but ./var, then
 * ./var. `slim` leaves out apt's lists and cached .debs, as Docker's debian images do. Needs
 * root (ownership) when it unpacks.
 */
export async function buildRootfsLayout(rootfsTar: string, layoutDir: string, opts: { layers: number; slim: boolean; log?: (m: string) => void }): Promise<LayoutInfo> {
  const scratch = fs.mkdtempSync(path.join(path.dirname(layoutDir), `.${path.basename(layoutDir)}-work-`));
  try {
    const tars: Array<{ file: string; createdBy: string }> = [];
    if (opts.layers === 1 && !opts.slim) {
      tars.push({ file: rootfsTar, createdBy: 'debootstrap --variant=minbase bookworm (scripts/make-rootfs.sh)' });
    } else {
      const tree = path.join(scratch, 'rootfs');
      fs.mkdirSync(tree);
      opts.log?.(`unpacking ${rootfsTar}`);
      execFileSync('tar', [...TAR_X, '-C', tree, '-xf', rootfsTar], { stdio: ['ignore', 'ignore', 'inherit'] });
      const mk = (name: string, args: string[], createdBy: string): void => {
        const file = path.join(scratch, name);
        execFileSync('tar', ['-cf', file, ...TAR_C, '--anchored', '--wildcards', ...(opts.slim ? SLIM_EXCLUDES : []), '-C', tree, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
        tars.push({ file, createdBy });
      };
      if (opts.layers === 1) mk('layer.tar', ['.'], `debootstrap --variant=minbase bookworm${opts.slim ? ' (slim)' : ''}`);
      else {
        mk('base.tar', ['--exclude=./var', '.'], 'debootstrap --variant=minbase bookworm: everything but /var');
        mk('var.tar', ['./var'], `debootstrap --variant=minbase bookworm: /var${opts.slim ? ' (slim)' : ''}`);
      }
    }
    return await writeLayout(layoutDir, tars, { cmd: ['bash'], log: opts.log });
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** tar excludes of a slim rootfs: apt's package lists and downloaded .debs */
export const SLIM_EXCLUDES = ['--exclude=./var/lib/apt/lists/*_*', '--exclude=./var/cache/apt/archives/*.deb'];
