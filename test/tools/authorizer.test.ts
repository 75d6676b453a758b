import test from 'ava';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { JobRefused } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { ToolboxAuthorizer, shellSecondOpinion } from '../../src/tools/authorizer.js';
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
    commandValidator: accept, configfileValidators: new Map([['opts', accept]]),
  };
  const log = createLogger({ destination: new Writable({ write: (_chunk, _enc, cb) => cb() }) });
  const authorizer = new ToolboxAuthorizer({ get: (id) => (id === 't' ? tool : undefined) }, { expectedDigest: async () => undefined }, [], log);
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
