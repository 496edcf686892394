/**
 * cluster-ipam's verbs. An IPAM plugin is called by a main plugin (bridge,
 * macvlan...) with the whole network configuration and the same
 * environment; it touches no interface, only its store, and answers ADD
 * with addresses, routes and DNS for the main plugin to apply.
 *
 * ipam/main.ts wires these into the skel; the main plugins may also call
 * them in-process instead of exec'ing a delegate.
 */
import * as fs from 'node:fs';
import { CniError, ErrorCode } from '../shared/cni/errors';
import type { Logger } from '../shared/log';
import type { Attachment, DNS, Result } from '../shared/cni/types';
import { allocate, collectGarbage, rangeFor, release, verify, type Allocation, type AllocationStore } from './allocator';
import { allocatableCount, describeRangeSet, loadIpamConfig, type IpamConfig } from './config';
import { IpamErrorCode } from './errors';
import { formatIP, parseCIDR } from '../shared/ip';
import { openEtcdStore } from './etcd/open';
import { LocalStore } from './local/store';

/** What the verbs read of an invocation; the skel's CniContext satisfies it. */
export interface IpamContext {
  readonly containerId: string;
  readonly ifname: string;
  /** CNI_ARGS as pairs: IP=<addr>[,<addr>] requests static addresses */
  readonly args?: Readonly<Record<string, string>>;
  /** the network configuration from stdin, JSON-decoded (validated again here) */
  readonly config: unknown;
  /** CHECK: the result the runtime cached for the attachment */
  readonly prevResult?: Result;
  /** the call's diagnostics (the skel's ctx.log): in the daemon they reach the caller's stderr */
  readonly log?: Logger;
}

export interface IpamDeps {
  openStore(conf: IpamConfig, log?: Logger): AllocationStore;
}

export const defaultDeps: IpamDeps = { openStore };

/**
 * The store the configuration selects. The etcd store is required lazily,
 * so a local-store call never loads etcd3 and its gRPC stack.
 */
export function openStore(conf: IpamConfig, log?: Logger): AllocationStore {
  switch (conf.store) {
    case 'local':
      return LocalStore.open(conf.dataDir, conf.name);
    case 'etcd':
      // openEtcdStore loads the store (and etcd3 with its gRPC stack, about
      // 240 ms) on the store's first call only: a local-store call never pays.
      return openEtcdStore(conf, log);
  }
}

async function withStore<T>(conf: IpamConfig, deps: IpamDeps, log: Logger | undefined, fn: (store: AllocationStore) => Promise<T>): Promise<T> {
  const store = deps.openStore(conf, log);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** ADD: one address per range set (the same ones again on a repeated ADD), plus routes and DNS. */
export async function ipamAdd(ctx: IpamContext, deps: IpamDeps = defaultDeps): Promise<Result> {
  const conf = loadIpamConfig(ctx.config, ctx.args);
  // Read before allocating: a bad resolvConf must not leave an allocation behind.
  const dns = conf.resolvConf !== undefined ? parseResolvConf(conf.resolvConf) : undefined;
  const assigned = await withStore(conf, deps, ctx.log, (store) =>
    allocate(store, conf.rangeSets, { containerId: ctx.containerId, ifname: ctx.ifname }, conf.requestedIPs),
  );
  const result: Result = {
    cniVersion: conf.cniVersion,
    ips: assigned.map((a) => ({ address: `${formatIP(a.ip)}/${a.prefix}`, gateway: formatIP(a.gateway) })),
  };
  if (conf.routes.length > 0) result.routes = conf.routes.map((r) => ({ ...r }));
  if (dns) result.dns = dns;
  return result;
}

/** DEL: frees every address of container+ifname. Nothing held is success. */
export async function ipamDel(ctx: IpamContext, deps: IpamDeps = defaultDeps): Promise<void> {
  const conf = loadIpamConfig(ctx.config, ctx.args);
  await withStore(conf, deps, ctx.log, (store) => release(store, { containerId: ctx.containerId, ifname: ctx.ifname }));
}

/**
 * CHECK: container+ifname holds an address in every range set, and every
 * address of prevResult that lies in our ranges is one it holds.
 */
export async function ipamCheck(ctx: IpamContext, deps: IpamDeps = defaultDeps): Promise<void> {
  const conf = loadIpamConfig(ctx.config, ctx.args);
  const owner = { containerId: ctx.containerId, ifname: ctx.ifname };
  const held = await withStore(conf, deps, ctx.log, (store) => verify(store, conf.rangeSets, owner));
  const heldText = new Set(held.map(formatIP));
  for (const entry of ctx.prevResult?.ips ?? []) {
    const ip = parseCIDR(entry.address)?.ip;
    if (!ip || !conf.rangeSets.some((set) => rangeFor(set, ip))) continue;
    if (!heldText.has(formatIP(ip))) {
      throw new CniError(
        IpamErrorCode.AllocationMissing,
        `${entry.address} in prevResult is not allocated to ${owner.containerId}/${owner.ifname}`,
        `the store holds: ${[...heldText].join(', ') || 'nothing'}`,
      );
    }
  }
}

/** GC: frees every allocation whose attachment is not in cni.dev/valid-attachments. */
export async function ipamGc(
  ctx: Pick<IpamContext, 'config' | 'log'>,
  validAttachments: readonly Attachment[],
  deps: IpamDeps = defaultDeps,
): Promise<Allocation[]> {
  const conf = loadIpamConfig(ctx.config);
  const keep = validAttachments.map((a) => ({ containerId: a.containerID, ifname: a.ifname }));
  return withStore(conf, deps, ctx.log, (store) => collectGarbage(store, keep));
}

/**
 * STATUS: ready when the store opens and serves an operation, and every range set still
 * has a free address (an ADD needs one from each). Otherwise code 50, the
 * spec's "cannot service ADD requests".
 */
export async function ipamStatus(ctx: Pick<IpamContext, 'config' | 'log'>, deps: IpamDeps = defaultDeps): Promise<void> {
  const conf = loadIpamConfig(ctx.config);
  let all: Allocation[];
  try {
    all = await withStore(conf, deps, ctx.log, (store) => store.withinOperation(() => store.listAll()));
  } catch (err) {
    throw new CniError(ErrorCode.PluginNotAvailable, 'IPAM store unavailable', (err as Error).message);
  }
  conf.rangeSets.forEach((set, i) => {
    const capacity = set.reduce((n, r) => n + allocatableCount(r), 0n);
    const used = BigInt(all.filter((a) => rangeFor(set, a.ip)).length);
    if (used >= capacity) {
      throw new CniError(ErrorCode.PluginNotAvailable, `range set ${i} is exhausted`, `${used} of ${capacity} addresses in use in ${describeRangeSet(set)}`);
    }
  });
}

/** resolv.conf to the result's DNS, as host-local reads it (nameserver, domain, search, options). */
export function parseResolvConf(file: string): DNS {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new CniError(ErrorCode.IOFailure, `cannot read resolvConf ${file}`, (err as Error).message);
  }
  const dns: DNS = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const fields = line.split(/\s+/);
    if (fields.length < 2) continue;
    const [key, ...values] = fields;
    switch (key) {
      case 'nameserver':
        (dns.nameservers ??= []).push(values[0]!);
        break;
      case 'domain':
        dns.domain = values[0];
        break;
      case 'search':
        (dns.search ??= []).push(...values);
        break;
      case 'options':
        (dns.options ??= []).push(...values);
        break;
    }
  }
  return dns;
}
