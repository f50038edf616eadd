/** nydus-ts library entry: the data path from format to tools, for programmatic use. */
export * from './errors';
export * as constants from './format/constants';
export * from './format/layout';
export { readBootstrap, readBootstrapTables, RafsBootstrap, RafsBootstrapTables } from './format/bootstrap-reader';
export { writeBootstrap, BootstrapInput } from './format/bootstrap-writer';
export * from './tree/node';
export { createImage, mergeImages, CreateOptions, MergeOptions, BuildReport, MergeReport } from './builder/build';
export { readBlobMeta, findChunk, readBlobToc } from './blob/blob-meta';
export { LocalBlobFile, decodeChunk } from './blob/local-blob';
export { checkImage, CheckReport } from './tools/check';
export { openImage } from './tools/image';
export { exportImage, exportBlobData } from './tools/export';
export { unpackImage } from './tools/unpack';
