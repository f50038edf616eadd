/**
 * Settings of the cache's life cycle: automatic GC (after an unregister, periodically) and culling
 * under disk pressure (high/low watermarks on the cache filesystem, for space and for files).
 * From the `cache` section of the daemon's `--config` file and the daemon's flags (flags win):
 *
 *   "cache": { "gc_on_unregister": true, "gc_interval_secs": 600, "gc_grace_secs": 600, "cull_interval_secs": 10,
 *              "space_high_watermark": "95%", "space_low_watermark": "90%",
 *              "files_high_watermark": "95%", "files_low_watermark": "90%" }
 *
 * A watermark is a percentage of the filesystem in use (space: as df(1) shows it; files: inodes);
 * a high watermark of "off" disables culling for that resource. Automatic GC passes keep the data
 * of an unreferenced blob for `gc_grace_secs` after its last read or last reference, whichever is
 * later (an image unmounted and mounted again soon, as a restarted container does, finds its cache
 * warm); `cache gc` does not wait.
 */
import * as fs from 'node:fs';
import { NydusError } from '../errors';

export interface Watermarks {
  /** start culling above this used ratio (0..1) */
  high: number;
  /** cull until at or below this used ratio */
  low: number;
}

export interface CacheLifecycleConfig {
  /** run a GC after an image is unregistered (and after its last mount goes) */
  gcOnUnregister: boolean;
  /** seconds between periodic GCs (0: none) */
  gcIntervalSecs: number;
  /** automatic GCs keep unreferenced data this many seconds after its last read or reference */
  gcGraceSecs: number;
  /** seconds between checks of the watermarks (0: only on demand) */
  cullIntervalSecs: number;
  space?: Watermarks;
  files?: Watermarks;
}

export const DEFAULT_CACHE_CONFIG: CacheLifecycleConfig = {
  gcOnUnregister: true, gcIntervalSecs: 600, gcGraceSecs: 600, cullIntervalSecs: 10,
  space: { high: 0.95, low: 0.9 }, files: { high: 0.95, low: 0.9 },
};

/** What the daemon's flags give (undefined: not given). */
export interface CacheFlags {
  cacheHighWatermark?: string;
  cacheLowWatermark?: string;
  cacheFilesHighWatermark?: string;
  cacheFilesLowWatermark?: string;
  gcInterval?: string;
  gcGrace?: string;
  cullInterval?: string;
  gcOnUnregister?: boolean;
}

/** "90%", "90" or "87.5%" → 0.9 / 0.875; "off" → null. */
export function parsePercent(what: string, v: unknown): number | null {
  if (typeof v === 'string' && v.trim().toLowerCase() === 'off') return null;
  const m = typeof v === 'number' ? String(v) : typeof v === 'string' ? v.trim().replace(/%$/, '') : '';
  const n = Number(m);
  if (m === '' || !Number.isFinite(n) || n <= 0 || n >= 100) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${what} ${JSON.stringify(v)}: expected a percentage of the filesystem in use, above 0 and below 100 (e.g. "90%"), or "off"`);
  }
  return n / 100;
}

function parseSecs(what: string, v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > 86400 * 365) throw new NydusError('ERR_INVALID_ARGUMENT', `${what} ${JSON.stringify(v)}: expected seconds (0 = off)`);
  return n;
}

function pairOf(what: 'space' | 'files', high: unknown, low: unknown, dflt: Watermarks | undefined): Watermarks | undefined {
  if (high === undefined && low === undefined) return dflt;
  const flag = what === 'space' ? '--cache' : '--cache-files';
  const hName = `${flag}-high-watermark (${what}_high_watermark)`;
  const lName = `${flag}-low-watermark (${what}_low_watermark)`;
  const h = high === undefined ? dflt?.high ?? null : parsePercent(hName, high);
  if (h === null) {
    if (low !== undefined && parsePercent(lName, low) !== null) throw new NydusError('ERR_INVALID_ARGUMENT', `${lName} is given but ${hName} is off`);
    return undefined;
  }
  const l = low === undefined ? Math.max(0.01, Math.min(dflt?.low ?? h - 0.05, h - 0.01)) : parsePercent(lName, low);
  if (l === null || l >= h) throw new NydusError('ERR_INVALID_ARGUMENT', `${lName} ${l === null ? 'off' : `${+(l * 100).toFixed(3)}%`} must be below ${hName} ${+(h * 100).toFixed(3)}%`);
  return { high: h, low: l };
}

/** The `cache` section of a daemon config file (undefined when the file has none). */
export function readCacheSection(file: string): Record<string, unknown> | undefined {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${file}: ${(e as Error).message}`);
  }
  const c = (json as { cache?: unknown })?.cache;
  if (c === undefined) return undefined;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${file}: "cache" must be an object`);
  return c as Record<string, unknown>;
}

const KEYS = ['gc_on_unregister', 'gc_interval_secs', 'gc_grace_secs', 'cull_interval_secs', 'space_high_watermark', 'space_low_watermark', 'files_high_watermark', 'files_low_watermark'];

/** Combine the config file's `cache` section and the flags (flags win) over the defaults. */
export function resolveCacheConfig(section: Record<string, unknown> | undefined, flags: CacheFlags): CacheLifecycleConfig {
  const s = section ?? {};
  for (const k of Object.keys(s)) if (!KEYS.includes(k)) throw new NydusError('ERR_INVALID_ARGUMENT', `config "cache": unknown key "${k}" (known: ${KEYS.join(', ')})`);
  if (s.gc_on_unregister !== undefined && typeof s.gc_on_unregister !== 'boolean') throw new NydusError('ERR_INVALID_ARGUMENT', 'config "cache": gc_on_unregister must be true or false');
  const d = DEFAULT_CACHE_CONFIG;
  return {
    gcOnUnregister: flags.gcOnUnregister === false ? false : (s.gc_on_unregister as boolean | undefined) ?? d.gcOnUnregister,
    gcIntervalSecs: flags.gcInterval !== undefined ? parseSecs('--gc-interval', flags.gcInterval) : s.gc_interval_secs !== undefined ? parseSecs('cache.gc_interval_secs', s.gc_interval_secs) : d.gcIntervalSecs,
    gcGraceSecs: flags.gcGrace !== undefined ? parseSecs('--gc-grace', flags.gcGrace) : s.gc_grace_secs !== undefined ? parseSecs('cache.gc_grace_secs', s.gc_grace_secs) : d.gcGraceSecs,
    cullIntervalSecs: flags.cullInterval !== undefined ? parseSecs('--cull-interval', flags.cullInterval) : s.cull_interval_secs !== undefined ? parseSecs('cache.cull_interval_secs', s.cull_interval_secs) : d.cullIntervalSecs,
    space: pairOf('space', flags.cacheHighWatermark ?? s.space_high_watermark, flags.cacheLowWatermark ?? s.space_low_watermark, d.space),
    files: pairOf('files', flags.cacheFilesHighWatermark ?? s.files_high_watermark, flags.cacheFilesLowWatermark ?? s.files_low_watermark, d.files),
  };
}
