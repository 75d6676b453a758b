/**
 * Http1Get over TLS, in a child node process that trusts the test's certificate the way a server
 * is made to trust a site CA (NODE_EXTRA_CA_CERTS: read at process start, hence the child). A TLS
 * socket keeps delivering what it has decrypted, and the peer's close, after `onread` paused it:
 * an answer written whole together with its close must still be read whole.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { generate } from 'selfsigned';

const HTTP1 = fileURLToPath(new URL('../../src/staging/http1.js', import.meta.url));

/** The child: a TLS server on 127.0.0.1 answering each request with `answer` and its close in one write; `rounds` GETs, each read after `pauseMs`. */
const CHILD = `
import * as tls from 'node:tls';
import * as dns from 'node:dns';
import { setTimeout as sleep } from 'node:timers/promises';
const { Http1Get } = await import(process.env.HTTP1);
const [key, cert, answer, rounds, pauseMs] = JSON.parse(process.env.CASE);
const server = tls.createServer({ key, cert }, (s) => { s.on('error', () => {}); s.once('data', () => s.end(Buffer.from(answer, 'latin1'))); });
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const url = new URL('https://localhost:' + server.address().port + '/x');
const results = [];
for (let i = 0; i < rounds; i++) {
  const g = new Http1Get(url, { lookup: (h, o, cb) => dns.lookup(h, o, cb), signal: new AbortController().signal, idleTimeoutMs: 10000, headers: {} });
  try {
    const response = await g.response;
    await sleep(pauseMs);
    let body = '';
    const r = await g.readBody((c) => { body += c.toString('latin1'); });
    results.push({ status: response.status, body, complete: r.complete });
  } catch (e) {
    results.push({ error: e.message });
  }
}
server.close();
console.log(JSON.stringify(results));
`;

async function runChild(t: { teardown(fn: () => Promise<void>): void }, answer: string, rounds: number, pauseMs: number): Promise<unknown[]> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2 as const, value: 'localhost' }] }],
  });
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-tls-'));
  t.teardown(async () => fs.rm(dir, { recursive: true, force: true }));
  const ca = path.join(dir, 'ca.pem');
  await fs.writeFile(ca, pems.cert);
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', CHILD], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: ca, HTTP1, CASE: JSON.stringify([pems.private, pems.cert, answer, rounds, pauseMs]) },
    timeout: 60_000,
  });
  return JSON.parse(stdout) as unknown[];
}

test('over TLS, an answer written whole with its close is read whole, however late the body is asked for', async (t) => {
  const body = 'x'.repeat(1000);
  const results = await runChild(t, `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`, 20, 5);
  t.deepEqual(results, Array.from({ length: 20 }, () => ({ status: 200, body, complete: true })));
});

test('over TLS, a body cut by the close before its length is not complete; one without framing is refused', async (t) => {
  const cut = await runChild(t, 'HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nonly this', 3, 5);
  t.deepEqual(cut, Array.from({ length: 3 }, () => ({ status: 200, body: 'only this', complete: false })));
  const unframed = await runChild(t, 'HTTP/1.1 200 OK\r\n\r\nwhatever came', 1, 0);
  t.regex(String((unframed[0] as { error?: string }).error), /neither content-length nor chunked/);
});
