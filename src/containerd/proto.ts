/**
 * containerd's snapshots API (`containerd.services.snapshots.v1.Snapshots`, containerd 1.6),
 * written by us as plain proto3 from the published definitions: same packages, messages, field
 * numbers and enum values, without containerd's gogoproto options (which only shape Go code).
 *
 * Why the .proto text lives in this .ts module: tsc copies no .proto files into dist/, and a
 * copy step would be one more thing to forget. @grpc/proto-loader only parses files, so
 * loadSnapshotsProto() writes the two texts into a private temp dir, loads them and removes the
 * dir again (a few ms, once per process). The google.protobuf imports resolve to the copies
 * bundled with protobufjs.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const MOUNT_PROTO = `
syntax = "proto3";
package containerd.types;

// Mount describes how a snapshot is mounted (containerd/api/types/mount.proto).
message Mount {
  string type = 1;
  string source = 2;
  string target = 3;
  repeated string options = 4;
}
`;

const SNAPSHOTS_PROTO = `
syntax = "proto3";
package containerd.services.snapshots.v1;

import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/timestamp.proto";
import "containerd/types/mount.proto";

service Snapshots {
  rpc Prepare(PrepareSnapshotRequest) returns (PrepareSnapshotResponse);
  rpc View(ViewSnapshotRequest) returns (ViewSnapshotResponse);
  rpc Mounts(MountsRequest) returns (MountsResponse);
  rpc Commit(CommitSnapshotRequest) returns (google.protobuf.Empty);
  rpc Remove(RemoveSnapshotRequest) returns (google.protobuf.Empty);
  rpc Stat(StatSnapshotRequest) returns (StatSnapshotResponse);
  rpc Update(UpdateSnapshotRequest) returns (UpdateSnapshotResponse);
  rpc List(ListSnapshotsRequest) returns (stream ListSnapshotsResponse);
  rpc Usage(UsageRequest) returns (UsageResponse);
  rpc Cleanup(CleanupRequest) returns (google.protobuf.Empty);
}

message PrepareSnapshotRequest {
  string snapshotter = 1;
  string key = 2;
  string parent = 3;
  map<string, string> labels = 4;
}
message PrepareSnapshotResponse { repeated containerd.types.Mount mounts = 1; }

message ViewSnapshotRequest {
  string snapshotter = 1;
  string key = 2;
  string parent = 3;
  map<string, string> labels = 4;
}
message ViewSnapshotResponse { repeated containerd.types.Mount mounts = 1; }

message MountsRequest {
  string snapshotter = 1;
  string key = 2;
}
message MountsResponse { repeated containerd.types.Mount mounts = 1; }

message RemoveSnapshotRequest {
  string snapshotter = 1;
  string key = 2;
}

message CommitSnapshotRequest {
  string snapshotter = 1;
  string name = 2;
  string key = 3;
  map<string, string> labels = 4;
}

message StatSnapshotRequest {
  string snapshotter = 1;
  string key = 2;
}

enum Kind {
  UNKNOWN = 0;
  VIEW = 1;
  ACTIVE = 2;
  COMMITTED = 3;
}

message Info {
  string name = 1;
  string parent = 2;
  Kind kind = 3;
  google.protobuf.Timestamp created_at = 4;
  google.protobuf.Timestamp updated_at = 5;
  map<string, string> labels = 6;
}

message StatSnapshotResponse { Info info = 1; }

message UpdateSnapshotRequest {
  string snapshotter = 1;
  Info info = 2;
  google.protobuf.FieldMask update_mask = 3;
}
message UpdateSnapshotResponse { Info info = 1; }

message ListSnapshotsRequest {
  string snapshotter = 1;
  repeated string filters = 2;
}
message ListSnapshotsResponse { repeated Info info = 1; }

message UsageRequest {
  string snapshotter = 1;
  string key = 2;
}
message UsageResponse {
  int64 size = 1;
  int64 inodes = 2;
}

message CleanupRequest { string snapshotter = 1; }
`;

export const SNAPSHOTS_SERVICE = 'containerd.services.snapshots.v1.Snapshots';

/** proto-loader options: field names as written (snake_case), enums as names, int64 as numbers. */
const LOADER_OPTIONS = { keepCase: true, enums: String, longs: Number, defaults: true, arrays: true, objects: true } as const;

export interface LoadedSnapshotsProto {
  /** for grpc.Server#addService */
  service: grpc.ServiceDefinition;
  /** a client class (tests, and a future `nydus-ts` client command) */
  Client: grpc.ServiceClientConstructor;
}

let loaded: LoadedSnapshotsProto | undefined;

export function loadSnapshotsProto(): LoadedSnapshotsProto {
  if (loaded) return loaded;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ts-proto-'));
  try {
    fs.mkdirSync(path.join(dir, 'containerd', 'types'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'containerd', 'types', 'mount.proto'), MOUNT_PROTO);
    fs.writeFileSync(path.join(dir, 'snapshots.proto'), SNAPSHOTS_PROTO);
    const definition = protoLoader.loadSync(path.join(dir, 'snapshots.proto'), { ...LOADER_OPTIONS, includeDirs: [dir] });
    const pkg = grpc.loadPackageDefinition(definition);
    const Client = SNAPSHOTS_SERVICE.split('.').reduce<grpc.GrpcObject>((o, k) => o[k] as grpc.GrpcObject, pkg) as unknown as grpc.ServiceClientConstructor;
    loaded = { service: Client.service, Client };
    return loaded;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---- the wire shapes as proto-loader gives and takes them (LOADER_OPTIONS) ----

export type WireKind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';
export interface WireTimestamp { seconds: number; nanos: number }
export interface WireMount { type: string; source: string; target?: string; options: string[] }
export interface WireInfo {
  name: string;
  parent: string;
  kind: WireKind;
  created_at: WireTimestamp | null;
  updated_at: WireTimestamp | null;
  labels: Record<string, string>;
}
export interface PrepareOrViewRequest { snapshotter: string; key: string; parent: string; labels: Record<string, string> }
export interface KeyRequest { snapshotter: string; key: string }
export interface CommitRequest { snapshotter: string; name: string; key: string; labels: Record<string, string> }
export interface UpdateRequest { snapshotter: string; info: WireInfo | null; update_mask: { paths: string[] } | null }
export interface ListRequest { snapshotter: string; filters: string[] }
export interface UsageResponse { size: number; inodes: number }
