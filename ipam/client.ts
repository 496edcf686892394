/**
 * What a main plugin (bridge, macvlan, ipvlan, overlay) calls to get
 * addresses: cluster-ipam in-process, any other IPAM type through CNI_PATH
 * like libcni would (shared/cni/delegate.ts).
 */
import type { CniContext } from '../shared/cni/skel';
import { OWN_IPAM, execDelegate } from '../shared/cni/delegate';
import { CniError, ErrorCode } from '../shared/cni/errors';
import type { Attachment, Result } from '../shared/cni/types';
import type { ClusterNameStore } from '../shared/childlink';

type Ctx = CniContext<{ ipam?: { type: string } }>;

function ipamType(ctx: Ctx): string {
  const type = ctx.config.ipam?.type;
  if (!type) throw new CniError(ErrorCode.InvalidNetworkConfig, 'ipam: a "type" is required');
  return type;
}

function rawConfig(ctx: Ctx): unknown {
  return JSON.parse(ctx.stdinData.toString('utf8'));
}

function own(ctx: Ctx) {
  return { containerId: ctx.containerId, ifname: ctx.ifname, args: ctx.args, config: rawConfig(ctx), prevResult: ctx.prevResult, log: ctx.log };
}

function delegate(ctx: Ctx, command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS'): Result | undefined {
  return execDelegate({ command, type: ipamType(ctx), stdin: ctx.stdinData, env: ctx.env, cniVersion: ctx.cniVersion, log: ctx.log });
}

export function hasIpam(ctx: Ctx): boolean {
  return ctx.config.ipam !== undefined;
}

export async function ipamAdd(ctx: Ctx): Promise<Result> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamAdd(own(ctx));
  return delegate(ctx, 'ADD')!;
}

export async function ipamDel(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamDel(own(ctx));
  delegate(ctx, 'DEL');
}

export async function ipamCheck(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamCheck(own(ctx));
  delegate(ctx, 'CHECK');
}

export async function ipamGc(ctx: Ctx, valid: Attachment[]): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) {
    await (await import('./plugin')).ipamGc(own(ctx), valid);
    return;
  }
  delegate(ctx, 'GC');
}

export async function ipamStatus(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamStatus(own(ctx));
  delegate(ctx, 'STATUS');
}

/**
 * Where cluster-ipam keeps the network's addresses in etcd ("store":
 * "etcd"), for a plugin that keeps the network's DNS records beside them
 * (shared/dns/cluster.ts): the IPAM's keyPrefix, node name and connection,
 * the network's subnets (every range set's). Undefined for any other IPAM
 * or store: names then stay on the host. The section is checked as the
 * IPAM's own ADD checks it (code 7), and nothing connects until open().
 */
export async function clusterStore(ctx: Ctx): Promise<ClusterNameStore | undefined> {
  if (!hasIpam(ctx) || ipamType(ctx) !== OWN_IPAM) return undefined;
  const { loadIpamConfig } = await import('./config');
  const conf = loadIpamConfig(rawConfig(ctx), ctx.args);
  if (conf.store !== 'etcd') return undefined;
  const [{ loadEtcdConfig }, { formatCIDR }] = await Promise.all([import('./etcd/config'), import('../shared/ip')]);
  const e = loadEtcdConfig(conf.etcd, conf.rangeSets);
  const subnets = [...new Set(conf.rangeSets.flatMap((set) => set.map((r) => formatCIDR(r.subnet))))];
  return {
    scope: { prefix: e.keyPrefix, network: conf.name, subnets, node: e.nodeName, timeoutMs: e.requestTimeoutMs },
    // the resolver is told the fields (paths, never the password) and connects as the IPAM does
    etcd: { ...e.connection, requestTimeoutMs: e.requestTimeoutMs },
    open: async () => {
      const { EtcdKV } = await import('../shared/etcd/kv');
      return new EtcdKV({ endpoints: e.endpoints, tls: e.tls, auth: e.auth, insecure: e.insecure, requestTimeoutMs: e.requestTimeoutMs });
    },
  };
}
