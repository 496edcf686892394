/**
 * Name resolution for the plugins: the few calls a plugin makes, each one
 * line in its ADD, DEL, CHECK or GC. Everything else (records on disk, the
 * resolver process, the wire format) is loaded only when a network has
 * `dns.enabled`, so other calls pay nothing for it.
 *
 *   ADD    registerName(ctx, result, {internal})  records + resolver + result.dns
 *   DEL    removeName(ctx)                        idempotent
 *   CHECK  checkName(ctx)                         the name answers with the recorded addresses
 *   GC     gcNames(ctx, valid)                    drops records of unlisted attachments
 *
 * Networks whose gateway is not the host (macvlan, ipvlan) answer at
 * 127.0.0.11 inside the container instead (netns-listener.ts):
 *   ADD    registerNameInNetns(ctx, result, {internal})
 *   DEL    removeNameInNetns(ctx)
 *   CHECK  checkName(ctx)                         asks 127.0.0.11 inside the container
 *
 * Names: the container's (K8S_POD_NAME in CNI_ARGS, as podman and kubelet
 * send it), its aliases (the `aliases` capability: runtimeConfig.aliases,
 * either a list or, as podman sends it, a map of network name to list) and
 * the container ID's first 12 characters. A name that is not a DNS name is
 * left out (the short ID still answers).
 */
import type { CniContext } from '../cni/skel';
import type { Attachment, DNS, Result } from '../cni/types';
import { CniError, ErrorCode } from '../cni/errors';
import { DEFAULT_DATA_DIR, DEFAULT_DOMAIN, type DnsConf, isDnsName } from './config';
import type * as Records from './records';
import type * as Launch from './launch';
import type * as Client from './client';
import type * as NetnsListener from './netns-listener';
import type { ClusterRef } from './cluster';
import type { NetnsRef } from './records';

export { dnsConf, type DnsConf } from './config';

interface DnsNetConf {
  name: string;
  dns?: DnsConf;
  runtimeConfig?: { aliases?: unknown } & Record<string, unknown>;
}

/* eslint-disable @typescript-eslint/no-require-imports */
const records = (): typeof Records => require('./records');
const launch = (): typeof Launch => require('./launch');
const client = (): typeof Client => require('./client');
const inNetns = (): typeof NetnsListener => require('./netns-listener');
/* eslint-enable @typescript-eslint/no-require-imports */

export function dnsEnabled(conf: { dns?: { enabled?: boolean } }): boolean {
  return conf.dns?.enabled === true;
}

function dataDir(conf: DnsNetConf): string {
  return conf.dns?.dataDir ?? DEFAULT_DATA_DIR;
}

/** The names an ADD registers (without the short ID, which the resolver derives). */
export function namesOf(ctx: { args: Record<string, string>; config: DnsNetConf }): string[] {
  const out: string[] = [];
  const pod = ctx.args.K8S_POD_NAME;
  if (pod) out.push(pod);
  const a = ctx.config.runtimeConfig?.aliases;
  const list = Array.isArray(a) ? a : a && typeof a === 'object' ? (a as Record<string, unknown>)[ctx.config.name] : undefined;
  if (Array.isArray(list)) for (const x of list) if (typeof x === 'string') out.push(x);
  return [...new Set(out.filter(isDnsName).map((n) => n.toLowerCase()))].slice(0, 64);
}

/**
 * ADD: records the attachment's names and addresses, makes sure the
 * resolver runs (and has been told), and fills result.dns so the runtime
 * writes resolv.conf: the gateways as nameservers, the domain to search.
 * Listen addresses are the gateways of result.ips, which the plugin has put
 * on the host (a DNS-enabled network needs one per family it resolves).
 */
export function registerName<C extends DnsNetConf>(ctx: CniContext<C>, result: Result, opts: { internal: boolean }): void {
  const conf = ctx.config;
  if (!dnsEnabled(conf)) return;
  const ips = result.ips ?? [];
  const listen = [...new Set(ips.map((ip) => ip.gateway).filter((g): g is string => !!g))];
  if (!listen.length) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'dns.enabled needs a gateway address on the network (the IPAM gave none)');
  }
  const { formatCidr, networkOf, parseCidr } = require('../netlink/ipaddr') as typeof import('../netlink/ipaddr'); // eslint-disable-line @typescript-eslint/no-require-imports
  registerNames(ctx, result, {
    internal: opts.internal,
    listen,
    subnets: [...new Set(ips.map((ip) => formatCidr(networkOf(parseCidr(ip.address)))))],
    addresses: ips.map((ip) => ip.address.split('/')[0]),
  });
}

