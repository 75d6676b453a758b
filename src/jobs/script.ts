import { BadRequest, Forbidden } from '../errors.js';

/** One entry of the submit `env` list (PROTOCOL §6.5). */
export interface EnvEntry {
  readonly name?: string;
  readonly value?: string;
  readonly raw?: boolean;
  readonly file?: string;
  readonly execute?: string;
}

const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** POSIX single-quoting: the value is one word and nothing in it is expanded. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/**
 * Galaxy's env values are double-quoted upstream, and admins rely on `$PATH`-style references in
 * them (`/opt/bin:$PATH`). Keep plain parameter references (`$NAME`, `${NAME}`) working, but
 * escape everything else that a double-quoted string would evaluate: command substitution
 * (`$(...)`, backticks), arithmetic, other `${...}` forms, backslashes and quotes.
 */
export function quoteEnvValue(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '$') {
      const rest = value.slice(i + 1);
      const braced = /^\{[A-Za-z_][A-Za-z0-9_]*\}/.exec(rest);
      const plain = /^[A-Za-z_][A-Za-z0-9_]*/.exec(rest);
      if (braced) { out += '$' + braced[0]; i += braced[0].length; continue; }
      if (plain) { out += '$' + plain[0]; i += plain[0].length; continue; }
      out += '\\$';
    } else if (c === '\\' || c === '"' || c === '`') out += '\\' + c;
    else if (c === '\0') throw new BadRequest('env value contains a NUL byte');
    else out += c;
  }
  return `"${out}"`;
}

export function checkEnvName(name: unknown): string {
  if (typeof name !== 'string' || !SHELL_NAME.test(name)) {
    throw new BadRequest(`env entry name ${JSON.stringify(name)} is not a shell variable name`);
  }
  return name;
}

/**
 * Shell statements for the env entries; `allowUnsafe` admits `execute`, `file` and `raw` kinds.
 * `literalValues` single-quotes values (no `$NAME` expansion either), as public servers do.
 */
export function envStatements(entries: readonly EnvEntry[], allowUnsafe: boolean, literalValues = false): string[] {
  return entries.map((entry) => {
    if (entry.file !== undefined && entry.file !== null) {
      if (!allowUnsafe) throw new Forbidden('env entries of kind "file" are not allowed on this server');
      return entry.raw === true ? `. ${entry.file}` : `. ${shellQuote(entry.file)}`;
    }
    if (entry.execute !== undefined && entry.execute !== null) {
      if (!allowUnsafe) throw new Forbidden('env entries of kind "execute" are not allowed on this server');
      return entry.execute;
    }
    const name = checkEnvName(entry.name);
    const value = entry.value ?? '';
    if (entry.raw === true) {
      if (!allowUnsafe) throw new Forbidden('raw env entries are not allowed on this server');
      return `${name}=${value}; export ${name}`;
    }
    return `${name}=${literalValues ? shellQuote(value) : quoteEnvValue(value)}; export ${name}`;
  });
}

export interface ScriptSpec {
  /** Scheduler directive lines (`#SBATCH …`), placed right after the shebang. */
  readonly header?: readonly string[];
  readonly jobId: string;
  readonly jobDirectory: string;
  readonly commandLine: string;
  /** Already rendered statements (manager env_* options first, then client entries). */
  readonly envStatements: readonly string[];
  /** `tmp_dir` manager option: undefined → fresh `<jobdir>/tmp`. */
  readonly tmpDir: string | undefined;
  readonly galaxyLib: string | undefined;
  readonly galaxyVirtualEnv: string | undefined;
  readonly preserveGalaxyPythonEnvironment: boolean;
}

/** Slot detection of Galaxy's job script (PROTOCOL §6.4 item 4). */
const SLOTS_STATEMENT = `if [ -n "$SLURM_CPUS_ON_NODE" ]; then
    GALAXY_SLOTS="$SLURM_CPUS_ON_NODE"
elif [ -n "$SLURM_NTASKS" ] || [ -n "$SLURM_CPUS_PER_TASK" ]; then
    GALAXY_SLOTS=$(( \${SLURM_NTASKS:-1} * \${SLURM_CPUS_PER_TASK:-1} ))
elif [ -n "$NSLOTS" ]; then
    GALAXY_SLOTS="$NSLOTS"
elif [ -n "$NCPUS" ]; then
    GALAXY_SLOTS="$NCPUS"
elif [ -n "$PBS_NCPUS" ]; then
    GALAXY_SLOTS="$PBS_NCPUS"
elif [ -f "$PBS_NODEFILE" ]; then
    GALAXY_SLOTS=$(wc -l < "$PBS_NODEFILE")
elif [ -n "$LSB_DJOB_NUMPROC" ]; then
    GALAXY_SLOTS="$LSB_DJOB_NUMPROC"
elif [ -n "$GALAXY_SLOTS" ]; then
    :
elif [ -n "$PYTHON_CPU_COUNT" ]; then
    GALAXY_SLOTS="$PYTHON_CPU_COUNT"
else
    GALAXY_SLOTS="1"
    unset GALAXY_SLOTS_CONFIGURED
fi
case "$GALAXY_SLOTS" in ''|*[!0-9]*) GALAXY_SLOTS=1 ;; esac
[ -n "\${GALAXY_SLOTS_CONFIGURED+x}" ] || [ "$GALAXY_SLOTS" = 1 ] || GALAXY_SLOTS_CONFIGURED=1
export GALAXY_SLOTS
[ -z "\${GALAXY_SLOTS_CONFIGURED+x}" ] || export GALAXY_SLOTS_CONFIGURED`;

