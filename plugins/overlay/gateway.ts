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
 *   chain forward      the operator's chain first; gwbridge -> gwbridge: drop;
 *                      into the bridge: replies only
 *   chain user         the operator's (Docker's DOCKER-USER, which filters
 *                      docker_gwbridge too): created when missing, never
 *                      flushed by ADD or firewall-reload
 *   chain postrouting  from the gateway subnet, leaving by another device: masquerade
 *   chain skeleton     the marker (shared/nft/table.ts): a digest of the configuration
 * Written whole (flush + add, reconcile), so it converges, by an ADD that
 * does not find the table's marker naming this configuration; an ADD that
 * finds it (one netlink lookup) writes nothing.
 *
 * Recovery: ADD records the configuration it wrote (shared/nft/records.ts,
 * one record, the table's one skeleton), so `cni-ts firewall-reload`, the
 * daemon's table watch and the overlay agent's (agent.ts) rebuild the table
 * after `nft flush ruleset` in one transaction, no container added again.
 * The table is never removed (DEL leaves it for the next container), and
 * neither is its record.
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
import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { Nft } from '../../shared/nft/nft-interface';
import { realTable, type RealTableOptions } from '../../shared/nft/real';
import { OwnedTable, TableTx, projectTable, type Skeleton } from '../../shared/nft/table';

export const GATEWAY_TABLE = projectTable('inet', 'overlay');
export const TABLE = GATEWAY_TABLE.table;
/** The operator's chain (see the header). */
export const USER_CHAIN = 'user';

/**
 * The gateway table on `nft` (a test's fake); `chain` reads markers without
 * nft (absent: the rules are written on every ADD). It keeps no records, so
 * no reload ever writes it, and it takes no lock (the lock guards a record
 * against a reload).
 */
export function gatewayTable(nft: Nft, chain?: (name: string) => { comment?: string } | undefined): OwnedTable {
  return new OwnedTable(GATEWAY_TABLE, { nft, lock: (fn) => fn(), ...(chain && { chain: (_ref, name) => chain(name) }) });
}

/** The gateway table of this host (or opts.netnsPath): markers read over netlink, records kept, as every other table's. */
export function realGatewayTable(opts: RealTableOptions = {}): OwnedTable {
  return realTable(GATEWAY_TABLE, opts);
}

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

/**
 * The whole table is the gateway's skeleton: its marker's comment is a
 * digest of the configuration, so a changed bridge or subnet rewrites it.
 */
export function gatewaySkeleton(gw: GatewayConfig): Skeleton {
  const br = JSON.stringify(gw.bridge);
  const plan = gatewayPlan(gw.subnet);
  const net = `${intToV4(plan.network)}/${plan.prefix}`;
  // v2: the user chain
  const digest = createHash('sha256').update(JSON.stringify({ v: 2, bridge: gw.bridge, net })).digest('hex').slice(0, 16);
  return {
    marker: { chain: 'skeleton', comment: `cni-ts gateway ${digest}` },
    queue: (tx) => {
      tx.add({ kind: 'table', comment: 'cni-ts overlay gateway bridge' });
      // `add` only: an existing user chain keeps the operator's rules.
      tx.add({ kind: 'chain', name: USER_CHAIN });
      tx.syncChain({ name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'accept' }, [
        // first, so the operator's verdict comes before our accept
        { rule: `jump ${USER_CHAIN}`, comment: 'operator rules first (never flushed by cni-ts)' },
        `iifname ${br} oifname ${br} drop`,
        `oifname ${br} ct state established,related accept`,
        `oifname ${br} drop`,
      ]);
      tx.syncChain({ name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' }, [`ip saddr ${net} oifname != ${br} masquerade`]);
    },
  };
}

/** The gateway's rules as one transaction (see the header), whether or not they are current. */
export function gatewayRules(gw: GatewayConfig): TableTx {
  const tx = new TableTx(GATEWAY_TABLE);
  const skeleton = gatewaySkeleton(gw);
  skeleton.queue(tx);
  return tx.marker(skeleton.marker);
}

/** The key of the table's one record (see the header). */
const RECORD_KEY = 'gateway';

/**
 * ADD: write the gateway's rules unless the table's marker says they are
 * current, and record what they were written from. Under the table's lock,
 * so a reload never writes an older record over a newer ADD. Returns
 * whether it wrote.
 */
export function applyGatewayRules(table: OwnedTable, gw: GatewayConfig): boolean {
  const config: GatewayConfig = { bridge: gw.bridge, subnet: gw.subnet };
  return table.withLock(() => {
    const tx = table.tx();
    const wrote = table.ensureSkeleton(tx, gatewaySkeleton(config));
    if (wrote) table.run(tx);
    // After the rules: a record never describes a table that is not there.
    table.records?.put(RECORD_KEY, config);
    return wrote;
  });
}

/** A gateway record read back: trusted no more than a config (the bridge name goes into rules). */
const recordSchema = z
  .object({
    bridge: z.string().min(1).max(15).regex(/^[A-Za-z0-9_.-]+$/),
    subnet: z.string().regex(/^\d{1,3}(?:\.\d{1,3}){3}\/\d{1,2}$/),
  })
  .strict();

/** The recorded gateway, if any; a record that does not parse is skipped and named. */
export function recordedGateway(table: OwnedTable, log: (msg: string) => void = () => {}): GatewayConfig | undefined {
  for (const r of table.records?.all() ?? []) {
    const parsed = r.key === RECORD_KEY ? recordSchema.safeParse(r.value) : undefined;
    if (parsed?.success) {
      try {
        gatewayPlan(parsed.data.subnet);
        return parsed.data;
      } catch {
        // an IPv6 or too small subnet: not a record ADD writes
      }
    }
    log(`overlay gateway: record ${JSON.stringify(r.key)} is not a gateway record; skipped`);
  }
  return undefined;
}

/**
 * firewall-reload (and the daemon's and agent's table watches, with
 * onlyGone): rebuild the gateway table from its record in one
 * transaction, the user chain created if missing and never flushed.
 * Returns the gateway rebuilt; undefined when nothing is recorded, or,
 * with onlyGone, when the marker says the table is there.
 */
export function reloadGatewayTable(table: OwnedTable, opts: { onlyGone?: boolean; log?: (msg: string) => void } = {}): GatewayConfig | undefined {
  return table.withLock(() => {
    const gw = recordedGateway(table, opts.log);
    if (!gw) return undefined;
    if (opts.onlyGone && table.isCurrent(gatewaySkeleton(gw).marker)) return undefined;
    table.run(gatewayRules(gw));
    return gw;
  });
}

/** Are the gateway rules there? (CHECK) */
export function gatewayRulesPresent(table: OwnedTable): boolean {
  const listing = table.list();
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