/**
 * Where and what a network's names are, when the result's gateways are not
 * (registerName's case) the whole story: the overlay answers on its host's
 * gateway bridge, shared by every overlay network of the host, for the
 * container's overlay addresses, and only to the container's own
 * gateway-bridge address (clients).
 */
export interface NameSpec {
  internal: boolean;
  /** the resolver's addresses the container reaches (nameservers in result.dns) */
  listen: string[];
  /** the subnets listen addresses and clients lie in */
  subnets: string[];
  /** the container's addresses its names answer with */
  addresses: string[];
  /** when set, only these sources (and the listen addresses) are served for this network: the listen address is shared */
  clients?: string[];
  /** the network's names are cluster-wide (shared/dns/cluster.ts clusterRef) */
  cluster?: ClusterRef;
  /** answered at 127.0.0.11 inside this namespace (the container's), not on listen addresses */
  netns?: NetnsRef;
}

/** The attachment's local record, as ADD writes it (cluster.ts publishes the same names to etcd). */
export function entryOf(ctx: { containerId: string; ifname: string; args: Record<string, string>; config: DnsNetConf }, addresses: readonly string[], clients?: readonly string[]) {
  return {
    containerId: ctx.containerId,
    ifname: ctx.ifname,
    names: namesOf(ctx),
    v4: addresses.filter((a) => !a.includes(':')),
    v6: addresses.filter((a) => a.includes(':')),
    ...(clients?.length ? { clients: [...clients] } : {}),
  };
}

/** ADD, given where the names answer (registerName derives it from the result): records, resolver, result.dns. */
export function registerNames<C extends DnsNetConf>(ctx: CniContext<C>, result: Result, spec: NameSpec): void {
  const conf = ctx.config;
  if (!dnsEnabled(conf)) return;
  const r = records();
  const domain = conf.dns?.domain ?? DEFAULT_DOMAIN;
  const listen = [...new Set(spec.listen)];
  const serial = r.putEntry(
    dataDir(conf),
    {
      name: conf.name,
      domain,
      internal: spec.internal,
      listen,
      subnets: [...new Set(spec.subnets)],
      ...(conf.dns?.upstream ? { upstream: conf.dns.upstream } : {}),
      ...(spec.clients ? { clientsOnly: true } : {}),
      ...(spec.cluster ? { cluster: spec.cluster } : {}),
    },
    { ...entryOf(ctx, spec.addresses, spec.clients), ...(spec.netns ? { netns: spec.netns } : {}) },
    () => launch().ensureResolver(dataDir(conf), { exitWhenEmpty: true }),
  );
  launch().waitLoaded(dataDir(conf), serial);
  const dns: DNS = {
    nameservers: spec.netns ? [inNetns().EMBEDDED_DNS] : [...listen.filter((a) => !a.includes(':')), ...listen.filter((a) => a.includes(':'))],
    search: [domain, ...(conf.dns?.search ?? []).filter((s) => s !== domain)],
  };
  if (conf.dns?.options?.length) dns.options = conf.dns.options;
  result.dns = dns;
}

/**
 * ADD on a network whose gateway is not the host (macvlan, ipvlan): the
 * names as registerName records them, answered at 127.0.0.11 inside the
 * container's namespace (the resolver opens its listener and redirect there
 * before this returns); result.dns names 127.0.0.11.
 */
export function registerNameInNetns<C extends DnsNetConf>(ctx: CniContext<C>, result: Result, opts: { internal: boolean; cluster?: ClusterRef }): void {
  if (!dnsEnabled(ctx.config)) return;
  const ips = result.ips ?? [];
  if (!ips.length) throw new CniError(ErrorCode.InvalidNetworkConfig, 'dns.enabled needs an address on the network (the IPAM gave none)');
  const { formatCidr, networkOf, parseCidr } = require('../netlink/ipaddr') as typeof import('../netlink/ipaddr'); // eslint-disable-line @typescript-eslint/no-require-imports
  registerNames(ctx, result, {
    internal: opts.internal,
    listen: [],
    subnets: [...new Set(ips.map((ip) => formatCidr(networkOf(parseCidr(ip.address)))))],
    addresses: ips.map((ip) => ip.address.split('/')[0]),
    netns: inNetns().netnsRefOf(ctx.netns),
    ...(opts.cluster ? { cluster: opts.cluster } : {}),
  });
}

/**
 * DEL of a 127.0.0.11 attachment: the names go; the resolver closes the
 * listener and removes the redirect once no attachment of the namespace
 * is left. With no resolver running, the redirect is removed here.
 */
