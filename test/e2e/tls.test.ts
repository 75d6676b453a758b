import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as https from 'node:https';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/index.js';
import type { Config } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { BIN, freePort, spawnServer } from '../helpers/process.js';
import { makeRoot } from '../helpers/server.js';

/** DER of the sha256WithRSAEncryption OID (1.2.840.113549.1.1.11) and of sha1WithRSAEncryption. */
const SHA256_WITH_RSA = Buffer.from('06092a864886f70d01010b', 'hex');
const SHA1_WITH_RSA = Buffer.from('06092a864886f70d010105', 'hex');
const TOOLBOX = '<toolbox tool_path="."></toolbox>\n';

async function tempRoot(t: ExecutionContext): Promise<string> {
  const root = await makeRoot();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  return root;
}

async function writeIni(root: string, server: string[], app: string[] = []): Promise<string> {
  const file = path.join(root, 'server.ini');
  await fs.writeFile(
    file,
    ['[server:main]', ...server, '', '[app:main]', `staging_directory = ${root}/staging`, `persistence_directory = ${root}/persisted`, ...app, ''].join('\n'),
  );
  return file;
}

/** Load through the real config loader, start in-process, capture the log. */
async function start(t: ExecutionContext, configFile: string): Promise<{ server: RunningServer; config: Config; logLines: string[] }> {
  const { config } = await loadConfig({ configFile, cwd: path.dirname(configFile), env: {} });
  const logLines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  const server = await startServer(config, { log: createLogger({ level: 'info', destination: sink }), env: process.env, port: 0 });
  t.teardown(() => server.close());
  return { server, config, logLines };
}

