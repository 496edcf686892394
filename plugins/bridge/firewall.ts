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
 *     chain forward / postrouting: one vmap lookup each, nothing else
 *     chain net-<br>-in / -out / -masq: that network's rules
 *
 * ADD rewrites its network's chains (flush + add: reconcile, not "add if
 * missing") and adds map elements (adding an existing one is a no-op), so a
 * repeated ADD converges to the same state in one atomic `nft -f -`. The
 * last container's DEL removes the network's elements and chains.
 *
 * Inter-container traffic on one bridge never reaches these hooks (it is
 * switched, not routed); icc=false is enforced by the bridge itself with
 * port isolation, see main.ts.
 */
import { isNotFound } from '../../shared/nft/errors';
import { createHash } from 'node:crypto';
import { nftGetChain } from '../../shared/netlink/nftables';
import { Nft } from '../../shared/nft/nft-interface';
import { Transaction } from '../../shared/nft/transaction';

export const TABLE = 'cni_ts_bridge';
const T = { family: 'inet' as const, table: TABLE };

export interface NetworkFirewall {
  bridge: string;
  /** the network's subnets (CIDRs with host bits cleared) */
  subnets: string[];
  /** egress NAT for traffic leaving the subnet (ipMasq) */
  masquerade: boolean;
  /** Docker's internal network: nothing is routed in or out */
  internal: boolean;
}

export function chainNames(bridge: string): { in: string; out: string; masq: string; cfg: string } {
  return { in: `net-${bridge}-in`, out: `net-${bridge}-out`, masq: `net-${bridge}-masq`, cfg: `cfg-${bridge}` };
}

/**
 * What the network's rules were written from, as a short digest. It is kept
 * as the comment of an empty marker chain (cfg-<bridge>), so an ADD can ask
 * the kernel over netlink whether the rules it would write are already
 * there and skip the nft process entirely: only a network's first container
 * (or a changed configuration) pays for a transaction.
 */
export function networkSignature(n: NetworkFirewall): string {
  const canonical = JSON.stringify({ v: 1, bridge: n.bridge, subnets: [...n.subnets].sort(), masquerade: n.masquerade && !n.internal, internal: n.internal });
  return `cni-ts network ${createHash('sha256').update(canonical).digest('hex').slice(0, 16)}`;
}

function q(name: string): string {
  return JSON.stringify(name);
}

