import type { ManagerConfig } from '../config/types.js';
import type { Backend } from './backend.js';
import { createCliBackend } from './cli/cli-backend.js';
import { createCondorBackend } from './condor/backend.js';
import type { BackendContext } from './context.js';
import { createDrmaaBackend } from './drmaa.js';
import { createExternalDrmaaBackend } from './external-drmaa.js';
import { LocalBackend } from './local.js';

/**
 * The backend that runs a manager's jobs. Each factory validates its manager's `backendOptions`
 * and throws ConfigError naming the option (the server then does not start).
 */
export function createBackend(manager: ManagerConfig, ctx: BackendContext): Backend {
  switch (manager.type) {
    case 'queued_python':
      return new LocalBackend(manager.numConcurrentJobs);
    case 'unqueued':
      return new LocalBackend(Number.POSITIVE_INFINITY);
    case 'queued_drmaa':
      return createDrmaaBackend(manager, ctx);
    case 'queued_external_drmaa':
      return createExternalDrmaaBackend(manager, ctx);
    case 'queued_cli':
      return createCliBackend(manager, ctx);
    case 'queued_condor':
      return createCondorBackend(manager, ctx);
  }
}
