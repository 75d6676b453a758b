export type { Backend, BackendState, LaunchSpec } from './backend.js';
export { createBackend } from './registry.js';
