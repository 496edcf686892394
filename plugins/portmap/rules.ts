/**
 * portmap's nftables state, in the project's own table:
 *
 *   table inet cni_ts_portmap
 *     map wildcard_ports  nf_proto . inet_proto . inet_service : verdict    e.g. ipv4 . tcp . 8080 : jump pm-<id>
 *     map hostip4_ports   ipv4_addr . inet_proto . inet_service : verdict   e.g. 127.0.0.1 . tcp . 8080 : jump pm-<id>
 *     map hostip6_ports   ipv6_addr . inet_proto . inet_service : verdict
 *     map masq4           ipv4_addr . inet_proto . inet_service : verdict   container ip . proto . container port : jump pm-<id>-masq
 *     map masq6           ipv6_addr . inet_proto . inet_service : verdict
 *     chain prerouting   nat/prerouting  dstnat:  127.0.0.0/8 returns; else fib daddr type local jump dispatch
 *     chain output       nat/output      -100:    fib daddr type local jump dispatch, for connections from the host itself (localhost included)
 *     chain input        filter/input    filter:  the martian guard: 127.0.0.0/8 not from lo and not DNATed is dropped
 *     chain dispatch     one lookup per map: a host-address claim first, then a wildcard one
 *     chain postrouting  nat/postrouting srcnat:  DNAT'ed connections -> the owner's masquerade chain
 *     chain pm-<id>      one container's DNAT rules           (every rule commented with its owner tag)
 *     chain pm-<id>-masq one container's masquerade rules     (localhost and hairpin sources)
 *
 * <id> is a hash of network, container ID and ifname, so DEL can name the
 * chains without reading anything.
 *
 * A port range (config.ts) is one DNAT rule (`tcp dport 8000-8999 dnat ip
 * to C`, or with an anonymous `tcp dport map` when container ports are
 * shifted: nft 1.0.6 has no port-offset NAT) and one element per port in
 * the maps, all in the ADD's one transaction: no rule per port, and every
 * port is a claim like any other (conflicts, DEL, CHECK, GC).
 *
 * Reload: the ADD records its plan (shared/nft/records.ts) and DEL and GC
 * forget it; reloadTransaction rebuilds the skeleton (martian guard
 * included) and every recorded owner in one transaction.
 *
 * The maps are the port registry: an element is a claim and its value names
 * the owner. Adding an element that exists with another value fails in the
 * kernel (EEXIST), so two containers can never hold the same key even when
 * their ADDs race; overlaps between a wildcard and a host-address claim are
 * found in the listing ADD reads anyway (and ADDs are serialised by a lock).
 *
 * DEL runs one transaction and lists nothing when it knows its keys
 * (prevResult and the mappings): for each key `add element k : jump mine`
 * then `delete element k`. The add is a no-op on our own element and fails
 * on someone else's, so we can never delete another container's claim, and
 * `delete chain` at the end fails while anything still jumps to our chain.
 * Either failure means the keys were not the whole story: then the table is
 * listed once and everything that jumps to our chains goes. The batch starts
 * with `add chain`, which fails only when the table itself is gone, and that
 * is the other way DEL is done.
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
 * Both are skeleton rules, written in the same transaction as everything
 * else; main.ts turns route_localnet on only after that transaction.
 *
 * Masquerading needs no packet marks: the postrouting lookup on the
 * connection's post-DNAT destination (the container's address and port)
 * leads to the owner's chain, which masquerades sources from 127.0.0.0/8
 * (needs route_localnet, see main.ts) and from the container's own subnet
 * (hairpin: itself or a neighbour on the bridge reaching it through a host
 * address, whose replies must come back through the host to be un-NATed).
 */
import { createHash } from 'node:crypto';
import { NftError } from '../../shared/nft/errors';
import type { Listing } from '../../shared/nft/nft-interface';
import { TableTx, networkTag, ownerTag, projectTable, tagMatches, type OwnedTable, type Owner, type Skeleton } from '../../shared/nft/table';
import { z } from 'zod';
import { allPorts, bucketClaims, overlapping, type Claim, type ContainerAddr, type IpFamily } from './config';

export const PORTMAP_TABLE = projectTable('inet', 'portmap');
export const TABLE = PORTMAP_TABLE.table;
export const T = PORTMAP_TABLE;

