import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ConnectionError, DeadlineError, HttpError, PulsarClient,
  type ClientTls, type JobConfig, type StatusDocument, type UploadBody,
} from './client.js';
import { startLocalFilesEndpoint, type LocalFilesEndpoint, type ReceivedPost } from './files-endpoint.js';
import { CONTENTS, TOOL_EXIT_CODE, TOOL_FAILED_CODE, toolScript } from './script.js';

/**
 * The check job: one fake Galaxy job pushed through a server the way Galaxy's Pulsar client does
 * it (PROTOCOL §3.2, §13), verifying every answer on the way. Each step prints one line.
 */

export interface CheckRunOptions {
  readonly url: string;
  readonly privateToken: string | undefined;
  readonly manager: string | undefined;
  readonly jobId: string;
  readonly timeoutSeconds: number;
  readonly disableCleanup: boolean;
  readonly pollIntervalMs: number;
  /**
   * `--cache`: send every file through the server's file cache as Galaxy's caching client does
   * (`pulsar-check --cache`): PUT /cache, POST /cache, GET /cache/status until ready, then an
   * upload with cache_token and no body. Files the client holds only in memory go as before.
   */
  readonly cache?: boolean;
  /**
   * `--remote-transfer`: run a files endpoint here and send the job's files as
   * `remote_staging.setup` entries (remote_transfer; the in-memory config as `message`), so the
   * server pulls them (server-side stage-in, PROTOCOL §8); the outputs are mapped to
   * remote_transfer too, so the server POSTs them back to that endpoint (stage-out, §8.4), where
   * they are verified instead of downloaded.
   */
  readonly remoteTransfer?: RemoteTransferOptions | undefined;
  /** Certificate checks for an https:// server (`--ca`, `--insecure`). */
  readonly tls?: ClientTls | undefined;
  /** One line of the report (without newline). */
  readonly out: (line: string) => void;
  /** One line for stderr (without newline): the reason of an exit with code 2. */
  readonly err: (line: string) => void;
}

export interface RemoteTransferOptions {
  /** Address the files endpoint listens on. */
  readonly host: string;
  /** Port (0: a free one). */
  readonly port: number;
  /** Host name or address the server is told to fetch from (default: `host`). */
  readonly advertise?: string | undefined;
  /** Largest stage-out POST body the endpoint takes (default DEFAULT_MAX_POST_BYTES). */
  readonly maxPostBytes?: number | undefined;
}

/** Default bound of one stage-out POST (the check's largest output is about 1 MiB). */
export const DEFAULT_MAX_POST_BYTES = 64 * 1024 * 1024;
/** Most stage-out POSTs the check's endpoint takes (about 20 are expected; retries add some). */
const MAX_POSTS = 256;

export const EXIT_PASSED = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export const TOOL_ID = 'magnetar_check';
export const TOOL_VERSION = '1.0';

/** Size of the big (streamed) upload: a bit over 1 MiB, not a multiple of common chunk sizes. */
const BIG_SIZE = 1024 * 1024 + 12_345;
/** Downloads are kept in memory only up to this many bytes (for comparing small files). */
const KEEP_BYTES = 64 * 1024;
const POLL_RETRIES = 5;

/** The dynamic output patterns Galaxy sends (matched like Python's `re.match`: anchored at the start). */
const DYNAMIC_OUTPUTS = 'primary_.*|galaxy.json|metadata_.*|dataset_\\d+\\.dat|__instrument_.*|dataset_\\d+_files.+|outputs_populated/.*|tool_stdout|tool_stderr';
// RegExp from the constant DYNAMIC_OUTPUTS (never client text); the check client runs it on its own files.
const DYNAMIC = new RegExp(`^(?:${DYNAMIC_OUTPUTS})`);
/** The job's explicit working-directory outputs: [file in the working directory, Galaxy output]. */
const WORK_DIR_OUTPUTS: readonly (readonly [string, string])[] = [['env_test', 'dataset_77.dat'], ['tmp_dir_test', 'dataset_79.dat'], ['home_dir_test', 'dataset_80.dat']];
const DYNAMIC_FILE_SOURCES = [{ type: 'galaxy', path: 'galaxy.json' }, { type: 'galaxy', path: 'absent_galaxy.json' }];
const NOT_FINISHED = new Set(['preprocessing', 'queued', 'running', 'postprocessing']);

/** A verification failed: the message says what was expected and what came. */
class Mismatch extends Error {}

class StepFailure extends Error {
  readonly step: string;
  readonly reason: unknown;
  constructor(step: string, reason: unknown) {
    super(`${step}: ${reason instanceof Error ? reason.message : String(reason)}`);
    this.step = step;
    this.reason = reason;
  }
}

function expect(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Mismatch(message);
}

function show(value: unknown, max = 120): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > max ? `${text.slice(0, max)}...` : text;
}

