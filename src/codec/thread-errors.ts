/**
 * Errors across worker threads: a NydusError (or BadBlobError, DigestMismatchError) keeps its
 * class, code and context; other errors their name and message; stacks of both threads.
 */
import { BadBlobError, DigestMismatchError, NydusError, type ErrorCode } from '../errors';

export interface SerializedError {
  name: string;
  code?: string;
  message: string;
  context?: Record<string, unknown>;
  stack?: string;
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof NydusError) {
    let context: Record<string, unknown> | undefined = err.context;
    try {
      structuredClone(context);
    } catch {
      context = undefined;
    }
    return { name: err.name, code: err.code, message: err.message, context, stack: err.stack };
  }
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack };
  return { name: 'Error', message: String(err) };
}

export function reviveError(e: SerializedError, where = 'chunk worker'): Error {
  let err: Error;
  const ctx = e.context ?? {};
  if (e.name === 'BadBlobError') err = new BadBlobError(e.message, ctx);
  else if (e.name === 'DigestMismatchError') err = new DigestMismatchError(e.message, ctx);
  else if (e.code) {
    err = new NydusError(e.code as ErrorCode, e.message, ctx);
    err.name = e.name;
  } else {
    err = new Error(e.message);
    err.name = e.name;
  }
  if (e.stack) err.stack = `${e.stack}\n    -- in ${where}, rethrown in the calling thread --\n${err.stack?.split('\n').slice(1).join('\n') ?? ''}`;
  return err;
}
