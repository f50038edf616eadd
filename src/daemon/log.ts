/** A small leveled logger writing one line per event to stderr (or a file). */
import * as fs from 'node:fs';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LEVELS)[number];

export class Logger {
  private min: number;
  constructor(level: string = 'info', private readonly fd = 2, private readonly prefix = '') {
    this.min = Math.max(0, LEVELS.indexOf(level as LogLevel));
  }
  setLevel(level: string): void {
    const i = LEVELS.indexOf(level as LogLevel);
    if (i < 0) throw new Error(`unknown log level "${level}" (use ${LEVELS.join(', ')})`);
    this.min = i;
  }
  private out(level: LogLevel, msg: string, ctx?: Record<string, unknown>): void {
    if (LEVELS.indexOf(level) < this.min) return;
    const line = `${new Date().toISOString()} ${level.toUpperCase()} ${this.prefix}${msg}${ctx && Object.keys(ctx).length ? ' ' + JSON.stringify(ctx) : ''}\n`;
    try {
      fs.writeSync(this.fd, line);
    } catch {
      // logging must never take the daemon down
    }
  }
  trace(m: string, c?: Record<string, unknown>): void { this.out('trace', m, c); }
  debug(m: string, c?: Record<string, unknown>): void { this.out('debug', m, c); }
  info(m: string, c?: Record<string, unknown>): void { this.out('info', m, c); }
  warn(m: string, c?: Record<string, unknown>): void { this.out('warn', m, c); }
  error(m: string, c?: Record<string, unknown>): void { this.out('error', m, c); }
}