/** Double-quote a server path for the command line (Galaxy double-quotes its paths). */
function dq(value: string): string {
  return `"${value.replace(/["\\$`]/g, '\\$&')}"`;
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(2)} MiB`;
}

interface LocalFile {
  readonly type: string;
  readonly name: string;
  readonly body: UploadBody;
  readonly size: number;
}

/** Send `upload` through the file cache (PROTOCOL §9.1); resolves with the upload answer. */
async function uploadViaCache(
  client: PulsarClient, jobId: string, upload: LocalFile & { body: { kind: 'file'; path: string } }, pollMs: number, deadlineAt: number,
): Promise<{ path: string }> {
  const clientPath = upload.body.path;
  const wanted = await client.cacheRequired(clientPath);
  if (wanted) await client.cacheInsert(clientPath, upload.body);
  for (;;) {
    const status = await client.cacheStatus(clientPath);
    expect(/^[0-9a-f]{64}$/.test(status.token), `GET /cache/status answered the token ${show(status.token)}, not 64 hexadecimal characters`);
    if (status.ready) {
      expect(!(await client.cacheRequired(clientPath)), 'PUT /cache still answers true for an entry that is ready');
      return client.upload(jobId, upload.name, upload.type, undefined, status.token);
    }
    expect(!wanted, 'the entry is not ready right after POST /cache answered');
    const left = deadlineAt - Date.now();
    if (left <= 0) throw new Mismatch('the file cache entry never became ready (another client announced it and did not send it?)');
    await sleep(Math.min(pollMs, left));
  }
}

interface LocalJob {
  readonly dir: string;
  readonly uploads: readonly LocalFile[];
  readonly indexHash: string;
  readonly bigSha256: string;
  readonly remoteStaging: object;
}

/** Write the fake Galaxy job (tool, inputs, index, configs) into a temp directory. */
async function prepareLocalJob(dir: string): Promise<LocalJob> {
  const write = async (rel: string, contents: string): Promise<string> => {
    const p = path.join(dir, rel);
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, contents);
    return p;
  };
  const file = (type: string, name: string, p: string, size: number): LocalFile => ({ type, name, body: { kind: 'file', path: p }, size });
  const text = async (type: string, name: string, rel: string, contents: string): Promise<LocalFile> =>
    file(type, name, await write(rel, contents), Buffer.byteLength(contents));

  // The big index file, written (and hashed) in chunks, so that its upload is streamed from disk.
  const bigPath = path.join(dir, 'idx', 'bwa', 'human.fa');
  await fs.mkdir(path.dirname(bigPath), { recursive: true });
  const hash = createHash('sha256');
  const handle = await fs.open(bigPath, 'w');
  try {
    for (let written = 0; written < BIG_SIZE;) {
      const chunk = randomBytes(Math.min(256 * 1024, BIG_SIZE - written));
      hash.update(chunk);
      await handle.write(chunk);
      written += chunk.length;
    }
  } finally {
    await handle.close();
  }
  const indexDir = path.join(dir, 'idx');
  // Galaxy names unstructured files after the md5 of the path the path rule matched.
  const indexHash = createHash('md5').update(indexDir).digest('hex');
  const configContents = CONTENTS.config;

  const uploads: LocalFile[] = [
    await text('tool', 'script.sh', 't/script.sh', toolScript()),
    await text('tool', 'subdir/helper.txt', 't/subdir/helper.txt', CONTENTS.toolHelper),
    await text('jobdir', 'tool_script.sh', 'j/tool_script.sh', CONTENTS.jobdirScript),
    await text('input', 'dataset_0.dat', 'dataset_0.dat', CONTENTS.input),
    await text('input', 'dataset_0_files/input_subdir/extra', 'dataset_0_files/input_subdir/extra', CONTENTS.inputExtra),
    await text('input', 'metadata_12312231231231.dat', 'metadata/12312231231231.dat', CONTENTS.inputMetadata),
    await text('workdir', 'config.txt', 'w/config.txt', configContents),
    await text('metadata', 'metadata_test123', 'm/metadata_test123', CONTENTS.metadata),
    file('unstructured', `${indexHash}/bwa/human.fa`, bigPath, BIG_SIZE),
    await text('unstructured', `${indexHash}/bwa/human.fa.fai`, 'idx/bwa/human.fa.fai', ''),
    await text('unstructured', `${indexHash}/seq/human_full_seqs`, 'idx/seq/human_full_seqs', CONTENTS.indexSeqs),
    // The "rewritten" config file: sent from memory, as Galaxy sends rewritten configs.
    { type: 'config', name: 'config.txt', body: { kind: 'bytes', data: Buffer.from(configContents) }, size: Buffer.byteLength(configContents) },
  ];
  await fs.mkdir(path.join(dir, 'downloads'), { recursive: true });

  const local = (name: string): string => path.join(dir, name);
  const remoteStaging = {
    action_mapper: {
      default_action: 'transfer',
      files_endpoint: null,
      ssh_key: null,
      ssh_user: null,
      ssh_port: null,
      ssh_host: null,
      paths: [{ action: 'transfer', path_types: 'unstructured', match_type: 'prefix', depth: 2, path: indexDir }],
    },
    client_outputs: {
      working_directory: local('w'),
      metadata_directory: local('m'),
      job_directory: null,
      work_dir_outputs: WORK_DIR_OUTPUTS.map(([file, output]) => [local(`w/${file}`), local(output)]),
      output_files: ['dataset_1.dat', 'dataset_2.dat', 'dataset_3.dat', 'touched.dat', 'dataset_77.dat', 'dataset_79.dat', 'dataset_80.dat'].map(local),
      version_file: local('GALAXY_VERSION_1234'),
      dynamic_outputs: [DYNAMIC_OUTPUTS],
      dynamic_file_sources: DYNAMIC_FILE_SOURCES,
      dataset_collector_descriptions: [],
    },
  };
  return { dir, uploads, indexHash, bigSha256: hash.digest('hex'), remoteStaging };
}

/** Where the layout (PROTOCOL §4.1/§4.2) says an upload of this type and name lands. */
function expectedUploadPath(config: JobConfig, type: string, name: string): string {
  const nested = !['config', 'jobdir', 'workdir'].includes(type);
  const rel = nested ? name : name.split('/').pop()!;
  const base: Record<string, string> = {
    tool: config.tools_directory,
    jobdir: config.job_directory,
    input: config.inputs_directory,
    workdir: config.working_directory,
    metadata: config.metadata_directory,
    unstructured: config.unstructured_files_directory,
    config: config.configs_directory,
  };
  return path.posix.join(base[type]!, rel);
}

/** Streams a download into a file while hashing it and keeping its first bytes. */
class Capture extends Writable {
  readonly hash = createHash('sha256');
  readonly #kept: Buffer[] = [];
  #keptBytes = 0;
  readonly #file: ReturnType<typeof createWriteStream> | undefined;

  /** `file`: where to keep the bytes (none: they are only hashed). */
  constructor(file?: string) {
    super();
    this.#file = file === undefined ? undefined : createWriteStream(file);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.hash.update(chunk);
    if (this.#keptBytes < KEEP_BYTES) {
      this.#kept.push(chunk.subarray(0, KEEP_BYTES - this.#keptBytes));
      this.#keptBytes += Math.min(chunk.length, KEEP_BYTES - this.#keptBytes);
    }
    if (this.#file === undefined || this.#file.write(chunk)) callback();
    else this.#file.once('drain', () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.#file === undefined) callback();
    else this.#file.end(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#file?.destroy();
    callback(error);
  }

  get text(): string {
    return Buffer.concat(this.#kept).toString('utf8');
  }
}

/** What a downloaded file must contain; files without an entry are fetched but not compared. */
function expectedDownloads(bigSha256: string): Map<string, (text: string, sha256: string, size: number) => void> {
  const exact = (want: string) => (text: string, _sha: string, size: number): void => {
    expect(size === Buffer.byteLength(want) && text === want, `expected ${show(want)}, got ${show(text)}${size > KEEP_BYTES ? ` (${size} bytes)` : ''}`);
  };
  return new Map([
    ['output_workdir:env_test', (text: string) => {
      expect(text.startsWith(CONTENTS.envPrefix) && !text.includes('$'), `expected "${CONTENTS.envPrefix}<the job's $HOME>" (the env entry "${CONTENTS.envValue}" expanded), got ${show(text)}`);
    }],
    ['output_workdir:tmp_dir_test', exact('tmp-True')],
    ['output_workdir:home_dir_test', exact('home-True')],
    ['output:dataset_1.dat', exact(CONTENTS.config)],
    ['output:dataset_1_files/extra', exact(CONTENTS.outputExtra)],
    ['output:dataset_2.dat', exact(CONTENTS.literalArgument)],
    ['output:dataset_3.dat', (_text: string, sha: string, size: number) => {
      expect(size === BIG_SIZE, `expected ${BIG_SIZE} bytes, got ${size}`);
      expect(sha === bigSha256, 'the bytes differ from the uploaded index file (sha256 mismatch)');
    }],
    ['output:touched.dat', exact('')],
    ['output:COMMAND_VERSION', exact(CONTENTS.version)],
    ['output_workdir:galaxy.json', exact(CONTENTS.galaxyJson)],
    ['output_workdir:gjson_refer', exact(CONTENTS.gjsonRefer)],
    ['output_metadata:tool_stdout', exact(CONTENTS.stdout)],
    ['output_metadata:metadata_test123', exact(CONTENTS.metadata)],
    ['output_metadata:metadata_output', exact(CONTENTS.metadataOutput)],
  ]);
}

/**
 * The Galaxy path a server's stage-out POSTs each expected output to (keyed like
 * expectedDownloads: `type:name`), from the job's client_outputs (PROTOCOL §8.4).
 */
function stageOutTargets(dir: string, keys: Iterable<string>): Map<string, string> {
  const workDir = new Map(WORK_DIR_OUTPUTS);
  const targets = new Map<string, string>();
  for (const key of keys) {
    const colon = key.indexOf(':');
    const type = key.slice(0, colon);
    const name = key.slice(colon + 1);
    const rel = type === 'output' ? (name === 'COMMAND_VERSION' ? 'GALAXY_VERSION_1234' : name)
      : type === 'output_workdir' ? workDir.get(name) ?? `w/${name}`
      : `m/${name}`;
    targets.set(key, path.join(dir, rel));
  }
  return targets;
}

/**
 * Which POSTs the check's endpoint takes: the expected outputs (at their Galaxy path, with their
 * file type), and the other dynamic outputs of the working and metadata directories (pushed by
 * the server as Galaxy collects them; not compared). At most MAX_POSTS in all.
 */
function stageOutFilter(dir: string, targets: ReadonlyMap<string, string>): (galaxyPath: string, fileType: string | null) => boolean {
  const expected = new Set([...targets].map(([key, galaxyPath]) => `${key.slice(0, key.indexOf(':'))}\u0000${galaxyPath}`));
  const dynamicIn = new Map([['output_workdir', path.join(dir, 'w')], ['output_metadata', path.join(dir, 'm')]]);
  let taken = 0;
  return (galaxyPath, fileType) => {
    if (taken >= MAX_POSTS || fileType === null) return false;
    const dynamicDir = dynamicIn.get(fileType);
    const ok = expected.has(`${fileType}\u0000${galaxyPath}`)
      || (dynamicDir !== undefined && path.dirname(galaxyPath) === dynamicDir && DYNAMIC.test(path.basename(galaxyPath)));
    if (ok) taken++;
    return ok;
  };
}

/** The names Galaxy's client would download from the final status, in its order (PROTOCOL §3.2 step 5). */
function downloadPlan(doc: StatusDocument): { type: string; name: string }[] {
  const plan: { type: string; name: string }[] = [];
  const seen = new Set<string>();
  const add = (type: string, name: string): void => {
    const key = `${type}:${name}`;
    if (seen.has(key)) return;
    seen.add(key);
    plan.push({ type, name });
  };
  const working = doc.working_directory_contents ?? [];
  const metadata = doc.metadata_directory_contents ?? [];
  const outputs = doc.outputs_directory_contents ?? [];
  // 1. explicit work-dir outputs
  for (const name of ['env_test', 'tmp_dir_test', 'home_dir_test']) add('output_workdir', name);
  // 2. expected outputs present on the server, with their extra files
  for (const name of ['dataset_1.dat', 'dataset_2.dat', 'dataset_3.dat', 'touched.dat', 'dataset_77.dat', 'dataset_79.dat', 'dataset_80.dat']) {
    if (!outputs.includes(name)) continue;
    add('output', name);
    const extras = `${name.replace(/\.dat$/, '')}_files/`;
    for (const listed of outputs) if (listed.startsWith(extras)) add('output', listed);
  }
  // 3. the version file
  if (outputs.includes('COMMAND_VERSION')) add('output', 'COMMAND_VERSION');
  // 4./5. dynamic outputs in the working and metadata directories, and what galaxy.json references
  const dynamic = DYNAMIC;
  const referenced: string[] = [];
  for (const source of doc.realized_dynamic_file_sources ?? []) {
    try {
      const parsed: unknown = JSON.parse(source.contents ?? '');
      const entries = Array.isArray(parsed) ? parsed : [parsed];
      for (const entry of entries) {
        const filename = (entry as { filename?: unknown } | null)?.filename;
        if (typeof filename === 'string') referenced.push(filename);
      }
    } catch {
      // verified separately
    }
  }
  for (const name of working) if (dynamic.test(name) || referenced.includes(name)) add('output_workdir', name);
  for (const name of metadata) if (dynamic.test(name)) add('output_metadata', name);
  return plan;
}

/** Run the check; resolves with the exit code (0 passed, 1 failed, 2 usage/connection problem). */
export async function runCheck(options: CheckRunOptions): Promise<number> {
  const { out } = options;
  const deadlineAt = Date.now() + options.timeoutSeconds * 1000;
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), options.timeoutSeconds * 1000);
  timer.unref();
  let client: PulsarClient;
  try {
    client = new PulsarClient({ url: options.url, privateToken: options.privateToken, manager: options.manager, signal: deadline.signal, tls: options.tls });
  } catch (error) {
    clearTimeout(timer);
    options.err(`magnetar check: ${(error as Error).message}`);
    return EXIT_USAGE;
  }

  let tmp: string | undefined;
  let endpoint: LocalFilesEndpoint | undefined;
  let jobId = options.jobId;
  let setUp = false;
  let cleaned = false;

  const step = async <T>(name: string, fn: () => Promise<T>, detail?: (value: T) => string): Promise<T> => {
    let value: T;
    try {
      value = await fn();
    } catch (error) {
      throw new StepFailure(name, error);
    }
    const extra = detail?.(value);
    out(`ok  ${name}${extra === undefined || extra === '' ? '' : ` (${extra})`}`);
    return value;
  };

  try {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-check-'));
    let localJob: LocalJob;
    try {
      localJob = await prepareLocalJob(tmp);
    } catch (error) {
      options.err(`magnetar check: cannot prepare the local job files in ${tmp}: ${(error as Error).message}`);
      return EXIT_USAGE;
    }
    if (options.remoteTransfer !== undefined) {
      const rt = options.remoteTransfer;
      try {
        // The server pushes the check's outputs here (about 1 MiB in all): only those, each bounded.
        const postDir = path.join(tmp, 'pushed');
        await fs.mkdir(postDir);
        endpoint = await startLocalFilesEndpoint({
          host: rt.host, port: rt.port, advertise: rt.advertise, postDir, maxPostBytes: rt.maxPostBytes ?? DEFAULT_MAX_POST_BYTES,
          acceptPost: stageOutFilter(tmp, stageOutTargets(tmp, expectedDownloads(localJob.bigSha256).keys())),
        });
      } catch (error) {
        options.err(`magnetar check: cannot start the files endpoint on ${rt.host}:${rt.port} (--files-host, --files-port): ${(error as Error).message}`);
        return EXIT_USAGE;
      }
      out(`..  files endpoint ${endpoint.base} (the server must reach it)`);
    }
    out(`..  checking ${client.urlFor('', []).origin}${client.urlFor('', []).pathname} with job id ${jobId}`);

    // 1. setup
    const config = await step('setup', async () => {
      const c = await client.setup(jobId, TOOL_ID, TOOL_VERSION);
      setUp = true;
      jobId = c.job_id;
      const root = c.job_directory;
      const layout: [string, string][] = [
        ['working_directory', 'working'], ['metadata_directory', 'metadata'], ['outputs_directory', 'outputs'],
        ['configs_directory', 'configs'], ['tools_directory', 'tool_files'], ['inputs_directory', 'inputs'],
        ['unstructured_files_directory', 'unstructured'],
      ];
      for (const [key, sub] of layout) {
        expect(c[key] === path.posix.join(root, sub), `"${key}" is ${show(c[key])}, expected ${show(path.posix.join(root, sub))} (Galaxy derives the layout from the job directory)`);
      }
      expect(c.system_properties['separator'] === '/', `system_properties.separator is ${show(c.system_properties['separator'])}, expected "/"`);
      expect(c['tool_id'] === TOOL_ID && c['tool_version'] === TOOL_VERSION, `tool_id/tool_version echoed as ${show(c['tool_id'])}/${show(c['tool_version'])}`);
      expect(typeof c['pulsar_version'] === 'string', 'the setup answer has no "pulsar_version" string');
      return c;
    }, (c) => (c.job_id === options.jobId ? `job ${c.job_id}` : `the server assigned job id ${c.job_id}`));

    // 2. uploads, in the real client's order; or, with --remote-transfer, the stage-in plan
    let stageIn: object[] | undefined;
    if (endpoint !== undefined) {
      const e = endpoint;
      stageIn = await step('stage-in plan', async () => localJob.uploads.map((upload) => {
        if (upload.body.kind === 'bytes') {
          // Galaxy's client sends a rewritten config file it holds in memory as a message action.
          return { name: upload.name, type: upload.type, action: { action_type: 'message', contents: upload.body.data.toString('utf8') } };
        }
        const galaxyPath = upload.body.path;
        e.serve(galaxyPath, galaxyPath);
        return {
          name: upload.name,
          type: upload.type,
          action: { path: galaxyPath, source: { path: galaxyPath, object_store_ref: null }, action_type: 'remote_transfer', url: e.inputUrl(jobId, galaxyPath, upload.type) },
        };
      }), (entries) => `${entries.length - 1} remote_transfer from ${e.base}, 1 message`);
    }
    for (const upload of endpoint === undefined ? localJob.uploads : []) {
      const kind = upload.size === 0 ? 'empty' : upload.size > 1024 * 1024 ? `${mib(upload.size)}, streamed from a file` : `${upload.size} bytes`;
      await step(`upload ${upload.type} ${upload.name}`, async () => {
        const body = upload.body;
        const answer = options.cache === true && body.kind === 'file'
          ? await uploadViaCache(client, jobId, { ...upload, body }, options.pollIntervalMs, deadlineAt)
          : await client.upload(jobId, upload.name, upload.type, body);
        const want = expectedUploadPath(config, upload.type, upload.name);
        expect(answer.path === want, `the server stored it at ${show(answer.path)}, expected ${show(want)}`);
      }, () => (options.cache === true && upload.body.kind === 'file' ? `${kind}, through the file cache` : kind));
    }

    // 3. submit
    const d = config;
    const commandLine = [
      'sh', dq(`${d.tools_directory}/script.sh`),
      dq(`${d.configs_directory}/config.txt`),
      dq(`${d.inputs_directory}/dataset_0.dat`),
      dq(`${d.outputs_directory}/dataset_1.dat`),
      dq(`${d.outputs_directory}/dataset_2.dat`),
      dq(CONTENTS.literalArgument),
      dq(`${d.inputs_directory}/dataset_0_files/input_subdir/extra`),
      dq(`${d.outputs_directory}/COMMAND_VERSION`),
      dq(`${d.unstructured_files_directory}/${localJob.indexHash}/bwa/human.fa`),
      dq(`${d.outputs_directory}/dataset_3.dat`),
      dq(`${d.metadata_directory}/metadata_test123`),
      dq(`${d.inputs_directory}/metadata_12312231231231.dat`),
      dq(String(BIG_SIZE)),
      dq(d.working_directory),
      '2> ../metadata/tool_stderr > ../metadata/tool_stdout',
    ].join(' ');
    await step('submit', () => client.submit(jobId, {
      commandLine,
      env: [{ name: 'TEST_ENV', value: CONTENTS.envValue, raw: false }],
      remoteStaging: endpoint === undefined || stageIn === undefined ? localJob.remoteStaging : remoteTransferStaging(localJob.remoteStaging, endpoint.filesEndpoint(jobId), stageIn),
      submitExtras: { touch_outputs: ['touched.dat'] },
      dynamicFileSources: DYNAMIC_FILE_SOURCES,
    }));

    // 4./5. poll until finished, then verify the status document
    const final = await step('status', async () => {
      const seen: string[] = [];
      const submitted = Date.now();
      for (;;) {
        let doc: StatusDocument | undefined = undefined;
        for (let attempt = 1; doc === undefined; attempt++) {
          try {
            doc = await client.status(jobId);
          } catch (error) {
            if (error instanceof DeadlineError) throw new Mismatch(`the job is still ${seen[seen.length - 1] ?? 'not finished'} after ${options.timeoutSeconds} s (--timeout)`);
            const transient = error instanceof ConnectionError || (error instanceof HttpError && error.status >= 500);
            if (!transient || attempt >= POLL_RETRIES) throw error;
            await sleep(100);
          }
        }
        if (seen[seen.length - 1] !== doc.status) seen.push(doc.status);
        if (doc.complete === 'true') return { doc, seen, seconds: (Date.now() - submitted) / 1000 };
        expect(doc.complete === 'false', `"complete" is ${show(doc.complete)}, expected "true" or "false"`);
        expect(NOT_FINISHED.has(doc.status), `status ${show(doc.status)} with complete "false" is not a protocol status`);
        const left = deadlineAt - Date.now();
        if (left <= 0) throw new Mismatch(`the job is still ${doc.status} after ${options.timeoutSeconds} s (--timeout)`);
        await sleep(Math.min(options.pollIntervalMs, left));
      }
    }, (r) => `${r.doc.status} after ${r.seconds.toFixed(1)} s: ${r.seen.join(' -> ')}`);
    const doc = final.doc;

    await step('verify status', async () => {
      const stderr = (doc.stderr ?? '').trim();
      const toolProblem = stderr.split('\n').find((l) => l.startsWith('magnetar-check tool: '));
      if (doc.status !== 'complete') {
        throw new Mismatch(`the job ended ${doc.status}, expected complete${stderr === '' ? '' : `; stderr: ${show(stderr, 300)}`}`);
      }
      if (doc.returncode === TOOL_FAILED_CODE && toolProblem !== undefined) throw new Mismatch(`the tool reported a problem: ${toolProblem.slice('magnetar-check tool: '.length)}`);
      expect(doc.returncode === TOOL_EXIT_CODE, `returncode is ${show(doc.returncode)}, expected ${TOOL_EXIT_CODE}${stderr === '' ? '' : `; stderr: ${show(stderr, 300)}`}`);
      expect(doc.stdout === CONTENTS.stdout, `stdout is ${show(doc.stdout)}, expected ${show(CONTENTS.stdout)} (the tool's metadata/tool_stdout)`);
      expect(typeof doc.stderr === 'string', `stderr is ${show(doc.stderr)}, expected a string`);
      expect(doc['job_id'] === jobId, `job_id is ${show(doc['job_id'])}, expected ${show(jobId)}`);
      for (const key of ['working_directory', 'metadata_directory', 'job_directory'] as const) {
        expect(doc[key] === config[key], `${key} is ${show(doc[key])}, expected ${show(config[key])}`);
      }
      const realized = doc.realized_dynamic_file_sources;
      expect(Array.isArray(realized), `realized_dynamic_file_sources is ${show(realized)}, expected a list`);
      const galaxyJson = realized.find((s) => s.path === 'galaxy.json');
      expect(galaxyJson !== undefined, `realized_dynamic_file_sources ${show(realized)} lacks galaxy.json`);
      expect(galaxyJson.type === 'galaxy', `galaxy.json's type is ${show(galaxyJson.type)}, expected "galaxy"`);
      expect(galaxyJson.contents === CONTENTS.galaxyJson, `galaxy.json's contents are ${show(galaxyJson.contents)}, expected ${show(CONTENTS.galaxyJson)}`);
      expect(!realized.some((s) => s.path === 'absent_galaxy.json'), 'realized_dynamic_file_sources lists absent_galaxy.json, which the tool never wrote');
      const lists: [keyof StatusDocument, string[]][] = [
        ['working_directory_contents', ['config.txt', 'env_test', 'tmp_dir_test', 'home_dir_test', 'galaxy.json', 'gjson_refer']],
        ['metadata_directory_contents', ['tool_stdout', 'tool_stderr', 'metadata_test123', 'metadata_output']],
        ['outputs_directory_contents', ['dataset_1.dat', 'dataset_2.dat', 'dataset_3.dat', 'dataset_1_files/extra', 'COMMAND_VERSION', 'touched.dat']],
        ['job_directory_contents', ['tool_script.sh', 'working', 'metadata', 'outputs', 'inputs', 'configs', 'tool_files', 'unstructured']],
      ];
      for (const [key, names] of lists) {
        const listed = doc[key];
        expect(Array.isArray(listed) && listed.every((n) => typeof n === 'string'), `${String(key)} is ${show(listed)}, expected a list of names`);
        const missing = names.filter((n) => !(listed as string[]).includes(n));
        expect(missing.length === 0, `${String(key)} lacks ${missing.join(', ')} (it lists ${show(listed, 300)})`);
      }
      expect(!(doc.working_directory_contents ?? []).includes('dataset_1_files'), 'working_directory_contents lists a directory');
    });

    // 6. downloads, as the real client fetches them; or, with --remote-transfer, what the server pushed
    const checks = expectedDownloads(localJob.bigSha256);
    if (endpoint === undefined) {
      const fetched = new Set<string>();
      let counter = 0;
      for (const { type, name } of downloadPlan(doc)) {
        const key = `${type}:${name}`;
        const verify = checks.get(key);
        await step(`download ${type} ${name}`, async () => {
          const capture = new Capture(path.join(tmp!, 'downloads', `${counter++}`));
          const size = await client.download(jobId, name, type, capture);
          verify?.(capture.text, capture.hash.digest('hex'), size);
          fetched.add(key);
          return size;
        }, (size) => `${size > 1024 * 1024 ? mib(size) : `${size} bytes`}${verify === undefined ? ', not compared' : ''}`);
      }
      await step('all expected outputs downloaded', async () => {
        const missing = [...checks.keys()].filter((k) => !fetched.has(k));
        expect(missing.length === 0, `never offered by the status document: ${missing.join(', ')}`);
      });
    } else {
      const e = endpoint;
      const targets = stageOutTargets(tmp, checks.keys());
      // The last POST to a path counts (a server retries, or pushes again after a restart).
      const pushed = new Map<string, ReceivedPost>();
      for (const post of e.posts) pushed.set(`${post.fileType ?? ''}\u0000${post.path}`, post);
      const missing: string[] = [];
      for (const [key, galaxyPath] of targets) {
        const type = key.slice(0, key.indexOf(':'));
        const name = key.slice(type.length + 1);
        const post = pushed.get(`${type}\u0000${galaxyPath}`);
        pushed.delete(`${type}\u0000${galaxyPath}`);
        if (post === undefined) {
          const refusal = e.refused.findLast((r) => r.path === galaxyPath);
          missing.push(`${type} ${name}${refusal === undefined ? '' : ` (the files endpoint answered HTTP ${refusal.status}: ${refusal.reason})`}`);
          continue;
        }
        await step(`stage-out ${type} ${name}`, async () => {
          const capture = new Capture();
          await pipeline(createReadStream(post.file), capture);
          checks.get(key)?.(capture.text, capture.hash.digest('hex'), post.bytes);
          return post.bytes;
        }, (size) => `${size > 1024 * 1024 ? mib(size) : `${size} bytes`}, pushed by the server`);
      }
      for (const post of pushed.values()) out(`ok  stage-out ${post.fileType ?? ''} ${path.basename(post.path)} (${post.bytes} bytes, pushed by the server, not compared)`);
      await step('files endpoint', async () => {
        const fetched = (e.gets.get(200) ?? 0) + (e.gets.get(206) ?? 0);
        const wanted = (stageIn?.length ?? 1) - 1;
        expect(fetched >= wanted, `the server fetched ${fetched} files from the files endpoint, expected ${wanted}`);
        return fetched;
      }, (fetched) => `${fetched} GETs answered, ${mib(e.bytesSent())}; ${e.posts.length} outputs pushed by the server (stage-out), ${mib(e.posts.reduce((n, p) => n + p.bytes, 0))}`);
      await step('all expected outputs pushed', async () => {
        expect(missing.length === 0, `never pushed to the files endpoint by the server's stage-out: ${missing.join(', ')}`);
      }, () => `${targets.size} outputs by stage-out, none downloaded`);
    }
    await step('download of a missing output answers 404', async () => {
      try {
        await client.download(jobId, 'dataset_1.datx', 'output', new Writable({ write: (_c, _e, cb) => cb() }));
      } catch (error) {
        if (error instanceof HttpError) {
          expect(error.status === 404, `${error.message}; expected HTTP 404`);
          return;
        }
        throw error;
      }
      throw new Mismatch('the server answered 200 for an output that does not exist');
    });

    // 7. clean
    if (options.disableCleanup) {
      out(`..  cleanup disabled: job ${jobId} stays in ${config.job_directory}`);
    } else {
      await step('clean', () => client.clean(jobId));
      cleaned = true;
      await step('status after clean', async () => {
        const after = await client.status(jobId);
        expect(after.status === 'lost' && after.complete === 'true', `status is ${show(after.status)} (complete ${show(after.complete)}), expected "lost" (complete "true")`);
      }, () => 'lost');
    }
    out('check passed');
    return EXIT_PASSED;
  } catch (error) {
    if (!(error instanceof StepFailure)) throw error;
    const reason = error.reason;
    const message = reason instanceof Error ? reason.message : String(reason);
    out(`FAIL ${error.step}: ${message}`);
    let code = EXIT_FAILED;
    let hint = '';
    if (reason instanceof ConnectionError) {
      code = EXIT_USAGE;
      hint = `cannot talk to the server at ${options.url}: ${message}`;
    } else if (reason instanceof HttpError && reason.status === 401) {
      code = EXIT_USAGE;
      hint = options.privateToken === undefined
        ? `the server requires a private token (HTTP 401): pass --private-token`
        : `the server refused the private token (HTTP 401): check --private-token`;
    } else if (reason instanceof HttpError && reason.status === 404 && error.step === 'setup') {
      code = EXIT_USAGE;
      hint = `${message} (is the URL${options.manager === undefined ? '' : ' or --manager'} wrong?)`;
    } else if (endpoint !== undefined) {
      hint = remoteTransferHint(error.step, reason, endpoint) ?? '';
    }
    if (setUp && !cleaned && !options.disableCleanup && code === EXIT_FAILED) {
      // Best effort, with its own short deadline (the main one may be what failed).
      const cleaner = new PulsarClient({ url: options.url, privateToken: options.privateToken, manager: options.manager, signal: AbortSignal.timeout(10_000), tls: options.tls });
      try {
        await cleaner.clean(jobId);
        out(`..  removed job ${jobId} from the server (use --disable-cleanup to keep it for inspection)`);
      } catch {
        out(`..  could not remove job ${jobId} from the server`);
      } finally {
        cleaner.close();
      }
    } else if (setUp && !cleaned && code === EXIT_FAILED) {
      out(`..  job ${jobId} was left on the server for inspection`);
    }
    out(`check failed: ${error.message}`);
    if (hint !== '') options.err(`magnetar check: ${hint}`);
    return code;
  } finally {
    clearTimeout(timer);
    client.close();
    await endpoint?.close();
    if (tmp !== undefined) await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** The pulsar-check remote_staging with the stage-in entries and a mapper that sends inputs by remote_transfer. */
function remoteTransferStaging(base: object, filesEndpoint: string, setup: object[]): object {
  const staging = base as { action_mapper: { paths: object[] } & Record<string, unknown>; client_outputs: object };
  return {
    setup,
    action_mapper: {
      ...staging.action_mapper,
      default_action: 'remote_transfer',
      files_endpoint: filesEndpoint,
      paths: [
        ...staging.action_mapper.paths.map((rule) => ({ ...rule, action: 'remote_transfer' })),
        // Outputs take default_action: the server POSTs them back to files_endpoint (stage-out).
      ],
    },
    client_outputs: staging.client_outputs,
  };
}

/** One line saying what to change when the server would not or could not stage in from (or out to) the check's endpoint. */
function remoteTransferHint(step: string, reason: unknown, endpoint: LocalFilesEndpoint): string | undefined {
  const base = endpoint.base;
  const text = reason instanceof HttpError ? reason.body : reason instanceof Error ? reason.message : String(reason);
  const listed = `${base}/api/jobs/`;
  if (step === 'submit' && reason instanceof HttpError) {
    if (text.includes('staging_private_addresses')) {
      return `the server refused remote staging from ${base}, a loopback or private address: set staging_private_addresses = true, or list ${listed} in staging_allowed_endpoints`;
    }
    if (text.includes('staging_allowed_endpoints')) return `the server refused remote staging from ${base}: list ${listed} in its staging_allowed_endpoints`;
    if (text.includes('not supported')) return `the server does not support server-side staging (remote_transfer): ${describe(text)}`;
    return `the server refused the remote_transfer submit (HTTP ${reason.status}): ${describe(text)}`;
  }
  if (step === 'verify status' && text.includes('stage-in')) {
    const unreachable = /ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|timed out|connect/i.test(text);
    return unreachable
      ? `the server could not fetch the inputs from ${base}: the server must reach this machine (use --files-host/--files-advertise with an address it can connect to)`
      : `the server's stage-in from ${base} failed: see the job's stderr above`;
  }
  if (step === 'verify status' && text.includes('stage-out')) {
    const refusal = endpoint.refused.find((r) => r.path !== null);
    if (refusal !== undefined) {
      const more = endpoint.refused.length > 1 ? ` (and ${endpoint.refused.length - 1} more refused)` : '';
      return `the files endpoint at ${base} refused the server's stage-out of ${refusal.fileType ?? 'file'} ${path.basename(refusal.path ?? '')}: HTTP ${refusal.status}, ${refusal.reason}${more}`;
    }
    const unreachable = /ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|timed out|connect/i.test(text);
    return unreachable
      ? `the server could not push the outputs to ${base}: the server must reach this machine (use --files-host/--files-advertise with an address it can connect to)`
      : `the server's stage-out to ${base} failed: ${stageOutReason(text)}`;
  }
  if (step === 'all expected outputs pushed') return `the server's stage-out to ${base} is incomplete: ${text}`;
  return undefined;
}

/** The first file the server's stage-out named in the job's stderr, on one line. */
function stageOutReason(text: string): string {
  const at = text.indexOf('stage-out');
  return text.slice(at < 0 ? 0 : at).replace(/\s+/g, ' ').slice(0, 300);
}

function describe(text: string): string {
  try {
    const parsed = JSON.parse(text) as { message?: unknown };
    if (typeof parsed.message === 'string') return parsed.message.slice(0, 300);
  } catch {
    // not JSON
  }
  return text.replace(/\s+/g, ' ').slice(0, 300);
}
