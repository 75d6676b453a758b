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
  readonly attacker_address: string;
  readonly alone: ClientFigures;
  readonly under_attack: ClientFigures;
  /** The control: the good client while the same attack hits another server process. */
  readonly attack_elsewhere?: ClientFigures;
  readonly attacks: Record<string, AttackFigures>;
  /** under_attack.p99 / alone.p99. */
  readonly p99_ratio: number;
  /** under_attack.p99 / attack_elsewhere.p99: the slowdown the server under test adds to the machine's. */
  readonly p99_ratio_to_control?: number;
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

/** Where the attacks send their requests, and from which address. */
interface Target {
  readonly host: string;
  readonly port: number;
  readonly localAddress: string;
}

type Attack = (server: Target, until: number, tally: Tally) => Promise<void>;

/**
 * Download names that are globs built to make a backtracking matcher explode against the name of
 * a file the job made in its working directory.
 */
const hostileGlob: Attack = async (server, until, tally) => {
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS, server.localAddress);
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
  const client = new Client(server.host, server.port, 2, REQUEST_TIMEOUT_MS, server.localAddress);
  try {
    while (Date.now() < until) await tallied(tally, () => client.request('GET', `/jobs/x/status?${qs({ job_id: 'x', private_token: 'wrong' })}`));
  } finally {
    client.close();
  }
};

/** Submits whose parameters ask the server to keep or create a lot (dynamic sources, touches, payload). */
const heavySubmits: Attack = async (server, until, tally) => {
  const client = new Client(server.host, server.port, 1, REQUEST_TIMEOUT_MS, server.localAddress);
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
    const socket = net.connect({ port: server.port, host: server.host, localAddress: server.localAddress });
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
  const { stdout } = await promisify(execFile)(process.execPath, [script, target.host, String(target.port), String(durationMs), target.localAddress], {
    timeout: durationMs + 60_000,
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout) as Record<string, AttackFigures>;
}

/**
 * The misbehaving client's source address: another loopback address by default, as a client on
 * another machine would have (`BENCH_SOAK_FROM=127.0.0.1` puts it on the good client's address).
 */
const ATTACKER_ADDRESS = process.env['BENCH_SOAK_FROM'] ?? '127.0.0.2';

/**
 * Alone, then beside the misbehaving client, then beside the same misbehaving client attacking
 * another server process (the control): on a small machine the attacker's own CPU and the decoy's
 * slow everything down, and the control shows how much of the slowdown is that rather than the
 * server under test giving the attacker more than its share.
 */
export async function runSoak(server: ServerProcess, durationMs: number, startDecoy?: () => Promise<ServerProcess>): Promise<SoakResult> {
  log(`soak: the well-behaved client alone for ${durationMs} ms`);
  const alone = await wellBehaved(server, durationMs, 'soak_alone_');
  log(`soak: alone ${JSON.stringify(alone)}`);
  log(`soak: again, with ${Object.keys(ATTACKS).join(', ')} from a misbehaving client (another process, from ${ATTACKER_ADDRESS})`);
  const attacking = attackFromAnotherProcess({ host: server.host, port: server.port, localAddress: ATTACKER_ADDRESS }, durationMs);
  const underAttack = await wellBehaved(server, durationMs, 'soak_attacked_');
  const attacks = await attacking;
  log(`soak: under attack ${JSON.stringify(underAttack)}`);
  let control: ClientFigures | undefined;
  if (startDecoy !== undefined) {
    const decoy = await startDecoy();
    try {
      log(`soak: control: the same attack on another server process (pid ${decoy.pid}) while the good client runs`);
      const decoyAttack = attackFromAnotherProcess({ host: decoy.host, port: decoy.port, localAddress: ATTACKER_ADDRESS }, durationMs);
      control = await wellBehaved(server, durationMs, 'soak_control_');
      await decoyAttack;
      log(`soak: control ${JSON.stringify(control)}`);
    } finally {
      await decoy.stop();
    }
  }
  return {
    seconds_per_phase: durationMs / 1000,
    attacker_address: ATTACKER_ADDRESS,
    alone,
    under_attack: underAttack,
    ...(control === undefined ? {} : { attack_elsewhere: control }),
    attacks,
    p99_ratio: alone.p99_ms > 0 ? round(underAttack.p99_ms / alone.p99_ms) : 0,
    ...(control === undefined || control.p99_ms === 0 ? {} : { p99_ratio_to_control: round(underAttack.p99_ms / control.p99_ms) }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [host, port, ms, from] = process.argv.slice(2);
  attackAll({ host: host ?? '127.0.0.1', port: Number(port), localAddress: from ?? '127.0.0.1' }, Number(ms)).then(
    (figures) => process.stdout.write(JSON.stringify(figures)),
    (error: unknown) => {
      process.stderr.write(`soak attacker: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
