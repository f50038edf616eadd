/**
 * Snapshotter errors and their one mapping to gRPC status codes. containerd turns the codes
 * into its errdefs (NOT_FOUND → ErrNotFound, ALREADY_EXISTS → ErrAlreadyExists, …) and decides
 * on them, e.g. an ALREADY_EXISTS from Prepare means "the layer is there, skip the download".
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { NydusError, ErrorCode } from '../errors';

/** The containerd errdefs a snapshotter answers with (the gRPC code names). */
export type SnapshotStatus = 'NOT_FOUND' | 'ALREADY_EXISTS' | 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT' | 'UNAVAILABLE';

// NydusError's codes have no "exists" or "precondition"; the request was invalid for the
// current state, so those carry ERR_INVALID_ARGUMENT and the precise status beside it.
const BASE_CODE: Record<SnapshotStatus, ErrorCode> = {
  NOT_FOUND: 'ERR_NOT_FOUND',
  ALREADY_EXISTS: 'ERR_INVALID_ARGUMENT',
  FAILED_PRECONDITION: 'ERR_INVALID_ARGUMENT',
  INVALID_ARGUMENT: 'ERR_INVALID_ARGUMENT',
  UNAVAILABLE: 'ERR_DAEMON',
};

export class SnapshotError extends NydusError {
  readonly status: SnapshotStatus;
  constructor(status: SnapshotStatus, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(BASE_CODE[status], message, context, options);
    this.name = 'SnapshotError';
    this.status = status;
  }
}

export const notFound = (message: string, context?: Record<string, unknown>): SnapshotError => new SnapshotError('NOT_FOUND', message, context);
export const alreadyExists = (message: string, context?: Record<string, unknown>): SnapshotError => new SnapshotError('ALREADY_EXISTS', message, context);
export const failedPrecondition = (message: string, context?: Record<string, unknown>): SnapshotError => new SnapshotError('FAILED_PRECONDITION', message, context);
export const badArgument = (message: string, context?: Record<string, unknown>): SnapshotError => new SnapshotError('INVALID_ARGUMENT', message, context);

const BY_NYDUS_CODE: Partial<Record<ErrorCode, GrpcStatus>> = {
  ERR_NOT_FOUND: GrpcStatus.NOT_FOUND,
  ERR_INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  ERR_UNSUPPORTED: GrpcStatus.UNIMPLEMENTED,
  ERR_DAEMON: GrpcStatus.UNAVAILABLE,
  ERR_BACKEND: GrpcStatus.UNAVAILABLE,
};

/** The one place where errors become gRPC statuses; anything unexpected is INTERNAL (containerd: Unknown). */
export function toGrpcStatus(e: unknown): { code: GrpcStatus; details: string } {
  if (e instanceof SnapshotError) return { code: GrpcStatus[e.status], details: e.message };
  if (e instanceof NydusError) return { code: BY_NYDUS_CODE[e.code] ?? GrpcStatus.INTERNAL, details: e.message };
  return { code: GrpcStatus.INTERNAL, details: (e as Error)?.message ?? String(e) };
}
