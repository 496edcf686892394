/**
 * flock(2), and the one way this project holds a lock file.
 *
 * Why flock: the kernel drops the lock when its holder dies (a killed
 * plugin, daemon worker or agent never wedges anyone), and a lock is tied
 * to an open file description, so a second open of the same file in the
 * same process still waits its turn.
 *
 * Two modes. Exclusive (the default) for work that decides something about
 * the whole resource (create a network, tear it down); shared for work that
 * only needs the resource to stay as it is while it adds or removes its own
 * part (one container's veth on a network), so such calls run side by side
 * and the exclusive work never runs while one of them is half done.
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
  /** LOCK_SH instead of LOCK_EX: holders of the shared lock run side by side, never beside an exclusive one */
  shared?: boolean;
}

/**
 * Runs fn holding a flock(2) on file (created, with its directory, when
 * missing), exclusive unless options.shared, and releases it however fn
 * ends. When fn returns a promise, the lock is held until it settles (and
 * the promise is what withFileLock returns).
 *
 * There is no upgrade from shared to exclusive inside fn: flock converts a
 * lock by dropping it first, so whatever fn saw under the shared lock may
 * have changed. A caller that finds it needs the exclusive lock returns,
 * takes it with a second call, and checks again under it.
 *
 * The descriptor is close-on-exec (libuv opens so anyway; said here because
 * it matters): a program fn spawns (nft, an IPAM plugin) must never inherit
 * the lock and keep it past our release.
 */
export function withFileLock<T>(file: string, fn: () => T, options: FileLockOptions = {}): T {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: options.dirMode ?? 0o700 });
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | O_CLOEXEC, options.mode ?? 0o600);
  // closing the only descriptor releases the lock
  const release = () => fs.closeSync(fd);
  let out: T;
  try {
    flock(fd, options.shared ? LOCK_SH : LOCK_EX);
    out = fn();
  } catch (e) {
    release();
    throw e;
  }
  if (out instanceof Promise) return out.finally(release) as T;
  release();
  return out;
}

/**
 * How a process that runs several holders of one lock at once (the daemon's
 * worker threads) keeps them from waiting on each other in flock(2): before
 * a holder takes an exclusive lock it may have to wait for, it asks for its
 * turn, and says when it is done. The daemon's workers install one
 * (cmd/daemon-worker.ts); elsewhere there is none and flock(2) alone orders
 * the holders.
 */
export interface ExclusiveArbiter {
  /** resolves once no other holder in this process may hold `file` */
  turn(file: string): Promise<void>;
  /** the exclusive section on `file` is over */
  done(file: string): void;
}

let arbiter: ExclusiveArbiter | undefined;

export function setExclusiveArbiter(a: ExclusiveArbiter | undefined): void {
  arbiter = a;
}

/**
 * withFileLock's exclusive mode for a caller that may run beside shared
 * holders of the same file in this process: it waits for its turn from the
 * arbiter (if any) instead of blocking a thread in flock(2) behind them.
 * Callers must not hold the file's lock themselves when they call it.
 */
export async function withExclusiveTurn<T>(file: string, fn: () => T, options: Omit<FileLockOptions, 'shared'> = {}): Promise<Awaited<T>> {
  const a = arbiter;
  if (a) await a.turn(file);
  try {
    return await withFileLock(file, fn, options);
  } finally {
    a?.done(file);
  }
}

const O_CLOEXEC = 0o2000000;
