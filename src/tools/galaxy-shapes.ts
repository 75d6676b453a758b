/**
 * Galaxy-shaped jobs (../shared/GALAXY-JOBS.md): the `command_line` wrappers and the
 * `tool_script.sh` preambles that Galaxy's `build_command` emits for a Pulsar destination, kept as
 * data: one table entry per shape, so another Galaxy release's shape is one entry and a test.
 *
 * Everything here is pure text matching: exact comparison and linear scans over the client's text,
 * never a regular expression built from it. A match only says *where* the tool's own command is;
 * the caller (tools/authorizer.ts) still has the tool's `command_validator` judge that command.
 */

/** A piece of a shape: fixed text, or a slot the matcher fills. */
export type Segment =
  | { readonly text: string }
  /** `jobdir`: this job's directory, exactly; `shell`: one of `GALAXY_SHELLS`; `ecId`: Galaxy's job id; `tool`: the tool command. */
  | { readonly slot: 'jobdir' | 'shell' | 'ecId' | 'tool' };

/** Where `tool_script.sh` lives in the job directory, for the shapes that run it. */
export type ScriptLocation = 'tool_script.sh' | 'working/tool_script.sh';

export interface WrapperShape {
  /** What the shape is and which Galaxy setting produces it (shown in audit logs). */
  readonly name: string;
  /** The script the wrapper runs, relative to the job directory; undefined when the tool command is inline. */
  readonly script: ScriptLocation | undefined;
  readonly segments: readonly Segment[];
}

export interface ScriptPreamble {
  readonly name: string;
  /** Everything before the tool command; the tool command is the rest of the file. */
  readonly segments: readonly Segment[];
}

/** The interpreters Galaxy's `shell` may name (`/bin/bash` unless an administrator set it). */
export const GALAXY_SHELLS: readonly string[] = ['/bin/bash', '/bin/sh', '/usr/bin/env bash'];

/** The name Galaxy gives the script holding the tool command. */
export const TOOL_SCRIPT_NAME = 'tool_script.sh';

/** Galaxy's `INTEGRITY_INJECTION` (`lib/galaxy/jobs/runners/util/job_script/__init__.py`), byte for byte. */
export const INTEGRITY_BLOCK = [
  '',
  '# The following block can be used by the job system',
  '# to ensure this script is runnable before actually attempting',
  '# to run it.',
  'if [ -n "$ABC_TEST_JOB_SCRIPT_INTEGRITY_XYZ" ]; then',
  '    exit 42',
  'fi',
  '',
].join('\n');

/** Galaxy's job id in `galaxy_<id>.ec`: at most this many characters of `[A-Za-z0-9_-]`. */
export const MAX_EC_ID_LENGTH = 128;

/**
 * What follows the command in every wrapper: the tool's streams into `../metadata/` (relative:
 * the command runs in `working/`), its exit code into `<jobdir>/galaxy_<id>.ec`, and that code again.
 */
const TAIL: readonly Segment[] = [
  { text: ` > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > ` },
  { slot: 'jobdir' },
  { text: '/galaxy_' },
  { slot: 'ecId' },
  { text: '.ec; sh -c "exit $return_code"' },
];

export const WRAPPER_SHAPES: readonly WrapperShape[] = [
  {
    // lib/galaxy/jobs/runners/pulsar.py (23.x, 24.x): script_directory = the remote job directory;
    // the script is uploaded as a job-directory file (type=jobdir) and again as a config file.
    name: 'tool_script.sh in the job directory',
    script: 'tool_script.sh',
    segments: [{ slot: 'shell' }, { text: ' ' }, { slot: 'jobdir' }, { text: '/tool_script.sh' }, ...TAIL],
  },
  {
    // GALAXY-JOBS.md: script_directory = the remote working directory (type=workdir upload).
    name: 'tool_script.sh in working/',
    script: 'working/tool_script.sh',
    segments: [{ slot: 'shell' }, { text: ' ' }, { slot: 'jobdir' }, { text: '/working/tool_script.sh' }, ...TAIL],
  },
  {
    // `shell: none` on the destination or tool: no script, the tool command itself before the tail.
    name: 'shell: none (the tool command inline)',
    script: undefined,
    segments: [{ slot: 'tool' }, ...TAIL],
  },
];

