/**
 * What server-side staging may reach: which URLs (scheme, allow-listed endpoints, addresses) and
 * which local files (`remote_copy` roots). Every check here runs on what the client sent before
 * anything is opened, and the address check runs again on the address actually connected to.
 */
import * as fs from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import * as path from 'node:path';
import type { StagingConfig } from '../config/types.js';
import { JobRefused } from '../errors.js';
import { isInside } from '../jobs/paths.js';

/** Redirects followed at most per request (each one checked against the policy). */
export const MAX_REDIRECTS = 5;
/** Longest URL accepted from a client. */
const MAX_URL_LENGTH = 16 * 1024;

interface Endpoint {
  readonly protocol: string;
  readonly hostname: string;
  readonly port: string;
  readonly pathPrefix: string;
  /** The endpoint names its host by IP address: that address is allowed even when private ones are not. */
  readonly address: string | undefined;
}

/** Loopback, private, link-local, CGNAT, unspecified, multicast and NAT64 ranges (IPv4 and IPv6). */
const PRIVATE = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.168.0.0', 16], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) {
  PRIVATE.addSubnet(net, bits, 'ipv4');
}
// IPv4-mapped addresses (::ffff:a.b.c.d) are matched against the IPv4 ranges by BlockList itself;
// NAT64 (64:ff9b::/96) may lead anywhere in IPv4, private ranges included.
for (const [net, bits] of [['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['64:ff9b::', 96]] as const) {
  PRIVATE.addSubnet(net, bits, 'ipv6');
}

/** Unbracketed, lower-case, IPv4-mapped IPv6 turned into IPv4. */
function plainAddress(address: string): string {
  const bare = address.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare);
  return mapped?.[1] ?? bare;
}

export function isPrivateAddress(address: string): boolean {
  const plain = plainAddress(address);
  const family = isIP(plain);
  if (family === 0) return true;
  return PRIVATE.check(plain, family === 4 ? 'ipv4' : 'ipv6');
}

function defaultPort(protocol: string): string {
  return protocol === 'https:' ? '443' : '80';
}

/** A URL as it may appear in a log line: no query, no fragment, no credentials. */
export function loggableUrl(url: URL | string): string {
  try {
    const parsed = typeof url === 'string' ? new URL(url) : url;
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return '(unparsable URL)';
  }
}

export class StagingPolicy {
  readonly #endpoints: readonly Endpoint[];
  readonly #copyRoots: readonly string[];
  readonly #publicMode: boolean;
  readonly #privateAddresses: boolean;
  readonly concurrency: number;

  constructor(config: StagingConfig, publicMode: boolean) {
    this.#publicMode = publicMode;
    this.#privateAddresses = config.privateAddresses;
    this.#copyRoots = config.copyRoots;
    this.concurrency = config.concurrency;
    this.#endpoints = config.allowedEndpoints.map((text) => {
      const url = new URL(text);
      const hostname = plainAddress(url.hostname);
      const prefix = url.pathname === '' ? '/' : url.pathname;
      return {
        protocol: url.protocol,
        hostname,
        port: url.port === '' ? defaultPort(url.protocol) : url.port,
        pathPrefix: prefix,
        address: isIP(hostname) === 0 ? undefined : hostname,
      };
    });
  }

  /** Public mode: stage-out pushes declared outputs only (not dynamic outputs). */
  get publicMode(): boolean {
    return this.#publicMode;
  }

  /** The administrator listed endpoints or copy roots (what public mode needs to stage anything). */
  get configured(): boolean {
    return this.#endpoints.length > 0 || this.#copyRoots.length > 0;
  }

  /** Transfers are possible at all (public mode with no allow-list: none). */
  get transfersAllowed(): boolean {
    return !this.#publicMode || this.#endpoints.length > 0;
  }

  #matchingEndpoint(url: URL): Endpoint | undefined {
    const hostname = plainAddress(url.hostname);
    const port = url.port === '' ? defaultPort(url.protocol) : url.port;
    return this.#endpoints.find(
      (e) =>
        e.protocol === url.protocol &&
        e.hostname === hostname &&
        e.port === port &&
        (url.pathname === e.pathPrefix || url.pathname.startsWith(e.pathPrefix.endsWith('/') ? e.pathPrefix : `${e.pathPrefix}/`)),
    );
  }

  /**
   * The URL, parsed, if a transfer may fetch it; otherwise a refusal that names only the URL's
   * scheme, host and path (never its query, where Galaxy puts the job key).
   */
  checkUrl(text: unknown): URL {
    if (typeof text !== 'string' || text.length === 0) throw new JobRefused('remote_transfer action without a url');
    if (text.length > MAX_URL_LENGTH) throw new JobRefused('remote_transfer url is too long');
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new JobRefused('remote_transfer url is not a valid URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new JobRefused(`remote_transfer url scheme "${url.protocol.slice(0, 20)}" refused: only http and https are fetched`);
    }
    if (url.username !== '' || url.password !== '') throw new JobRefused('remote_transfer url with credentials refused');
    if (!this.transfersAllowed) {
      throw new JobRefused('server-side transfers are off: this public server lists no files endpoint (staging_allowed_endpoints)');
    }
    if (this.#endpoints.length > 0 && this.#matchingEndpoint(url) === undefined) {
      throw new JobRefused(`remote_transfer url ${loggableUrl(url)} is not in staging_allowed_endpoints`);
    }
    const literal = plainAddress(url.hostname);
    if (isIP(literal) !== 0) this.checkAddress(url, literal);
    return url;
  }

  /** Throw unless a connection for `url` may go to `address` (the one DNS gave, or the literal). */
  checkAddress(url: URL, address: string): void {
    if (this.#privateAddresses || !isPrivateAddress(address)) return;
    const endpoint = this.#matchingEndpoint(url);
    if (endpoint?.address !== undefined && endpoint.address === plainAddress(address)) return;
    throw new JobRefused(`${url.hostname} resolves to ${address}, a loopback or private address this server does not connect to (staging_private_addresses)`);
  }

  /**
   * A stage-out `remote_copy` destination (a server-local path the client names), if it may be
   * written: absolute, and inside a configured root (checked on the real path of its nearest
   * existing ancestor); in public mode only with roots configured.
   */
  async checkCopyDestination(dest: unknown): Promise<string> {
    if (typeof dest !== 'string' || !dest.startsWith('/') || dest.includes('\0') || dest.length > 4096) {
      throw new JobRefused('remote_copy needs an absolute destination path');
    }
    if (this.#publicMode && this.#copyRoots.length === 0) {
      throw new JobRefused('remote_copy is off: this public server lists no staging_copy_roots');
    }
    const normalized = path.resolve(dest);
    if (this.#copyRoots.length === 0) return normalized;
    const roots = await Promise.all(this.#copyRoots.map(async (root) => fs.realpath(root).catch(() => root)));
    // The real path of the nearest existing ancestor, plus the components still to be made.
    let existing = path.dirname(normalized);
    const rest: string[] = [path.basename(normalized)];
    for (;;) {
      try {
        existing = await fs.realpath(existing);
        break;
      } catch {
        if (existing === '/') break;
        rest.unshift(path.basename(existing));
        existing = path.dirname(existing);
      }
    }
    const real = path.join(existing, ...rest);
    if (!roots.some((root) => isInside(root, real) && real !== root)) throw new JobRefused('remote_copy destination is outside staging_copy_roots');
    return real;
  }

  /** The real path of a `remote_copy` source, if it lies inside a configured root. */
  async checkCopySource(source: unknown): Promise<string> {
    if (typeof source !== 'string' || !source.startsWith('/') || source.includes('\0') || source.length > 4096) {
      throw new JobRefused('remote_copy needs an absolute source path');
    }
    if (this.#publicMode && this.#copyRoots.length === 0) {
      throw new JobRefused('remote_copy is off: this public server lists no staging_copy_roots');
    }
    let real: string;
    try {
      real = await fs.realpath(source);
    } catch (error) {
      throw new JobRefused(`remote_copy source cannot be read: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    if (this.#copyRoots.length > 0) {
      const roots = await Promise.all(this.#copyRoots.map(async (root) => fs.realpath(root).catch(() => root)));
      if (!roots.some((root) => isInside(root, real))) throw new JobRefused('remote_copy source is outside staging_copy_roots');
    }
    return real;
  }
}
