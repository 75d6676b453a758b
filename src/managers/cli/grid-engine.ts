import type { Run } from './command.js';
import {
  checkStatusCommand,
  headerLines,
  isExternalId,
  lines,
  mapParams,
  type Directive,
  type HeaderJob,
  type JobPlugin,
  type ParamSpec,
  type SchedulerStatus,
  type StateKind,
} from './job-plugin.js';

/** `job_<name>` parameters of the Grid Engine plugin (PBS-style names accepted too). */
export const SGE_PARAMS: Readonly<Record<string, ParamSpec>> = {
  destination: { flag: '-q' },
  queue: { flag: '-q' },
  resource_list: { flag: '-l' },
  resources: { flag: '-l' },
  pe: { flag: '-pe' },
  project: { flag: '-P' },
  account: { flag: '-A' },
  priority: { flag: '-p' },
  hold: { flag: '-h', boolean: true },
};

// -sync blocks qsub until the job ends; -b y would run the script as a binary (no directives); -t makes arrays.
const RESERVED = new Set(['-o', '-e', '-N', '-S', '-wd', '-cwd', '-sync', '-b', '-t']);

/**
 * Grid Engine state letters (qstat man page): d(eletion), E(rror), h(old), r(unning),
 * R(estarted), s/S/T (suspended), t(ransferring), w(aiting), q(ueued), z (zombie: finished).
 * States are letter combinations (`qw`, `hqw`, `Eqw`, `dr`, `Rr`…); the letters decide, in order:
 * E → failed (the job will never start until an administrator clears it), z → ended,
 * r/t/s/S/T → running, q/w/h → queued; anything else → running (see StateKind).
 */
export function sgeStateKind(state: string): StateKind {
  if (state.includes('E')) return 'failed';
  if (state.includes('z')) return 'ended';
  if (/[rtsST]/.test(state)) return 'running';
  if (/[qwh]/.test(state)) return 'queued';
  return 'running';
}

const SGE_LETTERS = /^[dEhrRsStTwqz]+$/;

function sgeStatus(state: string): SchedulerStatus {
  const kind = sgeStateKind(state);
  switch (kind) {
    case 'failed':
      return { kind, state, reason: `Grid Engine put the job in error state ${state}` };
    case 'running':
      return SGE_LETTERS.test(state) && /[rtsST]/.test(state) ? { kind, state } : { kind, state, unknown: true };
    default:
      return { kind, state };
  }
}

function unescapeXml(text: string): string {
  return text
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&quot;', '"')
    .replaceAll('&apos;', "'")
    .replaceAll('&amp;', '&');
}

/**
 * `qstat -xml`: `<job_list state="running|pending">` elements with `<JB_job_number>` and
 * `<state>`, under `<queue_info>` (running) and `<job_info>` (pending). Read with two bounded
 * patterns: the document is flat and magnetar needs two fields.
 */
export function parseQstatXml(stdout: string): Map<string, SchedulerStatus> {
  const states = new Map<string, SchedulerStatus>();
  for (const block of stdout.matchAll(/<job_list\b[^>]*>([\s\S]*?)<\/job_list>/g)) {
    const body = block[1]!;
    const id = /<JB_job_number>\s*([^<\s]+)\s*<\/JB_job_number>/.exec(body)?.[1];
    const state = /<state>\s*([^<\s]*)\s*<\/state>/.exec(body)?.[1];
    if (id === undefined || state === undefined) continue;
    const key = unescapeXml(id);
    const status = sgeStatus(unescapeXml(state));
    // Array tasks share a job number: one running task makes the job running.
    const previous = states.get(key);
    if (previous === undefined || status.kind === 'running' || status.kind === 'failed') states.set(key, status);
  }
  return states;
}

/** `Your job 123 ("name") has been submitted`, `Your job-array 123.1-4:1 …`, or `-terse` output `123`. */
export function parseSgeQsub(stdout: string): string | undefined {
  const id = /Your job(?:-array)? (\d+)/.exec(stdout)?.[1] ?? /^(\d+)(?:\.\S+)?$/m.exec(stdout.trim())?.[1];
  return id !== undefined && isExternalId(id) ? id : undefined;
}

/** `qstat -j <id>` lines `error reason    1:  …` of a job in error state. */
export function parseSgeErrorReason(stdout: string): string | undefined {
  const reasons = lines(stdout)
    .filter((l) => /^error reason/i.test(l))
    .map((l) => l.replace(/^error reason\s+\d*:?\s*/i, ''));
  return reasons.length === 0 ? undefined : reasons.join('; ');
}

/** `qacct -j <id>`: `failed` and `exit_status` of a finished job (when accounting has it). */
export function parseQacct(stdout: string): string | undefined {
  // RegExp from constant field names below (never client text); `.+?` then `\s*$` on one line is linear.
  const field = (name: string): string | undefined => new RegExp(`^${name}\\s+(.+?)\\s*$`, 'm').exec(stdout)?.[1]?.replace(/\s+/g, ' ');
  const failed = field('failed');
  const exit = field('exit_status');
  if (failed === undefined && exit === undefined) return undefined;
  return `Grid Engine accounting: failed=${failed ?? '?'} exit_status=${exit ?? '?'}`;
}

/**
 * Grid Engine (SGE 8 / Son of Grid Engine / OGS): `#$` directives (`-S /bin/bash` because queues
 * default to csh and ignore the shebang), `qsub`, `qstat -xml` (the user's own jobs), `qdel`.
 */
export function gridEnginePlugin(params: readonly (readonly [string, string])[]): JobPlugin {
  const directives: Directive[] = mapParams(params, SGE_PARAMS, RESERVED);
  return {
    name: 'GridEngine',
    scheduler: 'Grid Engine',
    header(job: HeaderJob) {
      return headerLines('#$', job, { first: [{ flag: '-S', value: '/bin/bash' }], jobName: '-N', workingDirectory: '-wd' }, directives);
    },
    submit(scriptPath) {
      return { argv: ['qsub', scriptPath] };
    },
    parseSubmit: parseSgeQsub,
    async poll(ids: readonly string[], run: Run) {
      const result = await run({ argv: ['qstat', '-xml'] });
      checkStatusCommand('qstat', result);
      const all = parseQstatXml(result.stdout);
      const wanted = new Map<string, SchedulerStatus>();
      for (const id of ids) {
        let status = all.get(id);
        if (status === undefined) continue;
        if (status.kind === 'failed') {
          const detail = await run({ argv: ['qstat', '-j', id] });
          const reason = detail.code === 0 ? parseSgeErrorReason(detail.stdout) : undefined;
          if (reason !== undefined) status = { ...status, reason: `Grid Engine put the job in error state ${status.state}: ${reason}` };
        }
        wanted.set(id, status);
      }
      return wanted;
    },
    kill(id) {
      return { argv: ['qdel', id] };
    },
    async explain(id: string, run: Run) {
      const result = await run({ argv: ['qacct', '-j', id] });
      return result.code === 0 ? parseQacct(result.stdout) : undefined;
    },
  };
}
