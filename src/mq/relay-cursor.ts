/**
 * A manager's relay cursor: per consumed topic, the id of the last message handled, kept in
 * `<persistence_directory>/<manager>-relay-cursor.json` (upstream's file name and shape,
 * `{"<topic>": "<message_id>"}`), written atomically (temp file, fsync, rename) — and, unlike
 * upstream, only after the messages it covers were durably handled.
 *
 * The `since` map sent with a poll follows RELAY.md's cursor rules:
 * - no `since` (or an empty one) ignores what is stored and misses what is published between two
 *   polls: never sent once a baseline exists;
 * - a topic missing from a non-empty map is read from its OLDEST retained message: so a topic is
 *   left out only when it held nothing at the baseline (what it holds later is new);
 * - when every topic was empty at the baseline, one topic carries `EMPTY_TOPIC` (an id the relay
 *   does not know: read from the oldest, as observed), so the map is never empty.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { writeFileDurably } from '../durable-file.js';

/** Not a relay message id (`msg_<12 hex>`): a topic that held nothing at the baseline. */
export const EMPTY_TOPIC = 'magnetar-empty-topic';
const MAX_ID_LENGTH = 255;

export class RelayCursor {
  readonly file: string;
  readonly #topics: readonly string[];
  readonly #ids = new Map<string, string>();
  #exists = false;

  constructor(file: string, topics: readonly string[]) {
    this.file = file;
    this.#topics = topics;
  }

  /** Read the file; false when there is none (a fresh server: a baseline is needed). */
  async load(): Promise<boolean> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw error;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`the relay cursor ${this.file} is not JSON: move it away to start from the relay's newest messages`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error(`the relay cursor ${this.file} is not a JSON object`);
    for (const topic of this.#topics) {
      const id = (parsed as Record<string, unknown>)[topic];
      if (typeof id === 'string' && id !== '' && id.length <= MAX_ID_LENGTH) this.#ids.set(topic, id);
    }
    this.#exists = true;
    return true;
  }

  get exists(): boolean {
    return this.#exists;
  }

  /** The `since` map of the next poll (see the file comment). */
  since(): Record<string, string> {
    const since: Record<string, string> = {};
    for (const topic of this.#topics) {
      const id = this.#ids.get(topic);
      if (id !== undefined && id !== EMPTY_TOPIC) since[topic] = id;
    }
    if (Object.keys(since).length === 0) {
      const first = this.#topics[0];
      if (first !== undefined) since[first] = EMPTY_TOPIC;
    }
    return since;
  }

  /** Mark `topic` handled up to `id` (call `save` to make it durable). */
  advance(topic: string, id: string): void {
    if (id !== '' && id.length <= MAX_ID_LENGTH) this.#ids.set(topic, id);
  }

  /** The baseline: each topic's newest message id, or undefined when it holds none. */
  async baseline(newest: ReadonlyMap<string, string | undefined>): Promise<void> {
    for (const topic of this.#topics) this.#ids.set(topic, newest.get(topic) ?? EMPTY_TOPIC);
    await this.save();
  }

  /** Write the cursor atomically, fsynced. */
  async save(): Promise<void> {
    const content: Record<string, string> = {};
    for (const [topic, id] of this.#ids) content[topic] = id;
    await writeFileDurably(this.file, `${JSON.stringify(content)}\n`);
    this.#exists = true;
  }

  /** Remove temp files a crash left (`<file>.<hex>.tmp`). */
  async removeTemps(): Promise<void> {
    const dir = path.dirname(this.file);
    const prefix = `${path.basename(this.file)}.`;
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith(prefix) && name.endsWith('.tmp')) await fs.unlink(path.join(dir, name)).catch(() => undefined);
    }
  }
}
