/** What public tool service mode (a non-empty tool_config_files) decides, whatever the files say. */
import { isSet, type LoadContext, type Setting } from './setting.js';

/** The options public mode overrides, the value it forces and why. */
export const PUBLIC_MODE = {
  assign_ids: { forced: 'uuid', because: 'always assigns uuid job ids' },
  allow_unsafe_env: { forced: false, because: 'never accepts execute, file or raw env entries' },
} as const;

/** Says (once per setting: app-wide or a manager's own) that public mode overrides what it asked for. */
export function warnIfOverridden(option: keyof typeof PUBLIC_MODE, asked: unknown, setting: Setting | undefined, ctx: LoadContext): void {
  const { forced, because } = PUBLIC_MODE[option];
  if (isSet(setting) && asked !== forced) {
    ctx.warnings.push(`${setting.file}: ${setting.key} = ${String(asked)} is overridden: public tool service mode (tool_config_files) ${because}`);
  }
}
