/**
 * This host's lock on one overlay network: flock(2) on
 * <stateDir>/locks/ov-<vni>.lock.
 *
 * Why: "is this the network's last local container? then remove its
 * namespace" (DEL, GC) must not interleave with an ADD attaching a port to
 * that namespace, nor with the agent programming entries into it. The
 * sections are short; the kernel drops the lock when its holder dies, so a
 * killed plugin or agent never wedges the network.
 */
import * as path from 'node:path';
import { withFileLock } from '../../shared/sys/flock';

export function withNetworkLock<T>(stateDir: string, vni: number, fn: () => T): T {
  return withFileLock(path.join(stateDir, 'locks', `ov-${vni}.lock`), fn);
}