const SHEBANG: readonly Segment[] = [{ text: '#!' }, { slot: 'shell' }, { text: '\n' }];

/** `#!{shell}\n{integrity}{set -e}` and then the tool command (`__externalize_commands`). */
export const SCRIPT_PREAMBLES: readonly ScriptPreamble[] = [
  { name: 'shebang, integrity block (Galaxy defaults)', segments: [...SHEBANG, { text: INTEGRITY_BLOCK }] },
  { name: 'shebang (check_job_script_integrity: false)', segments: SHEBANG },
  { name: 'shebang, set -e (strict_shell: true)', segments: [...SHEBANG, { text: 'set -e\n' }] },
  { name: 'shebang, integrity block, set -e', segments: [...SHEBANG, { text: INTEGRITY_BLOCK }, { text: 'set -e\n' }] },
];

/** A command line that is one of the wrapper shapes for this job. */
export type WrapperMatch =
  | { readonly kind: 'script'; readonly shape: WrapperShape; readonly script: ScriptLocation; readonly shell: string; readonly ecId: string }
  | { readonly kind: 'inline'; readonly shape: WrapperShape; readonly toolCommand: string; readonly ecId: string };

/** A `tool_script.sh` that is one preamble and one tool command, or why it is not. */
export type ScriptMatch =
  | { readonly ok: true; readonly preamble: ScriptPreamble; readonly toolCommand: string }
  | { readonly ok: false; readonly reason: string };

interface Captures {
  shell?: string;
  ecId?: string;
  tool?: string;
}

function isIdChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x2d;
}

/** Characters a path may hold to stand unquoted in a shell word (Galaxy does not quote the job directory). */
function isPlainPathChar(c: number): boolean {
  return isIdChar(c) || c === 0x2f || c === 0x2e || c === 0x2b || c === 0x2c || c === 0x40 || c === 0x25 || c === 0x3d || c === 0x3a;
}

/** Whether `jobDirectory` may stand unquoted in a shell word, as Galaxy writes it in its wrapper. */
export function isPlainJobDirectory(jobDirectory: string): boolean {
  if (!jobDirectory.startsWith('/') || jobDirectory.length > 4096) return false;
  for (let i = 0; i < jobDirectory.length; i++) if (!isPlainPathChar(jobDirectory.charCodeAt(i))) return false;
  return true;
}

/**
 * Match `text` against `segments` from `start` to the very end. At most three shells are tried
 * where a `shell` slot is (a fixed list, not a backtracking search); a `tool` slot takes everything
 * up to the last occurrence of the fixed text that follows it.
 */
function matchSegments(text: string, start: number, segments: readonly Segment[], jobDirectory: string, fixed: Captures, captures: Captures): boolean {
  let at = start;
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    if ('text' in segment) {
      if (!text.startsWith(segment.text, at)) return false;
      at += segment.text.length;
      continue;
    }
    switch (segment.slot) {
      case 'jobdir':
        if (!text.startsWith(jobDirectory, at)) return false;
        at += jobDirectory.length;
        break;
      case 'ecId': {
        const from = at;
        while (at < text.length && at - from <= MAX_EC_ID_LENGTH && isIdChar(text.charCodeAt(at))) at++;
        if (at === from || at - from > MAX_EC_ID_LENGTH) return false;
        captures.ecId = text.slice(from, at);
        break;
      }
      case 'shell': {
        const rest = segments.slice(i + 1);
        const shells = fixed.shell === undefined ? GALAXY_SHELLS : [fixed.shell];
        for (const shell of shells) {
          if (text.startsWith(shell, at) && matchSegments(text, at + shell.length, rest, jobDirectory, fixed, captures)) {
            captures.shell = shell;
            return true;
          }
        }
        return false;
      }
      case 'tool': {
        const rest = segments.slice(i + 1);
        if (rest.length === 0) {
          captures.tool = text.slice(at);
          return true;
        }
        const anchor = anchorOf(rest, jobDirectory);
        const found = text.lastIndexOf(anchor);
        if (found < at || !matchSegments(text, found, rest, jobDirectory, fixed, captures)) return false;
        captures.tool = text.slice(at, found);
        return true;
      }
    }
  }
  return at === text.length;
}

