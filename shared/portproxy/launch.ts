/**
 * Starting and signalling the per-namespace ::1 relay (`cni-ts port-proxy`),
 * the way shared/dns/launch.ts starts the resolver: one relay per records
 * directory, which holds an exclusive flock on <dir>/relay.lock for its
 * whole life. A plugin that can take that lock (LOCK_NB) knows none runs and
 * hands its locked descriptor to the child it starts (fd 3), so no second
 * plugin can start another in between; one that cannot take it sends SIGHUP
 * to the pid in <dir>/relay.pid, written by the relay after its SIGHUP
 * handler is installed and before it first reads the records.
 *
 * The child is detached (its own session), runs with a fixed PATH and none
 * of the caller's environment, in the network namespace of the caller (the
 * host's: ::1 is per namespace), and logs to <dir>/relay.log (0600).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selfCommand } from '../dns/launch';
import { LOCK_EX, LOCK_NB, flock } from '../sys';
import { readStatus, type ProxyStatus } from './records';

export const RELAY_LOCK = 'relay.lock';
export const RELAY_PID = 'relay.pid';
export const RELAY_LOG = 'relay.log';

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The command that starts the relay: this executable, or node and the
 * cni-ts bundle (selfCommand). Undefined when this process is neither (a
 * test that imports the plugin runs under a test runner's script), which
 * must never be started again with our arguments.
 */
export function relayCommand(): string[] | undefined {
  const script = process.argv[1];
  if (script && /\.[cm]?js$/.test(script) && !/^cni-ts[\w.-]*\.c?js$/.test(path.basename(script))) return undefined;
  return selfCommand();
}

/** The running relay's pid, if the pid file names a live `cni-ts port-proxy` of this directory. */
export function relayPid(dir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(dir, RELAY_PID), 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  try {
    // never signal a pid that was reused by something else
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (!argv.includes('port-proxy') || !argv.includes(dir)) return undefined;
  } catch {
    return undefined;
  }
  return pid;
}

/** Whether a relay holds the directory's lock (a starting one too). */
export function relayRunning(dir: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path.join(dir, RELAY_LOCK), fs.constants.O_RDWR);
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

/** SIGHUP to the running relay; false when none runs (or it has not written its pid yet). */
export function signalRelay(dir: string): boolean {
  const pid = relayPid(dir);
  if (pid === undefined) return false;
  try {
    process.kill(pid, 'SIGHUP');
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts the relay when none runs, otherwise tells it to reload. A relay
 * that holds the lock but has no pid file yet is starting and will read the
 * records as they are now; one that is exiting (it decided so under the
 * records lock, which the caller may hold) has let its lock go first, so a
 * retry starts a new one.
 */
export function ensureRelay(dir: string): 'started' | 'signalled' | 'starting' | 'unavailable' {
  const command = relayCommand();
  if (!command) return 'unavailable';
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const fd = fs.openSync(path.join(dir, RELAY_LOCK), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    try {
      flock(fd, LOCK_EX | LOCK_NB);
    } catch {
      return signalRelay(dir) ? 'signalled' : 'starting';
    }
    // none runs: a pid file left by a dead one must not be signalled by others
    fs.rmSync(path.join(dir, RELAY_PID), { force: true });
    const log = fs.openSync(path.join(dir, RELAY_LOG), 'a', 0o600);
    try {
      const [cmd, ...pre] = command;
      const child = spawn(cmd, [...pre, 'port-proxy', '--dir', dir, '--lock-fd', '3'], {
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

/**
 * Waits until the relay's status reports serial `serial` or later; then
 * that status. Undefined after timeoutMs, or (without `start`) as soon as no
 * relay runs. Every half second a lagging relay is signalled again, and one
 * that is gone (it was exiting when the change was made) started again when
 * `start` says so.
 */
export function waitStatus(dir: string, serial: number, timeoutMs: number, opts: { start: boolean }): ProxyStatus | undefined {
  const end = Date.now() + timeoutMs;
  let nextSignal = Date.now() + 500;
  for (;;) {
    const status = readStatus(dir);
    if (status && status.serial >= serial) return status;
    if (Date.now() > end) return undefined;
    if (Date.now() > nextSignal) {
      if (relayRunning(dir)) signalRelay(dir);
      else if (opts.start) ensureRelay(dir);
      else return undefined;
      nextSignal = Date.now() + 500;
    }
    sleepSync(5);
  }
}
