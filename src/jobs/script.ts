import type { SandboxConfig } from '../config/types.js';
import { BadRequest, JobRefused } from '../errors.js';
import { sandboxedRun } from './sandbox.js';

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
      if (!allowUnsafe) throw new JobRefused('env entries of kind "file" are not allowed on this server');
      return entry.raw === true ? `. ${entry.file}` : `. ${shellQuote(entry.file)}`;
    }
    if (entry.execute !== undefined && entry.execute !== null) {
      if (!allowUnsafe) throw new JobRefused('env entries of kind "execute" are not allowed on this server');
      return entry.execute;
    }
    const name = checkEnvName(entry.name);
    const value = entry.value ?? '';
    if (entry.raw === true) {
      if (!allowUnsafe) throw new JobRefused('raw env entries are not allowed on this server');
      return `${name}=${value}; export ${name}`;
    }
    return `${name}=${literalValues ? shellQuote(value) : quoteEnvValue(value)}; export ${name}`;
  });
}

/**
 * HOME and the temporary directories of a job: its own `<jobdir>/home` and its `_GALAXY_JOB_TMP_DIR`
 * (unset here, the normalisation after the setup function falls back to it), so that nothing a job
 * leaves in `~` or `$TMPDIR` is seen by another job or by the server. Runs before the env entries
 * and, on a public server, again after them (`PINNED_AFTER_CLIENT_ENV`).
 */
const JOB_HOME_AND_TMP = ['HOME="$_GALAXY_JOB_HOME_DIR"; export HOME', 'unset TMPDIR TMP TEMP'];

/**
 * Variables that make Python run or write code outside the validated command line, pinned after
 * every env entry on every server: a user site (`~/.local/.../site-packages/*.pth`, or one under
 * `PYTHONUSERBASE`) is imported by every interpreter start; `PYTHONSTARTUP` runs a file in
 * interactive interpreters; `PYTHONPYCACHEPREFIX` writes bytecode wherever it names. `PYTHONPATH`
 * is left alone: Galaxy's lib goes there for jobs that ask for it, and only the administrator (or,
 * outside public mode, the trusted client) can set it.
 */
const INTERPRETER_PINS = ['PYTHONNOUSERSITE=1; export PYTHONNOUSERSITE', 'unset PYTHONSTARTUP PYTHONUSERBASE PYTHONPYCACHEPREFIX'];

/** Names the job script sets itself: on a public server no env entry may name them. */
export const SERVER_SET_ENV: ReadonlySet<string> = new Set([
  'HOME', 'TMPDIR', 'TMP', 'TEMP', 'PYTHONNOUSERSITE', 'PYTHONSTARTUP', 'PYTHONUSERBASE', 'PYTHONPYCACHEPREFIX',
]);

/**
 * Statements a public server's authorizer appends after the client's env entries, so that no
 * entry (even one the administrator allow-listed) moves HOME or the temporary directories.
 */
export const PINNED_AFTER_CLIENT_ENV: readonly string[] = JOB_HOME_AND_TMP;

/** GALAXY_PYTHON found again inside a sandbox, which sees other paths than the job script. */
const PYTHON_STATEMENT =
  'if hash python 2>/dev/null; then GALAXY_PYTHON="${BASH_CMDS[python]}"; elif hash python3 2>/dev/null; then GALAXY_PYTHON="${BASH_CMDS[python3]}"; fi; export GALAXY_PYTHON';

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
  /**
   * Statements that bring the tool's requirements into scope (`dependencyStatements` of
   * `jobs/dependencies.ts`), run in the command's subshell right before the command line, as
   * upstream prefixes them to it (PROTOCOL §6.3).
   */
  readonly dependencyStatements?: readonly string[];
  /**
   * Run the dependency statements and the command line in the job sandbox (`jobs/sandbox.ts`):
   * they see only exported variables, and `tmpDir` is always `<jobdir>/tmp`.
   */
  readonly sandbox?: SandboxConfig | undefined;
}

