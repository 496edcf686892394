/**
 * Starting and signalling the per-host resolver (`cni-ts dns`), as netavark
 * does aardvark-dns: the first ADD that needs it starts it, later changes
 * tell it to reload (SIGHUP), and it keeps its records on disk, so a
 * restarted resolver loses nothing. One resolver per records directory,
 * started and found through the one singleton helper (shared/sys/singleton.ts).
 */
import { sleepSync } from '../sys';
import { Singleton } from '../sys/singleton';
import { LOADED_FILE, readSerial } from './records';

export { selfCommand } from '../sys/singleton';
export const LOCK_FILE = 'resolver.lock';
export const PID_FILE = 'resolver.pid';
export const LOG_FILE = 'resolver.log';

function resolver(dir: string, opts: { exitWhenEmpty?: boolean } = {}): Singleton {
  return new Singleton({ dir, name: 'resolver', subcommand: 'dns', args: opts.exitWhenEmpty ? ['--exit-when-empty'] : [] });
}

/** The running resolver's pid, if the pid file names a live `cni-ts dns` of this directory. */
export function resolverPid(dir: string): number | undefined {
  return resolver(dir).pid();
}

/** Starts the resolver when none runs, otherwise tells it to reload. Returns 'started' or 'signalled' (or 'none' when it could do neither). */
export function ensureResolver(dir: string, opts: { exitWhenEmpty?: boolean } = {}): 'started' | 'signalled' | 'none' {
  const r = resolver(dir, opts).ensure();
  return r === 'started' || r === 'signalled' ? r : 'none';
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
  return resolver(dir).running();
}

/** SIGHUP to the running resolver; false when none runs. */
export function signalResolver(dir: string): boolean {
  return resolver(dir).signal();
}
