/**
 * containerd's filter syntax, as List receives it (containerd/filters):
 *
 *   filter    := selector ("," selector)*          selectors are ANDed
 *   selector  := fieldpath [("==" | "!=" | "~=" | "@=") value]   (no operator: the field is present)
 *   fieldpath := field ("." field)*                 field: identifier or "quoted"
 *   value     := "quoted" | /regexp/ | bare characters up to the next ","
 *
 * As in containerd, `!=`, `~=` (regexp) and `@=` (contains) compare an absent field as "".
 * Several filter strings are ORed. Snapshot fields: name, parent, kind (active|view|committed),
 * labels.<key>. containerd re-checks every result itself, so this only has to be right, not
 * complete; the forms it sends are `labels."containerd.io/snapshot.ref"==sha256:…` and
 * `parent=="k8s.io/3/sha256:…"`.
 */
import { badArgument } from './errors';

export interface SnapshotFields {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}

interface Selector {
  path: string[];
  op?: '==' | '!=' | '~=' | '@=';
  value?: string;
  regexp?: RegExp;
}

export type SnapshotFilter = (s: SnapshotFields) => boolean;

/** Compile the request's filter strings; an empty list matches everything. */
export function compileFilters(filters: string[]): SnapshotFilter {
  const alternatives = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (alternatives.length === 0) return () => true;
  return (s) => alternatives.some((selectors) => selectors.every((sel) => matches(sel, s)));
}

function fieldValue(path: string[], s: SnapshotFields): string | undefined {
  const [head, ...rest] = path;
  switch (head) {
    case 'name':
      return rest.length ? undefined : s.name;
    case 'parent':
      return rest.length ? undefined : s.parent;
    case 'kind':
      return rest.length ? undefined : s.kind;
    case 'labels': {
      const key = rest.join('.');
      return key && Object.hasOwn(s.labels, key) ? s.labels[key] : undefined;
    }
    default:
      return undefined;
  }
}

function matches(sel: Selector, s: SnapshotFields): boolean {
  const v = fieldValue(sel.path, s);
  switch (sel.op) {
    case undefined:
      return v !== undefined;
    case '==':
      return v !== undefined && v === sel.value;
    case '!=':
      return (v ?? '') !== sel.value;
    case '~=':
      return sel.regexp!.test(v ?? '');
    case '@=':
      return (v ?? '').includes(sel.value!);
  }
}

/** One filter string → its ANDed selectors; errors name the filter and the position. */
function parseFilter(text: string): Selector[] {
  let i = 0;
  const fail = (why: string): never => {
    throw badArgument(`filter ${JSON.stringify(text)}: ${why} at offset ${i}`, { filter: text });
  };
  const skipSpace = (): void => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const quoted = (close: string): string => {
    // a Go-style quoted string ("…" with \-escapes) or a /regexp/ (only \/ is unescaped)
    i++;
    let out = '';
    while (i < text.length && text[i] !== close) {
      if (text[i] === '\\' && i + 1 < text.length) {
        const c = text[++i];
        if (close === '/') out += c === '/' ? '/' : '\\' + c;
        else out += c === 'n' ? '\n' : c === 't' ? '\t' : c === 'r' ? '\r' : c;
      } else out += text[i];
      i++;
    }
    if (text[i] !== close) fail(`unterminated ${close}`);
    i++;
    return out;
  };
  const field = (): string => {
    if (text[i] === '"') return quoted('"');
    const m = /^[A-Za-z_][A-Za-z0-9_\-]*/.exec(text.slice(i));
    if (!m) fail('expected a field name');
    i += m![0].length;
    return m![0];
  };
  const selectors: Selector[] = [];
  for (;;) {
    skipSpace();
    const path = [field()];
    while (text[i] === '.') {
      i++;
      path.push(field());
    }
    skipSpace();
    const sel: Selector = { path };
    const op = text.slice(i, i + 2);
    if (op === '==' || op === '!=' || op === '~=' || op === '@=') {
      i += 2;
      skipSpace();
      sel.op = op;
      if (text[i] === '"' || text[i] === '/') sel.value = quoted(text[i]);
      else {
        const start = i;
        while (i < text.length && text[i] !== ',') i++;
        sel.value = text.slice(start, i).trim();
        if (!sel.value) fail('expected a value');
      }
      if (op === '~=') {
        try {
          sel.regexp = new RegExp(sel.value);
        } catch (e) {
          fail(`bad regular expression: ${(e as Error).message}`);
        }
      }
    }
    selectors.push(sel);
    skipSpace();
    if (i === text.length) return selectors;
    if (text[i] !== ',') fail(`unexpected ${JSON.stringify(text[i])}`);
    i++;
  }
}
