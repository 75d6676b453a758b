#!/usr/bin/env node
// Runs ava with TAP output, passes it through, and ends with one plain line
// "N passed, N failed[, N skipped]" that CI reads. Exits with ava's exit code.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ava = fileURLToPath(new URL('../node_modules/ava/entrypoints/cli.mjs', import.meta.url));
const child = spawn(process.execPath, [ava, '--tap', ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'] });
let passed = 0;
let failed = 0;
let skipped = 0;
const lines = createInterface({ input: child.stdout });
lines.on('line', (line) => {
  process.stdout.write(`${line}\n`);
  const pass = /^# pass (\d+)/.exec(line);
  const fail = /^# fail (\d+)/.exec(line);
  const skip = /^# skip (\d+)/.exec(line);
  if (pass) passed = Number(pass[1]);
  if (fail) failed = Number(fail[1]);
  if (skip) skipped = Number(skip[1]);
});
child.on('close', (code) => {
  const summary = `${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`;
  process.stdout.write(`${summary}\n`);
  process.exitCode = code === 0 && failed === 0 && passed > 0 ? 0 : code || 1;
});
