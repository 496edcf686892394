/**
 * The etcd IPAM stores of a test write records for the host's liveness
 * keeper (ipam/etcd/liveness.ts) into one directory per machine, outside
 * any test's own: left there, every daemon started later on the machine
 * loads etcd3 and keeps retrying those tests' long-gone etcds. A test that
 * runs etcd IPAM calls through plugin processes removes its records when it
 * ends, by its key prefix; records of anything else stay.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LIVENESS_DIR } from '../shared/paths';

/** Remove the liveness records whose etcd key prefix starts with `keyPrefix`. */
export function removeLivenessRecords(keyPrefix: string, dir = LIVENESS_DIR): void {
  let files: string[];
  try {
    files = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const f of files) {
    const file = path.join(dir, f);
    try {
      const rec = JSON.parse(fs.readFileSync(file, 'utf8')) as { keyPrefix?: unknown };
      if (typeof rec.keyPrefix === 'string' && rec.keyPrefix.startsWith(keyPrefix)) fs.rmSync(file, { force: true });
    } catch {
      // not a record of ours
    }
  }
}

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
