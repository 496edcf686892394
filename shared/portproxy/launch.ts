/**
 * Starting and signalling the per-namespace ::1 relay (`cni-ts port-proxy`)
 * through the one singleton helper (shared/sys/singleton.ts), as the
 * resolver is: one relay per records directory, started by the first ADD
 * that needs it, in the caller's network namespace (the host's: ::1 is per
 * namespace), signalled (SIGHUP) by later changes.
 */
import * as path from 'node:path';
import { sleepSync } from '../sys';
import { Singleton, selfCommand } from '../sys/singleton';
import { readStatus, type ProxyStatus } from './records';

export const RELAY_LOCK = 'relay.lock';
export const RELAY_PID = 'relay.pid';
export const RELAY_LOG = 'relay.log';

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

function relay(dir: string): Singleton {
  return new Singleton({ dir, name: 'relay', subcommand: 'port-proxy', command: relayCommand });
}

/** The running relay's pid, if the pid file names a live `cni-ts port-proxy` of this directory. */
export function relayPid(dir: string): number | undefined {
  return relay(dir).pid();
}

/** Whether a relay holds the directory's lock (a starting one too). */
export function relayRunning(dir: string): boolean {
  return relay(dir).running();
}

/** SIGHUP to the running relay; false when none runs (or it has not written its pid yet). */
export function signalRelay(dir: string): boolean {
  return relay(dir).signal();
}

/**
 * Starts the relay when none runs, otherwise tells it to reload. A relay
 * that holds the lock but has no pid file yet is starting and will read the
 * records as they are now; one that is exiting (it decided so under the
 * records lock, which the caller may hold) has let its lock go first, so a
 * retry starts a new one.
 */
export function ensureRelay(dir: string): 'started' | 'signalled' | 'starting' | 'unavailable' {
  return relay(dir).ensure();
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
