/**
 * portmap's nftables state, in the project's own table:
 *
 *   table inet cni_ts_portmap
 *     map wildcard4  inet_proto . inet_service : ipv4_addr . inet_service                 tcp . 8080 : 10.1.0.5 . 80
 *     map wildcard6  inet_proto . inet_service : ipv6_addr . inet_service
 *     map hostip4    ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service     127.0.0.1 . tcp . 8080 : 10.1.0.5 . 80
 *     map hostip6    ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
 *     set masq_ports4  ipv4_addr . ipv4_addr . inet_proto . inet_service, flags interval  10.1.0.0/24 . 10.1.0.5 . tcp . 80-90
 *     set masq_ports6  ipv6_addr . ipv6_addr . inet_proto . inet_service, flags interval
 *     chain prerouting   nat/prerouting  dstnat:  127.0.0.0/8 returns; else fib daddr type local jump dispatch
 *     chain output       nat/output      -100:    fib daddr type local jump dispatch, for connections from the host itself (localhost included)
 *     chain input        filter/input    filter:  the martian guard: 127.0.0.0/8 not from lo and not DNATed is dropped
 *     chain dispatch     DNAT by map lookup: a host-address claim first, then a wildcard one
 *                        (`dnat ip to ip daddr . meta l4proto . th dport map @hostip4`, ...)
 *     chain postrouting  nat/postrouting srcnat:  `ct status dnat ip saddr . ip daddr . meta l4proto . th dport @masq_ports4 masquerade`
 *
 * The rules are fixed (the skeleton, written once by `nft -f` and marked,
 * shared/nft/table.ts): a container's state is only ELEMENTS, every one
 * commented with its owner tag, and ADD and DEL write them over netlink as
 * one atomic nfnetlink batch (OwnedTable.runElements,
 * shared/netlink/nft-elements.ts): no nft process, no ruleset listing.
 *
 * The DNAT target is the map's data (concatenated NAT data, container
 * address . container port), so a port range is one element per port, which
 * also shifts ports (8000-8010 -> 80-90) without a rule. Masquerading needs
 * no per-container rule either: masq_ports4/6 hold (source range . container
 * address . protocol . container port range) for each published container
 * port, the sources being 127.0.0.0/8 (localhost, needs route_localnet, see
 * main.ts) and the container's own subnet (hairpin: itself or a neighbour
 * on the bridge reaching it through a host address, whose replies must come
 * back through the host to be un-NATed), or 0.0.0.0/0 and ::/0 with
 * masqAll, and nothing with snat false. The lookup is on the connection's
 * post-DNAT destination; a range of container ports is one interval.
 *
 * The maps are the port registry: a claim element's key is the host port,
 * and adding a key that exists with other data fails in the kernel
 * (EEXIST), so two containers can never hold the same key even when their
 * ADDs race. The conflict check that names the holder (code 110), and finds
 * overlaps between a wildcard and a host-address claim, reads the records
 * (shared/nft/records.ts: each owner's plan) under the portmap lock, or,
 * where a table keeps no records, a netlink listing (the element comments
 * name the owner); a kernel refusal the records did not predict is named
 * from a listing too.
 *
 * DEL releases the elements its record lists: for each `add element k : v`
 * then `delete element k`, in one batch. The add is a no-op on our own
 * element and fails on another value, so a DEL never deletes another
 * container's claim. Without a record, or when the batch fails (table gone,
 * a key held by someone else), the table is listed once over netlink and
 * the elements carrying our owner tag go.
 *
 * The skeleton is (re)written whenever its marker is not this version's (a
 * new version, `nft flush ruleset`): its base chains are flushed and
 * written again, an older version's maps removed, and the ADD's batch then
 * re-adds every recorded owner's elements with its own, as `cni-ts
 * firewall-reload` does (reloadPortmap).
 *
 * Loopback publishing (hostIP in 127.0.0.0/8, or a wildcard port reached
 * through 127.0.0.1) answers connections started on the host and nothing
 * else. A neighbour on the host's L2, or a container on the bridge, can send
 * a packet to 127.0.0.1 through the host's MAC (moby#41872): prerouting
 * therefore never dispatches a 127.0.0.0/8 destination, so only the output
 * path (locally started connections) DNATs to loopback ports; a packet on lo
 * never needs prerouting either, its connection was NATed in output. The
 * forwarded localhost connection needs route_localnet, which would also let
 * a container (CAP_NET_RAW is a runtime default) reach services the host
 * binds to 127.0.0.1, etcd's default endpoint among them (CVE-2020-8558):
 * the input chain drops what is addressed to 127.0.0.0/8, did not arrive on
 * lo and is not part of a DNATed connection (the replies of the host's own
 * localhost connections are), as kubelet's KUBE-FIREWALL does, but keyed on
 * the interface rather than the source address, which a sender can forge.
 * Both are skeleton rules, in place before any element is added (the
 * marker is checked first); main.ts turns route_localnet on only after.
 */
