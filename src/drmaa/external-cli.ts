/**
 * The `queued_external_drmaa` helpers' program, run as the job's real user through sudo by
 * `scripts/drmaa-launch.sh` and `scripts/drmaa-kill.sh` (which set the static TLS tunable at exec):
 *
 *   external-cli.js launch --job_attributes <staging root>/<job id>/jt.json --staging_root <root>
 *       submits the template in a DRMAA session of its own and prints the DRM job id.
 *   external-cli.js kill --job_id <DRM job id>
 *       terminates the job (a job the DRM no longer knows is not an error).
 *
 * A short-lived process: a crash in libdrmaa ends it, not the server. Exit status 0 on success,
 * 1 on a DRM error, 2 when the request is refused; the reason goes to stderr.
 */
import { DrmaaError, loadDrmaa, type DrmaaLibrary } from './binding.js';
import { RefusedError, checkDrmJobId, parseArguments, readJobTemplate, resolveStagingRoot } from './external.js';

function library(): DrmaaLibrary {
  const libraryPath = process.env['DRMAA_LIBRARY_PATH'];
  if (libraryPath === undefined || libraryPath === '') throw new RefusedError('DRMAA_LIBRARY_PATH is not set');
  return loadDrmaa(libraryPath);
}

function inSession<T>(lib: DrmaaLibrary, action: () => T): T {
  lib.init(null);
  try {
    return action();
  } finally {
    try {
      lib.exit();
    } catch {
      // the session is gone either way
    }
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (process.getuid?.() === 0) throw new RefusedError('refusing to run as root: jobs run as their real user');
  if (command === 'launch') {
    const args = parseArguments(rest, ['job_attributes', 'staging_root']);
    const root = await resolveStagingRoot(args.get('staging_root'));
    const file = args.get('job_attributes');
    if (file === undefined) throw new RefusedError('--job_attributes is required');
    const template = await readJobTemplate(file, root);
    const lib = library();
    const jobId = inSession(lib, () => lib.runJob(template));
    process.stdout.write(`${jobId}\n`);
    return 0;
  }
  if (command === 'kill') {
    const args = parseArguments(rest, ['job_id']);
    const jobId = checkDrmJobId(args.get('job_id'));
    const lib = library();
    try {
      inSession(lib, () => lib.control(jobId, 'TERMINATE'));
    } catch (error) {
      if (error instanceof DrmaaError && error.codeName === 'INVALID_JOB') {
        process.stderr.write(`job ${jobId} is not known to the DRM (already ended)\n`);
        return 0;
      }
      throw error;
    }
    return 0;
  }
  throw new RefusedError('usage: launch --job_attributes FILE --staging_root DIR | kill --job_id ID');
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    const refused = error instanceof RefusedError;
    process.stderr.write(`${refused ? 'refused: ' : ''}${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(refused ? 2 : 1);
  },
);