function get(url: string, ca: Buffer | string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, agent: false }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** Run the real CLI to completion. */
function runCli(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MAGNETAR_LOG_LEVEL: 'info' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const fingerprintsLogged = (lines: readonly string[]): string[] =>
  lines
    .map((line) => JSON.parse(line) as { msg?: string; fingerprint256?: string })
    .filter((entry) => entry.msg === 'TLS certificate')
    .map((entry) => entry.fingerprint256 ?? '');

test('ssl_pem = * generates a 0600 PEM with a SHA-256-signed RSA >= 2048 certificate, logs its fingerprint and reuses it', async (t) => {
  const root = await tempRoot(t);
  const ini = await writeIni(root, ['host = 127.0.0.1', 'port = 8913', 'ssl_pem = *']);
  const first = await start(t, ini);
  const pemFile = path.join(root, 'magnetar-selfsigned.pem');
  t.is(first.config.server.sslPem, pemFile);
  t.true(first.server.url.startsWith('https://127.0.0.1:'));

  const info = await fs.stat(pemFile);
  t.is(info.mode & 0o777, 0o600);
  const pem = await fs.readFile(pemFile, 'utf8');
  t.regex(pem, /-----BEGIN PRIVATE KEY-----/);
  const cert = new X509Certificate(pem);
  t.true((cert.publicKey.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048);
  t.is(cert.publicKey.asymmetricKeyType, 'rsa');
  t.true(cert.raw.includes(SHA256_WITH_RSA), 'signed with sha256WithRSAEncryption');
  t.false(cert.raw.includes(SHA1_WITH_RSA), 'not SHA-1');
  t.true(cert.verify(cert.publicKey), 'self-signed');
  t.regex(cert.subjectAltName ?? '', /DNS:localhost/);
  t.regex(cert.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
  t.true(new Date(cert.validTo).getTime() > Date.now() + 300 * 24 * 3600 * 1000);

  // The fingerprint is logged; the certificate alone is written for clients (no key in it).
  t.deepEqual(fingerprintsLogged(first.logLines), [cert.fingerprint256]);
  const crt = await fs.readFile(path.join(root, 'magnetar-selfsigned.crt'), 'utf8');
  t.false(crt.includes('PRIVATE KEY'));
  t.is(new X509Certificate(crt).fingerprint256, cert.fingerprint256);

  // A client that trusts the certificate talks to the server.
  const health = await get(`${first.server.url}healthz`, crt);
  t.is(health.status, 200);
  // One that does not is refused by its TLS layer.
  await t.throwsAsync(
    new Promise((resolve, reject) => https.get(`${first.server.url}healthz`, { agent: false }, resolve).on('error', reject)),
    { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' },
  );
  await first.server.close();

  // A restart reuses the same certificate.
  const second = await start(t, ini);
  t.is(await fs.readFile(pemFile, 'utf8'), pem);
  t.deepEqual(fingerprintsLogged(second.logLines), [cert.fingerprint256]);
  t.false(second.logLines.some((l) => l.includes('generated a self-signed')));
  t.is((await get(`${second.server.url}healthz`, crt)).status, 200);
});

test('a generated PEM that became invalid stops startup (never plain HTTP, never silently replaced)', async (t) => {
  const root = await tempRoot(t);
  const ini = await writeIni(root, ['host = 127.0.0.1', 'ssl_pem = *']);
  const pemFile = path.join(root, 'magnetar-selfsigned.pem');
  await fs.writeFile(pemFile, 'garbage', { mode: 0o600 });
  const { config } = await loadConfig({ configFile: ini, cwd: root, env: {} });
  const error = await t.throwsAsync(startServer(config, { log: createLogger({ level: 'silent' }), env: process.env, port: 0 }), {
    code: 'MAG_ERR_CONFIG',
  });
  t.regex(error?.message ?? '', /ssl_pem: .*magnetar-selfsigned\.pem holds no valid PEM certificate \(delete it/);
  t.is(await fs.readFile(pemFile, 'utf8'), 'garbage');
});

test('an explicit pem whose key does not match its certificate stops startup', async (t) => {
  const root = await tempRoot(t);
  // Two generated certificates: the key of one with the certificate of the other.
  const a = await tempRoot(t);
  const b = await tempRoot(t);
  for (const dir of [a, b]) {
    const { config } = await loadConfig({ configFile: await writeIni(dir, ['host = 127.0.0.1', 'ssl_pem = *']), cwd: dir, env: {} });
    await (await startServer(config, { log: createLogger({ level: 'silent' }), env: process.env, port: 0 })).close();
  }
  const certOf = (text: string): string => /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n/.exec(text)?.[0] ?? '';
  const keyOf = (text: string): string => /-----BEGIN PRIVATE KEY-----[\s\S]*?-----END PRIVATE KEY-----\n/.exec(text)?.[0] ?? '';
  const pemA = await fs.readFile(path.join(a, 'magnetar-selfsigned.pem'), 'utf8');
  const pemB = await fs.readFile(path.join(b, 'magnetar-selfsigned.pem'), 'utf8');
  await fs.writeFile(path.join(root, 'host.pem'), certOf(pemA) + keyOf(pemB), { mode: 0o600 });
  const { config } = await loadConfig({ configFile: await writeIni(root, ['host = 127.0.0.1', 'ssl_pem = host.pem']), cwd: root, env: {} });
  await t.throwsAsync(startServer(config, { log: createLogger({ level: 'silent' }), env: process.env, port: 0 }), {
    code: 'MAG_ERR_CONFIG',
    message: /does not belong to its certificate/,
  });
});

test('the real CLI: a missing explicit ssl_pem exits 2 with a one-line reason', async (t) => {
  const root = await tempRoot(t);
  await writeIni(root, ['host = 127.0.0.1', `port = ${await freePort()}`, 'ssl_pem = missing.pem']);
  const run = await runCli(['serve', '--config', 'server.ini'], root);
  t.is(run.code, 2, run.stderr);
  const lines = run.stderr.trim().split('\n');
  t.is(lines.length, 1, run.stderr);
  t.regex(lines[0] ?? '', /^magnetar: server\.ini: \[server:main\] ssl_pem: file not found: .*missing\.pem$/);
});

test('the real CLI: public mode over plain HTTP on 0.0.0.0 is refused (exit 2) unless allow_insecure_public', async (t) => {
  const root = await tempRoot(t);
  await fs.writeFile(path.join(root, 'tools.xml'), TOOLBOX);
  const port = await freePort();
  await writeIni(root, ['host = 0.0.0.0', `port = ${port}`], ['private_token = tok', 'tool_config_files = tools.xml']);
  const refused = await runCli(['serve', '--config', 'server.ini'], root);
  t.is(refused.code, 2, refused.stderr);
  const lines = refused.stderr.trim().split('\n');
  t.is(lines.length, 1, refused.stderr);
  t.regex(lines[0] ?? '', /^magnetar: server\.ini: \[server:main\] host: public tool service mode .*allow_insecure_public = true/);

  const ini = await writeIni(root, ['host = 0.0.0.0', `port = ${port}`], ['private_token = tok', 'tool_config_files = tools.xml', 'allow_insecure_public = true']);
  const server = await spawnServer(ini);
  t.teardown(() => server.kill());
  t.regex(server.output(), /allow_insecure_public is set/);
});