export function removeNameInNetns<C extends DnsNetConf>(ctx: CniContext<C>): void {
  if (!dnsEnabled(ctx.config)) return;
  removeName(ctx);
  const dir = dataDir(ctx.config);
  if (!ctx.netns || launch().resolverRunning(dir)) return;
  const n = inNetns();
  let ref: NetnsRef;
  try {
    ref = n.netnsRefOf(ctx.netns);
  } catch {
    return; // the namespace is gone, and its table with it (DEL is idempotent)
  }
  const key = n.netnsKey(ref);
  const stillUsed = records()
    .loadAll(dir)
    .some((net) => net.entries.some((e) => e.netns && n.netnsKey(e.netns) === key));
  if (!stillUsed) n.removeRedirect(ctx.netns);
}

/** DEL: the attachment's names go (idempotent); the resolver is told. */
export function removeName<C extends DnsNetConf>(ctx: CniContext<C>): void {
  if (!dnsEnabled(ctx.config)) return;
  changed(dataDir(ctx.config), records().removeEntry(dataDir(ctx.config), ctx.config.name, ctx.containerId, ctx.ifname));
}

/** GC: names of attachments the runtime no longer lists go. */
export function gcNames<C extends DnsNetConf>(ctx: CniContext<C>, valid: Attachment[]): void {
  if (!dnsEnabled(ctx.config)) return;
  changed(dataDir(ctx.config), records().gcEntries(dataDir(ctx.config), ctx.config.name, valid));
}

/** After a removal: the resolver reloads, and the call returns once it serves the change. */
function changed(dir: string, serial: number | undefined): void {
  if (serial === undefined) return;
  if (launch().signalResolver(dir)) launch().waitLoaded(dir, serial);
}

/**
 * CHECK: the attachment is recorded, and the resolver answers its short ID
 * with exactly the recorded addresses (asked from a gateway address, which
 * is inside the network).
 */
export async function checkName<C extends DnsNetConf>(ctx: CniContext<C>): Promise<void> {
  const conf = ctx.config;
  if (!dnsEnabled(conf)) return;
  const fail = (msg: string) => new CniError(ErrorCode.Internal, msg);
  const dir = dataDir(conf);
  const entry = records().getEntry(dir, conf.name, ctx.containerId, ctx.ifname);
  if (!entry) throw fail(`no DNS record for ${ctx.containerId}/${ctx.ifname} on network ${conf.name}`);
  const net = records().loadAll(dir).find((n) => n.name === conf.name);
  const c = client();
  const name = `${ctx.containerId.slice(0, 12)}.${net?.domain ?? DEFAULT_DOMAIN}`;
  if (entry.netns) {
    // asked as the container asks: from inside its namespace, to 127.0.0.11:53 through the redirect
    const n = inNetns();
    if (!ctx.netns || n.netnsKey(n.netnsRefOf(ctx.netns)) !== n.netnsKey(entry.netns)) throw fail(`the DNS record of ${ctx.containerId}/${ctx.ifname} names another network namespace`);
    const want = [...entry.v4].sort().join();
    let got: string[] = [];
    for (let attempt = 0; attempt < 3 && got.join() !== want; attempt++) got = c.addressesOf(await n.askInNetns(ctx.netns, name, 'A'));
    if (got.join() !== want) throw fail(`${n.EMBEDDED_DNS} inside ${ctx.netns} answers ${name} with [${got.join(', ')}], expected [${entry.v4.join(', ')}]`);
    return;
  }
  // a shared resolver address (the overlay's gateway bridge) answers only the container's own address there: asked from the container
  const asker = net?.clientsOnly && entry.clients?.length && ctx.netns ? { netns: ctx.netns, from: entry.clients } : undefined;
  for (const server of net?.listen ?? []) {
    const want = server.includes(':') ? entry.v6 : entry.v4;
    const type = server.includes(':') ? 'AAAA' : 'A';
    const from = asker?.from.find((a) => a.includes(':') === server.includes(':'));
    let got: string[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      got = c.addressesOf(
        asker && from
          ? await (require('./ask-in-netns') as typeof import('./ask-in-netns')).askFromNetns(asker.netns, from, server, name, type) // eslint-disable-line @typescript-eslint/no-require-imports
          : await c.query(name, type, { server, from: server, timeoutMs: 1000 }),
      );
      if (got.join() === [...want].sort().join()) break;
    }
    if (got.join() !== [...want].sort().join()) {
      throw fail(`the resolver on ${server} answers ${name} with [${got.join(', ')}], expected [${want.join(', ')}]`);
    }
  }
}
