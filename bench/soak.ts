/**
 * Soak: one well-behaved client (the full lifecycle of a trivial job, back to back) measured alone,
 * then again while one misbehaving client attacks the same server with every abuse the hardening
 * issue lists, each bounded in count and time. The well-behaved client's p99 and errors under
 * attack should match its figures alone.
 */
import { execFile } from 'node:child_process';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client, HttpError, qs } from './client.js';
import { runOneJob } from './lifecycle.js';
import type { ServerProcess } from './server-process.js';
import { log, percentileSorted, round, sortedCopy } from './stats.js';

export interface ClientFigures {
  readonly jobs: number;
  readonly errors: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly max_ms: number;
  readonly first_error?: string;
}

export interface AttackFigures {
  readonly requests: number;
  /** Answers by HTTP status ("reset" for a connection the server closed or refused). */
  readonly answers: Record<string, number>;
}

export interface SoakResult {
  readonly seconds_per_phase: number;
  readonly alone: ClientFigures;
  readonly under_attack: ClientFigures;
  readonly attacks: Record<string, AttackFigures>;
  /** under_attack.p99 / alone.p99. */
  readonly p99_ratio: number;
}

/** Client-side bound on any one request, so a stalled server cannot stall the bench. */
const REQUEST_TIMEOUT_MS = 15_000;

