/**
 * What the suite knows about the kernel: namespaces it creates, what `ip -j`
 * and `nft -j` say is in them, and snapshots of a host that can be diffed.
 *
 * The suite is an oracle for plugins that change the kernel, so it must not
 * share their code: it looks at state only through iproute2 and nft, the
 * tools an operator would use, never through netlink-ts. The one piece of
 * project code it borrows is withNetns (to start processes inside the
 * isolated host namespace), which changes nothing.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withNetns } from '../shared/netns/netns';

/**
 * A network namespace the suite talks about. `name` is its entry in
 * /var/run/netns (what `ip -n` takes); undefined means the namespace the
 * suite itself runs in.
 */
export interface Ns {
  readonly name?: string;
  readonly path: string;
}

export const CURRENT_NS: Ns = { path: '/proc/self/ns/net' };

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly status: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} failed (${status ?? 'signal'}): ${stderr.trim()}`);
  }
}

/** Run a tool and return stdout; throws CommandError on a non-zero exit. */
export function run(argv: readonly string[], input?: string): string {
  const out = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (out.error) throw out.error;
  if (out.status !== 0) throw new CommandError(argv, out.status, out.stderr);
  return out.stdout;
}

/** `ip [-n NS] ARGS...`: changes a fixture (tests may, plugins may not). */
export function ip(ns: Ns, ...args: string[]): string {
  return run(['ip', ...nsArgs(ns), ...args]);
}

/** `ip -j [-n NS] ARGS...` parsed; an empty answer is an empty list. */
export function ipJson<T = Record<string, unknown>>(ns: Ns, ...args: string[]): T[] {
  const text = run(['ip', '-j', ...nsArgs(ns), ...args]).trim();
  return text === '' ? [] : (JSON.parse(text) as T[]);
}

function nsArgs(ns: Ns): string[] {
  return ns.name === undefined ? [] : ['-n', ns.name];
}

/** `ip netns add NAME`; the caller owns the namespace and deletes it. */
export function createNetns(name: string): Ns {
  run(['ip', 'netns', 'add', name]);
  return { name, path: `/var/run/netns/${name}` };
}

/** `ip netns del NAME`, ignoring a namespace that is already gone. */
export function deleteNetns(ns: Ns): void {
  if (ns.name === undefined) throw new Error('refusing to delete the namespace the suite runs in');
  if (!fs.existsSync(ns.path)) return;
  run(['ip', 'netns', 'del', ns.name]);
}

/** Run a synchronous function with the calling thread inside ns. */
export function inNs<T>(ns: Ns, fn: () => T): T {
  return ns.name === undefined ? fn() : withNetns(ns.path, fn);
}

// ---------------------------------------------------------------------------
// Queries used by the rules

export interface LinkInfo {
  ifname: string;
  address?: string;
  mtu?: number;
  kind?: string;
  master?: string;
  operstate?: string;
  flags: string[];
}

export function links(ns: Ns): LinkInfo[] {
  return ipJson<{
    ifname: string;
    address?: string;
    mtu?: number;
    master?: string;
    operstate?: string;
    flags?: string[];
    linkinfo?: { info_kind?: string };
  }>(ns, '-d', 'link', 'show').map((l) => ({
    ifname: l.ifname,
    address: l.address,
    mtu: l.mtu,
    kind: l.linkinfo?.info_kind,
    master: l.master,
    operstate: l.operstate,
    flags: l.flags ?? [],
  }));
}

export interface AddrInfo {
  ifname: string;
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
}

export function addresses(ns: Ns): AddrInfo[] {
  const out: AddrInfo[] = [];
  for (const l of ipJson<{ ifname: string; addr_info?: { family: string; local: string; prefixlen: number }[] }>(
    ns,
    'addr',
    'show',
  )) {
    for (const a of l.addr_info ?? []) {
      if (a.family !== 'inet' && a.family !== 'inet6') continue;
      out.push({ ifname: l.ifname, family: a.family, local: a.local, prefixlen: a.prefixlen });
    }
  }
  return out;
}

export interface RouteInfo {
  family: 4 | 6;
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
  table?: string;
  protocol?: string;
  scope?: string;
  metric?: number;
}

export function routes(ns: Ns): RouteInfo[] {
  const out: RouteInfo[] = [];
  for (const family of [4, 6] as const) {
    for (const r of ipJson<Omit<RouteInfo, 'family'>>(ns, `-${family}`, 'route', 'show', 'table', 'all')) {
      out.push({ ...r, family });
    }
  }
  return out;
}

/** `nft -j list ruleset` inside ns, parsed to its list of objects. */
export function nftRuleset(ns: Ns): Record<string, unknown>[] {
  const text = inNs(ns, () => run(['nft', '-j', 'list', 'ruleset']));
  const parsed = JSON.parse(text) as { nftables?: Record<string, unknown>[] };
  return parsed.nftables ?? [];
}

// ---------------------------------------------------------------------------
// Snapshots and diffs

export const SNAPSHOT_CATEGORIES = ['links', 'addresses', 'routes', 'nft', 'stateFiles'] as const;
export type SnapshotCategory = (typeof SNAPSHOT_CATEGORIES)[number];

/** Each category is a multiset of stable one-line descriptions. */
export type Snapshot = Record<SnapshotCategory, string[]>;

export interface SnapshotDiff {
  category: SnapshotCategory;
  added: string[];
  removed: string[];
}

/**
 * What a host looks like, reduced to what a plugin is accountable for.
 * Left out on purpose, because the kernel makes and changes them on its own:
 * IPv6 link-local addresses and the fe80::/64, ff00::/8 routes that come with
 * every link, MAC addresses (a bridge takes its lowest port's), counters and
 * nft handles.
 */
export function snapshot(ns: Ns, stateDirs: readonly string[]): Snapshot {
  return {
    links: links(ns).map((l) => `${l.ifname} (${l.kind ?? 'device'})${l.master ? ` master ${l.master}` : ''}`),
    addresses: addresses(ns)
      .filter((a) => !(a.family === 'inet6' && isLinkLocal6(a.local)))
      .map((a) => `${a.local}/${a.prefixlen} dev ${a.ifname}`),
    routes: routes(ns)
      .filter((r) => !(r.family === 6 && (isLinkLocal6(r.dst) || r.dst.startsWith('ff00::') || r.type === 'multicast')))
      .map(describeRoute),
    nft: nftRuleset(ns)
      .filter((o) => !('metainfo' in o))
      .map((o) => stableJson(stripVolatile(o))),
    stateFiles: stateDirs.flatMap((d) => listTree(d)),
  };
}

export function diffSnapshots(before: Snapshot, after: Snapshot): SnapshotDiff[] {
  return SNAPSHOT_CATEGORIES.map((category) => ({
    category,
    added: multisetMinus(after[category], before[category]),
    removed: multisetMinus(before[category], after[category]),
  })).filter((d) => d.added.length > 0 || d.removed.length > 0);
}

export function describeDiff(diffs: readonly SnapshotDiff[], limit = 6): string {
  return diffs
    .map((d) => {
      const parts: string[] = [];
      if (d.added.length) parts.push(`left behind ${clip(d.added, limit)}`);
      if (d.removed.length) parts.push(`missing ${clip(d.removed, limit)}`);
      return `${d.category}: ${parts.join('; ')}`;
    })
    .join(' | ');
}

function clip(items: string[], limit: number): string {
  const shown = items.slice(0, limit).map((s) => (s.length > 160 ? `${s.slice(0, 157)}...` : s));
  return `[${shown.join(', ')}${items.length > limit ? `, ... ${items.length - limit} more` : ''}]`;
}

function multisetMinus(a: readonly string[], b: readonly string[]): string[] {
  const counts = new Map<string, number>();
  for (const x of b) counts.set(x, (counts.get(x) ?? 0) + 1);
  const out: string[] = [];
  for (const x of a) {
    const n = counts.get(x) ?? 0;
    if (n > 0) counts.set(x, n - 1);
    else out.push(x);
  }
  return out;
}

function describeRoute(r: RouteInfo): string {
  const parts = [r.type && r.type !== 'unicast' ? `${r.type} ${r.dst}` : r.dst];
  if (r.gateway) parts.push(`via ${r.gateway}`);
  if (r.dev) parts.push(`dev ${r.dev}`);
  if (r.table) parts.push(`table ${r.table}`);
  if (r.metric !== undefined) parts.push(`metric ${r.metric}`);
  return parts.join(' ');
}

export function isLinkLocal6(addr: string): boolean {
  return /^fe[89ab][0-9a-f]:/i.test(addr);
}

/** nft JSON without handles and counter values, which change on their own. */
export function stripVolatile(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripVolatile);
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === 'handle' || k === 'packets' || k === 'bytes' || k === 'expires') continue;
    out[k] = stripVolatile(v);
  }
  return out;
}

/** JSON with object keys sorted, so equal values print equally. */
export function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
}

/** Every file and directory under dir ("dir/a/" for directories); nothing if dir is absent. */
export function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
      throw e;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        out.push(`${p}/`);
        walk(p);
      } else {
        out.push(p);
      }
    }
  };
  walk(dir);
  return out;
}
