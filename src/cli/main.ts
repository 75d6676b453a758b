import { Command, InvalidArgumentError } from 'commander';
import { serve } from './serve.js';
import { check } from './check.js';
import { lintToolbox } from './lint-toolbox.js';
import { validateTool } from './validate-tool.js';

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
    .option('--cache', 'send the files through the server\'s file cache (/cache, cache_token), as pulsar-check --cache')
    .option('--remote-transfer', 'serve the job\'s files from a files endpoint run here, have the server pull them (remote_staging.setup remote_transfer) and push the outputs back to it; the server must reach it')
    .option('--files-host <address>', 'with --remote-transfer: address the files endpoint listens on (default 127.0.0.1)')
    .option('--files-port <port>', 'with --remote-transfer: its port (0: a free one)')
    .option('--files-advertise <host>', 'with --remote-transfer: host name or address the server is told to fetch from (default: --files-host)')
    .option('--files-max-post <bytes>', 'with --remote-transfer: largest stage-out POST the files endpoint takes (default 64 MiB)')
    .option('--ca <file>', 'also trust the certificate(s) in this PEM file (e.g. the server\'s magnetar-selfsigned.crt)')
    .option('--insecure', 'do not verify the server\'s TLS certificate (prints a warning)')
    .action(async (opts: { url: string; privateToken?: string; manager?: string; jobId: string; timeout: string; disableCleanup?: boolean; cache?: boolean; remoteTransfer?: boolean; filesHost?: string; filesPort?: string; filesAdvertise?: string; filesMaxPost?: string; ca?: string; insecure?: boolean }) => {
      exitCode = await check(opts);
    });

  program
    .command('validate-tool')
    .description('run a tool\'s validators over fixture command lines and config files ($JOB = the job directory)')
    .argument('<tool>', 'the tool XML')
    .requiredOption('-f, --fixtures <file>', 'fixtures YAML: command: [{ line, expect: accept|reject }], galaxy: [{ line?, tool_script?, expect }], configfiles: { NAME: [{ content, expect }] }')
    .action(async (tool: string, opts: { fixtures: string }) => {
      exitCode = await validateTool({ tool, fixtures: opts.fixtures });
    });

  program
    .command('lint-toolbox')
    .description('report toolbox tools that cannot run safely on a public server (missing or weak validators, load errors)')
    .argument('<toolbox...>', 'toolbox files (tool_conf.xml / shed_tool_conf.xml form)')
    .action(async (files: string[]) => {
      exitCode = await lintToolbox({ files });
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
