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

/**
 * A request target fit for a log line: `private_token` is removed, and the query of routes whose
 * parameters carry the whole launch payload (command line, env values, ssh keys) is dropped.
 */
export function loggableUrl(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const pathPart = url.slice(0, q);
  if (pathPart.endsWith('/submit')) return `${pathPart}?<launch parameters omitted>`;
  const kept = url
    .slice(q + 1)
    .split('&')
    .filter((kv) => !/^private_token(=|$)/i.test(kv));
  return kept.length === 0 ? pathPart : `${pathPart}?${kept.join('&')}`;
}
