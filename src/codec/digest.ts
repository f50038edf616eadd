/**
 * Chunk / blob digests. BLAKE3 comes from @napi-rs/blake-hash's linux-x64-gnu binary (the Rust
 * blake3 crate with its SIMD back ends, a prebuilt N-API module: ≈ 10× faster than WebAssembly,
 * which matters most on the daemon's read path; an optional dependency, skipped by npm on other
 * platforms) and falls back to hash-wasm's WebAssembly module where it does not load (other
 * platforms, or NYDUS_TS_BLAKE3=wasm). The WebAssembly module loads asynchronously: call
 * `await digestReady()` once per thread, after which `digest()` is synchronous. SHA-256 uses
 * node:crypto and needs no setup.
 */
import * as crypto from 'node:crypto';
import type { IHasher } from 'hash-wasm';
import { NydusError } from '../errors';
import type { DigesterName } from '../format/constants';

export const DIGEST_SIZE = 32;

interface NativeBlake3 {
  blake3(input: Buffer): Buffer;
  Blake3Hasher: new () => { update(input: Buffer): unknown; digestBuffer(): Buffer };
}

function loadNative(): NativeBlake3 | undefined {
  if (process.env.NYDUS_TS_BLAKE3 === 'wasm') return undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('@napi-rs/blake-hash-linux-x64-gnu') as NativeBlake3;
  } catch {
    return undefined;
  }
}
const native = loadNative();

/** hash-wasm's BLAKE3, loaded only where the native module is missing (it costs start-up time). */
async function createBLAKE3(bits: number): Promise<IHasher> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('hash-wasm') as typeof import('hash-wasm')).createBLAKE3(bits);
}

/** Which BLAKE3 implementation this process uses ('native' or 'wasm'). */
export const blake3Implementation: 'native' | 'wasm' = native ? 'native' : 'wasm';

let blake3: IHasher | undefined;
let readyPromise: Promise<void> | undefined;

/** Loads the BLAKE3 WebAssembly module for this thread when there is no native one; idempotent. */
export function digestReady(): Promise<void> {
  if (native) return Promise.resolve();
  readyPromise ??= createBLAKE3(256).then(
    (h) => {
      blake3 = h;
    },
    (err: unknown) => {
      readyPromise = undefined;
      throw new NydusError('ERR_UNSUPPORTED', `blake3: cannot initialise hash-wasm: ${err instanceof Error ? err.message : String(err)}`);
    },
  );
  return readyPromise;
}

/** True once digestReady() has resolved in this thread. */
export function isDigestReady(): boolean {
  return native !== undefined || blake3 !== undefined;
}

function blake3Hasher(): IHasher {
  if (!blake3) {
    throw new NydusError('ERR_INVALID_ARGUMENT', 'digest(blake3) called before digestReady() resolved');
  }
  return blake3;
}

function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** 32-byte digest of `data`. Synchronous; for blake3, digestReady() must have resolved. */
export function digest(algo: DigesterName, data: Uint8Array): Buffer {
  switch (algo) {
    case 'blake3': {
      if (native) return native.blake3(toBuffer(data));
      const h = blake3Hasher();
      h.init();
      h.update(data);
      return toBuffer(h.digest('binary'));
    }
    case 'sha256':
      return crypto.createHash('sha256').update(data).digest();
    default:
      throw new NydusError('ERR_UNSUPPORTED', `digest: unknown digester ${JSON.stringify(algo)}`, { digester: algo });
  }
}

export function digestHex(algo: DigesterName, data: Uint8Array): string {
  return digest(algo, data).toString('hex');
}

export function sha256Hex(data: Uint8Array): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Incremental hasher; `digest()` may be called once. */
export interface IncrementalDigest {
  readonly algo: DigesterName;
  update(data: Uint8Array): this;
  digest(): Buffer;
  digestHex(): string;
}

class Sha256Digest implements IncrementalDigest {
  readonly algo = 'sha256' as const;
  private readonly h = crypto.createHash('sha256');
  update(data: Uint8Array): this {
    this.h.update(data);
    return this;
  }
  digest(): Buffer {
    return this.h.digest();
  }
  digestHex(): string {
    return this.digest().toString('hex');
  }
}

class NativeBlake3Digest implements IncrementalDigest {
  readonly algo = 'blake3' as const;
  private readonly h = new native!.Blake3Hasher();
  update(data: Uint8Array): this {
    this.h.update(toBuffer(data));
    return this;
  }
  digest(): Buffer {
    return this.h.digestBuffer();
  }
  digestHex(): string {
    return this.digest().toString('hex');
  }
}

class Blake3Digest implements IncrementalDigest {
  readonly algo = 'blake3' as const;
  constructor(private readonly h: IHasher) {
    h.init();
  }
  update(data: Uint8Array): this {
    this.h.update(data);
    return this;
  }
  digest(): Buffer {
    return toBuffer(this.h.digest('binary'));
  }
  digestHex(): string {
    return this.digest().toString('hex');
  }
}

/** Incremental SHA-256 (blob ids, layer digests). Synchronous. */
export function createSha256(): IncrementalDigest {
  return new Sha256Digest();
}

/**
 * Incremental hasher for either algorithm. BLAKE3 instances are independent of the shared
 * one used by digest(), so several may be in use at once.
 */
export async function createDigest(algo: DigesterName): Promise<IncrementalDigest> {
  switch (algo) {
    case 'sha256':
      return new Sha256Digest();
    case 'blake3':
      return native ? new NativeBlake3Digest() : new Blake3Digest(await createBLAKE3(256));
    default:
      throw new NydusError('ERR_UNSUPPORTED', `createDigest: unknown digester ${JSON.stringify(algo)}`, { digester: algo });
  }
}
