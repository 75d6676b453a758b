// Lint only what the compiler cannot see: promises nobody waits for or whose failure nobody
// handles (an unhandled rejection ends the server). Style is not linted here; `tsc` checks types.
// Run by `npm run lint`, which `npm test` runs first (pretest).
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },
  {
    files: ['src/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      // A promise must be awaited, returned, or given a rejection handler. `void p` still counts
      // as handled (ignoreVoid), so keep `void` for promises that really are: `void p.catch(...)`.
      '@typescript-eslint/no-floating-promises': 'error',
      // No promise where a boolean or a void-returning callback is expected (event listeners,
      // `if (promise)`): its rejection would be dropped.
      '@typescript-eslint/no-misused-promises': 'error',
      // `await` on something that is not a promise is a mistake about what a function returns.
      // Mixed arrays (`Promise.all(ids.map((id) => known ? read(id) : undefined))`) are fine.
      '@typescript-eslint/await-thenable': ['error', { allowMixedPromiseArrays: true }],
    },
  },
);
