import { defineConfig } from 'vitest/config';

// Kernel tests create namespaces, links and nft tables; they are written to
// use unique names, but running files in parallel on a 2-core machine buys
// little and makes failures harder to read, so files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/vm/guest/**', 'node_modules/**'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