export const MAPS = {
  wildcard: 'wildcard_ports',
  hostip4: 'hostip4_ports',
  hostip6: 'hostip6_ports',
  masq4: 'masq4',
  masq6: 'masq6',
} as const;

export const MAP_TYPES: Record<string, string[]> = {
  [MAPS.wildcard]: ['nf_proto', 'inet_proto', 'inet_service'],
  [MAPS.hostip4]: ['ipv4_addr', 'inet_proto', 'inet_service'],
  [MAPS.hostip6]: ['ipv6_addr', 'inet_proto', 'inet_service'],
  [MAPS.masq4]: ['ipv4_addr', 'inet_proto', 'inet_service'],
  [MAPS.masq6]: ['ipv6_addr', 'inet_proto', 'inet_service'],
};

const CLAIM_MAPS: readonly string[] = [MAPS.wildcard, MAPS.hostip4, MAPS.hostip6];
const ALL_MAPS: readonly string[] = Object.keys(MAP_TYPES);

/** The two chains one attachment owns. */
export interface OwnerChains {
  dnat: string;
  masq: string;
}

export function ownerChains(owner: Required<Owner>): OwnerChains {
  const id = createHash('sha256').update(`${owner.network}\n${owner.containerID}\n${owner.ifname}`).digest('hex').slice(0, 16);
  return { dnat: `pm-${id}`, masq: `pm-${id}-masq` };
}

const DNAT_CHAIN_RE = /^pm-[0-9a-f]{16}$/;

/** An element of one of our maps, as text in the form nft prints it. */
export interface Key {
  map: string;
  key: string[];
}

/** The claim's element: where its host port is registered. */
export function claimKey(c: Claim): Key {
  if (!c.hostIP) return { map: MAPS.wildcard, key: [c.family, c.protocol, String(c.hostPort)] };
  return { map: c.family === 'ipv4' ? MAPS.hostip4 : MAPS.hostip6, key: [c.hostIP, c.protocol, String(c.hostPort)] };
}

/** The element that sends the claim's forwarded connections to the owner's masquerade chain. */
export function masqKey(c: Claim): Key {
  return { map: c.family === 'ipv4' ? MAPS.masq4 : MAPS.masq6, key: [c.containerIP, c.protocol, String(c.containerPort)] };
}

const keyText = (k: Key): string => `${k.map} ${k.key.join(' . ')}`;

function uniqueKeys<K extends Key>(keys: readonly K[]): K[] {
  const seen = new Map<string, K>();
  for (const k of keys) seen.set(keyText(k), k);
  return [...seen.values()];
}

export function dnatRule(c: Claim): string {
  const ip = c.family === 'ipv4' ? 'ip' : 'ip6';
  const match = c.hostIP ? `${ip} daddr ${c.hostIP}` : `meta nfproto ${c.family}`;
  const addr = c.family === 'ipv4' ? c.containerIP : `[${c.containerIP}]`;
  if (c.range && c.range > 1) {
    const ports = `${c.hostPort}-${c.hostPort + c.range - 1}`;
    // Same ports on both sides: DNAT keeps the destination port.
    if (c.containerPort === c.hostPort) return `${match} ${c.protocol} dport ${ports} dnat ${ip} to ${addr}`;
    const pairs = allPorts([c]).map((p, i) => `${c.hostPort + i} : ${p.containerPort}`);
    return `${match} ${c.protocol} dport ${ports} dnat ${ip} to ${addr} : ${c.protocol} dport map { ${pairs.join(', ')} }`;
  }
  return `${match} ${c.protocol} dport ${c.hostPort} dnat ${ip} to ${addr}:${c.containerPort}`;
}

export interface MasqOptions {
  /** masquerade localhost and hairpin sources (the `snat` option) */
  snat: boolean;
  /** masquerade every source (the `masqAll` option) */
  masqAll: boolean;
}

/** The owner's masquerade rules for the families it publishes. */
export function masqRules(addrs: readonly ContainerAddr[], families: ReadonlySet<IpFamily>, opts: MasqOptions): string[] {
  if (!opts.snat) return [];
  const rules: string[] = [];
  for (const a of addrs) {
    if (!families.has(a.family)) continue;
    if (opts.masqAll) rules.push(`meta nfproto ${a.family} masquerade`);
    else if (a.family === 'ipv4') rules.push(`ip saddr { 127.0.0.0/8, ${a.subnet} } masquerade`);
    // No ::1 here: the kernel never lets a packet from ::1 leave lo (see config.ts).
    else rules.push(`ip6 saddr ${a.subnet} masquerade`);
  }
  return rules;
}

