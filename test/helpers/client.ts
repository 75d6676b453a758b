import * as http from 'node:http';

export interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
  json<T = any>(): T;
}

/** One raw HTTP request (no client-side URL normalisation): what a test sends is what arrives. */
export function request(
  base: string,
  method: string,
  target: string,
  options: { body?: Buffer | string; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: target, headers: options.headers ?? {}, agent: false },
      (res) => collectReply(res, resolve, reject),
    );
    req.on('error', reject);
    if (options.body !== undefined) req.end(options.body);
    else req.end();
  });
}

/** Read a whole response into a `Reply`. */
export function collectReply(res: http.IncomingMessage, resolve: (reply: Reply) => void, reject: (error: Error) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => {
    const body = Buffer.concat(chunks);
    resolve({
      status: res.statusCode ?? 0,
      headers: res.headers,
      body,
      text: body.toString('utf8'),
      json: () => JSON.parse(body.toString('utf8')),
    });
  });
  res.on('error', reject);
}

export function qs(params: Record<string, string>): string {
  return new URLSearchParams(params).toString();
}

/** Poll status until the job is finished; returns the full status document. */
export async function waitForJob(base: string, jobId: string, prefix = '', extra = '', timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reply = await request(base, 'GET', `${prefix}/jobs/${jobId}/status?job_id=${jobId}${extra}`);
    if (reply.status !== 200) throw new Error(`status answered ${reply.status}: ${reply.text}`);
    const doc = reply.json();
    if (doc.complete === 'true') return doc;
    if (Date.now() > deadline) throw new Error(`job ${jobId} still ${doc.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** `POST /jobs` for `id`; throws unless it answers 200. Returns the job config. */
export async function setupJob(base: string, id: string, prefix = ''): Promise<any> {
  const r = await request(base, 'POST', `${prefix}/jobs?${qs({ job_id: id })}`);
  if (r.status !== 200) throw new Error(`setup answered ${r.status}: ${r.text}`);
  return r.json();
}

/** The status string of job `id`. */
export async function statusOf(base: string, id: string, prefix = ''): Promise<string> {
  return (await request(base, 'GET', `${prefix}/jobs/${id}/status?job_id=${id}`)).json().status;
}

/** The text of output `name` of job `id`; throws unless the download answers 200. */
export async function downloadOutput(base: string, id: string, name: string): Promise<string> {
  const r = await request(base, 'GET', `/jobs/${id}/files?${qs({ job_id: id, name, type: 'output' })}`);
  if (r.status !== 200) throw new Error(`download of ${name} answered ${r.status}: ${r.text}`);
  return r.text;
}
