/**
 * The server's TLS key and certificate (`ssl_pem`). A configured PEM is read and checked; with
 * `ssl_pem = *` a self-signed certificate is generated on the first start, kept next to the
 * configuration file (mode 0600) and reused on every later start, so that clients which trusted it
 * keep trusting it. Whatever goes wrong is a startup error: magnetar never falls back to plain
 * HTTP. The certificate's SHA-256 fingerprint is logged at every start, for clients to compare.
 */
import { X509Certificate, createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { isIP } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { generate } from 'selfsigned';
import type { Config } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';

export interface TlsCredentials {
  /** The PEM (key and certificate), for `https.createServer({ key, cert })`. */
  readonly key: Buffer;
  readonly cert: Buffer;
  /** `AA:BB:...`, as `openssl x509 -fingerprint -sha256` prints it. */
  readonly fingerprint256: string;
  /** Absolute path of the PEM that was read. */
  readonly file: string;
}

const KEY_BITS = 2048;
const VALID_DAYS = 825;
const DAY_MS = 24 * 60 * 60 * 1000;
const WILDCARD_HOSTS: ReadonlySet<string> = new Set(['0.0.0.0', '::', '']);
const DNS_NAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** Read (and with `ssl_pem = *` first create) the server's key and certificate. */
export async function tlsCredentials(config: Config, log: Logger): Promise<TlsCredentials> {
  const { sslPem, sslGenerate, host } = config.server;
  if (sslPem === undefined) throw new Error('tlsCredentials called without ssl_pem');
  const fail = (message: string, cause?: unknown): ConfigError =>
    new ConfigError(config.configFile ?? 'server.ini', '[server:main] ssl_pem', message, { cause });

  if (sslGenerate && !(await exists(sslPem, fail))) {
    const created = await writeGenerated(sslPem, await generatePem(host), 'exclusive', fail);
    log.warn({ file: sslPem }, created
      ? 'generated a self-signed TLS certificate (ssl_pem = *); clients must trust it (or pin its fingerprint)'
      : 'another process generated the self-signed TLS certificate first; using it');
  }

  let credentials = await readCredentials(sslPem, fail, sslGenerate);
  if (new Date(credentials.certificate.validTo).getTime() <= Date.now()) {
    if (!sslGenerate) {
      log.warn({ file: sslPem, validTo: credentials.certificate.validTo }, 'the TLS certificate has expired: clients will refuse it');
    } else {
      log.warn({ file: sslPem, validTo: credentials.certificate.validTo }, 'the generated TLS certificate has expired: generating a new one (clients must trust the new one)');
      await writeGenerated(sslPem, await generatePem(host), 'replace', fail);
      credentials = await readCredentials(sslPem, fail, sslGenerate);
    }
  }
  const { pem, certificate } = credentials;
  const info = await fs.stat(sslPem);
  if ((info.mode & 0o077) !== 0) {
    log.warn({ file: sslPem, mode: (info.mode & 0o777).toString(8) }, 'the TLS private key is readable by other users: chmod 600 it');
  }
  if (sslGenerate) await writeCertificateCopy(sslPem, certificate, log);
  log.info(
    { file: sslPem, fingerprint256: certificate.fingerprint256, subject: certificate.subject, validTo: certificate.validTo },
    'TLS certificate',
  );
  return { key: pem, cert: pem, fingerprint256: certificate.fingerprint256, file: sslPem };
}

/** Where the certificate alone (no key) is written, for clients to trust: `<name>.crt`. */
export function certificateCopyPath(pemFile: string): string {
  return pemFile.replace(/(?:\.pem)?$/i, '.crt');
}

// ------------------------------------------------------------------------------------------------

/** Whether anything (even a dangling link, which must not be replaced) is at `file`. */
async function exists(file: string, fail: (message: string, cause?: unknown) => ConfigError): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    throw fail(`cannot check ${file}: ${code ?? (error as Error).message}`, error);
  }
}

