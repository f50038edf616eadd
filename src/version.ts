/** The nydus-ts version (reported by `--version`, build reports and the daemon API). Kept in a module of its own so the CLI can print it without loading the builder. */
export const VERSION = '0.1.0';
