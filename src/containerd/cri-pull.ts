/**
 * `nydus-ts pull`: a CRI image pull (`runtime.v1.ImageService/PullImage`) on containerd's socket.
 * This is the pull path that forwards the image reference and the layer annotations to the
 * snapshotter (`ctr images pull` does not), so nydus images are pulled lazily: containerd fetches
 * the manifest, the config and the bootstrap layer only.
 *
 * The messages are our own minimal proto3 copy of the CRI API (k8s.io/cri-api, runtime/v1
 * api.proto): only the fields used, with their field numbers. Unknown fields of the answer are
 * ignored by protobuf, so the subset is wire-compatible. sandbox_config (3) is left out.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { NydusError } from '../errors';

const CRI_PROTO = `
syntax = "proto3";
package runtime.v1;

service ImageService {
  rpc PullImage(PullImageRequest) returns (PullImageResponse) {}
}

message ImageSpec {
  string image = 1;
}

message AuthConfig {
  string username = 1;
  string password = 2;
}

message PullImageRequest {
  ImageSpec image = 1;
  AuthConfig auth = 2;
}

message PullImageResponse {
  string image_ref = 1;
}
`;

let Client: grpc.ServiceClientConstructor | undefined;

function loadClient(): grpc.ServiceClientConstructor {
  if (Client) return Client;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ts-cri-'));
  try {
    fs.writeFileSync(path.join(dir, 'cri.proto'), CRI_PROTO);
    const def = protoLoader.loadSync(path.join(dir, 'cri.proto'), { keepCase: true, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    Client = pkg.runtime.v1.ImageService as grpc.ServiceClientConstructor;
    return Client;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface CriPullOptions {
  /** containerd's socket */
  address: string;
  /** `USER:PASSWORD` */
  creds?: string;
  timeoutMs?: number;
}

/** Pull `image` through containerd's CRI plugin; returns the image ref containerd answers (the image id). */
export async function criPull(image: string, o: CriPullOptions): Promise<string> {
  const C = loadClient();
  const address = path.resolve(o.address);
  if (!fs.existsSync(address)) throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${o.address}: no such socket (is containerd running?)`);
  const req: { image: { image: string }; auth?: { username: string; password: string } } = { image: { image } };
  if (o.creds !== undefined) {
    const i = o.creds.indexOf(':');
    if (i <= 0) throw new NydusError('ERR_INVALID_ARGUMENT', '--creds: expected USER:PASSWORD');
    req.auth = { username: o.creds.slice(0, i), password: o.creds.slice(i + 1) };
  }
  const client = new C(`unix://${address}`, grpc.credentials.createInsecure());
  try {
    const md = new grpc.Metadata();
    md.set('containerd-namespace', 'k8s.io');
    return await new Promise<string>((resolve, reject) => {
      client.PullImage(req, md, { deadline: Date.now() + (o.timeoutMs ?? 30 * 60_000) }, (err: grpc.ServiceError | null, res: { image_ref: string }) => {
        if (err) {
          const hint = err.code === grpc.status.UNIMPLEMENTED ? ' (is the CRI plugin enabled in containerd\'s config?)' : '';
          reject(new NydusError(err.code === grpc.status.NOT_FOUND ? 'ERR_NOT_FOUND' : 'ERR_BACKEND', `pull ${image} through ${address}: ${err.details || err.message}${hint}`, { image, code: err.code }));
        } else resolve(res.image_ref);
      });
    });
  } finally {
    client.close();
  }
}