import type { FirewallRecord } from '../../shared/nft/records';
import { NftError } from '../../shared/nft/errors';
import type { Listing, SetLayout } from '../../shared/nft/nft-interface';
import { TableTx, networkTag, ownerTag, projectTable, tagMatches, type ElementSpec, type ElementTx, type OwnedTable, type Owner, type Skeleton } from '../../shared/nft/table';
import { cidrContains } from '../../shared/ip';
import { z } from 'zod';
import { canonicalIp, formatCidr, isIp, networkOf, parseCidr } from '../../shared/netlink/ipaddr';
import { allPorts, bucketClaims, overlapping, type Claim, type ContainerAddr } from './config';

export const PORTMAP_TABLE = projectTable('inet', 'portmap');
export const TABLE = PORTMAP_TABLE.table;
export const T = PORTMAP_TABLE;

export const SETS = {
  wildcard4: 'wildcard4',
  wildcard6: 'wildcard6',
  hostip4: 'hostip4',
  hostip6: 'hostip6',
  masq4: 'masq_ports4',
  masq6: 'masq_ports6',
} as const;

/** The sets' layouts, as the skeleton defines them (element batches lay keys out by them). */
export const LAYOUTS: Readonly<Record<string, SetLayout>> = {
  [SETS.wildcard4]: { key: ['inet_proto', 'inet_service'], value: ['ipv4_addr', 'inet_service'] },
  [SETS.wildcard6]: { key: ['inet_proto', 'inet_service'], value: ['ipv6_addr', 'inet_service'] },
  [SETS.hostip4]: { key: ['ipv4_addr', 'inet_proto', 'inet_service'], value: ['ipv4_addr', 'inet_service'] },
  [SETS.hostip6]: { key: ['ipv6_addr', 'inet_proto', 'inet_service'], value: ['ipv6_addr', 'inet_service'] },
  [SETS.masq4]: { key: ['ipv4_addr', 'ipv4_addr', 'inet_proto', 'inet_service'], interval: true },
  [SETS.masq6]: { key: ['ipv6_addr', 'ipv6_addr', 'inet_proto', 'inet_service'], interval: true },
};

const CLAIM_SETS: readonly string[] = [SETS.wildcard4, SETS.wildcard6, SETS.hostip4, SETS.hostip6];
const MASQ_SETS: readonly string[] = [SETS.masq4, SETS.masq6];

/** An element of our sets, with the owner tag it carries as its comment. */
export type Elem = ElementSpec & { key: string[]; value?: string[] };

export const elemText = (e: Pick<ElementSpec, 'set' | 'key'>): string => `${e.set} ${e.key.join(' . ')}`;

/** A single-port claim's element: its host port registered, its DNAT target as the data. */
export function claimElement(c: Claim, tag?: string): Elem {
  const v4 = c.family === 'ipv4';
  const set = c.hostIP ? (v4 ? SETS.hostip4 : SETS.hostip6) : v4 ? SETS.wildcard4 : SETS.wildcard6;
  const key = c.hostIP ? [c.hostIP, c.protocol, String(c.hostPort)] : [c.protocol, String(c.hostPort)];
  return { set, key, value: [c.containerIP, String(c.containerPort)], ...(tag !== undefined && { comment: tag }) };
}

export interface MasqOptions {
  /** masquerade localhost and hairpin sources (the `snat` option) */
  snat: boolean;
  /** masquerade every source (the `masqAll` option) */
  masqAll: boolean;
}

/** A prefix as nft prints it: a full-width one is the bare address. */
function prefixText(cidr: string): string {
  const [addr, len] = cidr.split('/');
  return len === undefined || Number(len) === (addr.includes(':') ? 128 : 32) ? addr : cidr;
}

