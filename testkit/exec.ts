/**
 * Test helpers: run a packaged plugin the way a runtime does, look at the
 * host's kernel state; throwaway network namespaces come from ./netns.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '..');
export const BIN = path.join(ROOT, 'bin');

export interface PluginRun {
  status: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, undefined when empty */
  json: any;
}

export function runPlugin(name: string, env: Record<string, string | undefined>, stdin: string | object): PluginRun {
  const binary = path.join(BIN, name);
  if (!fs.existsSync(binary)) throw new Error(`${binary} missing: run ./build.sh first`);
  const clean: Record<string, string> = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v;
  const r = spawnSync(binary, [], { env: clean, input: typeof stdin === 'string' ? stdin : JSON.stringify(stdin), encoding: 'utf8' });
  const stdout = r.stdout ?? '';
  let json: any;
  if (stdout.trim()) json = JSON.parse(stdout);
  return { status: r.status ?? -1, stdout, stderr: r.stderr ?? '', json };
}

export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(3).toString('hex')}`;
}

// one home for throwaway namespaces: netns.ts (this file's callers import them from here too)
export { addNetns, delNetns } from './netns';

/** `ip -j ...` parsed (looking only) */
export function ipJson(args: string[]): any[] {
  const out = execFileSync('ip', ['-j', ...args], { encoding: 'utf8' });
  return out.trim() ? JSON.parse(out) : [];
}

/** A snapshot of the host's kernel state that a bad call must not change. */
export function hostSnapshot(): string {
  const links = ipJson(['link', 'show']).map((l) => `${l.ifname}:${l.operstate}`).sort();
  const addrs = ipJson(['addr', 'show']).flatMap((l) => (l.addr_info ?? []).map((a: any) => `${l.ifname}:${a.local}/${a.prefixlen}`)).sort();
  const routes = ipJson(['route', 'show', 'table', 'all']).map((r) => JSON.stringify(r)).sort();
  return JSON.stringify({ links, addrs, routes });
}
