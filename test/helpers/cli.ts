/** Run this checkout's CLI (dist/src/cli/main.js) as a child process, as a user would. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
export const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface RunCliOptions {
  /** NYDUS_TS_RUN_DIR for the command (its mount table and default sockets) */
  runDir: string;
  /** what to return: stdout only (JSON output) or stdout followed by stderr (default) */
  output?: 'stdout' | 'all';
  /** a daemon log whose tail a failure quotes */
  daemonLog?: string;
}

/** `nydus-ts ARGS…`; a failure throws with the command line, its output and the daemon log tail. */
export async function runCli(args: string[], o: RunCliOptions): Promise<string> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { env: { ...process.env, NYDUS_TS_RUN_DIR: o.runDir }, maxBuffer: 64 << 20 });
    return o.output === 'stdout' ? r.stdout : r.stdout + r.stderr;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    const log = o.daemonLog ? `\n--- daemon log ---\n${fs.readFileSync(o.daemonLog, 'utf8').slice(-4000)}` : '';
    throw new Error(`nydus-ts ${args.join(' ')} failed: ${err.stderr ?? ''}${err.stdout ?? ''}${err.message}${log}`);
  }
}