/** The fixed text at the start of `segments` (text and the job directory, up to the first other slot). */
function anchorOf(segments: readonly Segment[], jobDirectory: string): string {
  let anchor = '';
  for (const segment of segments) {
    if ('text' in segment) anchor += segment.text;
    else if (segment.slot === 'jobdir') anchor += jobDirectory;
    else break;
  }
  return anchor;
}

/**
 * The wrapper shape `commandLine` is for the job whose directory is `jobDirectory`, or undefined
 * when it is none of them (then it is judged as a tool command sent directly: the legacy form).
 */
export function matchWrapper(commandLine: string, jobDirectory: string): WrapperMatch | undefined {
  if (!isPlainJobDirectory(jobDirectory)) return undefined;
  for (const shape of WRAPPER_SHAPES) {
    const captures: Captures = {};
    if (!matchSegments(commandLine, 0, shape.segments, jobDirectory, {}, captures) || captures.ecId === undefined) continue;
    if (shape.script !== undefined && captures.shell !== undefined) {
      return { kind: 'script', shape, script: shape.script, shell: captures.shell, ecId: captures.ecId };
    }
    if (shape.script === undefined && captures.tool !== undefined && captures.tool !== '') {
      return { kind: 'inline', shape, toolCommand: captures.tool, ecId: captures.ecId };
    }
  }
  return undefined;
}

/**
 * Split a `tool_script.sh` into Galaxy's preamble for `shell` and the one tool command after it.
 * `shell` is the wrapper's interpreter, or undefined to accept any of `GALAXY_SHELLS` (a copy that
 * does not run, such as `configs/tool_script.sh`). One trailing newline is allowed; any other
 * line after the preamble is refused.
 */
export function matchToolScript(script: string, shell: string | undefined): ScriptMatch {
  const fixed: Captures = shell === undefined ? {} : { shell };
  let best: { preamble: ScriptPreamble; rest: string } | undefined;
  for (const preamble of SCRIPT_PREAMBLES) {
    const captures: Captures = {};
    if (!matchSegments(script, 0, [...preamble.segments, { slot: 'tool' }], '', fixed, captures) || captures.tool === undefined) continue;
    const rest = captures.tool.endsWith('\n') ? captures.tool.slice(0, -1) : captures.tool;
    if (!rest.includes('\n') && !rest.includes('\r')) {
      if (rest === '') return { ok: false, reason: 'holds no tool command after its preamble' };
      return { ok: true, preamble, toolCommand: rest };
    }
    if (best === undefined || rest.length < best.rest.length) best = { preamble, rest };
  }
  if (best === undefined) {
    const expected = shell === undefined ? GALAXY_SHELLS.map((s) => `#!${s}`).join(', ') : `#!${shell}`;
    return { ok: false, reason: `does not start with Galaxy's shebang line (${expected}, the interpreter of the command line)` };
  }
  if (best.rest.includes('ABC_TEST_JOB_SCRIPT_INTEGRITY_XYZ') || best.rest.startsWith('\n# The following block')) {
    return { ok: false, reason: "has an integrity block that is not Galaxy's, byte for byte" };
  }
  return { ok: false, reason: "has more than one line after Galaxy's preamble (shebang, integrity block, set -e): only the tool command may follow" };
}

