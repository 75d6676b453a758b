import type { Logger } from '../log.js';

/** What a backend factory receives besides its manager's configuration. */
export interface BackendContext {
  readonly log: Logger;
  /**
   * The server's own environment (read once at startup): cluster backends take scheduler
   * settings from it (`DRMAA_LIBRARY_PATH`, `SGE_ROOT`, `SGE_CELL`, `PATH`…).
   */
  readonly serverEnv: Readonly<Record<string, string | undefined>>;
  /** The file the configuration came from, for error messages. */
  readonly configFile: string;
}
