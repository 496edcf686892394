/**
 * Run before every test file (vitest setupFiles). Files run one at a time
 * (vitest.config.ts), so a liveness record (testkit/liveness.ts) that
 * appears while a file runs was written by that file's etcd-IPAM calls:
 * it names a test's etcd, gone once the file ends, and left behind it would
 * make every daemon started later load etcd3 and keep retrying it. The
 * suite removes them after each file.
 */
import { afterAll, beforeAll } from 'vitest';
import { livenessRecordFiles, removeLivenessRecordsSince } from '../testkit/liveness';

let before: Set<string> = new Set();
beforeAll(() => {
  before = livenessRecordFiles();
});
afterAll(() => {
  removeLivenessRecordsSince(before);
});
