/**
 * Summarise a V8 `.cpuprofile` (written by the server under `node --cpu-prof`): self time per
 * function and per package, for the whole run and for each bench section. Sample timestamps are
 * CLOCK_MONOTONIC microseconds, the same clock as `process.hrtime` in the bench process, so the
 * sections' wall-clock windows can be applied to the server's samples.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}
interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly children?: number[];
}
interface CpuProfile {
  readonly nodes: ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: number[];
  readonly timeDeltas: number[];
}

export interface Window {
  readonly name: string;
  /** process.hrtime in µs */
  readonly startUs: number;
  readonly endUs: number;
}

export interface ProfileSummary {
  readonly name: string;
  readonly sampledMs: number;
  /** Share of non-idle samples, by package / category, percent. */
  readonly categories: Record<string, number>;
  /** Top functions by self time: percent of non-idle samples. */
  readonly top: { fn: string; where: string; pct: number }[];
  /** Percent of samples the server was idle (waiting for I/O). */
  readonly idlePct: number;
}

function category(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') {
    if (functionName === '(garbage collector)') return 'gc';
    if (functionName === '(program)') return 'v8/native (program)';
    if (functionName === '(idle)') return 'idle';
    return 'native';
  }
  if (url.startsWith('node:')) return 'node core';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') === true ? `${rest[0]}/${rest[1] ?? ''}` : (rest[0] ?? 'node_modules');
  }
  const src = url.indexOf('/dist/src/');
  if (src !== -1) return `magnetar ${url.slice(src + '/dist/src/'.length).replace(/\.js$/, '')}`;
  return 'other';
}

function where(frame: CallFrame): string {
  const url = frame.url;
  const short = url.includes('/node_modules/') ? url.slice(url.lastIndexOf('/node_modules/') + 14) : url.includes('/dist/') ? url.slice(url.indexOf('/dist/') + 1) : url;
  return url === '' ? '' : `${short.replace(/^file:\/\//, '')}:${frame.lineNumber + 1}`;
}

function summarise(name: string, profile: CpuProfile, byId: Map<number, ProfileNode>, from: number, to: number): ProfileSummary {
  const selfUs = new Map<number, number>();
  let t = profile.startTime;
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i] ?? 0;
    t += delta;
    if (t < from || t > to) continue;
    // Attribute the interval to the sample that ends it (V8 convention is close enough here).
    const next = profile.timeDeltas[i + 1] ?? delta;
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + next);
    total += next;
  }
  const byFn = new Map<string, { fn: string; where: string; us: number }>();
  const byCat = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (node === undefined) continue;
    const cat = category(node.callFrame);
    if (cat === 'idle') {
      idle += us;
      continue;
    }
    byCat.set(cat, (byCat.get(cat) ?? 0) + us);
    const fn = node.callFrame.functionName === '' ? '(anonymous)' : node.callFrame.functionName;
    const w = where(node.callFrame);
    const key = `${fn} ${w}`;
    const entry = byFn.get(key) ?? { fn, where: w, us: 0 };
    entry.us += us;
    byFn.set(key, entry);
  }
  const busy = total - idle;
  const pct = (us: number): number => Math.round((us / Math.max(1, busy)) * 1000) / 10;
  const categories: Record<string, number> = {};
  for (const [cat, us] of [...byCat].sort((a, b) => b[1] - a[1])) categories[cat] = pct(us);
  const top = [...byFn.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, 15)
    .map((e) => ({ fn: e.fn, where: e.where, pct: pct(e.us) }));
  return { name, sampledMs: Math.round(total / 1000), categories, top, idlePct: Math.round((idle / Math.max(1, total)) * 1000) / 10 };
}

/** The profile `node --cpu-prof` wrote for process `pid` (CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile). */
export async function findProfile(dir: string, pid: number): Promise<string | undefined> {
  const names = (await fs.readdir(dir)).filter((n) => n.endsWith('.cpuprofile') && n.split('.')[3] === String(pid));
  return names.length === 0 ? undefined : path.join(dir, names[0]!);
}

/** Summarise one profile for the windows that fall inside it (or as a whole if none does). */
export async function summariseProfile(file: string, name: string, windows: readonly Window[]): Promise<ProfileSummary[]> {
  const profile = JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const inside = windows.filter((w) => w.startUs >= profile.startTime && w.endUs <= profile.endTime);
  if (inside.length === 0) return [summarise(`${name} (whole server run)`, profile, byId, profile.startTime, profile.endTime)];
  return inside.map((w) => summarise(w.name, profile, byId, w.startUs, w.endUs));
}

export function formatSummary(s: ProfileSummary): string {
  const lines = [`--- server CPU profile: ${s.name} (${s.sampledMs} ms sampled, ${s.idlePct}% idle) ---`];
  lines.push(
    '  by package: ' +
      Object.entries(s.categories)
        .slice(0, 10)
        .map(([k, v]) => `${k} ${v}%`)
        .join(', '),
  );
  for (const t of s.top) lines.push(`  ${String(t.pct).padStart(5)}%  ${t.fn}  ${t.where}`);
  return lines.join('\n');
}
