/**
 * The bridge networks' firewall and NAT, in this project's own nftables
 * table. Everything is per network (per bridge), so one container's ADD or
 * DEL never has to find and delete individual rules:
 *
 *   table inet cni_ts_bridge
 *     set bridges   every bridge network we manage (for isolation)
 *     map fwd_in    bridge -> jump net-<br>-in    traffic routed out of a network
 *     map fwd_out   bridge -> jump net-<br>-out   traffic routed into a network
 *     map masq      bridge -> jump net-<br>-masq  egress NAT (ipMasq)
 *     chain forward      jump user first, then the vmap lookups, nothing else
 *     chain postrouting  one vmap lookup
 *     chain user         the operator's chain (Docker's DOCKER-USER, the reference
 *                        firewall plugin's CNI-ADMIN): created when missing, never
 *                        flushed by ADD, DEL or firewall-reload, evaluated before
 *                        any rule of ours in the forward path
 *     chain net-<br>-in / -out / -masq: that network's rules
 *
 * ADD rewrites its network's chains (flush + add: reconcile, not "add if
 * missing") and adds map elements (adding an existing one is a no-op), so a
 * repeated ADD converges to the same state in one atomic `nft -f -`. The
 * last container's DEL removes the network's elements and chains.
 *
 * Each network's NetworkFirewall is recorded on disk (shared/nft/records.ts)
 * when its rules are written and forgotten with them, so reloadTx can put
 * every network back after `nft flush ruleset` in one transaction.
 *
 * Inter-container traffic on one bridge never reaches these hooks (it is
 * switched, not routed); icc=false is enforced by the bridge itself with
 * port isolation, see main.ts.
 */
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { z } from 'zod';
import { LOCK_DIR } from '../../shared/paths';
import { isNotFound } from '../../shared/nft/errors';
import { TableTx, projectTable, type Marker, type OwnedTable } from '../../shared/nft/table';

export const BRIDGE_TABLE = projectTable('inet', 'bridge');
export const TABLE = BRIDGE_TABLE.table;
/** The network's lock (flock): shared by each container's ADD, exclusive around the network's rules and teardown, and for firewall-reload (main.ts withNetworkShared). */
export function networkLockFile(bridge: string): string {
  return path.join(LOCK_DIR, `bridge-${bridge}.lock`);
}

/** The operator's chain (see the header). */
export const USER_CHAIN = 'user';

export interface NetworkFirewall {
  bridge: string;
  /** the network's subnets (CIDRs with host bits cleared) */
  subnets: string[];
  /** egress NAT for traffic leaving the subnet (ipMasq) */
  masquerade: boolean;
  /** Docker's internal network: nothing is routed in or out */
  internal: boolean;
  /**
   * Docker's gateway_mode_ipv4/ipv6, per family (absent: the reference
   * plugin's behaviour, `masquerade` alone decides NAT and nothing filters
   * routed access). See gatewayRules.
   */
  gateway?: Partial<Record<GatewayFamily, GatewayMode>>;
  /** Docker's host_ipv4 / netavark's outbound_addr4/6: snat to this address instead of masquerade */
  snatTo?: Partial<Record<GatewayFamily, string>>;
}

export type GatewayFamily = 'ipv4' | 'ipv6';
export const GATEWAY_MODES = ['nat', 'nat-unprotected', 'routed', 'isolated'] as const;
export type GatewayMode = (typeof GATEWAY_MODES)[number];

/** Whether traffic of `family` leaving the network is NATed (masquerade or snat). */
export function natsFamily(n: NetworkFirewall, family: GatewayFamily): boolean {
  if (n.internal) return false;
  const mode = n.gateway?.[family];
  return mode ? mode === 'nat' || mode === 'nat-unprotected' : n.masquerade;
}

export function chainNames(bridge: string): { in: string; out: string; masq: string; cfg: string } {
  return { in: `net-${bridge}-in`, out: `net-${bridge}-out`, masq: `net-${bridge}-masq`, cfg: `cfg-${bridge}` };
}

/**
 * What the network's rules were written from, as a short digest: the
 * comment of the network's marker chain (cfg-<bridge>), so an ADD can ask
 * the kernel over netlink whether the rules it would write are already
 * there and skip the nft process entirely: only a network's first container
 * (or a changed configuration) pays for a transaction.
 */
