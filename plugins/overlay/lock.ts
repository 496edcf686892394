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
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_EX, native } from '../../shared/netlink/native';

export function withNetworkLock<T>(stateDir: string, vni: number, fn: () => T): T {
  const dir = path.join(stateDir, 'locks');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const fd = fs.openSync(path.join(dir, `ov-${vni}.lock`), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    native().flock(fd, LOCK_EX);
    return fn();
  } finally {
    // closing the only descriptor releases the lock
    fs.closeSync(fd);
  }
}
