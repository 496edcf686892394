// Lint configuration (ESLint flat config with typescript-eslint), run by
// `npm run lint` and by test/run-all.sh before the tests. The recommended
// sets plus the few rules that guard this project's own standards.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: ['node_modules/**', '.vm/**', 'dist/**', 'bin/**', 'build/**', '**/*.d.ts', 'shared/netlink/native/build/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { ecmaVersion: 2022, sourceType: 'module' },
    },
    rules: {
      // `_`-prefixed names are deliberately unused (interface shapes, skipped tuple slots)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Production code must never end up importing test code or the test kit
      'no-restricted-imports': 'off',
      // Bit operations are the point of a netlink/IP codec
      'no-bitwise': 'off',
      // `while (true)` with explicit breaks reads better than a contrived condition in loops over sockets
      'no-constant-condition': ['error', { checkLoops: false }],
      // Empty catch blocks in this tree always carry a comment saying why the error is ignored
      'no-empty': ['error', { allowEmptyCatch: true }],
      // a variable a closure reads before its one assignment must stay `let`
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
    },
  },
  {
    // Production folders: no test code, no stray stderr writes outside the one logger
    files: ['cmd/**/*.ts', 'plugins/**/*.ts', 'ipam/**/*.ts', 'shared/**/*.ts', 'conformance/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['**/test/**', '**/testkit/**'], message: 'production code never imports tests or the test kit' }] }],
    },
  },
  {
    // Tests, the test kit, benches and the demo read JSON results as they come: `any` is their tool;
    // production folders stay typed
    files: ['test/**/*.ts', 'testkit/**/*.ts', 'bench/**/*.ts', 'demo/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // plain CommonJS for Node: build scripts, the SEA loader, test fixtures that stand in for plugins
    files: ['**/*.cjs', 'scripts/**/*.js', 'test/**/fixtures/**/*.js'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable', process: 'readonly', __dirname: 'readonly', __filename: 'readonly', console: 'readonly', Buffer: 'readonly' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    files: ['eslint.config.mjs'],
    languageOptions: { sourceType: 'module' },
  },
);
