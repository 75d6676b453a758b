import { v4 as uuidv4 } from 'uuid';
import { BadRequest } from '../errors.js';
import type { AssignIds } from '../config/types.js';

/** Galaxy ids are numbers, but deployments use other names: allow a conservative file-name alphabet. */
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Throws BadRequest unless `id` can safely be a directory name and a shell word. */
export function checkJobId(id: unknown): string {
  if (typeof id !== 'string' || !JOB_ID.test(id) || id.includes('..')) {
    throw new BadRequest('invalid job_id: use 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit, without ".."');
  }
  return id;
}

export function isValidJobId(id: string): boolean {
  return JOB_ID.test(id) && !id.includes('..');
}

/** The server-side id for a setup request (PROTOCOL §6.6). */
export function assignJobId(mode: AssignIds, clientId: string): string {
  if (mode === 'uuid') return uuidv4().replaceAll('-', '');
  return checkJobId(clientId);
}
