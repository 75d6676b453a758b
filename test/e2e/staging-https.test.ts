/**
 * Stage-in from https files endpoints, through a real `magnetar serve` process that trusts the
 * endpoint's certificate the way an administrator makes it trust a site CA (NODE_EXTRA_CA_CERTS).
 * The certificate is checked: an untrusted one, or one for another name, fails the job before
 * anything reaches the job directory, and the job's command never runs (and is not retried).
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as https from 'node:https';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { generate } from 'selfsigned';
import { qs, request, waitForJob } from '../helpers/client.js';
import { serverRoot, spawnServer } from '../helpers/process.js';

const KEY = 'c0ffee';

interface TlsEndpoint {
  /** The URL Galaxy's client would build for `galaxyPath` (the job key in the query). */
  url(host: string, galaxyPath: string): string;
  readonly requests: string[];
  readonly certPem: string;
}

type Pems = { private: string; cert: string };

/** A self-signed certificate for `dnsName` (also its own CA, as a site CA would be trusted). */
async function certificateFor(dnsName: string): Promise<Pems> {
  return generate([{ name: 'commonName', value: dnsName }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 2 as const, value: dnsName }] },
    ],
  });
}

/**
 * An https job-files endpoint on 127.0.0.1 with certificate `pems`. `chunked`: node's https server,
 * bodies sent chunked in two writes. `at-once`: a raw TLS server that writes the whole answer
 * (Content-Length) and its close in one go, as a proxy answering a small file does: the end of
 * the connection arrives with the head.
 */
async function tlsEndpoint(t: { teardown(fn: () => Promise<void>): void }, pems: Pems, files: ReadonlyMap<string, Buffer>, mode: 'chunked' | 'at-once' = 'chunked'): Promise<TlsEndpoint> {
  const requests: string[] = [];
  const bodyFor = (target: string): Buffer | undefined => {
    const u = new URL(target, 'https://x');
    const galaxyPath = u.searchParams.get('path') ?? '';
    requests.push(galaxyPath);
    return u.searchParams.get('job_key') === KEY ? files.get(galaxyPath) : undefined;
  };
  let server: tls.Server;
  if (mode === 'chunked') {
    server = https.createServer({ key: pems.private, cert: pems.cert }, (req, res) => {
      const body = bodyFor(req.url ?? '/');
      if (body === undefined) {
        res.writeHead(404).end('no');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const half = body.length >> 1;
      res.write(body.subarray(0, half), () => res.end(body.subarray(half)));
    });
  } else {
    server = tls.createServer({ key: pems.private, cert: pems.cert }, (socket) => {
      socket.on('error', () => undefined);
      let head = '';
      socket.on('data', (d: Buffer) => {
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const target = head.split(' ')[1] ?? '/';
        const body = bodyFor(target) ?? Buffer.from('no');
        const status = files.has(new URL(target, 'https://x').searchParams.get('path') ?? '') ? '200 OK' : '404 Not Found';
        socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 ${status}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`), body]));
      });
    });
  }
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    if (server instanceof https.Server) server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: (host, galaxyPath) => `https://${host}:${port}/api/jobs/1/files?job_key=${KEY}&path=${encodeURIComponent(galaxyPath)}&file_type=input`,
    requests,
    certPem: pems.cert,
  };
}

async function submit(base: string, id: string, url: string, galaxyPath: string): Promise<string> {
  const setup = [{ name: 'in.dat', type: 'input', action: { path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, action_type: 'remote_transfer', url } }];
  const s = await request(base, 'POST', `/jobs?${qs({ job_id: id })}`);
  if (s.status !== 200) throw new Error(s.text);
  const remoteStaging = { setup, action_mapper: { default_action: 'remote_transfer', files_endpoint: null, paths: [] }, client_outputs: {} };
  const command = 'sha256sum ../inputs/in.dat | cut -c1-64 > ../outputs/sum && touch ../outputs/ran';
  return (await request(base, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: command, remote_staging: JSON.stringify(remoteStaging) })}`)).text;
}

test('https stage-in: a trusted certificate for the host name is fetched (chunked, or whole with the close); an untrusted one and one for another name fail the job with nothing staged or run', async (t) => {
  const body = randomBytes(3 * 1024 * 1024 + 17);
  const small = randomBytes(1000);
  const files = new Map([['/g/in.dat', body], ['/g/small.dat', small]]);
  const site = await certificateFor('localhost');
  const good = await tlsEndpoint(t, site, files);
  const atOnce = await tlsEndpoint(t, site, files, 'at-once');
  const untrusted = await tlsEndpoint(t, await certificateFor('localhost'), files);
  // Retries on: a certificate failure must still not be retried.
  const { root, ini } = await serverRoot(t, '[manager:_default_]\ntype = queued_python\npreprocess_action_max_retries = 3\npreprocess_action_interval_start = 0.01\n');
  const caFile = path.join(root, 'site-ca.pem');
  // The server trusts `good`'s certificate as a site CA; `untrusted`'s is self-signed and unknown.
  await fs.writeFile(caFile, good.certPem);
  const server = await spawnServer(ini, { NODE_EXTRA_CA_CERTS: caFile });
  t.teardown(async () => server.kill('SIGKILL'));

  t.is(await submit(server.url, 'ok', good.url('localhost', '/g/in.dat'), '/g/in.dat'), 'OK');
  const done = await waitForJob(server.url, 'ok');
  t.is(done.status, 'complete', done.stderr);
  const sum = await request(server.url, 'GET', `/jobs/ok/files?${qs({ job_id: 'ok', name: 'sum', type: 'output' })}`);
  t.is(sum.text.trim(), createHash('sha256').update(body).digest('hex'));

  // The whole answer and the TLS close in one go: the body is taken, not lost to the early end.
  t.is(await submit(server.url, 'small', atOnce.url('localhost', '/g/small.dat'), '/g/small.dat'), 'OK');
  const smallDone = await waitForJob(server.url, 'small');
  t.is(smallDone.status, 'complete', smallDone.stderr);
  const smallSum = await request(server.url, 'GET', `/jobs/small/files?${qs({ job_id: 'small', name: 'sum', type: 'output' })}`);
  t.is(smallSum.text.trim(), createHash('sha256').update(small).digest('hex'));

  const cases: [string, string, RegExp][] = [
    ['untrusted', untrusted.url('localhost', '/g/in.dat'), /self[- ]signed|unable to verify|certificate/i],
    // `good`'s certificate names localhost, not 127.0.0.1.
    ['wrong-name', good.url('127.0.0.1', '/g/in.dat'), /altnames|does not match|IP: 127\.0\.0\.1/i],
  ];
  for (const [id, url, reason] of cases) {
    t.is(await submit(server.url, id, url, '/g/in.dat'), 'OK');
    const doc = await waitForJob(server.url, id);
    t.is(doc.status, 'failed', id);
    t.regex(doc.stderr ?? '', reason, id);
    const inputs: string[] = await fs.readdir(path.join(root, 'staging', id, 'inputs')).catch(() => []);
    t.deepEqual(inputs, [], `${id}: nothing staged, not even a partial file`);
    const outputs: string[] = await fs.readdir(path.join(root, 'staging', id, 'outputs')).catch(() => []);
    t.false(outputs.includes('ran'), `${id}: the command did not run`);
  }
  t.false(server.output().includes('retrying'), 'certificate failures are not retried');
  t.deepEqual(untrusted.requests, [], 'the untrusted endpoint never saw a request (the handshake failed first)');
  t.deepEqual(good.requests, ['/g/in.dat'], 'nothing was sent to the endpoint under the wrong name');
});