/**
 * Slot detection of Galaxy's job script (PROTOCOL §6.4 item 4, Galaxy's
 * `CLUSTER_SLOTS_STATEMENT.sh`): the first scheduler variable found wins, and
 * `GALAXY_SLOTS_CONFIGURED=1` is exported exactly when one was found. Unlike upstream no process
 * is started (`mapfile` counts the PBS node file, arithmetic multiplies the Slurm values) and a
 * value that is not a positive whole number becomes 1, because later statements do arithmetic
 * with it.
 */
const SLOTS_STATEMENT = `GALAXY_SLOTS_CONFIGURED=1
if [ -n "$SLURM_CPUS_ON_NODE" ]; then
    GALAXY_SLOTS="$SLURM_CPUS_ON_NODE"
elif [ -n "$SLURM_NTASKS" ] || [ -n "$SLURM_CPUS_PER_TASK" ]; then
    case "\${SLURM_NTASKS:-1}:\${SLURM_CPUS_PER_TASK:-1}" in
        *[!0-9:]*|:*|*:) GALAXY_SLOTS= ;;
        *) GALAXY_SLOTS=$(( 10#\${SLURM_NTASKS:-1} * 10#\${SLURM_CPUS_PER_TASK:-1} )) ;;
    esac
elif [ -n "$NSLOTS" ]; then
    GALAXY_SLOTS="$NSLOTS"
elif [ -n "$NCPUS" ]; then
    GALAXY_SLOTS="$NCPUS"
elif [ -n "$PBS_NCPUS" ]; then
    GALAXY_SLOTS="$PBS_NCPUS"
elif [ -f "$PBS_NODEFILE" ]; then
    mapfile -t _magnetar_nodes < "$PBS_NODEFILE"
    GALAXY_SLOTS="\${#_magnetar_nodes[@]}"
    unset _magnetar_nodes
elif [ -n "$LSB_DJOB_NUMPROC" ]; then
    GALAXY_SLOTS="$LSB_DJOB_NUMPROC"
elif [ -n "$GALAXY_SLOTS" ]; then
    :
elif [ -n "$PYTHON_CPU_COUNT" ]; then
    GALAXY_SLOTS="$PYTHON_CPU_COUNT"
else
    GALAXY_SLOTS=1
    unset GALAXY_SLOTS_CONFIGURED
fi
GALAXY_SLOTS="\${GALAXY_SLOTS//[[:space:]]/}"
case "$GALAXY_SLOTS" in ''|*[!0-9]*) GALAXY_SLOTS=1 ;; *) GALAXY_SLOTS=$(( 10#$GALAXY_SLOTS )); [ "$GALAXY_SLOTS" -gt 0 ] || GALAXY_SLOTS=1 ;; esac
export GALAXY_SLOTS
[ -z "\${GALAXY_SLOTS_CONFIGURED+x}" ] || export GALAXY_SLOTS_CONFIGURED`;

/**
 * Memory detection (PROTOCOL §6.4 item 9), after Galaxy's `MEMORY_STATEMENT_TEMPLATE.sh`:
 * `GALAXY_MEMORY_MB` (the whole job) and `GALAXY_MEMORY_MB_PER_SLOT`, one derived from the other
 * with `GALAXY_SLOTS`, then `GALAXY_MEMORY_GB` and `GALAXY_MEMORY_GB_PER_SLOT` (at least 1), each
 * exported only when positive and unset otherwise.
 *
 * Sources, first found wins: values already set for the job (a destination `<env>`), then
 * - Slurm: `SLURM_MEM_PER_NODE` (job total, MB), else `SLURM_MEM_PER_CPU` (per slot, MB), else
 *   `Mem=` of `scontrol -do show job $SLURM_JOB_ID` as upstream (the one command ever run here,
 *   only inside a Slurm job that has neither variable, and only if scontrol is on the PATH);
 * - Grid Engine: `SGE_HGR_h_vmem` (per slot; `4G`, `4.5G`, `4096M`, bytes when bare; upper-case
 *   suffixes are powers of 1024, lower-case ones of 1000, as `sge_types(1)` says — upstream
 *   instead reads a bare number as MB and ignores other suffixes);
 * - PBS: `PBS_RESC_MEM` (job total; bytes when bare, `kb`/`mb`/`gb`/`tb` of 1024);
 * - LSF: `LSB_MAX_MEM_RUSAGE` (job total; KB when bare).
 * `GALAXY_MEMORY_MB_OVERHEAD` is subtracted from the total, not below `GALAXY_MEMORY_MB_FLOOR`
 * (default 256), as upstream. Values are matched against a pattern before any arithmetic (bash
 * arithmetic would evaluate `a[$(cmd)]`), and one that does not parse is reported in
 * `metadata/memory_statement.log`. Outside a scheduler nothing here starts a process.
 */
