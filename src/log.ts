import { pino, type Logger } from 'pino';

export type { Logger };

/** The server's logger; secrets are redacted wherever a caller might put them. */
export function createLogger(options: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: { name: 'magnetar' },
      redact: {
        paths: ['privateToken', 'private_token', 'headers.authorization', 'req.headers.authorization', '*.private_token'],
        censor: '<redacted>',
      },
    },
    options.destination ?? process.stderr,
  );
}

/** Longest request target (or path) a log line holds; longer ones are cut and marked. */
export const MAX_LOGGED_URL = 512;

/** `text` cut to `MAX_LOGGED_URL` characters, marked when cut. */
export function truncatedForLog(text: string): string {
  return text.length <= MAX_LOGGED_URL ? text : `${text.slice(0, MAX_LOGGED_URL)}...<${text.length - MAX_LOGGED_URL} more characters>`;
}

/** A URL-encoded component decoded as a query-string parser would (`+` is a space); undefined if malformed. */
function decoded(text: string): string | undefined {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

/**
 * Does this path name the submit route (whose parameters carry the launch payload: command line,
 * env values, ssh keys)? Decided on the decoded path, case-insensitively and with trailing slashes
 * ignored — at least as broadly as express matches routes (not case-sensitive, not strict).
 */
function isSubmitPath(pathPart: string): boolean {
  const path = decoded(pathPart);
  if (path === undefined) return true; // cannot tell: assume the worst
  return /\/submit\/*$/i.test(path);
}

/**
 * A request target fit for a log line: the query of an unauthenticated request is dropped whole;
 * otherwise every parameter whose decoded name is `private_token` (however spelled: `%5F`, case)
 * or cannot be decoded is removed, and the query of the submit route is dropped. The result is cut
 * to `MAX_LOGGED_URL` characters.
 */
export function loggableUrl(url: string, authenticated = true): string {
  const q = url.indexOf('?');
  if (q === -1) return truncatedForLog(url);
  const pathPart = url.slice(0, q);
  if (!authenticated) return truncatedForLog(`${pathPart}?<query omitted: not authenticated>`);
  if (isSubmitPath(pathPart)) return truncatedForLog(`${pathPart}?<launch parameters omitted>`);
  const kept = url
    .slice(q + 1)
    .split('&')
    .filter((kv) => {
      const eq = kv.indexOf('=');
      const name = decoded(eq === -1 ? kv : kv.slice(0, eq));
      return name !== undefined && name.trim().toLowerCase() !== 'private_token';
    });
  return truncatedForLog(kept.length === 0 ? pathPart : `${pathPart}?${kept.join('&')}`);
}
