import type { Config } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { AllowAnyAuthorizer, ToolboxAuthorizer, isServerSetEnv, type Authorizer } from './authorizer.js';
import { ToolFiles } from './tool-files.js';
import { loadToolbox } from './toolbox.js';

/**
 * Chosen once at startup: no `tool_config_files` → allow-any (the token holder is trusted);
 * otherwise the toolbox decides. A toolbox file that cannot be read stops the server; a tool that
 * fails to load is reported with its file and reason and cannot run.
 */
export async function createAuthorizer(config: Config, log: Logger): Promise<Authorizer> {
  const files = config.app.toolConfigFiles;
  if (files.length === 0) return new AllowAnyAuthorizer(config.app.allowUnsafeEnv);
  const { toolbox, problems } = await loadToolbox(files);
  for (const problem of problems) {
    if (problem.tool === undefined) {
      throw new ConfigError(config.configFile ?? 'configuration', 'tool_config_files', `${problem.file}: ${problem.message}`);
    }
    log.warn({ file: problem.file, tool: problem.tool }, `tool not loaded: ${problem.message}`);
  }
  const tools = toolbox.tools();
  for (const tool of tools) {
    if (tool.commandValidator === undefined) {
      log.warn({ tool: tool.id, file: tool.toolFile }, 'tool has no command_validator: it cannot run on this server');
    }
  }
  log.info({ tools: tools.length, toolboxes: files }, 'public tool service: only toolbox tools accepted by their validators may run');
  const serverSet = config.app.allowedEnv.filter(isServerSetEnv);
  if (serverSet.length > 0) log.warn({ names: serverSet }, 'allowed_env lists variables the job script sets itself: entries naming them are refused');
  for (const tool of tools) {
    const names = [...tool.allowedEnv].filter(isServerSetEnv);
    if (names.length > 0) log.warn({ tool: tool.id, names }, '<env> lists variables the job script sets itself: entries naming them are refused');
  }
  return new ToolboxAuthorizer(toolbox, new ToolFiles(), config.app.allowedSubmitParams, config.app.allowedEnv, log);
}
