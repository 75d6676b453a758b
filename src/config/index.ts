export { loadConfig, defaultConfig, describeConfig } from './load.js';
export type { LoadOptions, LoadResult } from './load.js';
export type { AppSection, AssignIds, Config, ManagerConfig, ManagerType, ServerSection } from './types.js';
