import test from 'ava';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';
import { request, qs, waitForJob } from '../helpers/client.js';
import { managerConfig, startTestServer } from '../helpers/server.js';

const TOOLBOX_DIR = fileURLToPath(new URL('../../../toolbox/', import.meta.url));
const ROW = 'id\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\n';

interface Case { readonly line: string; readonly expect: 'accept' | 'reject' }
interface Fixtures { readonly command: readonly Case[]; readonly configfiles?: Readonly<Record<string, readonly { content: string; expect: string }[]>> }

const SAMPLES: readonly { dir: string; toolId: string }[] = [
  { dir: 'cat1', toolId: 'cat1' },
  { dir: 'head1', toolId: 'head1' },
  { dir: 'filter_score', toolId: 'toolshed.example.org/repos/magnetar/filter_score/filter_score/1.2.0' },
];

for (const sample of SAMPLES) {
  test(`every accepted fixture line of the sample tool ${sample.dir} runs on a real public server`, async (t) => {
    const fixtures = yaml.load(await fs.readFile(path.join(TOOLBOX_DIR, sample.dir, `${sample.dir}.fixtures.yml`), 'utf8')) as Fixtures;
    const server = await startTestServer({
      app: { toolConfigFiles: [path.join(TOOLBOX_DIR, 'tools.xml')], allowUnsafeEnv: false },
      managers: (root) => [managerConfig(root, { assignIds: 'uuid' })],
    });
    t.teardown(() => server.stop());
    const accepted = fixtures.command.filter((c) => c.expect === 'accept');
    t.true(accepted.length > 0);
    for (const [index, fixture] of accepted.entries()) {
      const setup = await request(server.url, 'POST', `/jobs?${qs({ job_id: String(index), tool_id: sample.toolId })}`);
      t.is(setup.status, 200, setup.text);
      const job = setup.json();
      const line = fixture.line.replaceAll('$JOB', job.job_directory as string);
      const upload = async (name: string, type: string, body: Buffer | string): Promise<void> => {
        const r = await request(server.url, 'POST', `/jobs/${job.job_id}/files?${qs({ job_id: job.job_id, name, type })}`, { body });
        t.is(r.status, 200, `${type} ${name}: ${r.text}`);
      };
      for (const m of line.matchAll(/\/inputs\/([^' ]+)/g)) await upload(m[1]!, 'input', ROW.repeat(20));
      for (const m of line.matchAll(/\/tool_files\/([^' ]+)/g)) await upload(m[1]!, 'tool', await fs.readFile(path.join(TOOLBOX_DIR, sample.dir, m[1]!)));
      for (const m of line.matchAll(/\/configs\/([^' ]+)/g)) {
        const content = fixtures.configfiles?.[m[1]!]?.find((c) => c.expect === 'accept')?.content;
        t.not(content, undefined, `fixture content for config ${m[1]}`);
        await upload(m[1]!, 'config', content!);
      }
      const submit = await request(server.url, 'POST', `/jobs/${job.job_id}/submit?${qs({ job_id: job.job_id, command_line: line })}`);
      t.is(submit.status, 200, `${line}: ${submit.text}`);
      const doc = await waitForJob(server.url, job.job_id);
      t.is(doc.status, 'complete', `${line}: ${doc.stderr}`);
      if (index === 0) {
        t.is(doc.returncode, 0, `${line}: ${doc.stderr}`);
        t.true(doc.outputs_directory_contents.length > 0, 'the tool wrote its output');
      }
    }
  });
}
