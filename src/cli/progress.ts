/** The CLI's output: progress lines on a terminal, sizes for people, JSON reports for tools. */
import { writeFileAtomic } from '../util/atomic-file';

/** Progress lines on a terminal (stderr, redrawn in place); silent when stderr is not a TTY. */
export class Progress {
  private last = 0;
  private readonly tty = process.stderr.isTTY === true;
  constructor(private readonly label: string) {}
  update(text: string, force = false): void {
    if (!this.tty) return;
    const now = Date.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    process.stderr.write(`\r\x1b[K${this.label}: ${text}`);
  }
  done(text?: string): void {
    if (!this.tty) return;
    process.stderr.write(`\r\x1b[K${text ? `${this.label}: ${text}\n` : ''}`);
  }
}

export function human(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

/** `--output-json TARGET`: the report as JSON on stdout ('-') or in a file written atomically. */
export function emitJson(target: string | undefined, value: unknown): void {
  if (!target) return;
  const text = JSON.stringify(value, null, 2) + '\n';
  if (target === '-') process.stdout.write(text);
  else writeFileAtomic(target, text);
}
