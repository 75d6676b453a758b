import type { ManagerConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';

/** The backend that runs a manager's jobs. The queue discipline itself lives in JobService. */
export function createBackend(manager: ManagerConfig): Backend {
  switch (manager.type) {
    case 'queued_python':
      return new LocalBackend(manager.numConcurrentJobs);
    case 'unqueued':
      return new LocalBackend(Number.POSITIVE_INFINITY);
    default:
      throw new ConfigError('configuration', `manager ${manager.name} type`, `manager type ${manager.type} is not available in this build`);
  }
}
