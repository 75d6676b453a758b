/**
 * Http1Get (src/staging/http1.ts) against a raw TCP server that sends crafted answers: every
 * framing, split at every byte, and the malformed answers it must refuse.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as dns from 'node:dns';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Http1Get, MalformedResponse, type Http1Response } from '../../src/staging/http1.js';

interface Raw {
  readonly url: URL;
  /** The request heads received, in order. */
  readonly requests: string[];
  close(): Promise<void>;
}

/** A TCP server that answers each connection with `answer` (written in pieces of `piece` bytes, 0 = at once). */
async function rawServer(t: { teardown(fn: () => Promise<void>): void }, answer: Buffer | ((socket: net.Socket) => void), piece = 0): Promise<Raw> {
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.once('close', () => sockets.delete(socket));
    let head = '';
    let answered = false;
    socket.on('data', (d: Buffer) => {
      if (answered) return;
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      answered = true;
      requests.push(head);
      if (typeof answer === 'function') {
        answer(socket);
        return;
      }
      void (async () => {
        if (piece === 0) socket.end(answer);
        else {
          for (let i = 0; i < answer.length; i += piece) {
            if (socket.destroyed) return;
            socket.write(answer.subarray(i, i + piece));
            await sleep(0);
          }
          socket.end();
        }
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return { url: new URL(`http://127.0.0.1:${port}/api/jobs/1/files?job_key=k&path=%2Fg%2Fx`), requests, close };
}

const lookup: net.LookupFunction = (hostname, options, callback) => dns.lookup(hostname, options, callback);

function get(url: URL, signal = new AbortController().signal, idleTimeoutMs = 10_000): Http1Get {
  return new Http1Get(url, { lookup, signal, idleTimeoutMs, headers: { 'user-agent': 'magnetar-test', range: 'bytes=5-' } });
}

/** The whole answer: head and body bytes (copied out of the reused buffer). */
async function fetchAll(url: URL): Promise<{ response: Http1Response; body: Buffer; complete: boolean; received: number; pieces: number }> {
  const request = get(url);
  const response = await request.response;
  const parts: Buffer[] = [];
  const { received, complete } = await request.readBody((chunk) => parts.push(Buffer.from(chunk)));
  return { response, body: Buffer.concat(parts), complete, received, pieces: parts.length };
}

function answer(head: string, body: Buffer | string = ''): Buffer {
  return Buffer.concat([Buffer.from(head.replace(/\n/g, '\r\n') + '\r\n'), Buffer.isBuffer(body) ? body : Buffer.from(body)]);
}

function chunked(body: Buffer, size: number, ext = ''): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < body.length; i += size) {
    const piece = body.subarray(i, i + size);
    parts.push(Buffer.from(`${piece.length.toString(16)}${ext}\r\n`), piece, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('0\r\nX-Checksum: abc\r\n\r\n'));
  return Buffer.concat(parts);
}

test('the request: GET of path and query, Host, the given headers, Connection: close', async (t) => {
  const raw = await rawServer(t, answer('HTTP/1.1 204 No Content\n'));
  const request = get(raw.url);
  t.is((await request.response).status, 204);
  t.deepEqual(await request.readBody(() => t.fail('no body')), { received: 0, complete: true });
  const [head] = raw.requests;
  t.is(head?.split('\r\n')[0], 'GET /api/jobs/1/files?job_key=k&path=%2Fg%2Fx HTTP/1.1');
  t.true(head?.includes(`\r\nHost: 127.0.0.1:${raw.url.port}\r\n`));
  t.true(head?.includes('\r\nrange: bytes=5-\r\n'));
  t.true(head?.includes('\r\nConnection: close\r\n\r\n'));
});

const BODY = randomBytes(70_000);
const framings: [string, Buffer][] = [
  ['content-length', answer(`HTTP/1.1 200 OK\nContent-Length: ${BODY.length}\nContent-Type: application/octet-stream\n`, BODY)],
  ['chunked', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', chunked(BODY, 7_001))],
  ['chunked with extensions', answer('HTTP/1.1 206 Partial Content\nTransfer-Encoding: Chunked\n', chunked(BODY, 65_536, ' ; name="v"'))],
  ['content-length after 100 Continue and 103 Early Hints', answer(`HTTP/1.1 100 Continue\n\nHTTP/1.1 103 Early Hints\nLink: </x>\n\nHTTP/1.1 200 OK\nContent-Length: ${BODY.length}\n`, BODY)],
];

for (const [name, bytes] of framings) {
  test(`a body framed by ${name} arrives whole, sent at once and a byte at a time`, async (t) => {
    for (const piece of [0, 1, 4093]) {
      if (piece === 1 && bytes.length > 80_000) continue;
      const raw = await rawServer(t, piece === 1 ? bytes.subarray(0, 2_500) : bytes, piece);
      const got = await fetchAll(raw.url);
      t.true(got.response.status === 200 || got.response.status === 206);
      if (piece === 1) {
        // Only a prefix was sent a byte at a time: the body is its share of it, not complete unless close-framed.
        t.true(BODY.subarray(0, got.body.length).equals(got.body), `${name} byte by byte`);
        t.is(got.received, got.body.length);
        t.false(got.complete, 'a body cut short is not complete');
      } else {
        t.true(got.body.equals(BODY), `${name} in pieces of ${piece}`);
        t.is(got.received, BODY.length);
        t.true(got.complete);
      }
      await raw.close();
    }
  });
}

test('headers: names lower-cased, repeated ones joined, values trimmed; identical repeated lengths are one length', async (t) => {
  const raw = await rawServer(t, answer('HTTP/1.1 206 Partial Content\nContent-Range:  bytes 5-9/10 \nX-A: 1\nx-a: 2\nContent-Length: 5\nContent-Length: 5\n', '56789'));
  const got = await fetchAll(raw.url);
  t.is(got.response.headers.get('content-range'), 'bytes 5-9/10');
  t.is(got.response.headers.get('x-a'), '1, 2');
  t.is(got.body.toString(), '56789');
  t.true(got.complete);
});

test('a header value with a long inner run of spaces is trimmed at its ends only', async (t) => {
  const inner = `a${' '.repeat(60_000)}b`;
  const raw = await rawServer(t, answer(`HTTP/1.1 200 OK\nX-Spaces: \t ${inner} \t\nContent-Length: 2\n`, 'ok'));
  const got = await fetchAll(raw.url);
  t.is(got.response.headers.get('x-spaces'), inner);
  t.is(got.body.toString(), 'ok');
});

test('bytes after a content-length body are not taken', async (t) => {
  const raw = await rawServer(t, answer('HTTP/1.1 200 OK\nContent-Length: 3\n', 'abcdefgh'));
  const got = await fetchAll(raw.url);
  t.is(got.body.toString(), 'abc');
  t.true(got.complete);
});

test('a body cut short by the connection is reported with what arrived, not complete', async (t) => {
  const raw = await rawServer(t, answer('HTTP/1.1 200 OK\nContent-Length: 1000\n', 'x'.repeat(400)));
  const got = await fetchAll(raw.url);
  t.is(got.received, 400);
  t.false(got.complete);
  const raw2 = await rawServer(t, answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', '10\r\n0123456789abcdef\r\n'));
  const got2 = await fetchAll(raw2.url);
  t.is(got2.body.toString(), '0123456789abcdef');
  t.false(got2.complete, 'no last chunk: not complete');
});

const malformed: [string, Buffer, RegExp][] = [
  ['no status line', Buffer.from('hello\r\n\r\n'), /not an HTTP\/1\.x status line/],
  ['HTTP/2 status line', answer('HTTP/2 200\n'), /status line/],
  ['a three-digit status starting with 0', answer('HTTP/1.1 099 X\n'), /status line/],
  ['a folded header line', answer('HTTP/1.1 200 OK\nX-A: 1\n  continued\nContent-Length: 0\n'), /without a name|token/],
  ['a header without a colon', answer('HTTP/1.1 200 OK\nContent-Length 0\n'), /without a name/],
  ['a space before the colon', answer('HTTP/1.1 200 OK\nContent-Length : 0\n'), /token/],
  ['a bare LF in a header value', Buffer.from('HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 0\r\n\r\n'), /without a name|control character|token/],
  ['transfer-encoding and content-length', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Length: 5\n', '5\r\nhello\r\n0\r\n\r\n'), /both transfer-encoding and content-length/],
  ['transfer-encoding gzip', answer('HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n'), /only chunked/],
  ['differing content-lengths', answer('HTTP/1.1 200 OK\nContent-Length: 5\nContent-Length: 6\n', 'hello!'), /content-length/],
  ['a negative content-length', answer('HTTP/1.1 200 OK\nContent-Length: -1\n'), /content-length/],
  ['a chunk size that is not hex', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', 'zz\r\nhello\r\n'), /not hexadecimal/],
  ['a chunk size with 14 hex digits', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', '10000000000000\r\n'), /too large/],
  ['chunk data not followed by CRLF', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', '3\r\nabcd\r\n'), /not followed by CRLF/],
  ['a chunk-size line with a bare LF', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', '3\nabc\r\n'), /not hexadecimal/],
  ['a chunk extension too long', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', `3;${'e'.repeat(5000)}\r\nabc\r\n`), /too long/],
  ['trailers too long', answer('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', `0\r\n${'X-T: 1\r\n'.repeat(3000)}\r\n`), /trailers too long/],
  ['a protocol switch', answer('HTTP/1.1 101 Switching Protocols\nUpgrade: x\n\n'), /protocol switch/],
  ['a body framed by the end of the connection', answer('HTTP/1.0 200 OK\nServer: old\n', 'cut anywhere'), /neither content-length nor chunked/],
  ['transfer-encoding in an HTTP/1.0 answer', answer('HTTP/1.0 200 OK\nTransfer-Encoding: chunked\n', '0\r\n\r\n'), /HTTP\/1\.0/],
  ['nine interim answers', answer('HTTP/1.1 100 Continue\n\n'.repeat(9)), /interim/],
  ['a head over 64 KiB', answer(`HTTP/1.1 200 OK\n${'X-Big: y\n'.repeat(8000)}`), /head over 65536 bytes/],
  ['a head that never ends', Buffer.from(`HTTP/1.1 200 OK\r\n${'X: y'.repeat(20_000)}`), /head over 65536 bytes/],
  ['129 headers', answer(`HTTP/1.1 200 OK\n${'X: y\n'.repeat(129)}`), /more than 128 headers/],
];

for (const [name, bytes, message] of malformed) {
  test(`refused: ${name}`, async (t) => {
    const raw = await rawServer(t, bytes);
    const request = get(raw.url);
    const error = await request.response.then(
      async () => request.readBody(() => undefined).then(() => undefined, (e: unknown) => e),
      (e: unknown) => e,
    );
    t.true(error instanceof MalformedResponse, `${name}: ${String(error)}`);
    t.regex((error as Error).message, message);
  });
}

test('a connection closed before the answer, and a connection refused, are errors', async (t) => {
  const raw = await rawServer(t, (socket) => socket.end());
  await t.throwsAsync(get(raw.url).response, { message: /closed the connection before answering/ });
  const url = raw.url;
  await raw.close();
  await t.throwsAsync(get(url).response, { message: /ECONNREFUSED/ });
});

test('a sink that throws ends the transfer with its error; the connection is dropped', async (t) => {
  let closed!: () => void;
  const closedP = new Promise<void>((r) => { closed = r; });
  const raw = await rawServer(t, (socket) => {
    socket.once('close', () => closed());
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n');
    const timer = setInterval(() => socket.write(Buffer.alloc(65_536)), 1);
    socket.once('close', () => clearInterval(timer));
  });
  const request = get(raw.url);
  await request.response;
  let seen = 0;
  await t.throwsAsync(request.readBody((chunk) => {
    seen += chunk.length;
    if (seen > 100_000) throw new Error('too much');
  }), { message: 'too much' });
  await closedP;
  t.pass();
});

test('an abort ends a transfer under way with an AbortError; an idle endpoint times out', async (t) => {
  const raw = await rawServer(t, (socket) => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc'));
  const controller = new AbortController();
  const request = get(raw.url, controller.signal);
  await request.response;
  const body = request.readBody(() => undefined);
  await sleep(20);
  controller.abort();
  const error: unknown = await body.then(() => undefined, (e: unknown) => e);
  t.is((error as Error).name, 'AbortError');
  const idle = get(raw.url, new AbortController().signal, 200);
  await idle.response;
  await t.throwsAsync(idle.readBody(() => undefined), { message: /sent nothing for too long/ });
  const before = new AbortController();
  before.abort();
  t.is(((await get(raw.url, before.signal).response.then(() => undefined, (e: unknown) => e)) as Error).name, 'AbortError');
});

test('discard drops the connection without reading the body', async (t) => {
  let closed!: () => void;
  const closedP = new Promise<void>((r) => { closed = r; });
  const raw = await rawServer(t, (socket) => {
    socket.once('close', () => closed());
    socket.write('HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 1000000\r\n\r\n');
  });
  const request = get(raw.url);
  const response = await request.response;
  t.is(response.headers.get('location'), '/elsewhere');
  request.discard();
  await closedP;
  await t.throwsAsync(request.readBody(() => undefined));
});

test('an answer without a length that is not read (a 404 ending with the connection) is still a status', async (t) => {
  const raw = await rawServer(t, answer('HTTP/1.0 404 Not Found\n', 'no such file'));
  const request = get(raw.url);
  t.is((await request.response).status, 404);
  request.discard();
});

test('only http: and https: URLs', (t) => {
  t.throws(() => get(new URL('ftp://127.0.0.1:1/x')), { message: /http: and https: URLs only/ });
});
