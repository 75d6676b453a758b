/**
 * The DRMAA helper process: `node dist/src/drmaa/helper.js [--manager NAME --contact-file PATH]`
 * (the arguments only say, in process listings, whom it serves). It loads libdrmaa, holds ONE
 * session, and answers the JSON-lines requests of `protocol.ts` on stdin/stdout, one at a time.
 * The server runs the C library here, never in its own process: a crash ends this process only.
 *
 * Environment: DRMAA_LIBRARY_PATH, the DRM's own variables (SGE_ROOT, SGE_CELL…), and
 * GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 at exec (see binding.ts).
 */
import { createInterface } from 'node:readline';
import { DrmaaError, loadDrmaa, type DrmaaLibrary, type WaitResult } from './binding.js';
import { DRMAA_ERRNO, JOB_PS } from './constants.js';
import { requestSchema, type ExitMessage, type HelperError, type HelperRequest, type InitResult, type PollEntry } from './protocol.js';

function errorOf(error: unknown): HelperError {
  if (error instanceof DrmaaError) return { code: error.codeName, message: error.message };
  return { code: 'HELPER_ERROR', message: error instanceof Error ? error.message : String(error) };
}

function exitMessage(result: WaitResult): ExitMessage {
  return {
    exited: result.exited,
    exitStatus: result.exitStatus,
    signaled: result.signaled,
    termSignal: result.termSignal,
    aborted: result.aborted,
    rusage: { ...result.rusage },
  };
}

class Helper {
  #lib: DrmaaLibrary | undefined;
  #active = false;

  #library(): DrmaaLibrary {
    if (this.#lib === undefined) {
      const libraryPath = process.env['DRMAA_LIBRARY_PATH'];
      if (libraryPath === undefined || libraryPath === '') throw new Error('DRMAA_LIBRARY_PATH is not set');
      this.#lib = loadDrmaa(libraryPath);
    }
    return this.#lib;
  }

  #session(): DrmaaLibrary {
    const lib = this.#library();
    if (!this.#active) throw new DrmaaError('session', DRMAA_ERRNO.NO_ACTIVE_SESSION, 'init was not called');
    return lib;
  }

  handle(request: HelperRequest): unknown {
    switch (request.op) {
      case 'init':
        return this.#init(request.contact);
      case 'submit':
        return { jobId: this.#session().runJob(request.template) };
      case 'poll': {
        const lib = this.#session();
        const jobs: Record<string, PollEntry> = {};
        for (const jobId of request.jobIds) jobs[jobId] = poll(lib, jobId);
        return { jobs };
      }
      case 'control':
        this.#session().control(request.jobId, request.action);
        return {};
    }
  }

  #init(contact: string | null): InitResult {
    const lib = this.#library();
    const drmSystem = lib.drmSystem();
    if (this.#active) return { contact: lib.contact(), drmSystem, reattached: false };
    let reattachError: string | undefined;
    if (contact !== null && contact !== '') {
      try {
        lib.init(contact);
        this.#active = true;
        return { contact: lib.contact(), drmSystem, reattached: true };
      } catch (error) {
        reattachError = errorOf(error).message;
      }
    }
    lib.init(null);
    this.#active = true;
    const result: InitResult = { contact: lib.contact(), drmSystem, reattached: false };
    return reattachError === undefined ? result : { ...result, reattachError };
  }

  /** Leave the session (its jobs keep running; a later helper re-attaches by contact). */
  close(): void {
    if (!this.#active || this.#lib === undefined) return;
    this.#active = false;
    try {
      this.#lib.exit();
    } catch {
      // nothing left to release
    }
  }
}

function poll(lib: DrmaaLibrary, jobId: string): PollEntry {
  let ps: number;
  try {
    ps = lib.jobPs(jobId);
  } catch (error) {
    return { error: errorOf(error) };
  }
  if (ps !== JOB_PS.DONE && ps !== JOB_PS.FAILED) return { ps };
  try {
    const result = lib.reap(jobId);
    if (result === undefined) return { ps, reapError: { code: 'EXIT_TIMEOUT', message: 'the job has not ended yet' } };
    return { ps, exit: exitMessage(result) };
  } catch (error) {
    return { ps, reapError: errorOf(error) };
  }
}

function main(): void {
  const helper = new Helper();
  const write = (message: object): void => {
    process.stdout.write(`${JSON.stringify(message)}\n`);
  };
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (line.trim() === '') return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      process.stderr.write('drmaa helper: a request is not JSON\n');
      return;
    }
    const parsed = requestSchema.safeParse(raw);
    if (!parsed.success) {
      const id = typeof raw === 'object' && raw !== null && 'id' in raw && typeof raw.id === 'number' ? raw.id : -1;
      write({ id, ok: false, error: { code: 'BAD_REQUEST', message: parsed.error.issues[0]?.message ?? 'invalid request' } });
      return;
    }
    try {
      write({ id: parsed.data.id, ok: true, result: helper.handle(parsed.data) });
    } catch (error) {
      write({ id: parsed.data.id, ok: false, error: errorOf(error) });
    }
  });
  const finish = (): void => {
    helper.close();
    // Leave once stdout is flushed; SGE's library threads would otherwise keep the process up.
    process.stdout.write('', () => process.exit(0));
  };
  lines.on('close', finish);
  process.on('SIGTERM', finish);
  process.on('SIGINT', finish);
}

main();
