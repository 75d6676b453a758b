import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { JobRefused } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { ToolboxAuthorizer } from '../../src/tools/authorizer.js';
import { shellSecondOpinion } from '../../src/tools/shell-check.js';
import type { ToolDefinition, Validator } from '../../src/tools/types.js';

test('shell-quote second opinion: expansions, substitutions, globs, backquotes and comments are refused; plain words and operators pass', (t) => {
  for (const line of ["cat '/j/inputs/a' > '/j/outputs/b'", 'sort -k 2 /j/inputs/a | head -n 5 > /j/outputs/o', 'tool --x=1 2>&1']) {
    t.is(shellSecondOpinion(line), undefined, line);
  }
  for (const line of ['cat $HOME', 'cat "$(id)"', 'cat ${X}', 'cat `id`', 'cat /j/inputs/* > o', 'cat a # > o', 'cat a?']) {
    t.not(shellSecondOpinion(line), undefined, line);
  }
});

test('config files that cannot be listed refuse the job (never run unchecked); no configs directory means no config files', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'magnetar-authorizer-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const accept: Validator = { validate: () => ({ ok: true }) };
  const tool: ToolDefinition = {
    id: 't', version: '1', toolFile: path.join(root, 't.xml'), toolDirectory: root, toolbox: path.join(root, 'tools.xml'),
    commandValidator: accept, configfileValidators: new Map([['opts', accept]]), allowedEnv: new Set(),
  };
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  const authorizer = new ToolboxAuthorizer({ get: (id) => (id === 't' ? tool : undefined), allowedEnv: () => new Set() }, { expectedDigest: async () => undefined }, [], [], log);
  const facts = { jobId: 'j1', toolId: 't', toolVersion: '1', jobDirectory: path.join(root, 'j1'), commandLine: 'true', submitParams: {}, remoteStagingSetup: 0, hasDependencies: false };

  await t.notThrowsAsync(authorizer.authorizeSubmit(facts, path.join(root, 'no-configs')));
  const notADirectory = path.join(root, 'configs-file');
  await fs.writeFile(notADirectory, '');
  const refused = await t.throwsAsync(authorizer.authorizeSubmit(facts, notADirectory), { instanceOf: JobRefused });
  t.is(refused?.message, 'tool "t": the config files cannot be listed (ENOTDIR)');
  t.false(refused?.message.includes(root), 'no server path in the reason');

  const configs = path.join(root, 'configs');
  await fs.mkdir(configs);
  await fs.writeFile(path.join(configs, 'opts'), 'x');
  await t.notThrowsAsync(authorizer.authorizeSubmit(facts, configs));
});

function envAuthorizer(allowedEnv: readonly string[], perTool: readonly string[] = []): ToolboxAuthorizer {
  const accept: Validator = { validate: () => ({ ok: true }) };
  const tool: ToolDefinition = {
    id: 't', version: '1', toolFile: '/t/t.xml', toolDirectory: '/t', toolbox: '/t/tools.xml',
    commandValidator: accept, configfileValidators: new Map(), allowedEnv: new Set(perTool),
  };
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  return new ToolboxAuthorizer({ get: (id) => (id === 't' ? tool : undefined), allowedEnv: (id) => (id === 't' ? tool.allowedEnv : new Set()) }, { expectedDigest: async () => undefined }, [], allowedEnv, log);
}

test('env by allow-list: only names in allowed_env or the tool\'s <env> pass, with literal values; HOME and tmp are pinned after them', (t) => {
  const authorizer = envAuthorizer(['OMP_NUM_THREADS'], ['TOOL_MODE']);
  const statements = authorizer.authorizeEnv('j', 't', [{ name: 'OMP_NUM_THREADS', value: '$(id)' }, { name: 'TOOL_MODE', value: 'fast' }]);
  t.deepEqual(statements.slice(0, 2), ["OMP_NUM_THREADS='$(id)'; export OMP_NUM_THREADS", "TOOL_MODE='fast'; export TOOL_MODE"]);
  t.true(statements.at(-2)!.startsWith('HOME='), 'HOME is set again after the client entries');
  t.is(statements.at(-1), 'unset TMPDIR TMP TEMP');
  t.deepEqual(authorizer.authorizeEnv('j', 't', []), [...statements.slice(2)], 'no entries: only the pins');
});

test('env by allow-list: any unlisted name is refused naming the variable and the option, whatever interpreter reads it', (t) => {
  const authorizer = envAuthorizer(['OMP_NUM_THREADS']);
  for (const name of ['PYTHONUSERBASE', 'PYTHONPYCACHEPREFIX', 'OPENSSL_CONF', 'JDK_JAVA_OPTIONS', 'R_LIBS_USER', 'GEM_HOME', 'GIT_CONFIG_GLOBAL', 'LD_PRELOAD', 'PATH', 'TOOL_MODE']) {
    const error = t.throws(() => authorizer.authorizeEnv('j', 't', [{ name, value: 'x' }]), { instanceOf: JobRefused });
    t.regex(error?.message ?? '', new RegExp(`env variable ${name} is not allowed on this server \\(allowed_env`), name);
  }
  const other = envAuthorizer([], ['TOOL_MODE']);
  t.throws(() => other.authorizeEnv('j', 'unknown', [{ name: 'TOOL_MODE', value: 'x' }]), { instanceOf: JobRefused }, 'a tool\'s <env> is its own');
});

test('env: names the job script sets are refused even when an administrator lists them; unsafe kinds stay refused', (t) => {
  const authorizer = envAuthorizer(['HOME', 'TMPDIR', 'PYTHONUSERBASE', '_GALAXY_JOB_HOME_DIR', 'X']);
  for (const name of ['HOME', 'TMPDIR', 'PYTHONUSERBASE', '_GALAXY_JOB_HOME_DIR']) {
    const error = t.throws(() => authorizer.authorizeEnv('j', 't', [{ name, value: '/elsewhere' }]), { instanceOf: JobRefused });
    t.regex(error?.message ?? '', /is set by the server/, name);
  }
  for (const entry of [{ name: 'X', value: 'y', raw: true }, { execute: 'id' }, { file: '/etc/profile' }]) {
    t.throws(() => authorizer.authorizeEnv('j', 't', [entry]), { instanceOf: JobRefused });
  }
});
