/**
 * Where a benchmark's CPU goes: `perf record` of the whole machine (or VM) around a case and its
 * top symbols, and a summary of a node --cpu-prof profile (self time per function).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { logger, REPO } from './harness';

const log = logger('profile');

export async function startPerf(file: string): Promise<ChildProcess> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const p = spawn('perf', ['record', '-a', '-e', 'cpu-clock', '-F', '499', '-o', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  p.on('error', (e) => log(`perf: ${e.message}`));
  await new Promise((r) => setTimeout(r, 1500)); // let it start sampling
  if (p.exitCode !== null) log(`perf record exited early: ${err.trim()}`);
  return p;
}

export async function stopPerf(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGINT');
  await Promise.race([done, new Promise((r) => setTimeout(r, 30_000))]);
}

export function perfReport(file: string, lines = 45): string {
  const r = spawnSync('perf', ['report', '-i', file, '--stdio', '--sort', 'comm,dso,sym', '--percent-limit', '0.7'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) return `perf report failed: ${r.stderr}`;
  return r.stdout.split('\n').filter((l) => l.trim() && !l.startsWith('#')).slice(0, lines).join('\n');
}

interface ProfNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: ProfNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }

export function summariseProfile(file: string, top = 25): { file: string; total_ms: number; functions: Array<{ name: string; self_ms: number; pct: number }> } {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
  const byName = new Map<string, number>();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const url = n.callFrame.url.replace(/^file:\/\//, '').replace(REPO + '/', '');
    const name = `${n.callFrame.functionName || '(anonymous)'} ${url ? `${url}:${n.callFrame.lineNumber + 1}` : ''}`.trim();
    byName.set(name, (byName.get(name) ?? 0) + us);
    total += us;
  }
  const fns = [...byName].sort((x, y) => y[1] - x[1]).slice(0, top).map(([name, us]) => ({ name, self_ms: us / 1000, pct: (100 * us) / total }));
  return { file, total_ms: total / 1000, functions: fns };
}
