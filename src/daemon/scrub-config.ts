/**
 * Settings of the periodic background scrub (scrub.ts): the `scrub` section of the daemon's
 * `--config` file and the daemon's flags (flags win). Off unless an interval is given.
 *
 *   "scrub": { "interval_secs": 86400, "rate_mb": 10 }
 *
 * `rate_mb` / `--scrub-rate` is in MB/s (10^6 bytes); 0 = unlimited.
 */
import * as fs from 'node:fs';
import { NydusError } from '../errors';

export const DEFAULT_PERIODIC_SCRUB_RATE_MB = 10;
export const DEFAULT_MANUAL_SCRUB_RATE_MB = 100;

function number(what: string, v: unknown, max: number): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > max) throw new NydusError('ERR_INVALID_ARGUMENT', `${what} ${JSON.stringify(v)}: expected a number from 0 to ${max}`);
  return n;
}

/** `--scrub-rate` / `cache scrub --rate`: MB/s → bytes/s (0 = unlimited). */
export function parseScrubRate(what: string, v: unknown): number {
  return Math.round(number(what, v, 1e6) * 1e6);
}

/** The periodic scrub to run, or undefined (off). */
export function resolveScrubConfig(configFile: string | undefined, flags: { scrubInterval?: string; scrubRate?: string }): { intervalMs: number; rateBytes: number } | undefined {
  let s: Record<string, unknown> = {};
  if (configFile) {
    let json: unknown;
    try {
      json = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    } catch (e) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${configFile}: ${(e as Error).message}`);
    }
    const sec = (json as { scrub?: unknown })?.scrub;
    if (sec !== undefined) {
      if (typeof sec !== 'object' || sec === null || Array.isArray(sec)) throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${configFile}: "scrub" must be an object like {"interval_secs": 86400, "rate_mb": 10}`);
      s = sec as Record<string, unknown>;
      for (const k of Object.keys(s)) if (k !== 'interval_secs' && k !== 'rate_mb') throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${configFile}: "scrub": unknown key "${k}" (known: interval_secs, rate_mb)`);
    }
  }
  const interval = flags.scrubInterval !== undefined ? number('--scrub-interval', flags.scrubInterval, 86400 * 365) : s.interval_secs !== undefined ? number('scrub.interval_secs', s.interval_secs, 86400 * 365) : 0;
  const rate = flags.scrubRate !== undefined ? parseScrubRate('--scrub-rate', flags.scrubRate) : s.rate_mb !== undefined ? parseScrubRate('scrub.rate_mb', s.rate_mb) : DEFAULT_PERIODIC_SCRUB_RATE_MB * 1e6;
  if (interval === 0) return undefined;
  if (interval < 1) throw new NydusError('ERR_INVALID_ARGUMENT', `scrub interval ${interval} s: at least 1 s (or 0: off)`);
  return { intervalMs: interval * 1000, rateBytes: rate };
}