/**
 * The job script (PROTOCOL §6.4): the one shell text magnetar executes. Every server-chosen value
 * is single-quoted; the client's command line runs in a subshell so that its `exit` cannot skip
 * the return-code bookkeeping.
 */
export function buildJobScript(spec: ScriptSpec): string {
  const dir = spec.jobDirectory;
  const q = (p: string): string => shellQuote(p);
  const tmpStatement = spec.tmpDir === undefined ? q(`${dir}/tmp`) : spec.tmpDir;
  const lines = [
    '#!/bin/bash',
    ...(spec.header ?? []),
    `# magnetar job ${spec.jobId}`,
    `echo $$ > ${q(`${dir}/pid`)}`,
    '',
    '_galaxy_setup_environment() {',
    '    local _use_framework_galaxy="$1"',
    `    _GALAXY_JOB_HOME_DIR=${q(`${dir}/home`)}`,
    `    _GALAXY_JOB_TMP_DIR=${tmpStatement}`,
    ...spec.envStatements.map((s) => `    ${s}`),
    '    if [ "$GALAXY_LIB" != "None" ] && [ "$_use_framework_galaxy" = "True" ]; then',
    '        if [ -n "$PYTHONPATH" ]; then PYTHONPATH="$GALAXY_LIB:$PYTHONPATH"; else PYTHONPATH="$GALAXY_LIB"; fi',
    '        export PYTHONPATH',
    '    fi',
    '    [ -d "$_GALAXY_JOB_TMP_DIR" ] || mkdir -p "$_GALAXY_JOB_TMP_DIR"',
    '    [ -d "$_GALAXY_JOB_HOME_DIR" ] || mkdir -p "$_GALAXY_JOB_HOME_DIR"',
    '    if [ "$GALAXY_VIRTUAL_ENV" != "None" ] && [ -f "$GALAXY_VIRTUAL_ENV/bin/activate" ] && [ "$(command -v python)" != "$GALAXY_VIRTUAL_ENV/bin/python" ]; then',
    '        . "$GALAXY_VIRTUAL_ENV/bin/activate"',
    '    fi',
    '    true',
    '}',
    '',
    'if [ -n "$ABC_TEST_JOB_SCRIPT_INTEGRITY_XYZ" ]; then exit 42; fi',
    SLOTS_STATEMENT,
    'export PYTHONWARNINGS="ignore"',
    `GALAXY_VIRTUAL_ENV=${spec.galaxyVirtualEnv === undefined ? 'None' : q(spec.galaxyVirtualEnv)}`,
    '_GALAXY_VIRTUAL_ENV="$GALAXY_VIRTUAL_ENV"',
    `PRESERVE_GALAXY_ENVIRONMENT=${spec.preserveGalaxyPythonEnvironment ? 'True' : 'False'}`,
    `GALAXY_LIB=${spec.galaxyLib === undefined ? 'None' : q(spec.galaxyLib)}`,
    '_galaxy_setup_environment "$PRESERVE_GALAXY_ENVIRONMENT"',
    'export _GALAXY_JOB_HOME_DIR _GALAXY_JOB_TMP_DIR',
    'TEMP="${TEMP:-${TMP:-${TMPDIR:-$_GALAXY_JOB_TMP_DIR}}}"',
    'TMP="${TMP:-$TEMP}"',
    'TMPDIR="${TMPDIR:-$TEMP}"',
    'export TEMP TMP TMPDIR',
    // `hash` finds the interpreter without forking a subshell for $(command -v ...).
    'if hash python 2>/dev/null; then GALAXY_PYTHON="${BASH_CMDS[python]}"; elif hash python3 2>/dev/null; then GALAXY_PYTHON="${BASH_CMDS[python3]}"; fi',
    'export GALAXY_PYTHON',
    `cd ${q(`${dir}/working`)} || exit 1`,
    `_magnetar_metadata=${q(`${dir}/metadata`)}`,
    'echo "$GALAXY_SLOTS" > "$_magnetar_metadata/__instrument_core_galaxy_slots"',
    'echo "$GALAXY_MEMORY_MB" > "$_magnetar_metadata/__instrument_core_galaxy_memory_mb"',
    'echo "$EPOCHSECONDS" > "$_magnetar_metadata/__instrument_core_epoch_start"',
    '(',
    spec.commandLine,
    ')',
    'return_code=$?',
    'echo "$EPOCHSECONDS" > "$_magnetar_metadata/__instrument_core_epoch_end"',
    `echo "$return_code" > ${q(`${dir}/return_code`)}`,
    'exit "$return_code"',
    '',
  ];
  return lines.join('\n');
}
