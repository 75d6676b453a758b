import type { EnvEntry } from './script.js';

/** A submit request after the transport parsed and checked its parameters (PROTOCOL §2.5). */
export interface SubmitRequest {
  readonly commandLine: string;
  readonly submitParams: Readonly<Record<string, unknown>>;
  readonly setupParams: SetupParams | undefined;
  readonly dependenciesDescription: unknown;
  readonly env: readonly EnvEntry[];
  readonly remoteStaging: { readonly setup?: readonly unknown[] | undefined } & Readonly<Record<string, unknown>>;
  readonly touchOutputs: readonly string[];
  readonly dynamicFileSources: readonly { readonly type?: string; readonly path: string }[];
}

export interface SetupParams {
  readonly jobId?: string;
  readonly toolId?: string;
  readonly toolVersion?: string;
  readonly preserveGalaxyPythonEnvironment?: boolean;
}