/**
 * Markers of what Galaxy adds that a public server cannot vouch for. They only choose the words
 * of a refusal (a line carrying one is refused anyway by the shapes and the validators); they never
 * make anything acceptable.
 */
export const UNVOUCHED_FEATURES: readonly { readonly markers: readonly string[]; readonly reason: string }[] = [
  {
    markers: ['docker run', 'docker exec', 'singularity ', 'apptainer ', 'podman run'],
    reason: "Galaxy's container wrappers (docker run, singularity exec) are not accepted on a public server; disable docker_enabled and singularity_enabled on the destination (the server decides how jobs are isolated)",
  },
  {
    markers: ['_galaxy_setup_environment', 'set_metadata', 'metadata/set.py', 'GALAXY_VIRTUAL_ENV'],
    reason: "Galaxy's remote metadata commands are not accepted on a public server; set remote_metadata: false on the destination (Galaxy then sets metadata itself)",
  },
  {
    markers: ['/env.sh', 'CONDA_DEFAULT_ENV', 'conda activate', '/bin/activate', 'module load ', 'PACKAGE_BASE='],
    reason: "Galaxy's dependency resolution lines are not accepted on a public server; set dependency_resolution: none on the destination",
  },
];

/** The refusal reason for a Galaxy feature `text` carries, if any (see `UNVOUCHED_FEATURES`). */
export function unvouchedFeature(text: string): string | undefined {
  for (const feature of UNVOUCHED_FEATURES) {
    if (feature.markers.some((marker) => text.includes(marker))) return feature.reason;
  }
  // Dependency lines are statements prepended with `; `: `. /deps/x/env.sh; tool …`, `source …; tool …`.
  if (text.startsWith('. ') || text.startsWith('source ')) return UNVOUCHED_FEATURES[2]!.reason;
  return undefined;
}

/** Whether a refused command line looks like an attempt at a wrapper shape (for a precise reason). */
export function looksLikeWrapper(commandLine: string): boolean {
  return commandLine.includes(TOOL_SCRIPT_NAME) || commandLine.includes('return_code=$?') || commandLine.includes("'../metadata/tool_stdout'");
}

/** One line saying what the wrapper shapes are, for refusals. */
export function describeWrapperShapes(): string {
  return `SHELL JOBDIR/tool_script.sh > '../metadata/tool_stdout' 2> '../metadata/tool_stderr'; return_code=$?; echo $return_code > JOBDIR/galaxy_ID.ec; sh -c "exit $return_code" `
    + `(SHELL one of ${GALAXY_SHELLS.join(', ')}; the script in JOBDIR or JOBDIR/working; JOBDIR this job's directory; nothing added), `
    + 'or the tool command followed by the same tail (shell: none)';
}

/** The values that fill a shape's slots when it is written out (tests, fixtures). */
export interface ShapeValues {
  readonly jobDirectory: string;
  readonly shell?: string;
  readonly ecId?: string;
  readonly toolCommand?: string;
}

/** Write a shape out: what Galaxy would send for these values. */
export function renderShape(segments: readonly Segment[], values: ShapeValues): string {
  return segments
    .map((segment) => {
      if ('text' in segment) return segment.text;
      switch (segment.slot) {
        case 'jobdir': return values.jobDirectory;
        case 'shell': return values.shell ?? GALAXY_SHELLS[0]!;
        case 'ecId': return values.ecId ?? '1';
        case 'tool': return values.toolCommand ?? '';
      }
    })
    .join('');
}

/** Galaxy's default wrapper (the first shape, `/bin/bash`) for a job, as `magnetar validate-tool` assumes it. */
export function defaultWrapper(jobDirectory: string, ecId: string): string {
  return renderShape(WRAPPER_SHAPES[0]!.segments, { jobDirectory, ecId });
}
