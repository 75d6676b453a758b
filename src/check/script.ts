/**
 * The tool the check job runs on the server: a POSIX `sh` script (no Python, no bash-isms), so it
 * runs wherever the server runs. It plays the part of upstream's `pulsar-check` `script.py`:
 * verify what was staged, write every kind of output, print `stdout output`, exit with 4.
 *
 * A failed verification prints `magnetar-check tool: <reason>` on stderr (the server's
 * `metadata/tool_stderr`) and exits with 3, so the client can tell "the tool found a problem"
 * from "the job did not run as expected".
 */

/** Contents of the files the client stages (kept short so they fit in one shell word). */
export const CONTENTS = {
  toolHelper: 'HELPER CONTENTS',
  jobdirScript: '# magnetar check: a Galaxy-style tool_script.sh',
  input: 'Hello world input!!@!',
  inputExtra: 'INPUT_EXTRA_CONTENTS',
  inputMetadata: 'INPUT METADATA CONTENTS...',
  config: 'hello world output',
  metadata: 'meta input',
  indexSeqs: 'AGTC',
  literalArgument: 'Hello World',
  outputExtra: 'EXTRA_OUTPUT_CONTENTS',
  version: '1.0.1',
  galaxyJson: '[{"filename": "gjson_refer"}]',
  gjsonRefer: 'gjson_refer_contents',
  metadataOutput: 'meta output',
  stdout: 'stdout output\n',
  envValue: 'from env $HOME',
  envPrefix: 'from env ',
} as const;

/** The exit code of a successful run of the tool (as upstream's check script). */
export const TOOL_EXIT_CODE = 4;
/** The exit code of the tool when one of its verifications fails. */
export const TOOL_FAILED_CODE = 3;
/** How many arguments the command line passes. */
export const TOOL_ARGUMENTS = 13;

/** POSIX single-quoting. */
export function sq(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The script text (the size of the large index file and all paths come as arguments). */
export function toolScript(): string {
  const c = CONTENTS;
  return `#!/bin/sh
# magnetar check tool (POSIX sh). Arguments:
#  1 config file (configs/)        2 input dataset            3 output 1 (copy of the config)
#  4 output 2 (literal argument)   5 the literal argument     6 input extra file
#  7 version file                  8 index file (unstructured) 9 output 3 (copy of the index file)
# 10 metadata file                11 input metadata file      12 size of the index file in bytes
# 13 the expected working directory
fail() {
    echo "magnetar-check tool: $*" >&2
    exit ${TOOL_FAILED_CODE}
}
expect_file() {
    [ -f "$1" ] || fail "$3 ($1) is missing"
    [ "$(cat "$1")" = "$2" ] || fail "$3 ($1) does not have the contents the client uploaded"
}
count_entries() {
    echo $(( $(ls -A "$1" | wc -l) ))
}

[ $# -eq ${TOOL_ARGUMENTS} ] || fail "expected ${TOOL_ARGUMENTS} arguments, got $#"
config=$1 input=$2 out1=$3 out2=$4 literal=$5 extra=$6 version=$7 index=$8 out3=$9
shift 9
metadata=$1 input_metadata=$2 index_size=$3 workdir=$4
tool_dir=$(dirname "$0")

# Where and how the job runs.
[ "$(pwd -P)" = "$(cd "$workdir" && pwd -P)" ] || fail "the working directory is $(pwd), expected $workdir"
[ -d ../metadata ] || fail "../metadata is not a directory (cwd $(pwd))"
[ -n "$GALAXY_SLOTS" ] || fail "GALAXY_SLOTS is not set"
[ "$TEST_ENV" = "from env $HOME" ] || fail "TEST_ENV is '$TEST_ENV', expected 'from env $HOME'"

# What was staged.
expect_file "$tool_dir/subdir/helper.txt" ${sq(c.toolHelper)} "the nested tool file"
expect_file ../tool_script.sh ${sq(c.jobdirScript)} "the job-directory file tool_script.sh"
expect_file "$input" ${sq(c.input)} "the input dataset"
expect_file "$extra" ${sq(c.inputExtra)} "the input's extra file"
expect_file "$input_metadata" ${sq(c.inputMetadata)} "the input metadata file"
expect_file "$config" ${sq(c.config)} "the config file"
expect_file ./config.txt ${sq(c.config)} "the working-directory file config.txt"
expect_file "$metadata" ${sq(c.metadata)} "the metadata-directory file"
[ "$literal" = ${sq(c.literalArgument)} ] || fail "the literal argument arrived as '$literal'"
index_dir=$(dirname "$index")
[ -f "$index" ] || fail "the index file ($index) is missing"
[ "$(( $(wc -c < "$index") ))" -eq "$index_size" ] || fail "the index file has $(( $(wc -c < "$index") )) bytes, expected $index_size"
[ -f "$index_dir/human.fa.fai" ] || fail "the empty index file is missing"
[ ! -s "$index_dir/human.fa.fai" ] || fail "the empty index file is not empty"
[ "$(count_entries "$index_dir")" -eq 2 ] || fail "expected 2 files in $index_dir, found $(count_entries "$index_dir")"
[ "$(count_entries "$index_dir/../seq")" -eq 1 ] || fail "expected 1 file in $index_dir/../seq, found $(count_entries "$index_dir/../seq")"
expect_file "$index_dir/../seq/human_full_seqs" ${sq(c.indexSeqs)} "the unstructured file seq/human_full_seqs"

# Outputs of every kind.
cp "$config" "$out1" || fail "cannot write $out1"
printf '%s' "$literal" > "$out2" || fail "cannot write $out2"
mkdir -p "\${out1%.dat}_files" || fail "cannot create \${out1%.dat}_files"
printf '%s' ${sq(c.outputExtra)} > "\${out1%.dat}_files/extra" || fail "cannot write the output's extra file"
printf '%s' ${sq(c.version)} > "$version" || fail "cannot write $version"
cat "$index" > "$out3" || fail "cannot write $out3"
printf '%s' "$TEST_ENV" > env_test || fail "cannot write env_test"
if [ -n "$_GALAXY_JOB_TMP_DIR" ] && [ -d "$_GALAXY_JOB_TMP_DIR" ]; then printf 'tmp-True'; else printf 'tmp-False'; fi > tmp_dir_test
if [ -n "$_GALAXY_JOB_HOME_DIR" ] && [ -d "$_GALAXY_JOB_HOME_DIR" ]; then printf 'home-True'; else printf 'home-False'; fi > home_dir_test
printf '%s' ${sq(c.galaxyJson)} > galaxy.json || fail "cannot write galaxy.json"
printf '%s' ${sq(c.gjsonRefer)} > gjson_refer || fail "cannot write gjson_refer"
printf '%s' ${sq(c.metadataOutput)} > "$(dirname "$metadata")/metadata_output" || fail "cannot write metadata_output"
echo 'stdout output'
exit ${TOOL_EXIT_CODE}
`;
}