async function wellBehaved(server: ServerProcess, durationMs: number, prefix: string): Promise<ClientFigures> {
  const client = new Client(server.host, server.port, 2, REQUEST_TIMEOUT_MS);
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const end = Date.now() + durationMs;
  try {
    for (let i = 0; Date.now() < end; i++) {
      const start = process.hrtime.bigint();
      try {
        await runOneJob(client, `${prefix}${i}`);
        latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
      } catch (error) {
        errors++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  } finally {
    client.close();
  }
  const sorted = sortedCopy(latencies);
  return {
    jobs: latencies.length,
    errors,
    p50_ms: round(percentileSorted(sorted, 50)),
    p99_ms: round(percentileSorted(sorted, 99)),
    max_ms: round(sorted.length === 0 ? 0 : sorted[sorted.length - 1]!),
    ...(firstError === undefined ? {} : { first_error: firstError.slice(0, 300) }),
  };
}

class Tally {
  requests = 0;
  readonly answers: Record<string, number> = {};
  note(answer: string): void {
    this.requests++;
    this.answers[answer] = (this.answers[answer] ?? 0) + 1;
  }
  figures(): AttackFigures {
    return { requests: this.requests, answers: { ...this.answers } };
  }
}

/** One request whose answer (status or failure) is tallied, never thrown. */
async function tallied(tally: Tally, request: () => Promise<unknown>): Promise<void> {
  try {
    await request();
    tally.note('200');
  } catch (error) {
    tally.note(error instanceof HttpError ? String(error.status) : 'reset');
  }
}

/** Where the attacks send their requests. */
interface Target {
  readonly host: string;
  readonly port: number;
}

type Attack = (server: Target, until: number, tally: Tally) => Promise<void>;

/**
 * Download names that are globs built to make a backtracking matcher explode against the name of
 * a file the job made in its working directory.
 */
const hostileGlob: Attack = async (server, until, tally) => {
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS);
  try {
    await client.request('POST', `/jobs?${qs({ job_id: 'soak_glob' })}`);
    await client.request('POST', `/jobs/soak_glob/submit?${qs({ job_id: 'soak_glob', command_line: `touch ${'a'.repeat(26)}` })}`);
    for (let i = 0; i < 200; i++) {
      const doc = await client.json<{ complete?: string }>('GET', `/jobs/soak_glob/status?${qs({ job_id: 'soak_glob' })}`);
      if (doc.complete === 'true') break;
      await sleep(25);
    }
    const names = ['*a*a*a*a*a*a*a*a*a*a*a*b', `${'*'.repeat(24)}b`, '[[[[[[[[a]*]*]*]*b', `${'?*'.repeat(16)}z`];
    for (let i = 0; Date.now() < until; i++) {
      const name = names[i % names.length]!;
      await tallied(tally, () => client.request('GET', `/jobs/soak_glob/files?${qs({ job_id: 'soak_glob', name, type: 'output_workdir' })}`));
    }
  } finally {
    client.close();
  }
};

/**
 * Status requests for unknown jobs with a wrong token, from the same address as the good client
 * (the bench server has no private_token, so they are answered; on a server with one they are
 * failed authentications).
 */
const badToken: Attack = async (server, until, tally) => {
  const client = new Client(server.host, server.port, 2, REQUEST_TIMEOUT_MS);
  try {
    while (Date.now() < until) await tallied(tally, () => client.request('GET', `/jobs/x/status?${qs({ job_id: 'x', private_token: 'wrong' })}`));
  } finally {
    client.close();
  }
};

/** Submits whose parameters ask the server to keep or create a lot (dynamic sources, touches, payload). */
const heavySubmits: Attack = async (server, until, tally) => {
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS);
  const sources = JSON.stringify(Array.from({ length: 2000 }, (_, i) => ({ type: 'galaxy', path: `s${i % 3}.json` })));
  const touches = JSON.stringify({ touch_outputs: Array.from({ length: 5000 }, (_, i) => `t${i}`) });
  const deps = JSON.stringify({ requirements: Array.from({ length: 20_000 }, () => ({})) });
  try {
    for (let i = 0; Date.now() < until && i < 200; i++) {
      const id = `soak_heavy_${i}`;
      await tallied(tally, () => client.request('POST', `/jobs?${qs({ job_id: id })}`));
      const extra = [{ dynamic_file_sources: sources }, { submit_extras: touches }, { dependencies_description: deps }][i % 3]!;
      await tallied(tally, () => client.request('POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: 'true', ...extra })}`));
      await tallied(tally, () => client.request('GET', `/jobs/${id}/status?${qs({ job_id: id })}`));
      await tallied(tally, () => client.request('DELETE', `/jobs/${id}?${qs({ job_id: id })}`));
    }
  } finally {
    client.close();
  }
};

/** Connections that never finish their request: half a header, or an upload body that stalls. */
const stalledConnections: Attack = async (server, until, tally) => {
  const sockets: net.Socket[] = [];
  const open = (payload: string): void => {
    const socket = net.connect(server.port, server.host);
    socket.on('error', () => tally.note('reset'));
    socket.on('close', () => undefined);
    socket.write(payload);
    sockets.push(socket);
    tally.note('opened');
  };
  try {
    for (let i = 0; i < 200 && Date.now() < until; i++) {
      open(i % 2 === 0 ? 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n' : `POST /jobs/soak_glob/files?job_id=soak_glob&name=slow${i}&type=input HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nabc`);
      await sleep(5);
    }
    await sleep(Math.max(0, until - Date.now()));
  } finally {
    for (const socket of sockets) socket.destroy();
  }
};

const ALL_ATTACKS: Readonly<Record<string, Attack>> = { hostileGlob, badToken, heavySubmits, stalledConnections };

/** `BENCH_SOAK_ATTACKS` (a comma list) picks some of them, to see which one costs the most. */
const ATTACKS: Readonly<Record<string, Attack>> = (() => {
  const chosen = (process.env['BENCH_SOAK_ATTACKS'] ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (chosen.length === 0) return ALL_ATTACKS;
  const unknown = chosen.filter((name) => !(name in ALL_ATTACKS));
  if (unknown.length > 0) throw new Error(`BENCH_SOAK_ATTACKS: unknown ${unknown.join(', ')} (use ${Object.keys(ALL_ATTACKS).join(',')})`);
  return Object.fromEntries(chosen.map((name) => [name, ALL_ATTACKS[name]!]));
})();

/** Run every attack until `durationMs` has passed; their tallies by attack name. */
async function attackAll(target: Target, durationMs: number): Promise<Record<string, AttackFigures>> {
  const until = Date.now() + durationMs;
  const tallies = Object.fromEntries(Object.keys(ATTACKS).map((name) => [name, new Tally()]));
  await Promise.all(Object.entries(ATTACKS).map(async ([name, attack]) => attack(target, until, tallies[name]!)));
  return Object.fromEntries(Object.entries(tallies).map(([name, tally]) => [name, tally.figures()]));
}

/**
 * The misbehaving client is a process of its own (this module run as a script), as it would be:
 * in the bench's process its loops would slow the well-behaved client's own event loop.
 */
async function attackFromAnotherProcess(target: Target, durationMs: number): Promise<Record<string, AttackFigures>> {
  const script = fileURLToPath(import.meta.url);
  const { stdout } = await promisify(execFile)(process.execPath, [script, target.host, String(target.port), String(durationMs)], {
    timeout: durationMs + 60_000,
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout) as Record<string, AttackFigures>;
}

export async function runSoak(server: ServerProcess, durationMs: number): Promise<SoakResult> {
  log(`soak: the well-behaved client alone for ${durationMs} ms`);
  const alone = await wellBehaved(server, durationMs, 'soak_alone_');
  log(`soak: alone ${JSON.stringify(alone)}`);
  log(`soak: again, with ${Object.keys(ATTACKS).join(', ')} from a misbehaving client (another process)`);
  const attacking = attackFromAnotherProcess(server, durationMs);
  const underAttack = await wellBehaved(server, durationMs, 'soak_attacked_');
  const attacks = await attacking;
  log(`soak: under attack ${JSON.stringify(underAttack)}`);
  return {
    seconds_per_phase: durationMs / 1000,
    alone,
    under_attack: underAttack,
    attacks,
    p99_ratio: alone.p99_ms > 0 ? round(underAttack.p99_ms / alone.p99_ms) : 0,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [host, port, ms] = process.argv.slice(2);
  attackAll({ host: host ?? '127.0.0.1', port: Number(port) }, Number(ms)).then(
    (figures) => process.stdout.write(JSON.stringify(figures)),
    (error: unknown) => {
      process.stderr.write(`soak attacker: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