/** The base objects every network relies on; idempotent. */
function addBase(tx: Transaction): void {
  tx.add({ kind: 'table', ...T, comment: 'cni-ts bridge networks' });
  tx.add({ kind: 'set', ...T, name: 'bridges', type: 'ifname' });
  tx.add({ kind: 'map', ...T, name: 'fwd_in', type: 'ifname', valueType: 'verdict' });
  tx.add({ kind: 'map', ...T, name: 'fwd_out', type: 'ifname', valueType: 'verdict' });
  // Keyed by the bridge the packet came in on, not by subnet: nft 1.0.6
  // cannot add an interval element that jumps to a chain created in the
  // same batch, and every container packet enters through its bridge anyway.
  tx.add({ kind: 'map', ...T, name: 'masq', type: 'ifname', valueType: 'verdict' });
  tx.add({ kind: 'chain', ...T, name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'accept' });
  tx.add({ kind: 'chain', ...T, name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' });
  // Base chains hold only these lookups; rewriting them keeps them exact.
  tx.flush({ kind: 'chain', ...T, name: 'forward' });
  tx.add({ kind: 'rule', ...T, chain: 'forward', rule: 'iifname vmap @fwd_in' });
  tx.add({ kind: 'rule', ...T, chain: 'forward', rule: 'oifname vmap @fwd_out' });
  tx.flush({ kind: 'chain', ...T, name: 'postrouting' });
  tx.add({ kind: 'rule', ...T, chain: 'postrouting', rule: 'iifname vmap @masq' });
}

/** The transaction that installs (or re-asserts) one network's rules. */
export function networkAddTx(n: NetworkFirewall): Transaction {
  const tx = new Transaction();
  const c = chainNames(n.bridge);
  const br = q(n.bridge);
  addBase(tx);
  for (const name of [c.in, c.out, c.masq]) {
    tx.add({ kind: 'chain', ...T, name });
    tx.flush({ kind: 'chain', ...T, name });
  }
  // Routed out of this network: to itself is fine (hairpin through the
  // host), to another of our networks is not (Docker's isolation), and an
  // internal network reaches nothing else at all.
  tx.add({ kind: 'rule', ...T, chain: c.in, rule: `oifname ${br} return` });
  tx.add({ kind: 'rule', ...T, chain: c.in, rule: 'oifname @bridges drop', comment: 'isolation between networks' });
  if (n.internal) tx.add({ kind: 'rule', ...T, chain: c.in, rule: 'drop', comment: 'internal network: no egress' });
  tx.add({ kind: 'rule', ...T, chain: c.out, rule: `iifname ${br} return` });
  tx.add({ kind: 'rule', ...T, chain: c.out, rule: 'iifname @bridges drop', comment: 'isolation between networks' });
  if (n.internal) tx.add({ kind: 'rule', ...T, chain: c.out, rule: 'drop', comment: 'internal network: no ingress' });
  if (n.masquerade && !n.internal) {
    for (const subnet of n.subnets) {
      const ipFamily = subnet.includes(':') ? 'ip6' : 'ip';
      tx.add({ kind: 'rule', ...T, chain: c.masq, rule: `${ipFamily} saddr ${subnet} ${ipFamily} daddr != ${subnet} oifname != ${br} masquerade`, comment: 'ipMasq' });
    }
  }

  tx.add({ kind: 'element', ...T, set: 'bridges', key: br });
  tx.add({ kind: 'element', ...T, set: 'fwd_in', key: br, value: `jump ${c.in}` });
  tx.add({ kind: 'element', ...T, set: 'fwd_out', key: br, value: `jump ${c.out}` });
  tx.add({ kind: 'element', ...T, set: 'masq', key: br, value: `jump ${c.masq}` });
  // Re-create the marker so its comment names this configuration (a chain's
  // comment cannot be changed in place); last, so it only ever describes
  // rules that were written in the same transaction.
  tx.add({ kind: 'chain', ...T, name: c.cfg });
  tx.delete({ kind: 'chain', ...T, name: c.cfg });
  tx.add({ kind: 'chain', ...T, name: c.cfg, comment: networkSignature(n) });
  return tx;
}

/** Reads a chain's comment from the kernel; undefined when the chain is absent. */
export type ChainQuery = (family: 'inet', table: string, chain: string) => { comment?: string } | undefined;

/**
 * Make sure the network's rules are installed as configured. Returns false
 * when they already were (no nft process started), true when it wrote them.
 */
export function ensureNetworkRules(nft: Nft, n: NetworkFirewall, query: ChainQuery = nftGetChain): boolean {
  if (query('inet', TABLE, chainNames(n.bridge).cfg)?.comment === networkSignature(n)) return false;
  nft.run(networkAddTx(n));
  return true;
}

export function addNetworkRules(nft: Nft, n: NetworkFirewall): void {
  nft.run(networkAddTx(n));
}

/** The transaction that removes one network whose elements and chains are all in place. */
export function networkRemoveTx(bridge: string): Transaction {
  const tx = new Transaction();
  const c = chainNames(bridge);
  const br = q(bridge);
  tx.delete({ kind: 'element', ...T, set: 'bridges', key: br });
  tx.delete({ kind: 'element', ...T, set: 'fwd_in', key: br });
  tx.delete({ kind: 'element', ...T, set: 'fwd_out', key: br });
  tx.delete({ kind: 'element', ...T, set: 'masq', key: br });
  for (const name of [c.in, c.out, c.masq]) {
    tx.flush({ kind: 'chain', ...T, name });
    tx.delete({ kind: 'chain', ...T, name });
  }
  tx.delete({ kind: 'chain', ...T, name: c.cfg });
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
export function removeNetworkRules(nft: Nft, bridge: string): void {
  try {
    nft.run(networkRemoveTx(bridge));
    return;
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  const listing = nft.list('inet', TABLE);
  if (!listing) return;
  const c = chainNames(bridge);
  const ours = new Set([c.in, c.out, c.masq, c.cfg]);
  const tx = new Transaction();
  for (const set of listing.sets) {
    for (const el of set.elements ?? []) {
      const pointsHere = typeof el.value === 'string' && [...ours].some((name) => el.value === `jump ${name}`);
      const isBridgeMember = set.name === 'bridges' && (el.key === q(bridge) || el.key === bridge);
      if (pointsHere || isBridgeMember) tx.delete({ kind: 'element', ...T, set: set.name, key: el.key });
    }
  }
  for (const chain of listing.chains) {
    if (ours.has(chain.name)) {
      tx.flush({ kind: 'chain', ...T, name: chain.name });
      tx.delete({ kind: 'chain', ...T, name: chain.name });
    }
  }
  if (tx.size) nft.run(tx);
}

/** CHECK: the network's chains are installed. */
export function networkRulesPresent(nft: Nft, bridge: string): boolean {
  const listing = nft.list('inet', TABLE);
  if (!listing) return false;
  const names = new Set(listing.chains.map((ch) => ch.name));
  const c = chainNames(bridge);
  return names.has(c.in) && names.has(c.out) && names.has(c.masq);
}
