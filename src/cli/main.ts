import { Command, InvalidArgumentError } from 'commander';
import { serve } from './serve.js';
import { check } from './check.js';

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected a port number (0-65535)');
  return n;
}

/** The `magnetar` command line; resolves with the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let exitCode = 0;
  const program = new Command()
    .name('magnetar')
    .description('A security-hardened job server that speaks the Galaxy Pulsar protocol')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('serve')
    .description('serve the Pulsar HTTP API')
    .option('-c, --config <file>', 'server.ini (or app.yml); without it: 127.0.0.1:8913, one queued_python manager')
    .option('-p, --port <port>', 'listen on this port instead of the configured one', port)
    .action(async (opts: { config?: string; port?: number }) => {
      exitCode = await serve(opts);
    });

  program
    .command('check')
    .description('run one real job end to end against a server and verify its outputs')
    .requiredOption('-u, --url <url>', 'server URL, e.g. http://127.0.0.1:8913/')
    .option('-t, --private-token <token>', 'the server\'s private_token')
    .option('-m, --manager <name>', 'manager name (adds /managers/<name>)')
    .option('--job-id <id>', 'job id to use', '')
    .option('--timeout <seconds>', 'give up after this long', '120')
    .option('--disable-cleanup', 'keep the job directory on the server')
    .action(async (opts: { url: string; privateToken?: string; manager?: string; jobId: string; timeout: string; disableCleanup?: boolean }) => {
      exitCode = await check(opts);
    });

  try {
    await program.parseAsync([...argv]);
  } catch (error) {
    const code = (error as { exitCode?: number }).exitCode;
    if (typeof code === 'number') return code === 0 ? 0 : 2;
    throw error;
  }
  return exitCode;
}
