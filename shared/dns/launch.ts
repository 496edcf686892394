/**
 * Starting and signalling the per-host resolver (`cni-ts dns`), as netavark
 * does aardvark-dns: the first ADD that needs it starts it, later changes
 * tell it to reload (SIGHUP), and it keeps its records on disk, so a
 * restarted resolver loses nothing.
 *
 * One resolver per records directory, never two: the resolver holds an
 * exclusive flock on <dir>/resolver.lock for its whole life. A plugin that
 * can take that lock (LOCK_NB) knows none runs, and hands its locked
 * descriptor to the child it starts (as fd 3): the lock passes to the
 * child without a moment where a second plugin could take it too. A plugin
 * that cannot take it signals the pid in <dir>/resolver.pid, which the
 * resolver writes after its SIGHUP handler is installed and before it
 * first reads the records: when there is no pid file yet, the starting
 * resolver has not read the records yet and will see ours.
 *
 * The child is detached (its own session), runs with a fixed PATH and
 * nothing of the caller's environment, in the host's namespaces the
 * plugin runs in, and logs to <dir>/resolver.log.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_EX, LOCK_NB, flock } from '../sys';
import { LOADED_FILE, readSerial } from './records';

export const LOCK_FILE = 'resolver.lock';
export const PID_FILE = 'resolver.pid';
export const LOG_FILE = 'resolver.log';

/** The command that runs this executable: the packaged one, or node and the bundle in development. */
export function selfCommand(): string[] {
  const argv = [process.execPath];
  if (process.argv[1] && /\.c?js$/.test(process.argv[1])) argv.push(process.argv[1]);
  return argv;
}

/** The running resolver's pid, if the pid file names a live `cni-ts dns`. */
export function resolverPid(dir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(dir, PID_FILE), 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  try {
    // never signal a pid that was reused by something else
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (!argv.includes('dns') || !argv.includes(dir)) return undefined;
  } catch {
    return undefined;
  }
  return pid;
}

/** Starts the resolver when none runs, otherwise tells it to reload. Returns 'started' or 'signalled' (or 'none' when it could do neither). */
export function ensureResolver(dir: string, opts: { exitWhenEmpty?: boolean } = {}): 'started' | 'signalled' | 'none' {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const fd = fs.openSync(path.join(dir, LOCK_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    try {
      flock(fd, LOCK_EX | LOCK_NB);
    } catch {
      return signalResolver(dir) ? 'signalled' : 'none';
    }
    // none runs: a pid file left by a dead one must not be signalled by others
    fs.rmSync(path.join(dir, PID_FILE), { force: true });
    const log = fs.openSync(path.join(dir, LOG_FILE), 'a', 0o600);
    try {
      const [cmd, ...pre] = selfCommand();
      const child = spawn(cmd, [...pre, 'dns', '--dir', dir, '--lock-fd', '3', ...(opts.exitWhenEmpty ? ['--exit-when-empty'] : [])], {
        detached: true,
        cwd: '/',
        stdio: ['ignore', log, log, fd],
        env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
      });
      child.unref();
    } finally {
      fs.closeSync(log);
    }
    return 'started';
  } finally {
    // the child holds the lock through its own copy of the descriptor
    fs.closeSync(fd);
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Waits until the resolver serves the records as of serial (it writes the
 * serial it loaded), so a name answers right after ADD and is gone right
 * after DEL; gives up after timeoutMs (the records are on disk, the
 * resolver will catch up) or at once when no resolver runs.
 */
export function waitLoaded(dir: string, serial: number, timeoutMs = 3000): boolean {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (readSerial(dir, LOADED_FILE) >= serial) return true;
    if (Date.now() > end || !resolverRunning(dir)) return false;
    sleepSync(5);
  }
}

/** Whether a resolver holds the directory's lock (a starting one too). */
export function resolverRunning(dir: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path.join(dir, LOCK_FILE), fs.constants.O_RDWR);
  } catch {
    return false;
  }
  try {
    flock(fd, LOCK_EX | LOCK_NB);
    return false;
  } catch {
    return true;
  } finally {
    fs.closeSync(fd);
  }
}

/** SIGHUP to the running resolver; false when none runs. */
export function signalResolver(dir: string): boolean {
  const pid = resolverPid(dir);
  if (pid === undefined) return false;
  try {
    process.kill(pid, 'SIGHUP');
    return true;
  } catch {
    return false;
  }
}
