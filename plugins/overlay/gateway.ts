/**
 * The per-host gateway bridge, Docker's docker_gwbridge: overlay networks
 * carry only container-to-container traffic, so each container also gets a
 * second interface on this host-local bridge, with its default route, and
 * the host masquerades that traffic out through the underlay.
 *
 * Containers must not talk to each other across it (they have the overlay
 * for that, and the overlay's isolation must not be bypassed here): every
 * container port on the bridge is isolated (bridge port isolation), and the
 * forward chain drops anything routed from the bridge back into it.
 *
 * nftables, one atomic transaction per operation, table inet cni_ts_overlay:
 *   chain forward      gwbridge -> gwbridge: drop; into the bridge: replies only
 *   chain postrouting  from the gateway subnet, leaving by another device: masquerade
 * Written whole on every ADD (flush + add, reconcile), so it converges.
 *
 * Addresses on the bridge come from a host-local pool: one file per address
 * under <stateDir>/gw, created with O_EXCL (as host-local does), holding the
 * owner "containerId/ifname".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { EEXIST, isNetlinkError, parseCidr, type NetlinkHandle } from '../../shared/netlink';
import { formatIP, parsePrefixed, subnetOf } from '../../shared/ip';
import type { Nft } from '../../shared/nft/nft-interface';
import { Transaction } from '../../shared/nft/transaction';
import { syncChain } from '../../shared/nft/owned';

export const TABLE = 'cni_ts_overlay';
const T = { family: 'inet' as const, table: TABLE };

export interface GatewayConfig {
  readonly bridge: string;
  /** IPv4 CIDR; the bridge holds its first address */
  readonly subnet: string;
  readonly mtu?: number;
}

function intToV4(n: number): string {
  return formatIP({ family: 4, value: BigInt(n) });
}

/** Network, gateway (first host) and prefix of an IPv4 subnet. */
export function gatewayPlan(subnet: string): { network: number; gateway: string; prefix: number; size: number } {
  const c = parseCidr(subnet);
  if (c.family !== 2) throw new CniError(ErrorCode.InvalidNetworkConfig, `gateway.subnet ${subnet} must be IPv4`);
  if (c.prefixLen > 30) throw new CniError(ErrorCode.InvalidNetworkConfig, `gateway.subnet ${subnet} is too small`);
  const size = 2 ** (32 - c.prefixLen);
  const p = parsePrefixed(subnet)!; // parseCidr above has thrown for anything else
  const network = Number(subnetOf(p.ip, p.prefix).network.value);
  return { network, gateway: intToV4(network + 1), prefix: c.prefixLen, size };
}

/** ip link add BR type bridge; ip addr add GW/P dev BR; ip link set BR up (each only if missing) */
export function ensureGatewayBridge(host: NetlinkHandle, gw: GatewayConfig): void {
  const plan = gatewayPlan(gw.subnet);
  const existing = host.linkByName(gw.bridge);
  if (existing && existing.kind !== 'bridge') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `${gw.bridge} exists and is not a bridge (${existing.kind ?? 'device'})`);
  }
  if (!existing) {
    try {
      host.linkAdd({ kind: 'bridge', name: gw.bridge, mtu: gw.mtu, up: true });
    } catch (e) {
      if (!isNetlinkError(e, EEXIST)) throw e;
    }
  }
  const cidr = `${plan.gateway}/${plan.prefix}`;
  if (!host.addrList(gw.bridge).some((a) => a.cidr === cidr)) {
    try {
      host.addrAdd(gw.bridge, cidr);
    } catch (e) {
      if (!isNetlinkError(e, EEXIST)) throw e;
    }
  }
  host.linkSetUp(gw.bridge);
}

/** The gateway's rules as one transaction (see the header). */
export function gatewayRules(gw: GatewayConfig): Transaction {
  const tx = new Transaction();
  const br = JSON.stringify(gw.bridge);
  const net = `${intToV4(gatewayPlan(gw.subnet).network)}/${gatewayPlan(gw.subnet).prefix}`;
  tx.add({ kind: 'table', ...T, comment: 'cni-ts overlay gateway bridge' });
  syncChain(tx, T, { name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'accept' }, [
    `iifname ${br} oifname ${br} drop`,
    `oifname ${br} ct state established,related accept`,
    `oifname ${br} drop`,
  ]);
  syncChain(tx, T, { name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' }, [
    `ip saddr ${net} oifname != ${br} masquerade`,
  ]);
  return tx;
}

export function applyGatewayRules(nft: Nft, gw: GatewayConfig): void {
  nft.run(gatewayRules(gw));
}

/** Are the gateway rules there? (CHECK) */
export function gatewayRulesPresent(nft: Nft): boolean {
  const listing = nft.list('inet', TABLE);
  if (!listing) return false;
  const names = new Set(listing.chains.map((c) => c.name));
  return names.has('forward') && names.has('postrouting');
}

/** The host-local pool of gateway-bridge addresses. */
export class GatewayPool {
  constructor(
    private readonly dir: string,
    private readonly subnet: string,
  ) {}

  private owner(containerId: string, ifname: string): string {
    return `${containerId}/${ifname}`;
  }

  /** The owner's address, reserving the lowest free one when it has none yet. */
  allocate(containerId: string, ifname: string): { address: string; gateway: string; prefix: number } {
    const plan = gatewayPlan(this.subnet);
    const held = this.find(containerId, ifname);
    if (held) return { address: held, gateway: plan.gateway, prefix: plan.prefix };
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (let i = 2; i < plan.size - 1; i++) {
      const ip = intToV4(plan.network + i);
      try {
        fs.writeFileSync(path.join(this.dir, ip), this.owner(containerId, ifname), { flag: 'wx', mode: 0o600 });
        return { address: ip, gateway: plan.gateway, prefix: plan.prefix };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    throw new CniError(ErrorCode.TryAgainLater, `gateway subnet ${this.subnet} has no free address`);
  }

  find(containerId: string, ifname: string): string | undefined {
    return this.entries().find(([, o]) => o === this.owner(containerId, ifname))?.[0];
  }

  release(containerId: string, ifname: string): void {
    for (const [ip, o] of this.entries()) if (o === this.owner(containerId, ifname)) fs.rmSync(path.join(this.dir, ip), { force: true });
  }

  /** [address, owner] for every reservation */
  entries(): Array<[string, string]> {
    let files: string[];
    try {
      files = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: Array<[string, string]> = [];
    for (const f of files) {
      try {
        out.push([f, fs.readFileSync(path.join(this.dir, f), 'utf8')]);
      } catch {
        // released meanwhile
      }
    }
    return out;
  }
}
