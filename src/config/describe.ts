import type { Config } from './types.js';

/** One line for the startup log, e.g. `https://0.0.0.0:8913 (config /etc/magnetar/server.ini; private_token set); managers: _default_ (queued_python, 4 workers)`. */
export function describeConfig(config: Config): string {
  const { host, port, sslPem } = config.server;
  const url = `${sslPem === undefined ? 'http' : 'https'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const source = config.configFile === undefined ? 'no config file' : `config ${config.configFile}`;
  const auth = config.app.privateToken === undefined ? 'no private_token' : 'private_token set';
  const toolboxes = config.app.toolConfigFiles.length;
  const mode = toolboxes === 0 ? '' : `; public tool service, ${toolboxes} toolbox file${toolboxes === 1 ? '' : 's'}`;
  const managers = config.app.managers
    .map((m) => {
      const sandboxed = typeof m.sandbox === 'object' ? ', sandboxed' : '';
      return m.type === 'queued_python'
        ? `${m.name} (${m.type}, ${m.numConcurrentJobs} worker${m.numConcurrentJobs === 1 ? '' : 's'}${sandboxed})`
        : `${m.name} (${m.type}${sandboxed})`;
    })
    .join(', ');
  return `${url} (${source}; ${auth}${mode}); managers: ${managers}`;
}
