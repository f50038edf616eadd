/**
 * The Snapshots gRPC service over a Snapshotter: request/response shapes in, errors out as
 * gRPC statuses (errors.ts). containerd's proxy plugin is the client.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSnapshotsProto, CommitRequest, KeyRequest, ListRequest, PrepareOrViewRequest, UpdateRequest, UsageResponse, WireInfo, WireKind, WireMount, WireTimestamp } from './proto';
import { toGrpcStatus } from './errors';
import type { Snapshotter, SnapshotInfo, Mount } from './snapshotter';

type Log = (level: 'debug' | 'info' | 'warn', msg: string, ctx?: Record<string, unknown>) => void;

const KIND_TO_WIRE: Record<SnapshotInfo['kind'], WireKind> = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' };

export function timestampOf(ms: number): WireTimestamp {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

export function wireInfo(i: SnapshotInfo): WireInfo {
  return { name: i.name, parent: i.parent, kind: KIND_TO_WIRE[i.kind], created_at: timestampOf(i.createdMs), updated_at: timestampOf(i.updatedMs), labels: i.labels };
}

function wireMounts(mounts: Mount[]): WireMount[] {
  return mounts.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options }));
}

/** A unary handler: run `fn`, answer its result or its error as a status. */
function unary<Req, Res>(method: string, log: Log, fn: (req: Req) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const req = call.request;
    Promise.resolve()
      .then(() => fn(req))
      .then(
        (res) => callback(null, res),
        (e) => {
          const status = toGrpcStatus(e);
          log(status.code === grpc.status.INTERNAL ? 'warn' : 'debug', `${method}: ${grpc.status[status.code]}: ${status.details}`);
          callback({ code: status.code, details: status.details });
        },
      );
  };
}

export function createSnapshotsServer(sn: Snapshotter, log: Log): grpc.Server {
  const { service } = loadSnapshotsProto();
  const server = new grpc.Server();
  const empty = {};
  server.addService(service, {
    Prepare: unary<PrepareOrViewRequest, { mounts: WireMount[] }>('Prepare', log, async (r) => ({ mounts: wireMounts(await sn.prepare(r.key, r.parent, r.labels ?? {})) })),
    View: unary<PrepareOrViewRequest, { mounts: WireMount[] }>('View', log, async (r) => ({ mounts: wireMounts(await sn.view(r.key, r.parent, r.labels ?? {})) })),
    Mounts: unary<KeyRequest, { mounts: WireMount[] }>('Mounts', log, async (r) => ({ mounts: wireMounts(await sn.mounts(r.key)) })),
    Commit: unary<CommitRequest, object>('Commit', log, async (r) => {
      await sn.commit(r.name, r.key, r.labels ?? {});
      return empty;
    }),
    Remove: unary<KeyRequest, object>('Remove', log, async (r) => {
      await sn.remove(r.key);
      return empty;
    }),
    Stat: unary<KeyRequest, { info: WireInfo }>('Stat', log, (r) => ({ info: wireInfo(sn.stat(r.key)) })),
    Update: unary<UpdateRequest, { info: WireInfo }>('Update', log, async (r) => {
      const info = r.info ?? { name: '', labels: {} };
      return { info: wireInfo(await sn.update(info.name, info.labels ?? {}, r.update_mask?.paths ?? [])) };
    }),
    List: (call: grpc.ServerWritableStream<ListRequest, { info: WireInfo[] }>) => {
      try {
        for (const batch of sn.list(call.request.filters ?? [])) call.write({ info: batch.map(wireInfo) });
        call.end();
      } catch (e) {
        const status = toGrpcStatus(e);
        log('debug', `List: ${grpc.status[status.code]}: ${status.details}`);
        call.emit('error', { code: status.code, details: status.details });
      }
    },
    Usage: unary<KeyRequest, UsageResponse>('Usage', log, (r) => sn.usage(r.key)),
    Cleanup: unary<{ snapshotter: string }, object>('Cleanup', log, async () => {
      await sn.cleanup();
      return empty;
    }),
  });
  return server;
}

/** Bind `server` to a unix socket (the caller has made sure the path is free). */
export function bindUnix(server: grpc.Server, sock: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
}

/** Stop accepting calls, give running ones `graceMs`, then cut the rest. */
export function shutdown(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
