/**
 * OCI image model and the two tiny interfaces the distribution commands are written against
 * (go-containerregistry style): an ImageSource to read an image from (a registry, an OCI layout
 * directory) and an ImageSink to write one to. Nothing is fetched until asked for.
 */
import type { Readable } from 'node:stream';

export const MediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  nydusBlob: 'application/vnd.oci.image.layer.nydus.blob.v1',
  nydusManifestArtifact: 'application/vnd.nydus.image.manifest.v1+json',
  nydusConfig: 'application/vnd.nydus.image.config.v1+json',
} as const;

/** Layer annotations nydus-snapshotter keys on (spec rafs-v6.md §4.1). */
export const NydusAnnotations = {
  blob: 'containerd.io/snapshot/nydus-blob',
  bootstrap: 'containerd.io/snapshot/nydus-bootstrap',
  fsVersion: 'containerd.io/snapshot/nydus-fs-version',
  referenceBlobIds: 'containerd.io/snapshot/nydus-reference-blob-ids',
} as const;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

export interface Descriptor {
  mediaType: string;
  /** `sha256:<64 hex>` */
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
  artifactType?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  created?: string;
  config?: Record<string, unknown>;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: Array<{ created?: string; created_by?: string; comment?: string; empty_layer?: boolean }>;
  [key: string]: unknown;
}

/** A manifest as fetched: its descriptor (digest of `raw`), the parsed body and the exact bytes. */
export interface ResolvedManifest {
  descriptor: Descriptor;
  manifest: ImageManifest;
  raw: Buffer;
}

/** Where an image is read from. */
export interface ImageSource {
  /** a printable name for messages (`host/repo:tag`, `oci:DIR`) */
  readonly name: string;
  /**
   * The image manifest; an index / manifest list is resolved to the entry for `platform`
   * (default: linux/amd64), and a nydus alternative in an index is skipped unless `nydus` is set.
   */
  manifest(opts?: { platform?: Platform; nydus?: boolean }): Promise<ResolvedManifest>;
  /** a whole small blob (config, bootstrap layer), digest-verified */
  blob(desc: Descriptor): Promise<Buffer>;
  /** a blob as a stream; the stream errors if the bytes do not match `desc.digest`/`size` */
  blobStream(desc: Descriptor): Promise<Readable>;
}

/** Where an image is written to. */
export interface ImageSink {
  readonly name: string;
  hasBlob(desc: Descriptor): Promise<boolean>;
  /** upload a blob from a file or memory; a no-op when the sink has it already */
  pushBlob(desc: Descriptor, data: { path: string } | Buffer, onProgress?: (bytes: number) => void): Promise<void>;
  /** store a manifest under the sink's tag (or only by digest when it has none); returns its digest */
  pushManifest(raw: Buffer, mediaType: string): Promise<string>;
}
