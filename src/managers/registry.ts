import type { ManagerConfig } from '../config/types.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';

/** The backend that runs a manager's jobs. The queue discipline itself lives in JobService. */
export function createBackend(manager: ManagerConfig): Backend {
  switch (manager.type) {
    case 'queued_python':
    case 'unqueued':
      return new LocalBackend();
  }
}
