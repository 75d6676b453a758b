export interface CheckOptions {
  readonly url: string;
  readonly privateToken?: string;
  readonly manager?: string;
  readonly jobId: string;
  readonly timeout: string;
  readonly disableCleanup?: boolean;
}

/** Placeholder until the check client lands; see src/check/. */
export async function check(_options: CheckOptions): Promise<number> {
  process.stderr.write('magnetar check: not built yet\n');
  return 1;
}
