import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import os from 'node:os';
import type { Config } from '../config/types.js';
import { HostDenied } from '../errors.js';

/**
 * DNS rebinding and cross-site requests: a web page can make a browser send requests to a server
 * on loopback or the local network (a page whose name the attacker re-points at 127.0.0.1, or a
 * simple cross-origin POST). Such requests carry the attacker's name as `Host`, or a browser
 * `Origin`. Galaxy's client sends the address or name it was configured with and no `Origin`.
 *
 * Answered: a Host that is an IP address (a page cannot be served from our address, so it is no
 * rebinding), `localhost`, the bind host, this machine's host name when bound beyond loopback,
 * and `allowed_hosts` (`*.example.org` for sub-domains, `*` for any). The port is not checked.
 * A server bound beyond loopback with no `allowed_hosts` answers any Host: Galaxy reaches such a
 * server by whatever name its destination says (an alias, a proxy's public name), and refusing
 * those would fail every job; there the token guards it, and `allowed_hosts` turns the check on.
 * A request with an `Origin` header is refused unless `allowed_origins` lists it (or `*`).
 */
export function hostGuard(config: Config): (req: IncomingMessage) => HostDenied | undefined {
  const bind = config.server.host.toLowerCase();
  const names = new Set(['localhost', bind]);
  const loopback = bind === 'localhost' || bind === '::1' || bind.startsWith('127.');
  if (!loopback) names.add(os.hostname().toLowerCase());
  const suffixes: string[] = [];
  // Beyond loopback the check is the administrator's choice (see above).
  let anyHost = !loopback && config.app.allowedHosts.length === 0;
  for (const entry of config.app.allowedHosts) {
    const name = entry.toLowerCase().replace(/\.$/, '');
    if (name === '*') anyHost = true;
    else if (name.startsWith('*.')) suffixes.push(name.slice(1));
    else names.add(name);
  }
  const origins = new Set(config.app.allowedOrigins.map((o) => o.toLowerCase()));
  const anyOrigin = origins.has('*');

  const hostAllowed = (header: string): boolean => {
    if (anyHost) return true;
    const value = header.trim().toLowerCase();
    let name: string;
    if (value.startsWith('[')) {
      const end = value.indexOf(']');
      if (end === -1) return false;
      name = value.slice(1, end);
    } else {
      const colon = value.indexOf(':');
      name = colon === -1 ? value : value.slice(0, colon);
    }
    name = name.replace(/\.$/, '');
    if (isIP(name) !== 0) return true;
    return names.has(name) || suffixes.some((suffix) => name.endsWith(suffix) && name.length > suffix.length);
  };

  return (req) => {
    const host = req.headers.host;
    // HTTP/1.0 may omit Host (Node refuses HTTP/1.1 without one); browsers always send it.
    if (host !== undefined && !hostAllowed(host)) {
      return new HostDenied('this server does not answer to that Host name (add it to allowed_hosts)');
    }
    const origin = req.headers.origin;
    if (origin !== undefined && !anyOrigin && !origins.has(origin.trim().toLowerCase().replace(/\/$/, ''))) {
      return new HostDenied('requests from web pages (with an Origin header) are refused (see allowed_origins)');
    }
    return undefined;
  };
}