/** Sorted distinct ports as nft prints intervals of them: "80", "80-90". */
function portIntervals(ports: readonly number[]): string[] {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    out.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return out;
}

/** The masquerade elements of an owner's claims (see the header): none with snat false. */
export function masqElements(claims: readonly Claim[], addrs: readonly ContainerAddr[], opts: MasqOptions, tag?: string): Elem[] {
  if (!opts.snat) return [];
  const out: Elem[] = [];
  for (const a of addrs) {
    const mine = allPorts(claims).filter((c) => c.family === a.family && c.containerIP === a.ip);
    if (!mine.length) continue;
    let sources: string[];
    if (opts.masqAll) sources = [a.family === 'ipv4' ? '0.0.0.0/0' : '::/0'];
    // No ::1 for IPv6: the kernel never lets a packet from ::1 leave lo (see config.ts).
    else if (a.family === 'ipv6' || cidrContains(a.subnet, '127.0.0.1')) sources = [prefixText(a.subnet)];
    else sources = ['127.0.0.0/8', prefixText(a.subnet)];
    const set = a.family === 'ipv4' ? SETS.masq4 : SETS.masq6;
    for (const proto of ['tcp', 'udp', 'sctp'] as const) {
      const ports = mine.filter((c) => c.protocol === proto).map((c) => c.containerPort);
      for (const range of portIntervals(ports)) for (const src of sources) out.push({ set, key: [src, a.ip, proto, range], ...(tag !== undefined && { comment: tag }) });
    }
  }
  return out;
}

export interface AddPlan {
  owner: Required<Owner>;
  claims: readonly Claim[];
  addrs: readonly ContainerAddr[];
  masq: MasqOptions;
}

/** Every element an owner's ADD installs, each once, commented with its tag. */
export function planElements(plan: AddPlan): Elem[] {
  const tag = ownerTag(plan.owner);
  const seen = new Map<string, Elem>();
  for (const e of [...allPorts(plan.claims).map((c) => claimElement(c, tag)), ...masqElements(plan.claims, plan.addrs, plan.masq, tag)]) seen.set(elemText(e), e);
  return [...seen.values()];
}

// ---- the skeleton ------------------------------------------------------------------

/**
 * The marker of this version's skeleton (sets, base chains and their
 * rules), in the owned tables' convention (shared/nft/table.ts): read over
 * netlink, so an ADD that finds it writes only elements. Any other marker
 * (or none) means the skeleton is written again and the elements refilled
 * from the records.
 */
export const SKELETON_MARKER = { chain: 'skeleton', comment: 'cni-ts portmap skeleton v4' } as const;

/** Loopback destinations are dispatched in the output path only (see the header). */
export const LOOPBACK_PREROUTING_RULE = 'ip daddr 127.0.0.0/8 return';
/**
 * The martian guard that makes route_localnet safe (see the header): a
 * DNATed connection's packets go on, everything else to 127.0.0.0/8 from
 * outside lo is dropped. Two rules rather than `ct status ! dnat drop`,
 * which would let a packet conntrack did not track (invalid, notrack) past:
 * with no conntrack entry a `ct` match fails in either polarity.
 */
export const MARTIAN_RULES = ['iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat return', 'iifname != "lo" ip daddr 127.0.0.0/8 drop'] as const;
/** The guards' comments: how CHECK finds them in a listing (rule text is not listed). */
export const GUARD_COMMENTS = {
  prerouting: 'loopback ports answer the host only',
  input: '127.0.0.0/8 from outside lo, not DNATed: dropped (route_localnet guard)',
} as const;

/** The maps of the v1-v3 skeletons (verdict maps into per-container chains), removed by this one. */
const OLD_MAPS: Record<string, string[]> = {
  wildcard_ports: ['nf_proto', 'inet_proto', 'inet_service'],
  hostip4_ports: ['ipv4_addr', 'inet_proto', 'inet_service'],
  hostip6_ports: ['ipv6_addr', 'inet_proto', 'inet_service'],
  masq4: ['ipv4_addr', 'inet_proto', 'inet_service'],
  masq6: ['ipv6_addr', 'inet_proto', 'inet_service'],
};
const OLD_SKELETON_MARKERS = ['skeleton-v1', 'skeleton-v2'];

