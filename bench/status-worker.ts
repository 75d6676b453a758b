/**
 * Load generator for the status workload, run in a worker_thread so that the main thread's timers
 * and bookkeeping do not disturb it. Two client implementations:
 *  - `raw` (default): one net.Socket per connection, a pre-encoded HTTP/1.1 keep-alive request and
 *    a minimal response parser (status line + Content-Length), in the style of autocannon — a few
 *    µs of client CPU per request, so the server is what gets measured;
 *  - `http`: node:http with a keep-alive Agent (heavier; useful to compare).
 * Each connection sends its next request as soon as the previous response is complete (closed loop).
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';

export interface StatusWorkerInput {
  readonly host: string;
  readonly port: number;
  readonly path: string;
  readonly connections: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  readonly mode: 'raw' | 'http';
}

export interface StatusWorkerOutput {
  /** Latencies (ms) of the requests sent inside the measured window. */
  readonly latencies: Float64Array;
  /** Requests completed inside the window. */
  readonly completed: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly windowMs: number;
  /** Event-loop utilisation of this worker during the window (≈1 = the client is saturated). */
  readonly clientElu: number;
  readonly bodyBytes: number;
  /** Up to 20 requests slower than 200 ms: [ms after the window start when sent, latency ms]. */
  readonly slow: [number, number][];
}

class Recorder {
  latencies = new Float64Array(1 << 16);
  count = 0;
  errors = 0;
  /** Errors are counted from the window start to the end of the drain. */
  counting = false;
  firstError: string | undefined;
  bodyBytes = 0;
  stopped = false;
  windowStart = 0;
  slow: [number, number][] = [];

  windowEnd = Number.POSITIVE_INFINITY;
  /** Requests completed inside the window (throughput). */
  completed = 0;

  /**
   * A request sent at `sentAt` (performance.now()) just completed. Latency is kept for every request
   * *sent* inside the window, even if it completes after it (dropping those would hide slow ones);
   * throughput counts completions inside the window.
   */
  record(sentAt: number): void {
    const now = performance.now();
    if (now >= this.windowStart && now <= this.windowEnd && this.windowStart > 0) this.completed++;
    if (sentAt < this.windowStart || sentAt >= this.windowEnd || this.windowStart === 0) return;
    const ms = now - sentAt;
    if (ms > 200 && this.slow.length < 20) this.slow.push([Math.round(sentAt - this.windowStart), Math.round(ms)]);
    if (this.count === this.latencies.length) {
      const bigger = new Float64Array(this.latencies.length * 2);
      bigger.set(this.latencies);
      this.latencies = bigger;
    }
    this.latencies[this.count++] = ms;
  }

  error(message: string): void {
    if (this.counting) this.errors++;
    this.firstError ??= message;
  }
}

const CRLFCRLF = Buffer.from('\r\n\r\n');
const CONTENT_LENGTH = /\r\ncontent-length:\s*(\d+)/i;

/** One raw keep-alive connection running the closed loop; resolves when stopped and idle. */
function rawConnection(input: StatusWorkerInput, request: Buffer, rec: Recorder): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: input.host, port: input.port });
    socket.setNoDelay(true);
    let pending: Buffer | undefined;
    let t0 = 0;
    let busy = false;
    const send = (): void => {
      if (rec.stopped) {
        socket.end();
        return;
      }
      busy = true;
      t0 = performance.now();
      socket.write(request);
    };
    socket.on('connect', send);
    socket.on('data', (chunk: Buffer) => {
      pending = pending === undefined ? chunk : Buffer.concat([pending, chunk]);
      for (;;) {
        const headerEnd: number = pending.indexOf(CRLFCRLF);
        if (headerEnd === -1) return;
        const head = pending.toString('latin1', 0, headerEnd);
        const m = CONTENT_LENGTH.exec(head);
        if (m === null) {
          rec.error('response without Content-Length');
          socket.destroy();
          return;
        }
        const total: number = headerEnd + 4 + Number(m[1]);
        if (pending.length < total) return;
        const status = Number(head.slice(9, 12));
        busy = false;
        if (status === 200) {
          rec.record(t0);
          if (rec.counting) rec.bodyBytes += total - headerEnd - 4;
        } else rec.error(`HTTP ${status}: ${pending.subarray(headerEnd + 4, total).toString('utf8').slice(0, 200)}`);
        pending = pending.length === total ? undefined : pending.subarray(total);
        send();
        if (pending === undefined) return;
      }
    });
    socket.on('error', (error) => rec.error(`socket: ${error.message}`));
    socket.on('close', () => {
      if (busy && !rec.stopped) rec.error('connection closed by the server');
      resolve();
    });
  });
}

function httpLoop(input: StatusWorkerInput, agent: http.Agent, rec: Recorder): Promise<void> {
  return new Promise((resolve) => {
    const once = (): void => {
      if (rec.stopped) {
        resolve();
        return;
      }
      const t0 = performance.now();
      const req = http.request({ host: input.host, port: input.port, path: input.path, method: 'GET', agent }, (res) => {
        let bytes = 0;
        res.on('data', (c: Buffer) => {
          bytes += c.length;
        });
        res.on('end', () => {
          if (res.statusCode === 200) {
            rec.record(t0);
            if (rec.counting) rec.bodyBytes += bytes;
          } else rec.error(`HTTP ${res.statusCode}`);
          once();
        });
      });
      req.on('error', (error) => {
        rec.error(error.message);
        setTimeout(once, 10);
      });
      req.end();
    };
    once();
  });
}

async function main(input: StatusWorkerInput): Promise<StatusWorkerOutput> {
  const rec = new Recorder();
  const request = Buffer.from(`GET ${input.path} HTTP/1.1\r\nHost: ${input.host}:${input.port}\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n`, 'latin1');
  const agent = new http.Agent({ keepAlive: true, maxSockets: input.connections, maxFreeSockets: input.connections });
  const loops: Promise<void>[] = [];
  for (let i = 0; i < input.connections; i++) {
    loops.push(input.mode === 'raw' ? rawConnection(input, request, rec) : httpLoop(input, agent, rec));
  }
  await new Promise((r) => setTimeout(r, input.warmupMs));
  const elu0 = performance.eventLoopUtilization();
  const start = performance.now();
  rec.windowStart = start;
  rec.counting = true;
  await new Promise((r) => setTimeout(r, input.durationMs));
  rec.windowEnd = performance.now();
  const windowMs = rec.windowEnd - start;
  const elu = performance.eventLoopUtilization(elu0);
  rec.stopped = true;
  await Promise.race([Promise.all(loops), new Promise((r) => setTimeout(r, 5000))]);
  agent.destroy();
  return {
    latencies: rec.latencies.slice(0, rec.count),
    completed: rec.completed,
    errors: rec.errors,
    firstError: rec.firstError,
    windowMs,
    clientElu: elu.utilization,
    bodyBytes: rec.bodyBytes,
    slow: rec.slow,
  };
}

if (parentPort !== null) {
  const port = parentPort;
  main(workerData as StatusWorkerInput).then(
    (out) => port.postMessage(out, [out.latencies.buffer as ArrayBuffer]),
    (error: unknown) => port.postMessage({ fatal: error instanceof Error ? error.stack ?? error.message : String(error) }),
  );
}
