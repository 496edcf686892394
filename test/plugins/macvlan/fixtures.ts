/**
 * Fixtures shared by the macvlan kernel tests: namespaces that are deleted
 * after the file's tests whatever happened, and `ip` for building them.
 */
import { spawnSync } from 'node:child_process';
import { afterAll } from 'vitest';
import { addNetns, delNetns, uniqueName } from '../../../testkit/exec';

export interface Netns {
  name: string;
  path: string;
}

/** Returns a maker of uniquely named namespaces, all deleted in afterAll (newest first). */
export function namespaceFactory(): (prefix: string) => Netns {
  const namespaces: string[] = [];
  afterAll(() => {
    for (const ns of namespaces.reverse()) delNetns(ns);
  });
  return (prefix) => {
    const name = uniqueName(prefix);
    const p = addNetns(name);
    namespaces.push(name);
    return { name, path: p };
  };
}

/** `ip ARGS`, throwing with ip's own message on failure (fixtures only). */
export function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}
