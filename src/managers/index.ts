export type { Backend, BackendState, ExitReport, LaunchSpec } from './backend.js';
export type { BackendContext } from './context.js';
export { PollingMonitor, type PolledState } from './monitor.js';
export { createBackend } from './registry.js';