/**
 * The marker of this version's skeleton (maps, base chains and their
 * lookups), in the owned tables' convention (shared/nft/table.ts): read
 * over netlink, so an ADD that finds it queues only its own rules. A
 * changed skeleton gets a new comment, so an old table is rewritten once,
 * in place, keeping every container's chains and elements.
 */
export const SKELETON_MARKER = { chain: 'skeleton', comment: 'cni-ts portmap skeleton v3' } as const;

/** Markers of earlier skeletons (a chain each, by name): removed when this version's is written. */
const OLD_SKELETON_MARKERS = ['skeleton-v1', 'skeleton-v2'];

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

function queueSkeleton(tx: TableTx): void {
  tx.add({ kind: 'table', comment: 'cni-ts portmap: published container ports' });
  for (const name of ALL_MAPS) tx.add({ kind: 'map', name, type: MAP_TYPES[name], valueType: 'verdict' });
  tx.add({ kind: 'chain', name: 'dispatch' });
  tx.add({ kind: 'chain', name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' });
  // nft 1.0.6 names "dstnat" only on prerouting; -100 is the same priority.
  tx.add({ kind: 'chain', name: 'output', type: 'nat', hook: 'output', priority: -100, policy: 'accept' });
  tx.add({ kind: 'chain', name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' });
  tx.add({ kind: 'chain', name: 'input', type: 'filter', hook: 'input', priority: 'filter', policy: 'accept' });
  const rules: Record<string, Array<{ rule: string; comment?: string }>> = {
    dispatch: [
      { rule: `ip daddr . meta l4proto . th dport vmap @${MAPS.hostip4}` },
      { rule: `ip6 daddr . meta l4proto . th dport vmap @${MAPS.hostip6}` },
      { rule: `meta nfproto . meta l4proto . th dport vmap @${MAPS.wildcard}` },
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
      { rule: `ct status dnat ip daddr . meta l4proto . th dport vmap @${MAPS.masq4}` },
      { rule: `ct status dnat ip6 daddr . meta l4proto . th dport vmap @${MAPS.masq6}` },
    ],
    input: [{ rule: MARTIAN_RULES[0] }, { rule: MARTIAN_RULES[1], comment: GUARD_COMMENTS.input }],
  };
  for (const [chain, list] of Object.entries(rules)) {
    tx.flush({ kind: 'chain', name: chain });
    for (const r of list) tx.add({ kind: 'rule', chain, ...r });
  }
  // add-then-delete: removes an older marker whether or not it is there
  for (const name of OLD_SKELETON_MARKERS) {
    tx.add({ kind: 'chain', name });
    tx.delete({ kind: 'chain', name });
  }
}

/** The skeleton in the owned tables' form (shared/nft/table.ts). */
export const PORTMAP_SKELETON: Skeleton = { marker: SKELETON_MARKER, queue: queueSkeleton };

const jumpTo = (chain: string): string => `jump ${chain}`;

/** Every element of our maps whose value jumps to one of `chains`. */
function elementsJumpingTo(listing: Listing, chains: readonly string[]): Key[] {
  const values = new Set(chains.map(jumpTo));
  const out: Key[] = [];
  for (const s of listing.sets) {
    if (!ALL_MAPS.includes(s.name)) continue;
    for (const e of s.elements) if (e.value !== undefined && values.has(e.value)) out.push({ map: s.name, key: splitKey(e.key) });
  }
  return out;
}

function splitKey(text: string): string[] {
  return text.split(' . ').map((p) => p.trim());
}

export interface AddPlan {
  owner: Required<Owner>;
  claims: readonly Claim[];
  addrs: readonly ContainerAddr[];
  masq: MasqOptions;
}

/**
 * The ADD transaction: skeleton, the owner's chains rewritten, its elements
 * added, and elements of an earlier ADD of the same owner that the new
 * request no longer has removed (found in `listing`). Masquerade elements
 * for our address held by another owner are stale (the address is ours now,
 * IPAM says so) and are taken over.
 */
export function addTransaction(plan: AddPlan, listing: Listing | undefined, table?: OwnedTable): TableTx {
  const tx = new TableTx(PORTMAP_TABLE);
  // Rewriting the base chains deletes their rules, which makes the kernel
  // wait for a grace period (about 10 ms): only when the table's marker
  // does not say the skeleton is in place (no table: always).
  if (table && listing) table.ensureSkeleton(tx, PORTMAP_SKELETON);
  else {
    PORTMAP_SKELETON.queue(tx);
    tx.marker(PORTMAP_SKELETON.marker);
  }
  return queueOwner(tx, plan, listing);
}

/** One owner's chains rewritten and its elements added (see addTransaction). */
function queueOwner(tx: TableTx, plan: AddPlan, listing: Listing | undefined, taken?: Map<string, string>): TableTx {
  const chains = ownerChains(plan.owner);
  const tag = ownerTag(plan.owner);
  const families = new Set(plan.claims.map((c) => c.family));
  const dnat = plan.claims.map((c) => ({ rule: dnatRule(c), comment: tag }));
  const masq = masqRules(plan.addrs, families, plan.masq).map((rule) => ({ rule, comment: tag }));
  for (const [name, rules] of [
    [chains.dnat, dnat],
    [chains.masq, masq],
  ] as const) {
    tx.add({ kind: 'chain', name });
    tx.flush({ kind: 'chain', name });
    for (const r of rules) tx.add({ kind: 'rule', chain: name, ...r });
  }

  const ports = allPorts(plan.claims);
  const wanted = uniqueKeys<Key & { value: string }>([
    ...ports.map((c) => ({ ...claimKey(c), value: chains.dnat })),
    ...(masq.length ? ports.map((c) => ({ ...masqKey(c), value: chains.masq })) : []),
  ]);
  const wantedText = new Set(wanted.map(keyText));
  if (listing) {
    for (const k of elementsJumpingTo(listing, [chains.dnat, chains.masq])) {
      if (!wantedText.has(keyText(k))) tx.delete({ kind: 'element', set: k.map, key: k.key });
    }
    const index = elementIndex(listing);
    for (const k of wanted) {
      if (k.map !== MAPS.masq4 && k.map !== MAPS.masq6) continue;
      const held = index.get(keyText(k));
      if (held !== undefined && held !== jumpTo(k.value)) tx.delete({ kind: 'element', set: k.map, key: k.key });
    }
  }
  for (const k of wanted) {
    // reload: a key an earlier record of the same batch holds stays with it
    // (only a stale record can collide; the kernel would refuse the batch)
    if (taken) {
      const held = taken.get(keyText(k));
      if (held !== undefined && held !== k.value) continue;
      taken.set(keyText(k), k.value);
    }
    tx.add({ kind: 'element', set: k.map, key: k.key, value: jumpTo(k.value) });
  }
  return tx;
}

/**
 * The values of our maps' elements by keyText, built once per listing so
 * that looking up every key of a request is linear, not elements x keys.
 */
function elementIndex(listing: Listing): Map<string, string | undefined> {
  const index = new Map<string, string | undefined>();
  for (const s of listing.sets) {
    if (!ALL_MAPS.includes(s.name)) continue;
    for (const e of s.elements) index.set(keyText({ map: s.name, key: splitKey(e.key) }), e.value);
  }
  return index;
}

/** Another owner's claim in the way of one of ours. */
export interface Conflict {
  claim: Claim;
  /** what the other owner holds, e.g. "tcp 0.0.0.0:8080" */
  held: string;
  /** the other owner's tag ("cni-ts:<network>:<containerID>:<ifname>"), when its chain says */
  ownerTag?: string;
}

/** Decode one of our claim elements back into the part of a Claim that decides overlaps. */
function claimOfElement(map: string, key: string): Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'> | undefined {
  const [a, proto, portText] = splitKey(key);
  const hostPort = Number(portText);
  if (!Number.isInteger(hostPort) || (proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp')) return undefined;
  if (map === MAPS.wildcard) return a === 'ipv4' || a === 'ipv6' ? { family: a, protocol: proto, hostPort } : undefined;
  if (map === MAPS.hostip4) return { family: 'ipv4', protocol: proto, hostPort, hostIP: a };
  if (map === MAPS.hostip6) return { family: 'ipv6', protocol: proto, hostPort, hostIP: a };
  return undefined;
}

/** The owner tags of the DNAT chains in a listing, read from their rules' comments. */
function chainOwnerTags(listing: Listing): Map<string, string> {
  const tags = new Map<string, string>();
  for (const c of listing.chains) {
    const tag = c.rules.find((r) => r.comment)?.comment;
    if (tag) tags.set(c.name, tag);
  }
  return tags;
}

/** Claims of other owners that overlap ours (same family, protocol and port; same or wildcard host address). */
export function findConflicts(listing: Listing | undefined, owner: Required<Owner>, claims: readonly Claim[]): Conflict[] {
  if (!listing) return [];
  const mine = jumpTo(ownerChains(owner).dnat);
  const buckets = bucketClaims(allPorts(claims));
  let tags: Map<string, string> | undefined;
  const out: Conflict[] = [];
  for (const s of listing.sets) {
    if (!CLAIM_MAPS.includes(s.name)) continue;
    for (const e of s.elements) {
      if (e.value === undefined || e.value === mine) continue;
      const held = claimOfElement(s.name, e.key);
      if (!held) continue;
      for (const c of overlapping(buckets, held)) {
        const conflict: Conflict = { claim: c, held: describeHeld(held) };
        const target = /^jump (\S+)$/.exec(e.value)?.[1];
        tags ??= chainOwnerTags(listing);
        const tag = target ? tags.get(target) : undefined;
        if (tag) conflict.ownerTag = tag;
        out.push(conflict);
      }
    }
  }
  return out;
}

function describeHeld(h: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>): string {
  const host = h.hostIP ? (h.family === 'ipv6' ? `[${h.hostIP}]` : h.hostIP) : h.family === 'ipv6' ? '[::]' : '0.0.0.0';
  return `${h.protocol} ${host}:${h.hostPort}`;
}

/** Whether `err` is the kernel refusing one of our claim elements because another owner holds the key. */
export function isClaimCollision(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'exists' && /^add element /.test(err.command ?? '') && CLAIM_MAPS.some((m) => (err.command ?? '').includes(` ${m} {`));
}

/**
 * DEL's one transaction when the keys are known (see the header). `keys`
 * may be empty: the chains alone are then destroyed, which fails (EBUSY)
 * if elements still jump to them.
 */
export function delTransaction(owner: Required<Owner>, keys: readonly Key[]): TableTx {
  const tx = new TableTx(PORTMAP_TABLE);
  const chains = ownerChains(owner);
  // First line: fails with ENOENT only when the table is gone.
  tx.add({ kind: 'chain', name: chains.dnat });
  tx.add({ kind: 'chain', name: chains.masq });
  for (const k of uniqueKeys(keys)) {
    const target = k.map === MAPS.masq4 || k.map === MAPS.masq6 ? chains.masq : chains.dnat;
    tx.add({ kind: 'element', set: k.map, key: k.key, value: jumpTo(target) });
    tx.delete({ kind: 'element', set: k.map, key: k.key });
  }
  for (const name of [chains.dnat, chains.masq]) {
    tx.flush({ kind: 'chain', name });
    tx.delete({ kind: 'chain', name });
  }
  return tx;
}

/** The keys an ADD with these claims registered. */
export function keysOf(claims: readonly Claim[], snat: boolean): Key[] {
  const ports = allPorts(claims);
  return [...ports.map(claimKey), ...(snat ? ports.map(masqKey) : [])];
}

/** Whether DEL's transaction failed only because the table does not exist (its first line). */
export function isTableGone(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'not-found' && err.line === 1;
}

/**
 * Remove the owners' chains and every element that jumps to them, reading
 * the table once (OwnedTable.releaseOwner: one transaction, a fresh
 * listing after a conflict with a concurrent writer).
 */
export function removeOwners(table: OwnedTable, pick: (listing: Listing) => OwnerChains[]): void {
  table.releaseOwner(undefined, { chains: (listing) => pick(listing).flatMap((o) => [o.dnat, o.masq]) });
}

/**
 * GC: the DNAT chains of `network` whose owner tag is not one of `keep`.
 * Ownership is read from the rules' comments; chains of other networks
 * (another tag prefix) are never touched.
 */
export function staleOwners(listing: Listing, network: string, keep: ReadonlySet<string>): OwnerChains[] {
  const net = networkTag(network);
  const out: OwnerChains[] = [];
  for (const c of listing.chains) {
    if (!DNAT_CHAIN_RE.test(c.name)) continue;
    const tag = c.rules.find((r) => r.comment)?.comment;
    if (!tag || !tagMatches(tag, net) || tag === net) continue;
    if ([...keep].some((k) => tagMatches(tag, k))) continue;
    out.push({ dnat: c.name, masq: `${c.name}-masq` });
  }
  return out;
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
  const own = ownerChains(plan.owner);
  const dnat = chains.get(own.dnat);
  if (!dnat) problems.push(`chain ${own.dnat} (DNAT rules of this container) is missing`);
  else if (dnat.rules.length !== plan.claims.length) problems.push(`chain ${own.dnat} holds ${dnat.rules.length} rules, expected ${plan.claims.length}`);
  const families = new Set(plan.claims.map((c) => c.family));
  const masqCount = masqRules(plan.addrs, families, plan.masq).length;
  const masq = chains.get(own.masq);
  if (!masq) problems.push(`chain ${own.masq} (masquerade rules of this container) is missing`);
  else if (masq.rules.length !== masqCount) problems.push(`chain ${own.masq} holds ${masq.rules.length} rules, expected ${masqCount}`);
  const ports = allPorts(plan.claims);
  const expect: Array<[Key, string]> = ports.map((c) => [claimKey(c), own.dnat]);
  if (masqCount) for (const c of ports) expect.push([masqKey(c), own.masq]);
  const index = elementIndex(listing);
  for (const [k, chain] of expect) {
    const value = index.get(keyText(k));
    if (value === undefined) problems.push(`element ${k.key.join(' . ')} is missing from map ${k.map}`);
    else if (value !== jumpTo(chain)) problems.push(`element ${k.key.join(' . ')} of map ${k.map} is "${value}", expected "${jumpTo(chain)}"`);
  }
  return problems;
}

// ---- records and reload (shared/nft/records.ts) ---------------------------------

const family = z.enum(['ipv4', 'ipv6']);
const planRecordSchema = z.object({
  owner: z.object({ network: z.string().min(1), containerID: z.string().min(1), ifname: z.string().min(1) }),
  claims: z.array(
    z.object({
      family,
      protocol: z.enum(['tcp', 'udp', 'sctp']),
      hostPort: z.number().int().min(1).max(65535),
      hostIP: z.string().optional(),
      containerIP: z.string(),
      containerPort: z.number().int().min(1).max(65535),
      range: z.number().int().min(2).max(65535).optional(),
    }),
  ),
  addrs: z.array(z.object({ family, ip: z.string(), subnet: z.string() })),
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

/** Every recorded plan; records that do not parse, or whose key is not their owner's, are skipped and named. */
export function recordedPlans(table: OwnedTable, log: (msg: string) => void = () => {}): AddPlan[] {
  const out: AddPlan[] = [];
  for (const r of table.records?.all() ?? []) {
    const parsed = planRecordSchema.safeParse(r.value);
    let ok = parsed.success;
    if (parsed.success) {
      try {
        ok = recordKey(parsed.data.owner) === r.key;
      } catch {
        ok = false;
      }
    }
    if (ok && parsed.success) out.push(parsed.data as AddPlan);
    else log(`portmap: record ${JSON.stringify(r.key)} is not a portmap record; skipped`);
  }
  return out;
}

/**
 * firewall-reload: the skeleton (its martian guard first in line, before
 * anything relies on route_localnet again) and every recorded owner's
 * chains and elements, in one transaction. With the table still in place
 * this converges like a repeated ADD of each owner.
 */
export function reloadTransaction(plans: readonly AddPlan[], listing: Listing | undefined): TableTx {
  const tx = new TableTx(PORTMAP_TABLE);
  PORTMAP_SKELETON.queue(tx);
  tx.marker(PORTMAP_SKELETON.marker);
  const taken = new Map<string, string>();
  for (const plan of plans) queueOwner(tx, plan, listing, taken);
  return tx;
}
