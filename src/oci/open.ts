/**
 * Image references on the command line → ImageSource / ImageSink:
 *
 *   oci:DIR[:TAG]                  an OCI image-layout directory (TAG = org.opencontainers.image.ref.name)
 *   [docker://]host[:port]/repo[:tag][@digest], repo[:tag]   a registry (Docker CLI rules)
 */
import { ImageSink, ImageSource } from './types';
import { OciLayoutSink, OciLayoutSource } from './layout';
import { RegistryImageSink, RegistryImageSource, RegistryClientOptions } from './registry-client';
import { parseReference, ImageReference } from './reference';
import { NydusError } from '../errors';

export type ParsedImageRef = { kind: 'oci'; dir: string; tag?: string } | { kind: 'registry'; ref: ImageReference };

const TAG = /^[\w][\w.-]{0,127}$/;

/** Split `oci:DIR[:TAG]` (the tag is what follows the last ':' if it is a valid tag) or parse a registry reference. */
export function parseImageRef(ref: string): ParsedImageRef {
  if (ref.startsWith('oci:')) {
    const rest = ref.slice(4);
    const colon = rest.lastIndexOf(':');
    let dir = rest;
    let tag: string | undefined;
    if (colon > 0 && !rest.slice(colon + 1).includes('/') && TAG.test(rest.slice(colon + 1))) {
      dir = rest.slice(0, colon);
      tag = rest.slice(colon + 1);
    }
    if (dir === '') throw new NydusError('ERR_INVALID_ARGUMENT', `invalid image reference ${JSON.stringify(ref)}: oci: needs a directory (oci:DIR[:TAG])`, { reference: ref });
    return { kind: 'oci', dir, tag };
  }
  return { kind: 'registry', ref: parseReference(ref) };
}

export interface OpenOptions {
  /** plain http for a registry (loopback registries default to http anyway) */
  insecure?: boolean;
  /** further registry client options (credentials, timeouts…) */
  registry?: RegistryClientOptions;
}

export type Closable = { close?: () => Promise<void> };

export function openSource(ref: string, opts: OpenOptions = {}): ImageSource & Closable {
  const p = parseImageRef(ref);
  if (p.kind === 'oci') return new OciLayoutSource(p.dir, { tag: p.tag });
  return new RegistryImageSource(p.ref, { ...opts.registry, ...(opts.insecure ? { insecure: true } : {}) });
}

export function openSink(ref: string, opts: OpenOptions = {}): ImageSink & Closable {
  const p = parseImageRef(ref);
  if (p.kind === 'oci') return new OciLayoutSink(p.dir, { tag: p.tag });
  if (p.ref.digest && !p.ref.tag) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `target ${ref}: a target needs a tag, not a digest (the digest of what is pushed is not known in advance)`, { reference: ref });
  }
  return new RegistryImageSink(p.ref, { ...opts.registry, ...(opts.insecure ? { insecure: true } : {}) });
}

/** Release connections of sources / sinks that hold any. */
export async function closeAll(...xs: (Closable | undefined)[]): Promise<void> {
  for (const x of xs) await x?.close?.().catch(() => undefined);
}
