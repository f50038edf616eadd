/**
 * One error base class for the whole library (undici style): a stable `code` string that
 * callers and tests match on, a human message that names the input and the reason, and a
 * free-form `context` object for logs and `--output-json`.
 */
export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_BAD_BOOTSTRAP'
  | 'ERR_BAD_BLOB'
  | 'ERR_BAD_TAR'
  | 'ERR_BAD_MANIFEST'
  | 'ERR_DIGEST_MISMATCH'
  | 'ERR_UNSUPPORTED'
  | 'ERR_IO'
  | 'ERR_BACKEND'
  | 'ERR_NOT_FOUND'
  | 'ERR_KERNEL'
  | 'ERR_DAEMON';

export class NydusError extends Error {
  readonly code: ErrorCode;
  readonly context: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NydusError';
    this.code = code;
    this.context = context;
  }
}

/** A bootstrap that violates a RAFS v6 / EROFS rule; `where` names the structure or path. */
export class BadBootstrapError extends NydusError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('ERR_BAD_BOOTSTRAP', message, context);
    this.name = 'BadBootstrapError';
  }
}

export class BadBlobError extends NydusError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('ERR_BAD_BLOB', message, context);
    this.name = 'BadBlobError';
  }
}

export class BadTarError extends NydusError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('ERR_BAD_TAR', message, context);
    this.name = 'BadTarError';
  }
}

export class DigestMismatchError extends NydusError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('ERR_DIGEST_MISMATCH', message, context);
    this.name = 'DigestMismatchError';
  }
}

export function invalidArgument(message: string, context: Record<string, unknown> = {}): NydusError {
  return new NydusError('ERR_INVALID_ARGUMENT', message, context);
}