async function readCredentials(
  file: string,
  fail: (message: string, cause?: unknown) => ConfigError,
  generated: boolean,
): Promise<{ pem: Buffer; certificate: X509Certificate; key: KeyObject }> {
  const remedy = generated ? ` (delete it to have magnetar generate a new one)` : '';
  let pem: Buffer;
  try {
    pem = await fs.readFile(file);
  } catch (error) {
    throw fail(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, error);
  }
  let certificate: X509Certificate;
  let key: KeyObject;
  try {
    certificate = new X509Certificate(pem);
  } catch (error) {
    throw fail(`${file} holds no valid PEM certificate${remedy}`, error);
  }
  try {
    key = createPrivateKey(pem);
  } catch (error) {
    throw fail(`${file} holds no valid unencrypted PEM private key${remedy}`, error);
  }
  if (!certificate.checkPrivateKey(key)) throw fail(`the private key in ${file} does not belong to its certificate${remedy}`);
  return { pem, certificate, key };
}

/** A self-signed RSA certificate for `host`, `localhost`, 127.0.0.1, ::1 and this machine's name. */
async function generatePem(host: string): Promise<string> {
  const address = host.replace(/%.*$/, '');
  const dnsNames = new Set<string>(['localhost']);
  const ips = new Set<string>(['127.0.0.1', '::1']);
  if (isIP(address) !== 0) {
    if (!WILDCARD_HOSTS.has(address)) ips.add(address);
  } else if (DNS_NAME_RE.test(host)) {
    dnsNames.add(host);
  }
  const machine = os.hostname();
  if (DNS_NAME_RE.test(machine)) dnsNames.add(machine);
  const commonName = isIP(address) === 0 && DNS_NAME_RE.test(host) && host.length <= 64 ? host : 'localhost';

  const notBeforeDate = new Date(Date.now() - 60_000);
  const pems = await generate([{ name: 'commonName', value: commonName }, { name: 'organizationName', value: 'magnetar (self-signed)' }], {
    keyType: 'rsa',
    keySize: KEY_BITS,
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: new Date(notBeforeDate.getTime() + VALID_DAYS * DAY_MS),
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [...[...dnsNames].map((value) => ({ type: 2 as const, value })), ...[...ips].map((ip) => ({ type: 7 as const, ip }))],
      },
    ],
  });
  return `${pems.cert.trimEnd()}\n${pems.private.trimEnd()}\n`;
}

/**
 * Write the PEM as `file`, mode 0600: into a fresh temp file (O_EXCL), then linked into place so
 * that a concurrent start cannot be overwritten (`exclusive`; resolves false if another process
 * won), or renamed over an expired one (`replace`).
 */
async function writeGenerated(
  file: string,
  pem: string,
  how: 'exclusive' | 'replace',
  fail: (message: string, cause?: unknown) => ConfigError,
): Promise<boolean> {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const cannot = (error: unknown): ConfigError =>
    fail(`cannot write the generated certificate ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, error);
  try {
    const handle = await fs.open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(pem);
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw cannot(error);
  }
  try {
    if (how === 'replace') {
      await fs.rename(temp, file);
      return true;
    }
    try {
      await fs.link(temp, file);
      return true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return false;
      // File systems without hard links: a plain rename (a concurrent start could then win twice).
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS' && code !== 'EOPNOTSUPP') throw error;
      await fs.rename(temp, file);
      return true;
    }
  } catch (error) {
    throw cannot(error);
  } finally {
    await fs.rm(temp, { force: true });
  }
}

/** Keep `<name>.crt` (the certificate only, world-readable) in step with the generated PEM. */
async function writeCertificateCopy(pemFile: string, certificate: X509Certificate, log: Logger): Promise<void> {
  const file = certificateCopyPath(pemFile);
  const text = certificate.toString();
  if ((await fs.readFile(file, 'utf8').catch(() => undefined)) === text) return;
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await fs.writeFile(temp, text, { mode: 0o644, flag: 'wx' });
    await fs.rename(temp, file);
    log.info({ file }, 'wrote the certificate (without its key) for clients to trust, e.g. magnetar check --ca');
  } catch (error) {
    await fs.rm(temp, { force: true });
    log.warn({ file, err: error }, 'could not write the certificate copy for clients');
  }
}
