/**
 * Throwaway network namespaces for kernel tests, and `ip`/`bridge` JSON
 * readers to look at what the kernel holds. Tests only ever change state
 * through the code under test; `ip` here creates and deletes namespaces and
 * reads state back.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/** A netns name no other test or helper will pick: prefix + random suffix. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** ip netns add NAME; returns the bind-mount path */
export function addNetns(name: string): string {
  execFileSync('ip', ['netns', 'add', name], { stdio: ['ignore', 'ignore', 'pipe'] });
  return netnsPath(name);
}

export function netnsPath(name: string): string {
  return `/var/run/netns/${name}`;
}

/** ip netns del NAME, quietly: runs in afterAll, after failures too */
export function delNetns(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone, or never created because beforeAll failed early
  }
}

function json(cmd: string, args: string[]): any {
  const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return out.trim() ? JSON.parse(out) : [];
}

/** ip -n NS -j ARGS... parsed */
export function ipj(ns: string, ...args: string[]): any {
  return json('ip', ['-n', ns, '-j', ...args]);
}

/** bridge -n NS -j ARGS... parsed */
export function bridgej(ns: string, ...args: string[]): any {
  return json('bridge', ['-n', ns, '-j', ...args]);
}

/** Run `ip -n NS ARGS...` for fixtures the test does not check (returns false when ip fails). */
export function ipTry(ns: string, ...args: string[]): boolean {
  try {
    execFileSync('ip', ['-n', ns, ...args], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
