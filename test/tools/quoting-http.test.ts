/**
 * Quoting-aware validators over real HTTP, in public mode: the fixture tool `mag_quote` takes a
 * double-quoted title, a single-quoted note and Galaxy's `${GALAXY_SLOTS:-1}`. What its validator
 * accepts runs and comes back literally; every way out of the quotes is refused with nothing left
 * behind.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { request, qs, waitForJob, type Reply } from '../helpers/client.js';
import { BIN } from '../helpers/process.js';
import { managerConfig, startTestServer, type TestServer } from '../helpers/server.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/public/', import.meta.url));
const TOOLBOX = path.join(FIXTURES, 'toolbox.xml');
const TOOL_DIR = path.join(FIXTURES, 'tools', 'mag_quote');

async function publicServer(t: ExecutionContext): Promise<{ server: TestServer; canary: string }> {
  const server = await startTestServer({
    app: { toolConfigFiles: [TOOLBOX], allowUnsafeEnv: false, logRequests: true },
    managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
  });
  t.teardown(() => server.stop());
  return { server, canary: path.join(server.root, 'CANARY') };
}

async function setupJob(server: TestServer): Promise<any> {
  const r = await request(server.url, 'POST', `/jobs?${qs({ job_id: '1', tool_id: 'mag_quote' })}`);
  if (r.status !== 200) throw new Error(`setup: ${r.status} ${r.text}`);
  return r.json();
}

async function submit(server: TestServer, id: string, commandLine: string): Promise<Reply> {
  return request(server.url, 'POST', `/jobs/${id}/submit?${qs({ job_id: id, command_line: commandLine })}`);
}

const line = (title: string, note: string, out: string, slots = '${GALAXY_SLOTS:-1}'): string => `printf '%s|%s|%s\\n' "${title}" '${note}' ${slots} > '${out}'`;

test('a double-quoted title and a single-quoted note full of shell syntax run, and come back literally', async (t) => {
  const { server, canary } = await publicServer(t);
  const title = "My title, with; punctuation & <stuff> (it's 1 > 0) * ? ~ #";
  const note = `; , $(touch ${canary}) \`touch ${canary}\` \${IFS} $HOME \\ "x" # *`;
  const config = await setupJob(server);
  const out = path.join(config.outputs_directory, 'o.dat');
  const reply = await submit(server, config.job_id, line(title, note, out));
  t.is(reply.text, 'OK', reply.text);
  const doc = await waitForJob(server.url, config.job_id);
  t.is(doc.status, 'complete', doc.stderr);
  const output = (await request(server.url, 'GET', `/jobs/${config.job_id}/files?${qs({ job_id: config.job_id, name: 'o.dat' })}`)).text;
  // Neither value holds a "|": the output is exactly title|note|slots.
  const slots = output.slice(`${title}|${note}|`.length, -1);
  t.is(output, `${title}|${note}|${slots}\n`);
  t.regex(slots, /^[1-9][0-9]*$/, 'the job script exports GALAXY_SLOTS as a whole number');
  await t.throwsAsync(fs.access(canary), undefined, 'nothing in the note ran');
  t.true(server.logLines.some((l) => l.includes('"decision":"allow"') && l.includes('"step":"command line"')));
});

test('every way out of the quotes, and every benign lookalike, is refused at submit and leaves no trace', async (t) => {
  const { server, canary } = await publicServer(t);
  const touch = `touch ${canary}`;
  const cases: readonly [string, (out: string) => string][] = [
    ['command substitution in double quotes', (out) => line(`$(${touch})`, '', out)],
    ['backquotes in double quotes', (out) => line(`\`${touch}\``, '', out)],
    ['a variable in double quotes', (out) => line('${IFS}', '', out)],
    ['a backslash before the closing double quote', (out) => `printf '%s|%s|%s\\n' "a\\" ; ${touch}; "" '' \${GALAXY_SLOTS:-1} > '${out}'`],
    ['a double quote inside the title', (out) => line(`a"; ${touch}; "`, '', out)],
    ['a single quote inside the note', (out) => line('', `a'; ${touch}; '`, out)],
    ["the '\\'' trick", (out) => line('', `a'\\''$(${touch})'\\''`, out)],
    ['a newline inside the note', (out) => line('', `a\n${touch}\n`, out)],
    ['a default that substitutes', (out) => line('', '', out, `\${GALAXY_SLOTS:-$(${touch})}`)],
    ['a longer name', (out) => line('', '', out, '$GALAXY_SLOTS_X')],
    ['text after the expansion', (out) => line('', '', out, '${GALAXY_SLOTS:-1}x')],
    ['another variable', (out) => line('', '', out, '${IFS}')],
  ];
  for (const [label, make] of cases) {
    const config = await setupJob(server);
    const out = path.join(config.outputs_directory, 'o.dat');
    const reply = await submit(server, config.job_id, make(out));
    t.is(reply.status, 403, `${label}: ${reply.text}`);
    t.is(reply.json().error, 'MAG_ERR_TOOL_DENIED', label);
    t.regex(reply.json().message, /command_validator rejected/, label);
    const doc = await waitForJob(server.url, config.job_id);
    t.is(doc.status, 'failed', label);
    for (const name of ['command.sh', 'pid', 'return_code']) {
      await t.throwsAsync(fs.access(path.join(config.job_directory, name)), undefined, `${label}: ${name} must not exist, nothing ran`);
    }
    await t.throwsAsync(fs.access(out), undefined, `${label}: no output`);
  }
  await t.throwsAsync(fs.access(canary), undefined, 'canary file must not exist');
});

test('validate-tool runs the fixture tool\'s quoting cases', async (t) => {
  const run = await new Promise<{ code: number; stdout: string }>((resolve, reject) => {
    execFile(process.execPath, [BIN, 'validate-tool', path.join(TOOL_DIR, 'quote.xml'), '--fixtures', path.join(TOOL_DIR, 'quote.fixtures.yml')], { timeout: 60_000 }, (error, stdout) => {
      if (error !== null && typeof error.code !== 'number') reject(error);
      else resolve({ code: error === null ? 0 : (error.code as number), stdout });
    });
  });
  t.is(run.code, 0, run.stdout);
  t.regex(run.stdout, /mag_quote 1\.0: 13 cases, all as expected/);
});