export function networkSignature(n: NetworkFirewall): string {
  const fields: Record<string, unknown> = { v: 1, bridge: n.bridge, subnets: [...n.subnets].sort(), masquerade: n.masquerade && !n.internal, internal: n.internal };
  // Only when set, so a network configured without them keeps its signature (no rewrite on upgrade).
  if (n.gateway && Object.keys(n.gateway).length) fields.gateway = { ipv4: n.gateway.ipv4, ipv6: n.gateway.ipv6 };
  if (n.snatTo && Object.keys(n.snatTo).length) fields.snatTo = { ipv4: n.snatTo.ipv4, ipv6: n.snatTo.ipv6 };
  const canonical = JSON.stringify(fields);
  return `cni-ts network ${createHash('sha256').update(canonical).digest('hex').slice(0, 16)}`;
}

function q(name: string): string {
  return JSON.stringify(name);
}

/** The base objects every network relies on; idempotent. */
function addBase(tx: TableTx): void {
  tx.add({ kind: 'table', comment: 'cni-ts bridge networks' });
  tx.add({ kind: 'set', name: 'bridges', type: 'ifname' });
  tx.add({ kind: 'map', name: 'fwd_in', type: 'ifname', valueType: 'verdict' });
  tx.add({ kind: 'map', name: 'fwd_out', type: 'ifname', valueType: 'verdict' });
  // Keyed by the bridge the packet came in on, not by subnet: nft 1.0.6
  // cannot add an interval element that jumps to a chain created in the
  // same batch, and every container packet enters through its bridge anyway.
  tx.add({ kind: 'map', name: 'masq', type: 'ifname', valueType: 'verdict' });
  tx.add({ kind: 'chain', name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'accept' });
  tx.add({ kind: 'chain', name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' });
  // `add` only: an existing user chain keeps the operator's rules.
  tx.add({ kind: 'chain', name: USER_CHAIN });
  // Base chains hold only these lookups; rewriting them keeps them exact.
  tx.flush({ kind: 'chain', name: 'forward' });
  // First, so the operator's verdict comes before any accept of ours.
  tx.add({ kind: 'rule', chain: 'forward', rule: `jump ${USER_CHAIN}`, comment: 'operator rules first (never flushed by cni-ts)' });
  tx.add({ kind: 'rule', chain: 'forward', rule: 'iifname vmap @fwd_in' });
  tx.add({ kind: 'rule', chain: 'forward', rule: 'oifname vmap @fwd_out' });
  tx.flush({ kind: 'chain', name: 'postrouting' });
  tx.add({ kind: 'rule', chain: 'postrouting', rule: 'iifname vmap @masq' });
}

/** The transaction that installs (or re-asserts) one network's rules. */
export function networkAddTx(n: NetworkFirewall): TableTx {
  const tx = new TableTx(BRIDGE_TABLE);
  const c = chainNames(n.bridge);
  const br = q(n.bridge);
  addBase(tx);
  for (const name of [c.in, c.out, c.masq]) {
    tx.add({ kind: 'chain', name });
    tx.flush({ kind: 'chain', name });
  }
  // Routed out of this network: to itself is fine (hairpin through the
  // host), to another of our networks is not (Docker's isolation), and an
  // internal network reaches nothing else at all.
  tx.add({ kind: 'rule', chain: c.in, rule: `oifname ${br} return` });
  tx.add({ kind: 'rule', chain: c.in, rule: 'oifname @bridges drop', comment: 'isolation between networks' });
  if (n.internal) tx.add({ kind: 'rule', chain: c.in, rule: 'drop', comment: 'internal network: no egress' });
  tx.add({ kind: 'rule', chain: c.out, rule: `iifname ${br} return` });
  tx.add({ kind: 'rule', chain: c.out, rule: 'iifname @bridges drop', comment: 'isolation between networks' });
  if (n.internal) tx.add({ kind: 'rule', chain: c.out, rule: 'drop', comment: 'internal network: no ingress' });
  gatewayRules(tx, n);
  for (const subnet of n.subnets) {
    const family: GatewayFamily = subnet.includes(':') ? 'ipv6' : 'ipv4';
    if (!natsFamily(n, family)) continue;
    const ipFamily = family === 'ipv6' ? 'ip6' : 'ip';
    const to = n.snatTo?.[family];
    const action = to ? `snat ${ipFamily} to ${to}` : 'masquerade';
    tx.add({ kind: 'rule', chain: c.masq, rule: `${ipFamily} saddr ${subnet} ${ipFamily} daddr != ${subnet} oifname != ${br} ${action}`, comment: to ? 'ipMasq to the outbound address' : 'ipMasq' });
  }

  tx.add({ kind: 'element', set: 'bridges', key: br });
  tx.add({ kind: 'element', set: 'fwd_in', key: br, value: `jump ${c.in}` });
  tx.add({ kind: 'element', set: 'fwd_out', key: br, value: `jump ${c.out}` });
  tx.add({ kind: 'element', set: 'masq', key: br, value: `jump ${c.masq}` });
  // Last, so it only ever describes rules written in the same transaction.
  tx.marker(networkMarker(n));
  return tx;
}

/**
 * Docker's gateway modes, per family, in the network's chains (absent: no
 * rule, the reference plugin's behaviour):
 *   nat              NAT out (natsFamily); routed access from outside reaches
 *                    only what is published (portmap's DNAT) and replies
 *   nat-unprotected  NAT out; nothing filters routed access
 *   routed           no NAT; from outside only published ports (DNATed
 *                    connections), replies and ICMP echo get in
 *   isolated         nothing routed in or out of that family (main.ts also
 *                    gives the containers no route out and the bridge no
 *                    gateway address of that family)
 * "Published" is the conntrack DNAT status: portmap's table owns the port
 * registry, and a verdict of another table cannot be consulted here. The
 * host's own connections to its containers are not forwarded, so they are
 * never filtered.
 */
function gatewayRules(tx: TableTx, n: NetworkFirewall): void {
  if (n.internal) return; // already nothing in or out
  const c = chainNames(n.bridge);
  for (const family of ['ipv4', 'ipv6'] as const) {
    const mode = n.gateway?.[family];
    if (!mode || mode === 'nat-unprotected') continue;
    const nf = `meta nfproto ${family}`;
    if (mode === 'isolated') {
      tx.add({ kind: 'rule', chain: c.in, rule: `${nf} drop`, comment: `gateway mode isolated (${family}): no egress` });
      tx.add({ kind: 'rule', chain: c.out, rule: `${nf} drop`, comment: `gateway mode isolated (${family}): no ingress` });
      continue;
    }
    tx.add({ kind: 'rule', chain: c.out, rule: `${nf} ct state established,related return` });
    tx.add({ kind: 'rule', chain: c.out, rule: `${nf} ct status dnat return`, comment: 'published ports' });
    if (mode === 'routed') {
      const echo = family === 'ipv4' ? 'icmp type echo-request' : 'icmpv6 type echo-request';
      tx.add({ kind: 'rule', chain: c.out, rule: `${nf} ${echo} return` });
    }
    tx.add({ kind: 'rule', chain: c.out, rule: `${nf} drop`, comment: `gateway mode ${mode} (${family}): unpublished ports closed` });
  }
}

/** The network's marker (the table's marker convention, shared/nft/table.ts): cfg-<bridge>, commented with the signature. */
export function networkMarker(n: NetworkFirewall): Marker {
  return { chain: chainNames(n.bridge).cfg, comment: networkSignature(n) };
}

/**
 * Whether the network's rules are installed as configured (one netlink
 * read of its marker chain, no nft process): what every ADD but a network's
 * first asks, under the network's shared lock. When they are, the record
 * is asserted too (unchanged, it is only read), as ensureNetworkRules does.
 */
export function networkRulesCurrent(table: OwnedTable, n: NetworkFirewall): boolean {
  if (!table.isCurrent(networkMarker(n))) return false;
  table.records?.put(n.bridge, n);
  return true;
}

/**
 * Make sure the network's rules are installed as configured. Returns false
 * when they already were (no nft process started), true when it wrote them.
 */
export function ensureNetworkRules(table: OwnedTable, n: NetworkFirewall): boolean {
  const wrote = !table.isCurrent(networkMarker(n));
  if (wrote) table.run(networkAddTx(n));
  // After the rules: a record never describes a network that is not installed.
  table.records?.put(n.bridge, n);
  return wrote;
}

/** A recorded network read back (records.ts): fields added later pass through to networkAddTx. */
const recordSchema = z
  .object({
    bridge: z.string().regex(/^[A-Za-z0-9_-]{1,15}$/),
    subnets: z.array(z.string()),
    masquerade: z.boolean(),
    internal: z.boolean(),
  })
  .passthrough();

/** Every network recorded for this table; records that do not parse are skipped and named. */
export function recordedNetworks(table: OwnedTable, log: (msg: string) => void = () => {}): NetworkFirewall[] {
  const out: NetworkFirewall[] = [];
  for (const r of table.records?.all() ?? []) {
    const parsed = recordSchema.safeParse(r.value);
    if (parsed.success && parsed.data.bridge === r.key) out.push(parsed.data as NetworkFirewall);
    else log(`bridge firewall: record ${JSON.stringify(r.key)} is not a network record; skipped`);
  }
  return out;
}

/**
 * firewall-reload: every recorded network's rules in one transaction (the
 * same reconcile as ADD: base chains and network chains flushed and
 * rewritten, elements added), the user chain created if missing and never
 * flushed. Empty when nothing is recorded.
 */
export function reloadTx(networks: readonly NetworkFirewall[]): TableTx {
  const tx = new TableTx(BRIDGE_TABLE);
  for (const n of networks) tx.append(networkAddTx(n));
  return tx;
}

export function addNetworkRules(table: OwnedTable, n: NetworkFirewall): void {
  table.run(networkAddTx(n));
}

/** The transaction that removes one network whose elements and chains are all in place. */
export function networkRemoveTx(bridge: string): TableTx {
  const tx = new TableTx(BRIDGE_TABLE);
  const c = chainNames(bridge);
  const br = q(bridge);
  tx.delete({ kind: 'element', set: 'bridges', key: br });
  tx.delete({ kind: 'element', set: 'fwd_in', key: br });
  tx.delete({ kind: 'element', set: 'fwd_out', key: br });
  tx.delete({ kind: 'element', set: 'masq', key: br });
  for (const name of [c.in, c.out, c.masq]) {
    tx.flush({ kind: 'chain', name });
    tx.delete({ kind: 'chain', name });
  }
  tx.delete({ kind: 'chain', name: c.cfg });
  return tx;
}

/**
 * Remove one network's rules (its last container left). Missing pieces are
 * fine.
 *
 * The common case, a healthy network losing its last container, costs one
 * nft run: everything networkAddTx made is deleted by name. When that
 * fails because something is already gone (a repeated DEL, an interrupted
 * ADD, a hand-edited table), nft changed nothing, and the table is read
 * once to delete exactly what is left of this network.
 */
export function removeNetworkRules(table: OwnedTable, bridge: string): void {
  try {
    table.run(networkRemoveTx(bridge));
  } catch (e) {
    if (!isNotFound(e)) throw e;
    removeLeftovers(table, bridge);
  }
  // After the rules: a reload never finds a network whose rules are still there unrecorded.
  table.records?.remove(bridge);
}

function removeLeftovers(table: OwnedTable, bridge: string): void {
  const listing = table.list();
  if (!listing) return;
  const c = chainNames(bridge);
  const ours = new Set([c.in, c.out, c.masq, c.cfg]);
  const tx = table.tx();
  for (const set of listing.sets) {
    for (const el of set.elements ?? []) {
      const pointsHere = typeof el.value === 'string' && [...ours].some((name) => el.value === `jump ${name}`);
      const isBridgeMember = set.name === 'bridges' && (el.key === q(bridge) || el.key === bridge);
      if (pointsHere || isBridgeMember) tx.delete({ kind: 'element', set: set.name, key: el.key });
    }
  }
  for (const chain of listing.chains) {
    if (ours.has(chain.name)) {
      tx.flush({ kind: 'chain', name: chain.name });
      tx.delete({ kind: 'chain', name: chain.name });
    }
  }
  if (tx.size) table.run(tx);
}

/** CHECK: the network's chains are installed. */
export function networkRulesPresent(table: OwnedTable, bridge: string): boolean {
  const listing = table.list();
  if (!listing) return false;
  const names = new Set(listing.chains.map((ch) => ch.name));
  const c = chainNames(bridge);
  return names.has(c.in) && names.has(c.out) && names.has(c.masq);
}