function queueSkeleton(tx: TableTx): void {
  tx.add({ kind: 'table', comment: 'cni-ts portmap: published container ports' });
  for (const [name, l] of Object.entries(LAYOUTS)) {
    if (l.value) tx.add({ kind: 'map', name, type: [...l.key], valueType: [...l.value] });
    else tx.add({ kind: 'set', name, type: [...l.key], ...(l.interval && { flags: ['interval'] as const }) });
  }
  tx.add({ kind: 'chain', name: 'dispatch' });
  tx.add({ kind: 'chain', name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' });
  // nft 1.0.6 names "dstnat" only on prerouting; -100 is the same priority.
  tx.add({ kind: 'chain', name: 'output', type: 'nat', hook: 'output', priority: -100, policy: 'accept' });
  tx.add({ kind: 'chain', name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' });
  tx.add({ kind: 'chain', name: 'input', type: 'filter', hook: 'input', priority: 'filter', policy: 'accept' });
  const rules: Record<string, Array<{ rule: string; comment?: string }>> = {
    dispatch: [
      { rule: `dnat ip to ip daddr . meta l4proto . th dport map @${SETS.hostip4}` },
      { rule: `dnat ip6 to ip6 daddr . meta l4proto . th dport map @${SETS.hostip6}` },
      { rule: `meta nfproto ipv4 dnat ip to meta l4proto . th dport map @${SETS.wildcard4}` },
      { rule: `meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @${SETS.wildcard6}` },
    ],
    prerouting: [
      { rule: LOOPBACK_PREROUTING_RULE, comment: GUARD_COMMENTS.prerouting },
      { rule: 'fib daddr type local jump dispatch' },
    ],
    output: [
      { rule: 'ip6 daddr ::1 return', comment: 'IPv6 cannot forward from loopback' },
      { rule: 'fib daddr type local jump dispatch' },
    ],
    postrouting: [
      { rule: `ct status dnat ip saddr . ip daddr . meta l4proto . th dport @${SETS.masq4} masquerade` },
      { rule: `ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @${SETS.masq6} masquerade` },
    ],
    input: [{ rule: MARTIAN_RULES[0] }, { rule: MARTIAN_RULES[1], comment: GUARD_COMMENTS.input }],
  };
  for (const [chain, list] of Object.entries(rules)) {
    tx.flush({ kind: 'chain', name: chain });
    for (const r of list) tx.add({ kind: 'rule', chain, ...r });
  }
  // An older skeleton's maps, no longer used by any rule once the chains
  // above were flushed (add-then-delete: gone whether or not they were
  // there). Its per-container chains are left, unreferenced; the records
  // put its containers back (the ADD's or reload's batch).
  for (const [name, type] of Object.entries(OLD_MAPS)) {
    tx.add({ kind: 'map', name, type, valueType: 'verdict' });
    tx.delete({ kind: 'map', name });
  }
  for (const name of OLD_SKELETON_MARKERS) {
    tx.add({ kind: 'chain', name });
    tx.delete({ kind: 'chain', name });
  }
}

/** The skeleton in the owned tables' form (shared/nft/table.ts). */
export const PORTMAP_SKELETON: Skeleton = { marker: SKELETON_MARKER, queue: queueSkeleton };

/**
 * Write the skeleton unless its marker is current (one `nft -f`). Returns
 * whether it did: elements may then be missing (a flush, an upgrade).
 */
export function ensureSkeleton(table: OwnedTable): boolean {
  const tx = table.tx();
  if (!table.ensureSkeleton(tx, PORTMAP_SKELETON)) return false;
  table.run(tx);
  return true;
}

// ---- what is held: from the records or a listing ---------------------------------------

/** An element in the table (or recorded), with the owner tag it carries. */
export interface Held extends Elem {
  tag?: string;
}

const splitText = (text: string): string[] => text.split(' . ').map((p) => p.trim());

/** Every element of our sets in a listing. */
export function heldOfListing(listing: Listing | undefined): Held[] {
  const out: Held[] = [];
  for (const s of listing?.sets ?? []) {
    if (!LAYOUTS[s.name]) continue;
    for (const e of s.elements) {
      out.push({ set: s.name, key: splitText(e.key), ...(e.value !== undefined && { value: splitText(e.value) }), ...(e.comment !== undefined && { tag: e.comment, comment: e.comment }) });
    }
  }
  return out;
}

/** What each plan holds, by plan: recorded plans are shared and frozen (checkedPlan), so a worker works it out once per record. */
const heldBefore = new WeakMap<AddPlan, Held[]>();

/** Every element the plans installed. */
export function heldOfPlans(plans: readonly AddPlan[]): Held[] {
  return plans.flatMap((p) => {
    let held = heldBefore.get(p);
    if (!held) {
      held = planElements(p).map((e) => ({ ...e, tag: e.comment }));
      if (Object.isFrozen(p)) heldBefore.set(p, deepFreeze(held));
    }
    return held;
  });
}

/** Another owner's claim in the way of one of ours. */
export interface Conflict {
  claim: Claim;
  /** what the other owner holds, e.g. "tcp 0.0.0.0:8080" */
  held: string;
  /** the other owner's tag ("cni-ts:<network>:<containerID>:<ifname>"), when known */
  ownerTag?: string;
}

type PortOf = Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>;

/** Decode one of our claim elements back into the part of a Claim that decides overlaps. */
function claimOfElement(e: Pick<Elem, 'set' | 'key'>): PortOf | undefined {
  const idx = e.set === SETS.hostip4 || e.set === SETS.hostip6 ? 1 : 0;
  const proto = e.key[idx];
  const hostPort = Number(e.key[idx + 1]);
  if (!Number.isInteger(hostPort) || (proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp')) return undefined;
  if (e.set === SETS.wildcard4) return { family: 'ipv4', protocol: proto, hostPort };
  if (e.set === SETS.wildcard6) return { family: 'ipv6', protocol: proto, hostPort };
  if (e.set === SETS.hostip4) return { family: 'ipv4', protocol: proto, hostPort, hostIP: e.key[0] };
  if (e.set === SETS.hostip6) return { family: 'ipv6', protocol: proto, hostPort, hostIP: e.key[0] };
  return undefined;
}

/** Claims of other owners that overlap ours (same family, protocol and port; same or wildcard host address). */
export function findConflicts(held: readonly Held[], owner: Required<Owner>, claims: readonly Claim[]): Conflict[] {
  const mine = ownerTag(owner);
  const buckets = bucketClaims(allPorts(claims));
  const out: Conflict[] = [];
  for (const h of held) {
    if (h.tag === mine || !CLAIM_SETS.includes(h.set)) continue;
    const port = claimOfElement(h);
    if (!port) continue;
    for (const c of overlapping(buckets, port)) out.push({ claim: c, held: describeHeld(port), ...(h.tag !== undefined && { ownerTag: h.tag }) });
  }
  return out;
}

function describeHeld(h: PortOf): string {
  const host = h.hostIP ? (h.family === 'ipv6' ? `[${h.hostIP}]` : h.hostIP) : h.family === 'ipv6' ? '[::]' : '0.0.0.0';
  return `${h.protocol} ${host}:${h.hostPort}`;
}

/** Whether `err` is the kernel refusing one of our claim elements because another owner holds the key. */
export function isClaimCollision(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'exists' && /^add element /.test(err.command ?? '') && CLAIM_SETS.some((m) => (err.command ?? '').includes(` ${m} {`));
}

// ---- the element batches ---------------------------------------------------------------

/**
 * ADD's batch: the owner's elements added; elements it held before (`held`,
 * its tag) that the request no longer has released; masquerade elements of
 * its container addresses held by another owner released too (the address
 * is ours now, IPAM says so: they are stale). With `rebuild` (the skeleton
 * was just written), every recorded owner's elements first.
 */
export function addBatch(table: OwnedTable, plan: AddPlan, held: readonly Held[], rebuild?: readonly AddPlan[]): ElementTx {
  const b = table.elementTx(LAYOUTS);
  const tag = ownerTag(plan.owner);
  if (rebuild) queueRebuild(b, rebuild.filter((p) => ownerTag(p.owner) !== tag));
  const wanted = planElements(plan);
  const wantedText = new Set(wanted.map(elemText));
  const ours = new Set(plan.addrs.map((a) => a.ip));
  const stale = held.filter((h) => (h.tag === tag ? !wantedText.has(elemText(h)) : MASQ_SETS.includes(h.set) && ours.has(h.key[1])));
  // released as every add then every delete (see releaseBatch)
  for (const h of stale) b.add(h);
  for (const h of stale) b.delete(h);
  for (const e of wanted) b.add(e);
  return b;
}

/**
 * Every plan's elements, for a table just rebuilt: a key an earlier plan
 * holds stays with it (only stale records can collide, and the kernel would
 * refuse the batch), and so does a container address's masquerading.
 */
function queueRebuild(b: ElementTx, plans: readonly AddPlan[]): void {
  const taken = new Map<string, string>();
  for (const plan of plans) {
    const tag = ownerTag(plan.owner);
    for (const e of planElements(plan)) {
      const slot = MASQ_SETS.includes(e.set) ? `${e.set} ${e.key[1]}` : elemText(e);
      const holder = taken.get(slot);
      if (holder !== undefined && holder !== tag) continue;
      taken.set(slot, tag);
      b.add(e);
    }
  }
}

/** DEL's batch when the owner's elements are known (its record): each released (see the header). */
export function releaseBatch(table: OwnedTable, elems: readonly Elem[]): ElementTx {
  // every add, then every delete: the same as pairs, in two messages rather
  // than one per element; the adds need no comment (data decides EEXIST)
  const b = table.elementTx(LAYOUTS);
  for (const e of elems) b.add({ set: e.set, key: e.key, ...(e.value && { value: e.value }) });
  for (const e of elems) b.delete(e);
  return b;
}

/**
 * Remove every element whose owner tag `pick` selects, reading the table
 * once over netlink; a concurrent writer that makes the batch fail means a
 * fresh listing and another try. Returns the tags removed (none when the
 * table does not exist).
 */
export function removeTagged(table: OwnedTable, pick: (tag: string) => boolean, retries = 3): Set<string> {
  for (let attempt = 0; ; attempt++) {
    const listing = table.list();
    const removed = new Set<string>();
    if (!listing) return removed;
    const b = table.elementTx(LAYOUTS);
    for (const h of heldOfListing(listing)) {
      if (h.tag === undefined || !pick(h.tag)) continue;
      b.delete(h);
      removed.add(h.tag);
    }
    try {
      table.runElements(b);
      return removed;
    } catch (err) {
      const conflict = err instanceof NftError && (err.kind === 'busy' || err.kind === 'not-found' || err.kind === 'exists');
      if (!conflict || attempt >= retries) throw err;
    }
  }
}

/** GC: whether an element's owner tag is an attachment of `network` that is not one of `keep`. */
export function isStale(tag: string, network: string, keep: ReadonlySet<string>): boolean {
  const net = networkTag(network);
  if (!tagMatches(tag, net) || tag === net) return false;
  return ![...keep].some((k) => tagMatches(tag, k));
}

/** What CHECK found missing, empty when everything is installed. */
export function missingState(listing: Listing | undefined, plan: AddPlan): string[] {
  if (!listing) return [`table inet ${TABLE} does not exist`];
  const problems: string[] = [];
  const chains = new Map(listing.chains.map((c) => [c.name, c]));
  for (const name of ['prerouting', 'output', 'postrouting', 'dispatch', 'input']) {
    if (!chains.get(name)?.rules.length) problems.push(`chain ${name} is missing or empty`);
  }
  for (const [name, comment] of Object.entries(GUARD_COMMENTS)) {
    const chain = chains.get(name);
    if (chain && !chain.rules.some((r) => r.comment === comment)) problems.push(`chain ${name} lacks its guard rule ("${comment}")`);
  }
  const index = new Map(heldOfListing(listing).map((h) => [elemText(h), h]));
  const tag = ownerTag(plan.owner);
  for (const e of planElements(plan)) {
    const h = index.get(elemText(e));
    const what = `element ${e.key.join(' . ')}`;
    if (!h) problems.push(`${what} is missing from ${e.set}`);
    else if ((h.value ?? []).join(' . ') !== (e.value ?? []).join(' . ')) problems.push(`${what} of ${e.set} is "${(h.value ?? []).join(' . ')}", expected "${(e.value ?? []).join(' . ')}"`);
    else if (h.tag !== tag) problems.push(`${what} of ${e.set} belongs to "${h.tag ?? 'nobody'}"`);
  }
  return problems;
}

// ---- records and reload (shared/nft/records.ts) ---------------------------------

const family = z.enum(['ipv4', 'ipv6']);
// Addresses in the canonical text nft prints, so a record's elements are the ones ADD wrote (and encode).
const ip = z.string().refine((t) => isIp(t) && canonicalIp(t) === t, 'not a canonical IP address');
const subnet = z.string().refine((t) => {
  try {
    return formatCidr(networkOf(parseCidr(t))) === t;
  } catch {
    return false;
  }
}, 'not a subnet');
const planRecordSchema = z.object({
  owner: z.object({ network: z.string().min(1), containerID: z.string().min(1), ifname: z.string().min(1) }),
  claims: z.array(
    z.object({
      family,
      protocol: z.enum(['tcp', 'udp', 'sctp']),
      hostPort: z.number().int().min(1).max(65535),
      hostIP: ip.optional(),
      containerIP: ip,
      containerPort: z.number().int().min(1).max(65535),
      range: z.number().int().min(2).max(65535).optional(),
    }),
  ),
  addrs: z.array(z.object({ family, ip, subnet })),
  masq: z.object({ snat: z.boolean(), masqAll: z.boolean() }),
});

/** The record key of an owner: its tag. */
export const recordKey = (owner: Required<Owner>): string => ownerTag(owner);

/** Record what ADD installed, so a reload can put it back. */
export function recordPlan(table: OwnedTable, plan: AddPlan): void {
  table.records?.put(recordKey(plan.owner), plan);
}

/** Forget an owner's record (DEL, GC, a failed ADD). */
export function forgetPlan(table: OwnedTable, owner: Required<Owner>): void {
  table.records?.remove(recordKey(owner));
}

/** One owner's recorded plan (one file read), if it has a valid one. */
export function recordedPlan(table: OwnedTable, owner: Required<Owner>): AddPlan | undefined {
  const key = recordKey(owner);
  const r = table.records?.get(key);
  const parsed = r && planRecordSchema.safeParse(r.value);
  return parsed?.success && recordKey(parsed.data.owner) === key ? (parsed.data as AddPlan) : undefined;
}

/**
 * Plans checked before, by the record value they were checked from: records
 * hands out the same value object while its file is unchanged (records.ts),
 * so a daemon worker checks each record once, not on every ADD. Frozen: a
 * plan is shared by every call that reads it.
 */
const checkedBefore = new WeakMap<object, AddPlan | null>();

function checkedPlan(r: FirewallRecord): AddPlan | null {
  const cacheable = typeof r.value === 'object' && r.value !== null;
  const before = cacheable ? checkedBefore.get(r.value as object) : undefined;
  if (before !== undefined) return before;
  const parsed = planRecordSchema.safeParse(r.value);
  let plan: AddPlan | null = null;
  if (parsed.success) {
    try {
      if (recordKey(parsed.data.owner) === r.key) plan = deepFreeze(parsed.data as AddPlan);
    } catch {
      plan = null;
    }
  }
  if (cacheable) checkedBefore.set(r.value as object, plan);
  return plan;
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/** Every recorded plan; records that do not parse, or whose key is not their owner's, are skipped and named. */
export function recordedPlans(table: OwnedTable, log: (msg: string) => void = () => {}): AddPlan[] {
  const out: AddPlan[] = [];
  for (const r of table.records?.all() ?? []) {
    const plan = checkedPlan(r);
    if (plan) out.push(plan);
    else log(`portmap: record ${JSON.stringify(r.key)} is not a portmap record; skipped`);
  }
  return out;
}

/**
 * firewall-reload: the skeleton (its martian guard first in line, before
 * anything relies on route_localnet again), then every recorded owner's
 * elements in one batch. The skeleton is written even when
 * its marker is current, so a reload always converges on the records.
 */
export function reloadPortmap(table: OwnedTable, plans: readonly AddPlan[]): void {
  const tx = table.tx();
  PORTMAP_SKELETON.queue(tx);
  tx.marker(PORTMAP_SKELETON.marker);
  table.run(tx);
  const b = table.elementTx(LAYOUTS);
  queueRebuild(b, plans);
  table.runElements(b);
}
