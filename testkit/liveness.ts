/**
 * The etcd IPAM stores of a test write records for the host's liveness
 * keeper (ipam/etcd/liveness.ts) into one directory per machine, outside
 * any test's own: left there, every daemon started later on the machine
 * loads etcd3 and keeps retrying those tests' long-gone etcds. The suite
 * removes what each test file added (test/setup.ts); records that were
 * there before it stay.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LIVENESS_DIR } from '../shared/paths';

/** The record files in dir now (none when it is missing or unreadable: an unprivileged unit run). */
export function livenessRecordFiles(dir = LIVENESS_DIR): Set<string> {
  try {
    return new Set(fs.readdirSync(dir).filter((f) => f.endsWith('.json')));
  } catch {
    return new Set();
  }
}

/** Remove the record files of dir that are not in `before`. */
export function removeLivenessRecordsSince(before: ReadonlySet<string>, dir = LIVENESS_DIR): void {
  for (const f of livenessRecordFiles(dir)) if (!before.has(f)) fs.rmSync(path.join(dir, f), { force: true });
}
