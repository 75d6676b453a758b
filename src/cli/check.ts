import { X509Certificate, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ClientTls } from '../check/client.js';
import { DEFAULT_MAX_POST_BYTES, EXIT_USAGE, runCheck, type RemoteTransferOptions } from '../check/run.js';

export interface CheckOptions {
  readonly url: string;
  readonly privateToken?: string;
  readonly manager?: string;
  /** '' → a fresh `check-<random hex>` id. */
  readonly jobId: string;
  /** Seconds (a decimal number) the whole check may take. */
  readonly timeout: string;
  readonly disableCleanup?: boolean;
  /** Send the files through the server's file cache (`--cache`, as `pulsar-check --cache`). */
  readonly cache?: boolean;
  /**
   * Run a files endpoint here and have the server pull the job's files from it
   * (`remote_staging.setup` remote_transfer actions), as Galaxy's remote_transfer mode does.
   */
  readonly remoteTransfer?: boolean;
  /** Address the files endpoint listens on (default 127.0.0.1). */
  readonly filesHost?: string;
  /** Port of the files endpoint (default 0: a free one). */
  readonly filesPort?: string;
  /** Host name or address put in the URLs sent to the server (default: --files-host). */
  readonly filesAdvertise?: string;
  /**
   * Largest stage-out POST (bytes) the files endpoint takes (default 64 MiB, at most 4 GiB);
   * larger ones are refused with HTTP 413, and the check fails naming the output.
   */
  readonly filesMaxPost?: string;
  /** PEM file of a certificate (or CA) to trust besides the usual authorities (`--ca`). */
  readonly ca?: string;
  /** Do not verify the server's TLS certificate (`--insecure`). */
  readonly insecure?: boolean;
  /** Milliseconds between status polls (default 250). */
  readonly pollInterval?: number;
  /** Receives each report line (default: stdout). */
  readonly out?: (line: string) => void;
  /** Receives the one-line reason of a usage/connection error (default: stderr). */
  readonly err?: (line: string) => void;
}

const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----\r?\n[\s\S]*?-----END CERTIFICATE-----/g;
const MAX_CA_FILE_BYTES = 1024 * 1024;
/** A host name, IPv4 or IPv6 address (no scheme, path or port). */
const HOST = /^[A-Za-z0-9._:%-]{1,253}$/;
const MAX_POST_LIMIT = 4 * 1024 ** 3;

/**
 * The certificates in a PEM file (a private key in the same file, as in a server's ssl_pem, is
 * ignored). Throws a one-line reason.
 */
async function readCertificates(file: string): Promise<string[]> {
  let text: string;
  try {
    const data = await readFile(file);
    if (data.length > MAX_CA_FILE_BYTES) throw new Error(`larger than ${MAX_CA_FILE_BYTES} bytes`);
    text = data.toString('utf8');
  } catch (error) {
    throw new Error(`--ca ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { cause: error });
  }
  const certificates = text.match(PEM_CERTIFICATE) ?? [];
  if (certificates.length === 0) throw new Error(`--ca ${file}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it`);
  for (const pem of certificates) {
    try {
      new X509Certificate(pem);
    } catch (error) {
      throw new Error(`--ca ${file}: a certificate in it is not valid (${(error as Error).message})`, { cause: error });
    }
  }
  return certificates;
}

/**
 * `magnetar check`: run one real job through a server the way Galaxy's Pulsar client does and
 * verify every answer. Resolves with the exit code: 0 passed, 1 the check failed, 2 usage or
 * connection problem. Never exits the process (usable in-process).
 */
export async function check(options: CheckOptions): Promise<number> {
  const out = options.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const err = options.err ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const usage = (message: string): number => {
    err(`magnetar check: ${message}`);
    return EXIT_USAGE;
  };
  const timeout = Number(options.timeout);
  if (options.timeout.trim() === '' || !Number.isFinite(timeout) || timeout <= 0) {
    return usage(`--timeout must be a positive number of seconds, not "${options.timeout}"`);
  }
  const jobId = options.jobId === '' ? `check-${randomBytes(8).toString('hex')}` : options.jobId;
  if (!JOB_ID.test(jobId) || jobId.includes('..')) {
    return usage(`--job-id "${options.jobId}" is not a valid job id (1-128 characters of [A-Za-z0-9._-], starting with a letter or digit)`);
  }
  if (options.manager !== undefined && !/^[A-Za-z0-9_.-]+$/.test(options.manager)) {
    return usage(`--manager "${options.manager}" is not a valid manager name`);
  }
  const pollInterval = options.pollInterval ?? 250;
  if (!Number.isFinite(pollInterval) || pollInterval <= 0 || pollInterval > 500) {
    return usage('the poll interval must be between 0 and 500 ms');
  }
  let remoteTransfer: RemoteTransferOptions | undefined;
  const filesOptions = options.filesHost !== undefined || options.filesPort !== undefined || options.filesAdvertise !== undefined || options.filesMaxPost !== undefined;
  if (options.remoteTransfer === true) {
    if (options.cache === true) return usage('--cache and --remote-transfer exclude each other (the files either go through the cache or are pulled by the server)');
    const host = options.filesHost ?? '127.0.0.1';
    const portNumber = Number(options.filesPort ?? '0');
    if (!HOST.test(host)) return usage(`--files-host "${host}" is not a host name or address`);
    if (options.filesAdvertise !== undefined && !HOST.test(options.filesAdvertise)) return usage(`--files-advertise "${options.filesAdvertise}" is not a host name or address`);
    if (!Number.isInteger(portNumber) || portNumber < 0 || portNumber > 65535) return usage(`--files-port must be a port number (0-65535), not "${options.filesPort}"`);
    const maxPost = Number(options.filesMaxPost ?? String(DEFAULT_MAX_POST_BYTES));
    if (!/^\d{1,10}$/.test(options.filesMaxPost ?? '0') || maxPost < 1 || maxPost > MAX_POST_LIMIT) {
      return usage(`--files-max-post must be a number of bytes from 1 to ${MAX_POST_LIMIT}, not "${options.filesMaxPost}"`);
    }
    remoteTransfer = { host, port: portNumber, advertise: options.filesAdvertise, maxPostBytes: maxPost };
  } else if (filesOptions) {
    return usage('--files-host, --files-port, --files-advertise and --files-max-post need --remote-transfer');
  }
  let tls: ClientTls | undefined;
  if (options.ca !== undefined) {
    try {
      tls = { ca: await readCertificates(options.ca) };
    } catch (error) {
      return usage((error as Error).message);
    }
  }
  if (options.insecure === true) {
    err('magnetar check: warning: --insecure: the server\'s TLS certificate is not verified; anyone on the way can read the private token and impersonate the server');
    tls = { ...tls, insecure: true };
  }
  return runCheck({
    url: options.url,
    privateToken: options.privateToken,
    manager: options.manager,
    jobId,
    timeoutSeconds: timeout,
    disableCleanup: options.disableCleanup === true,
    cache: options.cache === true,
    remoteTransfer,
    pollIntervalMs: pollInterval,
    tls,
    out,
    err,
  });
}
