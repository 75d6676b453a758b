export { loadConfig, defaultConfig } from './load.js';
export { describeConfig } from './describe.js';
export type { LoadOptions, LoadResult } from './load.js';
export type { AppSection, AssignIds, Config, ManagerConfig, ManagerType, MessageQueueConfig, RelayConfig, SandboxConfig, ServerSection } from './types.js';
export { defaultSandbox } from './build.js';