const MEMORY_FUNCTIONS = `_magnetar_memory_note() {
    printf 'magnetar: %s=%s %s\\n' "$1" "$2" "$3" >> "$_magnetar_memory_log" 2>/dev/null
}
_magnetar_mb() {
    # $1 name, $2 value, $3 bytes per unit of a bare number, $4 "si": lower-case suffixes are powers of 1000
    _magnetar_mb_out=
    local re='^[[:space:]]*([0-9]{1,12})(\\.([0-9]{1,6}))?[[:space:]]*([KkMmGgTt]?)([Bb]?)[[:space:]]*$'
    if ! [[ $2 =~ $re ]]; then
        _magnetar_memory_note "$1" "$2" 'is not a memory amount: ignored'
        return 1
    fi
    local whole="\${BASH_REMATCH[1]}" fraction="\${BASH_REMATCH[3]}" suffix="\${BASH_REMATCH[4]}" unit="$3" scale=1
    case "$suffix" in
        K) unit=1024 ;; M) unit=1048576 ;; G) unit=1073741824 ;; T) unit=1099511627776 ;;
        k) if [ "$4" = si ]; then unit=1000; else unit=1024; fi ;;
        m) if [ "$4" = si ]; then unit=1000000; else unit=1048576; fi ;;
        g) if [ "$4" = si ]; then unit=1000000000; else unit=1073741824; fi ;;
        t) if [ "$4" = si ]; then unit=1000000000000; else unit=1099511627776; fi ;;
    esac
    local part=0
    if [ -n "$fraction" ]; then
        scale=$(( 10 ** \${#fraction} ))
        part=$(( 10#$fraction * unit / scale ))
    fi
    # whole * unit / 2^20 without overflowing 64 bits (whole < 10^12, unit <= 2^40)
    local n=$(( 10#$whole ))
    _magnetar_mb_out=$(( n / 1048576 * unit + (n % 1048576 * unit + part) / 1048576 ))
    if [ "$_magnetar_mb_out" -le 0 ]; then
        _magnetar_memory_note "$1" "$2" 'is less than 1 MB: ignored'
        _magnetar_mb_out=
        return 1
    fi
}
_magnetar_whole() {
    # $1 name, $2 value: a whole number (leading zeros are decimal), else empty
    _magnetar_mb_out=
    case "$2" in
        ''|*[!0-9]*) _magnetar_memory_note "$1" "$2" 'is not a whole number: ignored'; return 1 ;;
    esac
    [ \${#2} -le 15 ] || { _magnetar_memory_note "$1" "$2" 'is too large: ignored'; return 1; }
    _magnetar_mb_out=$(( 10#$2 ))
}
_magnetar_memory() {
    local total= per_slot= slots="$GALAXY_SLOTS" gb= gb_per_slot=
    case "$slots" in ''|*[!0-9]*) slots=1 ;; esac
    slots=$(( 10#$slots )); [ "$slots" -gt 0 ] || slots=1
    if [ -n "$GALAXY_MEMORY_MB" ] && _magnetar_whole GALAXY_MEMORY_MB "$GALAXY_MEMORY_MB"; then total=$_magnetar_mb_out; fi
    if [ -n "$GALAXY_MEMORY_MB_PER_SLOT" ] && _magnetar_whole GALAXY_MEMORY_MB_PER_SLOT "$GALAXY_MEMORY_MB_PER_SLOT"; then per_slot=$_magnetar_mb_out; fi
    if [ -z "$total" ] && [ -z "$per_slot" ]; then
        if [ -n "$SLURM_MEM_PER_NODE" ]; then
            _magnetar_mb SLURM_MEM_PER_NODE "$SLURM_MEM_PER_NODE" 1048576 && total=$_magnetar_mb_out
        elif [ -n "$SLURM_MEM_PER_CPU" ]; then
            _magnetar_mb SLURM_MEM_PER_CPU "$SLURM_MEM_PER_CPU" 1048576 && per_slot=$_magnetar_mb_out
        elif [ -n "$SLURM_JOB_ID" ] && hash scontrol 2>/dev/null; then
            local line
            line=$(scontrol -do show job "$SLURM_JOB_ID" 2>>"$_magnetar_memory_log")
            if [[ $line =~ (^|[[:space:]])Mem=([0-9]{1,12})([[:space:]]|$) ]]; then
                total=$(( 10#\${BASH_REMATCH[2]} ))
            else
                _magnetar_memory_note SLURM_JOB_ID "$SLURM_JOB_ID" 'has no Mem= in scontrol show job'
            fi
        elif [ -n "$SGE_HGR_h_vmem" ]; then
            _magnetar_mb SGE_HGR_h_vmem "$SGE_HGR_h_vmem" 1 si && per_slot=$_magnetar_mb_out
        elif [ -n "$PBS_RESC_MEM" ]; then
            _magnetar_mb PBS_RESC_MEM "$PBS_RESC_MEM" 1 && total=$_magnetar_mb_out
        elif [ -n "$LSB_MAX_MEM_RUSAGE" ]; then
            _magnetar_mb LSB_MAX_MEM_RUSAGE "$LSB_MAX_MEM_RUSAGE" 1024 && total=$_magnetar_mb_out
        fi
    fi
    if [ -n "$total" ] && [ -n "$GALAXY_MEMORY_MB_OVERHEAD" ] && _magnetar_whole GALAXY_MEMORY_MB_OVERHEAD "$GALAXY_MEMORY_MB_OVERHEAD"; then
        local overhead=$_magnetar_mb_out floor=256
        if [ -n "$GALAXY_MEMORY_MB_FLOOR" ] && _magnetar_whole GALAXY_MEMORY_MB_FLOOR "$GALAXY_MEMORY_MB_FLOOR"; then floor=$_magnetar_mb_out; fi
        total=$(( total - overhead ))
        [ "$total" -gt "$floor" ] || total=$floor
    fi
    if [ -z "$per_slot" ] && [ -n "$total" ]; then
        per_slot=$(( total / slots ))
    elif [ -z "$total" ] && [ -n "$per_slot" ]; then
        total=$(( per_slot * slots ))
    fi
    if [ -n "$GALAXY_MEMORY_GB" ] && _magnetar_whole GALAXY_MEMORY_GB "$GALAXY_MEMORY_GB"; then
        gb=$_magnetar_mb_out
    elif [ -n "$total" ]; then
        gb=$(( total / 1024 )); [ "$gb" -gt 0 ] || gb=1
    fi
    if [ -n "$GALAXY_MEMORY_GB_PER_SLOT" ] && _magnetar_whole GALAXY_MEMORY_GB_PER_SLOT "$GALAXY_MEMORY_GB_PER_SLOT"; then
        gb_per_slot=$_magnetar_mb_out
    elif [ -n "$gb" ]; then
        gb_per_slot=$(( gb / slots )); [ "$gb_per_slot" -gt 0 ] || gb_per_slot=1
    fi
    if [ -n "$total" ] && [ "$total" -gt 0 ]; then GALAXY_MEMORY_MB=$total; export GALAXY_MEMORY_MB; else unset GALAXY_MEMORY_MB; fi
    if [ -n "$per_slot" ] && [ "$per_slot" -gt 0 ]; then GALAXY_MEMORY_MB_PER_SLOT=$per_slot; export GALAXY_MEMORY_MB_PER_SLOT; else unset GALAXY_MEMORY_MB_PER_SLOT; fi
    if [ -n "$gb" ] && [ "$gb" -gt 0 ]; then GALAXY_MEMORY_GB=$gb; export GALAXY_MEMORY_GB; else unset GALAXY_MEMORY_GB; fi
    if [ -n "$gb_per_slot" ] && [ "$gb_per_slot" -gt 0 ]; then GALAXY_MEMORY_GB_PER_SLOT=$gb_per_slot; export GALAXY_MEMORY_GB_PER_SLOT; else unset GALAXY_MEMORY_GB_PER_SLOT; fi
    unset _magnetar_mb_out
}`;

