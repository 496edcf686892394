/**
 * flock(2), and the one way this project holds a lock file.
 *
 * Why flock: the kernel drops the lock when its holder dies (a killed
 * plugin, daemon worker or agent never wedges anyone), and a lock is tied
 * to an open file description, so a second open of the same file in the
 * same process still waits its turn.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from './native';

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** flock(2) on an open descriptor: LOCK_SH, LOCK_EX, LOCK_UN, each optionally | LOCK_NB. Throws the binding's errno error. */
export function flock(fd: number, operation: number): void {
  native().flock(fd, operation);
}

export interface FileLockOptions {
  /** the lock file's mode when it is created; default 0600 (root-only, like everything under /run/cni-ts) */
  mode?: number;
  /** the mode of directories created on the way; default 0700 */
  dirMode?: number;
}

/**
 * Runs fn holding an exclusive flock(2) on file (created, with its
 * directory, when missing), and releases it however fn ends.
 *
 * fn must be synchronous: a promise would let the lock go before the work
 * it guards is done, so one is refused. The descriptor is close-on-exec
 * (libuv opens so anyway; said here because it matters): a program fn
 * spawns (nft, an IPAM plugin) must never inherit the lock and keep it
 * past our release.
 */
export function withFileLock<T>(file: string, fn: () => T, options: FileLockOptions = {}): T {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: options.dirMode ?? 0o700 });
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | O_CLOEXEC, options.mode ?? 0o600);
  try {
    flock(fd, LOCK_EX);
    const out = fn();
    if (out instanceof Promise) throw new Error(`withFileLock(${file}): the function must be synchronous`);
    return out;
  } finally {
    // closing the only descriptor releases the lock
    fs.closeSync(fd);
  }
}

const O_CLOEXEC = 0o2000000;
