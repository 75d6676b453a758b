import type { ManagerConfig } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Backend } from './backend.js';
import type { BackendContext } from './context.js';

/** Placeholder: replaced by the real backend. */
export function createExternalDrmaaBackend(manager: ManagerConfig, ctx: BackendContext): Backend {
  throw new ConfigError(ctx.configFile, `manager ${manager.name} type`, `manager type ${manager.type} is not available yet`);
}