/**
 * The job script (PROTOCOL §6.4): the one shell text magnetar executes. Every server-chosen value
 * is single-quoted; the client's command line runs in a subshell so that its `exit` cannot skip
 * the return-code bookkeeping.
 */
export function buildJobScript(spec: ScriptSpec): string {
  const dir = spec.jobDirectory;
  const q = (p: string): string => shellQuote(p);
  const sandbox = spec.sandbox;
  // A tmp_dir elsewhere is not visible in the sandbox.
  const tmpStatement = spec.tmpDir === undefined || sandbox !== undefined ? q(`${dir}/tmp`) : spec.tmpDir;
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
    // Never the server's HOME or TMPDIR: env entries may still choose others (Galaxy sends
    // HOME=$_GALAXY_JOB_HOME_DIR and TMPDIR=$_GALAXY_JOB_TMP_DIR as raw entries).
    ...JOB_HOME_AND_TMP.map((s) => `    ${s}`),
    ...spec.envStatements.map((s) => `    ${s}`),
    ...INTERPRETER_PINS.map((s) => `    ${s}`),
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
    '_magnetar_memory_log="$_magnetar_metadata/memory_statement.log"',
    MEMORY_FUNCTIONS,
    '_magnetar_memory',
    'unset -f _magnetar_memory _magnetar_mb _magnetar_whole _magnetar_memory_note',
    'echo "$GALAXY_SLOTS" > "$_magnetar_metadata/__instrument_core_galaxy_slots"',
    'echo "$GALAXY_MEMORY_MB" > "$_magnetar_metadata/__instrument_core_galaxy_memory_mb"',
    'echo "$EPOCHSECONDS" > "$_magnetar_metadata/__instrument_core_epoch_start"',
    ...(sandbox === undefined
      ? ['(', ...(spec.dependencyStatements ?? []), spec.commandLine, ')']
      : sandboxedRun(sandbox, dir, [PYTHON_STATEMENT, ...(spec.dependencyStatements ?? []), spec.commandLine].join('\n'))),
    'return_code=$?',
    // After a sandboxed command nothing of it runs any more (its PID namespace is gone), but it may
    // have left a symlink where the script writes: remove whatever is there first.
    // The job may also have swapped `metadata` for a link: then the end time is not recorded.
    ...(sandbox === undefined
      ? ['echo "$EPOCHSECONDS" > "$_magnetar_metadata/__instrument_core_epoch_end"']
      : [
          // `rm` only when something is there (the usual case has nothing: no process started).
          `if [ -e ${q(`${dir}/return_code`)} ] || [ -L ${q(`${dir}/return_code`)} ]; then rm -f -- ${q(`${dir}/return_code`)}; fi`,
          'if [ -d "$_magnetar_metadata" ] && [ ! -L "$_magnetar_metadata" ]; then',
          '    _magnetar_end="$_magnetar_metadata/__instrument_core_epoch_end"',
          '    if [ -e "$_magnetar_end" ] || [ -L "$_magnetar_end" ]; then rm -f -- "$_magnetar_end"; fi',
          '    echo "$EPOCHSECONDS" > "$_magnetar_end"',
          'fi',
        ]),
    `echo "$return_code" > ${q(`${dir}/return_code`)}`,
    'exit "$return_code"',
    '',
  ];
  return lines.join('\n');
}
