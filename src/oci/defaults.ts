/**
 * Default root of `mount --image` state: bootstraps live in `<dir>/bootstraps/`. Root is needed
 * to mount anyway, so this is a system path; `$NYDUS_TS_WORK_DIR` or `--work-dir` change it.
 * (A module of its own so the CLI can show it in `mount --help` without loading image-mount.)
 */
export const DEFAULT_IMAGE_WORK_DIR = process.env.NYDUS_TS_WORK_DIR || '/var/lib/nydus-ts';
