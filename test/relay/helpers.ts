/**
 * Relay-mode test plumbing: a relay fake and a real magnetar server (in this process) polling it,
 * and Galaxy's side as the fake's inspection shows it (messages posted as the relay user, status
 * updates read from the fake's store).
 */
import type { ExecutionContext } from 'ava';
import type { RelayConfig } from '../../src/config/index.js';
import { FAST_RETRY } from '../helpers/files-endpoint.js';
import { startRelayFake, type RelayFake, type RelayFakeOptions, type StoredMessage } from '../helpers/relay-fake.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

export const USER = 'relay';
export const PASSWORD = 'relay-password';
export const TERMINAL = new Set(['complete', 'failed', 'cancelled', 'lost']);

/** Every client of a fake shares 127.0.0.1's rate windows: tests lift them unless they test them. */
export const NO_LIMITS = { login: null, refresh: null, publish: null } as const;

export async function relayFake(t: ExecutionContext, options: RelayFakeOptions = {}): Promise<RelayFake> {
  const fake = await startRelayFake({ rateLimits: NO_LIMITS, ...options });
  t.teardown(async () => fake.close());
  return fake;
}

export function relayConfig(fake: RelayFake, overrides: Partial<RelayConfig> = {}): RelayConfig {
  return {
    url: fake.url,
    username: USER,
    password: PASSWORD,
    credentialsFile: undefined,
    topicPrefix: '',
    longPollTimeout: 5,
    publishCapabilities: true,
    consume: true,
    publish: true,
    outboxDrainInterval: 0.2,
    ...overrides,
  };
}

/** A magnetar server in relay mode (staging allowed to loopback, fast retries), stopped when the test ends. */
export async function relayServer(t: ExecutionContext, fake: RelayFake, overrides: Partial<RelayConfig> = {}, root?: string): Promise<TestServer> {
  const server = await startTestServer({
    app: { relay: relayConfig(fake, overrides), staging: { allowedEndpoints: [], copyRoots: [], privateAddresses: true, concurrency: 4 } },
    managers: (r) => [managerConfig(r, { preprocessRetry: FAST_RETRY, postprocessRetry: FAST_RETRY })],
    ...(root === undefined ? {} : { root }),
  });
  // A test may have stopped it already (to restart on the same root).
  t.teardown(async () => server.stop().catch(() => undefined));
  return server;
}

/** Galaxy's side of one manager's topics. */
export class Galaxy {
  constructor(
    readonly fake: RelayFake,
    readonly prefix = '',
    readonly manager = '_default_',
  ) {}

  topic(base: string): string {
    return `${this.prefix === '' ? '' : `${this.prefix}_`}${base}${this.manager === '_default_' ? '' : `_${this.manager}`}`;
  }

  /** The `job_setup` payload of Galaxy's relay client (RELAY.md). */
  setup(jobId: string, commandLine: string, extra: Record<string, unknown> = {}): string {
    return this.fake.publish(USER, this.topic('job_setup'), {
      command_line: commandLine,
      job_id: jobId,
      setup_params: { job_id: jobId, tool_id: 'cat1', tool_version: '1.0.0', use_metadata: true, preserve_galaxy_python_environment: null },
      dynamic_file_sources: null,
      token_endpoint: null,
      ...extra,
    });
  }

  kill(jobId: string): string {
    return this.fake.publish(USER, this.topic('job_kill'), { job_id: jobId });
  }

  requestStatus(jobId: string): string {
    return this.fake.publish(USER, this.topic('job_status_request'), { job_id: jobId });
  }

  updates(jobId?: string): Record<string, unknown>[] {
    return this.fake
      .messages(USER, this.topic('job_status_update'))
      .map((m) => m.payload)
      .filter((p) => jobId === undefined || p['job_id'] === jobId);
  }

  statuses(jobId: string): string[] {
    return this.updates(jobId).map((p) => String(p['status']));
  }

  terminals(jobId: string): Record<string, unknown>[] {
    return this.updates(jobId).filter((p) => TERMINAL.has(String(p['status'])));
  }

  async whenStatus(jobId: string, status: string | ((s: string) => boolean)): Promise<StoredMessage> {
    const match = typeof status === 'string' ? (s: string) => s === status : status;
    return this.fake.whenMessage(USER, this.topic('job_status_update'), (p) => p['job_id'] === jobId && match(String(p['status'])));
  }

  async whenTerminal(jobId: string): Promise<Record<string, unknown>> {
    return (await this.whenStatus(jobId, (s) => TERMINAL.has(s))).payload;
  }
}

export const settle = async (ms = 1500): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A promise that rejects after `ms` (so a missing message fails the test with a reason, not ava's timeout). */
export async function within<T>(what: string, promise: Promise<T>, ms = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
