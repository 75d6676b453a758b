/**
 * A transfer worker thread (transfer-pool.ts): runs single attempts of stage-in GETs (fetchOnce)
 * and stage-out POSTs (postFile), one at a time; the main thread retries, holding no worker meanwhile. Its socket buffers live in this thread's small heap, where V8
 * reclaims them with cheap scavenges, and its synchronous reads and writes block only this thread.
 * The staging policy stays in the main thread: each URL and each resolved address is sent there to
 * be checked (`check` messages), and the answer comes back before the connection is made.
 */
import { parentPort } from 'node:worker_threads';
import { fetchOnce, type UrlGate } from './http-get.js';
import { postFile } from './http-post.js';
import { type ToWorker, type FromWorker, type TransferOrder, serializeError, deserializeError } from './transfer-pool.js';

const port = parentPort;
if (port === null) throw new Error('transfer-worker.js runs only as a worker thread');
const pending = new Map<number, { resolve: (value: URL) => void; reject: (error: Error) => void }>();
let nextId = 0;
let current: AbortController | undefined;

function send(message: FromWorker): void {
  port?.postMessage(message);
}

function ask(message: { kind: 'url'; text: string } | { kind: 'address'; url: string; address: string }): Promise<URL> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    send({ t: 'check', id, ...message });
  });
}

const gate: UrlGate = {
  checkUrl: (text) => ask({ kind: 'url', text: typeof text === 'string' ? text : '' }),
  checkAddress: async (url, address) => {
    await ask({ kind: 'address', url: url.href, address });
  },
};

async function run(order: TransferOrder, controller: AbortController): Promise<void> {
  try {
    if (order.kind === 'post') {
      await postFile(new URL(order.url), order.fd, order.size, order.filename, { policy: gate, signal: controller.signal, idleTimeoutMs: order.idleTimeoutMs });
      send({ t: 'done', result: null });
      return;
    }
    // The URL was checked before the order was sent; checked again here, where it is used.
    const result = await fetchOnce(await gate.checkUrl(order.url), order.dest, {
      policy: gate,
      signal: controller.signal,
      maxBytes: order.maxBytes,
      ...(order.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: order.idleTimeoutMs }),
    });
    send({ t: 'done', result });
  } catch (error) {
    send({ t: 'fail', error: serializeError(error) });
  } finally {
    if (current === controller) current = undefined;
  }
}

port.on('message', (message: ToWorker) => {
  switch (message.t) {
    case 'start': {
      const controller = new AbortController();
      current = controller;
      void run(message.order, controller);
      return;
    }
    case 'abort':
      current?.abort();
      return;
    case 'checked': {
      const waiting = pending.get(message.id);
      if (waiting === undefined) return;
      pending.delete(message.id);
      if (message.error === undefined) waiting.resolve(new URL(message.url ?? 'about:blank'));
      else waiting.reject(deserializeError(message.error));
      return;
    }
  }
});
