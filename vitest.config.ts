import * as fs from 'node:fs';
import * as path from 'node:path';
import { defineConfig } from 'vitest/config';
import { UNIT_TESTS } from './test/unit-tests';

// `npm run test:unit` (npm sets npm_lifecycle_event) or CNI_TS_TESTS=unit:
// only the tests that need no root (test/unit-tests.ts). A listed file that
// does not exist fails the run at once, so the list cannot silently run
// fewer tests than it names.
const unitOnly = process.env.CNI_TS_TESTS === 'unit' || process.env.npm_lifecycle_event === 'test:unit';
if (unitOnly) {
  const missing = UNIT_TESTS.filter((f) => !fs.existsSync(path.join(__dirname, f)));
  if (missing.length) throw new Error(`test/unit-tests.ts names files that do not exist: ${missing.join(', ')}`);
}

// Kernel tests create namespaces, links and nft tables; they are written to
// use unique names, but running files in parallel on a 2-core machine buys
// little and makes failures harder to read, so files run one at a time.
export default defineConfig({
  test: {
    include: unitOnly ? [...UNIT_TESTS] : ['test/**/*.test.ts'],
    exclude: ['test/vm/guest/**', 'node_modules/**'],
    fileParallelism: false,
    // removes the liveness records a file's etcd-IPAM calls leave (test/setup.ts)
    setupFiles: ['test/setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
