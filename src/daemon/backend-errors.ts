/**
 * The kind of a failed backend request, for the metrics (`backend_errors_by_kind`, Prometheus
 * `nydus_ts_backend_errors_total{kind=…}`): few values, so the label stays small.
 */
import { NydusError } from '../errors';

export type BackendErrorKind = 'http_4xx' | 'http_5xx' | 'timeout' | 'network' | 'not_found' | 'other';

export function backendErrorKind(e: unknown): BackendErrorKind {
  const status = e instanceof NydusError ? e.context.status : undefined;
  if (typeof status === 'number' && status >= 400) return status >= 500 ? 'http_5xx' : status === 404 ? 'not_found' : 'http_4xx';
  if (e instanceof NydusError && e.code === 'ERR_NOT_FOUND') return 'not_found';
  const msg = e instanceof Error ? e.message.toLowerCase() : String(e).toLowerCase();
  if (msg.includes('timeout') || msg.includes('timed out')) return 'timeout';
  if (e instanceof NydusError && e.context.retryable === true) return 'network';
  if (/econnrefused|econnreset|ehostunreach|enetunreach|epipe|socket|connect/.test(msg)) return 'network';
  return 'other';
}
