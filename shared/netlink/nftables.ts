/**
 * Read-only nf_tables queries over NETLINK_NETFILTER. Rules are still
 * written with `nft -f -` (one atomic transaction per operation), set and
 * map elements by nft-elements.ts (one nfnetlink batch); these
 * read in microseconds what `nft -j list` reads for a process and about
 * 10 ms: one chain (existence and comment: the owned tables' markers) and a
 * whole table in the shape real.ts parses from `nft -j` (nftListTable: the
 * owned tables' list() on a real host).
 *
 *   struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; };
 *
 * Comments travel in the USERDATA attributes as libnftnl's TLVs:
 * { u8 type; u8 len; value[len] } (chain and rule comment: type 0, set
 * comment: 7, element comment: 0).
 */
import type { ChainType, Family, Hook, ListedChain, ListedElement, ListedRule, ListedSet, Listing } from '../nft/types';
import { attrString, decodeAttrList, decodeAttrs, readString, type Attr } from './codec';
import { AF_INET, AF_INET6 } from './consts';
import { formatIp, parseIp } from './ipaddr';
import { isNetlinkError, ENOENT } from './errors';
import { NetlinkSocket } from './socket';
import { NetNs } from '../netns/netns';
import {
  NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, NFT_MSG_GETSETELEM, NLM_F_DUMP, NFTA_SET_ELEM_LIST_TABLE,
  NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA,
  NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME,
  NFTA_CHAIN_USERDATA, NFTNL_UDATA_CHAIN_COMMENT, NFT_MSG_GETTABLE, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETGEN,
  NFTA_TABLE_NAME, NFTA_CHAIN_HANDLE, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE, NFTA_HOOK_HOOKNUM,
  NFTA_HOOK_PRIORITY, NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA,
  NFTA_EXPR_NAME, NFTA_EXPR_DATA, NFTA_IMMEDIATE_DATA, NFTA_LOOKUP_SET, NFTA_DYNSET_SET_NAME, NFTA_SET_TABLE,
  NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_DATA_TYPE, NFTA_SET_USERDATA, NFTA_SET_HANDLE,
  NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_USERDATA, NFTA_SET_ELEM_KEY_END, NFTA_GEN_ID, NFT_SET_ANONYMOUS, NFT_SET_CONSTANT,
  NFT_SET_INTERVAL, NFT_SET_MAP, NFT_SET_TIMEOUT, NFT_SET_EVAL, NFT_SET_ELEM_INTERVAL_END, NFT_DATA_VERDICT,
  NFTNL_UDATA_RULE_COMMENT, NFTNL_UDATA_SET_COMMENT, NFTNL_UDATA_SET_ELEM_COMMENT,
} from './nft-consts';

export const NETLINK_NETFILTER = 12;
const VERDICTS: Record<number, string> = { [-1]: 'continue', [-3]: 'jump', [-4]: 'goto', [-5]: 'return', 0: 'drop', 1: 'accept' };

export const NFPROTO = { inet: 1, ip: 2, ip6: 10, bridge: 7 } as const;
export type NftFamily = keyof typeof NFPROTO;

function nfgenmsg(family: number): Buffer {
  return Buffer.from([family, 0, 0, 0]);
}

/** The text of one TLV in libnftnl user data, if present. */
export function udataString(udata: Buffer, type: number): string | undefined {
  for (let off = 0; off + 2 <= udata.length; ) {
    const t = udata[off];
    const len = udata[off + 1];
    if (off + 2 + len > udata.length) return undefined;
    if (t === type) return readString(udata.subarray(off + 2, off + 2 + len));
    off += 2 + len;
  }
  return undefined;
}

export interface ChainInfo {
  name: string;
  comment?: string;
}

/** A NETLINK_NETFILTER socket in the namespace at netnsPath (ours when omitted); conntrack.ts uses it too. */
export function openNetfilterSocket(netnsPath?: string): NetlinkSocket {
  const ns = netnsPath ? NetNs.open(netnsPath) : undefined;
  try {
    return NetlinkSocket.open(NETLINK_NETFILTER, ns?.fd);
  } finally {
    ns?.close();
  }
}

/**
 * `nft list chain FAMILY TABLE CHAIN`, reduced to existence and comment;
 * undefined when the table or chain does not exist.
 */
export function nftGetChain(family: NftFamily, table: string, chain: string, netnsPath?: string): ChainInfo | undefined {
  const sock = openNetfilterSocket(netnsPath);
  try {
    const [m] = sock.request(
      (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
      0,
      nfgenmsg(NFPROTO[family]),
      [attrString(NFTA_CHAIN_TABLE, table), attrString(NFTA_CHAIN_NAME, chain)],
      `nft list chain ${family} ${table} ${chain}`,
    );
    if (!m) return undefined;
    const a = decodeAttrs(m.payload, 4);
    const udata = a.get(NFTA_CHAIN_USERDATA);
    return { name: readString(a.get(NFTA_CHAIN_NAME)) ?? chain, comment: udata ? udataString(udata, NFTNL_UDATA_CHAIN_COMMENT) : undefined };
  } catch (e) {
    if (isNetlinkError(e, ENOENT)) return undefined;
    throw e;
  } finally {
    sock.close();
  }
}

// ---- a whole table, as `nft -j -a list table` shows it ---------------------------

/** NFT_DATA_VERDICT: a map's data type when its values are verdicts. */
const HOOKS: Record<number, Hook> = { 0: 'prerouting', 1: 'input', 2: 'forward', 3: 'output', 4: 'postrouting' };

/**
 * nft's data types (src/datatype.h, enum datatypes) that our tables use:
 * name, width in the key, and how nft prints a value. A concatenation's
 * type is its fields' ids, TYPE_BITS (6) each, the first field highest.
 */
const DATATYPES: Record<number, { name: string; width: number; text: (b: Buffer) => string }> = {
  2: { name: 'nf_proto', width: 1, text: (b) => ({ 2: 'ipv4', 10: 'ipv6' })[b[0]] ?? String(b[0]) },
  4: { name: 'integer', width: 4, text: (b) => String(b.length >= 4 ? b.readUInt32LE(0) : b[0]) },
  5: { name: 'string', width: 16, text: (b) => `"${readString(b) ?? ''}"` },
  7: { name: 'ipv4_addr', width: 4, text: (b) => formatIp(AF_INET, b.subarray(0, 4)) },
  8: { name: 'ipv6_addr', width: 16, text: (b) => formatIp(AF_INET6, b.subarray(0, 16)) },
  12: { name: 'inet_proto', width: 1, text: (b) => ({ 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'ipv6-icmp', 132: 'sctp' })[b[0]] ?? String(b[0]) },
  13: { name: 'inet_service', width: 2, text: (b) => String(b.readUInt16BE(0)) },
  19: { name: 'mark', width: 4, text: (b) => String(b.readUInt32LE(0)) },
  41: { name: 'ifname', width: 16, text: (b) => `"${readString(b) ?? ''}"` },
};
const TYPE_BITS = 6;

/** The field type ids of a (possibly concatenated) key type, first field first. */
export function concatTypes(id: number): number[] {
  const out: number[] = [];
  for (let rest = id; rest > 0; rest = Math.floor(rest / 2 ** TYPE_BITS)) out.unshift(rest % 2 ** TYPE_BITS);
  return out;
}

function typeNames(ids: readonly number[]): string {
  return ids.map((id) => DATATYPES[id]?.name ?? `type${id}`).join(' . ');
}

/** A key or value's bytes as nft prints them: fields joined by " . ", each padded to 4 bytes in the kernel. */
export function fieldsText(ids: readonly number[], b: Buffer): string {
  if (ids.length === 1) {
    const t = DATATYPES[ids[0]];
    return t ? t.text(b) : `0x${b.toString('hex')}`;
  }
  const out: string[] = [];
  let off = 0;
  for (const id of ids) {
    const t = DATATYPES[id];
    const width = t?.width ?? 4;
    out.push(t ? t.text(b.subarray(off, off + width)) : `0x${b.subarray(off, off + width).toString('hex')}`);
    off += (width + 3) & ~3;
  }
  return out.join(' . ');
}

/** Chains a rule's expressions jump or go to, and named sets they look up. */
function ruleReferences(exprs: Buffer): { jumps: string[]; sets: string[] } {
  const jumps: string[] = [];
  const sets: string[] = [];
  for (const [, e] of decodeAttrList(exprs)) {
    const a = decodeAttrs(e);
    const name = readString(a.get(NFTA_EXPR_NAME));
    const data = a.get(NFTA_EXPR_DATA);
    if (!data) continue;
    const d = decodeAttrs(data);
    if (name === 'immediate') {
      const v = d.get(NFTA_IMMEDIATE_DATA) && decodeAttrs(d.get(NFTA_IMMEDIATE_DATA)!).get(NFTA_DATA_VERDICT);
      const chain = v ? readString(decodeAttrs(v).get(NFTA_VERDICT_CHAIN)) : undefined;
      if (chain) jumps.push(chain);
    } else if (name === 'lookup' || name === 'dynset') {
      const set = readString(d.get(name === 'lookup' ? NFTA_LOOKUP_SET : NFTA_DYNSET_SET_NAME));
      if (set) sets.push(set);
    }
  }
  return { jumps, sets };
}

function dump(sock: NetlinkSocket, msg: number, family: NftFamily, attrs: Attr[], op: string): Map<number, Buffer>[] {
  return sock.request((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_DUMP, nfgenmsg(NFPROTO[family]), attrs, op).map((m) => decodeAttrs(m.payload, 4));
}

const handleOf = (b: Buffer | undefined): number => (b && b.length >= 8 ? Number(b.readBigUInt64BE(0)) : 0);

function generation(sock: NetlinkSocket): number {
  const [m] = sock.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0, nfgenmsg(0), [], 'nft list ruleset (generation)');
  return m ? (decodeAttrs(m.payload, 4).get(NFTA_GEN_ID)?.readUInt32BE(0) ?? 0) : 0;
}

interface RawSet {
  set: ListedSet;
  anonymous: boolean;
  interval: boolean;
  keyTypes: number[];
  valueTypes?: number[];
}

function listOnce(sock: NetlinkSocket, family: Family, table: string): Listing | undefined {
  try {
    sock.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, 0, nfgenmsg(NFPROTO[family]), [attrString(NFTA_TABLE_NAME, table)], `nft list table ${family} ${table}`);
  } catch (e) {
    if (isNetlinkError(e, ENOENT)) return undefined;
    throw e;
  }
  const listing: Listing = { family, table, chains: [], sets: [] };
  const where = `${family} ${table}`;
  const chains = new Map<string, ListedChain>();
  for (const a of dump(sock, NFT_MSG_GETCHAIN, family, [attrString(NFTA_CHAIN_TABLE, table)], `nft list chains ${where}`)) {
    if (readString(a.get(NFTA_CHAIN_TABLE)) !== table) continue;
    const chain: ListedChain = { name: readString(a.get(NFTA_CHAIN_NAME)) ?? '', handle: handleOf(a.get(NFTA_CHAIN_HANDLE)), rules: [] };
    const hook = a.get(NFTA_CHAIN_HOOK);
    if (hook) {
      const h = decodeAttrs(hook);
      chain.type = readString(a.get(NFTA_CHAIN_TYPE)) as ChainType;
      chain.hook = HOOKS[h.get(NFTA_HOOK_HOOKNUM)?.readUInt32BE(0) ?? -1];
      chain.priority = h.get(NFTA_HOOK_PRIORITY)?.readInt32BE(0);
      chain.policy = a.get(NFTA_CHAIN_POLICY)?.readUInt32BE(0) === 0 ? 'drop' : 'accept';
    }
    chains.set(chain.name, chain);
    listing.chains.push(chain);
  }
  const raw = new Map<string, RawSet>();
  for (const a of dump(sock, NFT_MSG_GETSET, family, [attrString(NFTA_SET_TABLE, table)], `nft list sets ${where}`)) {
    if (readString(a.get(NFTA_SET_TABLE)) !== table) continue;
    const flags = a.get(NFTA_SET_FLAGS)?.readUInt32BE(0) ?? 0;
    const keyTypes = concatTypes(a.get(NFTA_SET_KEY_TYPE)?.readUInt32BE(0) ?? 0);
    const dataType = a.get(NFTA_SET_DATA_TYPE)?.readUInt32BE(0);
    const isMap = (flags & NFT_SET_MAP) !== 0;
    const valueTypes = isMap && dataType !== undefined && dataType !== NFT_DATA_VERDICT ? concatTypes(dataType) : undefined;
    const set: ListedSet = {
      kind: isMap ? 'map' : 'set',
      name: readString(a.get(NFTA_SET_NAME)) ?? '',
      handle: handleOf(a.get(NFTA_SET_HANDLE)),
      type: typeNames(keyTypes),
      flags: [
        ...((flags & NFT_SET_CONSTANT) !== 0 ? (['constant'] as const) : []),
        ...((flags & NFT_SET_INTERVAL) !== 0 ? (['interval'] as const) : []),
        ...((flags & NFT_SET_TIMEOUT) !== 0 ? (['timeout'] as const) : []),
        ...((flags & NFT_SET_EVAL) !== 0 ? (['dynamic'] as const) : []),
      ],
      elements: [],
    };
    if (isMap) set.valueType = valueTypes ? typeNames(valueTypes) : 'verdict';
    const udata = a.get(NFTA_SET_USERDATA);
    const comment = udata ? udataString(udata, NFTNL_UDATA_SET_COMMENT) : undefined;
    if (comment !== undefined) set.comment = comment;
    raw.set(set.name, { set, anonymous: (flags & NFT_SET_ANONYMOUS) !== 0, interval: (flags & NFT_SET_INTERVAL) !== 0, keyTypes, valueTypes });
  }
  for (const r of raw.values()) r.set.elements = listElements(sock, family, table, r);
  for (const a of dump(sock, NFT_MSG_GETRULE, family, [attrString(NFTA_RULE_TABLE, table)], `nft list rules ${where}`)) {
    if (readString(a.get(NFTA_RULE_TABLE)) !== table) continue;
    const chain = chains.get(readString(a.get(NFTA_RULE_CHAIN)) ?? '');
    if (!chain) continue;
    const refs = ruleReferences(a.get(NFTA_RULE_EXPRESSIONS) ?? Buffer.alloc(0));
    const jumps = new Set(refs.jumps);
    const sets = new Set<string>();
    for (const name of refs.sets) {
      const s = raw.get(name);
      // nft prints an anonymous set inline: its verdicts count as the rule's own jumps
      if (s?.anonymous) for (const e of s.set.elements) for (const m of (e.value ?? '').matchAll(/^(?:jump|goto) (\S+)$/g)) jumps.add(m[1]);
      else sets.add(name);
    }
    const rule: ListedRule = { handle: handleOf(a.get(NFTA_RULE_HANDLE)), jumps: [...jumps], sets: [...sets] };
    const udata = a.get(NFTA_RULE_USERDATA);
    const comment = udata ? udataString(udata, NFTNL_UDATA_RULE_COMMENT) : undefined;
    if (comment !== undefined) rule.comment = comment;
    chain.rules.push(rule);
  }
  listing.sets = [...raw.values()].filter((r) => !r.anonymous).map((r) => r.set);
  return listing;
}

/** One set's elements as nft prints them; an interval set's start/end pairs become prefixes or ranges. */
function listElements(sock: NetlinkSocket, family: NftFamily, table: string, r: RawSet): ListedElement[] {
  const out: ListedElement[] = [];
  const ends: Buffer[] = [];
  for (const m of dump(sock, NFT_MSG_GETSETELEM, family, [attrString(NFTA_SET_ELEM_LIST_TABLE, table), attrString(NFTA_SET_ELEM_LIST_SET, r.set.name)], `nft list set ${family} ${table} ${r.set.name}`)) {
    const list = m.get(NFTA_SET_ELEM_LIST_ELEMENTS);
    if (!list) continue;
    for (const [type, elemBuf] of decodeAttrList(list)) {
      if (type !== NFTA_LIST_ELEM) continue;
      const elem = decodeAttrs(elemBuf);
      const key = elem.get(NFTA_SET_ELEM_KEY) && decodeAttrs(elem.get(NFTA_SET_ELEM_KEY)!).get(NFTA_DATA_VALUE);
      const flags = elem.get(NFTA_SET_ELEM_FLAGS)?.readUInt32BE(0) ?? 0;
      if (r.interval && (flags & NFT_SET_ELEM_INTERVAL_END) !== 0) {
        if (key) ends.push(Buffer.from(key));
        continue;
      }
      if (!key) continue;
      // a concatenation with ranges (pipapo): every field's first and last value
      const keyEnd = elem.get(NFTA_SET_ELEM_KEY_END) && decodeAttrs(elem.get(NFTA_SET_ELEM_KEY_END)!).get(NFTA_DATA_VALUE);
      const el: ListedElement = { key: keyEnd && r.keyTypes.length > 1 ? fieldRangesText(r.keyTypes, key, keyEnd) : fieldsText(r.keyTypes, key) };
      const data = elem.get(NFTA_SET_ELEM_DATA);
      if (data) {
        const d = decodeAttrs(data);
        const verdict = d.get(NFTA_DATA_VERDICT);
        if (verdict) {
          const v = decodeAttrs(verdict);
          const code = v.get(NFTA_VERDICT_CODE)?.readInt32BE(0) ?? 0;
          const chain = readString(v.get(NFTA_VERDICT_CHAIN));
          el.value = chain ? `${VERDICTS[code] ?? code} ${chain}` : (VERDICTS[code] ?? String(code));
        } else if (d.get(NFTA_DATA_VALUE)) {
          el.value = fieldsText(r.valueTypes ?? [], d.get(NFTA_DATA_VALUE)!);
        }
      }
      const udata = elem.get(NFTA_SET_ELEM_USERDATA);
      const comment = udata ? udataString(udata, NFTNL_UDATA_SET_ELEM_COMMENT) : undefined;
      if (comment !== undefined) el.comment = comment;
      out.push(el);
    }
  }
  if (r.interval && r.keyTypes.length === 1) return out.map((e) => ({ ...e, key: intervalText(r.keyTypes, e.key, ends) }));
  return out;
}

/**
 * A concatenated range element as nft prints it: each field whose first and
 * last value differ as a prefix ("10.0.0.0/8", "0.0.0.0/0") when it is
 * one, else as "first-last".
 */
export function fieldRangesText(ids: readonly number[], start: Buffer, end: Buffer): string {
  const out: string[] = [];
  let off = 0;
  for (const id of ids) {
    const width = DATATYPES[id]?.width ?? 4;
    const a = start.subarray(off, off + width);
    const b = end.subarray(off, off + width);
    off += (width + 3) & ~3;
    const text = (x: Buffer): string => fieldsText([id], x);
    if (a.equals(b)) {
      out.push(text(a));
      continue;
    }
    if (id === 7 || id === 8) {
      const lo = BigInt(`0x${a.toString('hex')}`);
      const size = BigInt(`0x${b.toString('hex')}`) - lo + 1n;
      if ((size & (size - 1n)) === 0n && lo % size === 0n) {
        out.push(`${text(a)}/${width * 8 - (size.toString(2).length - 1)}`);
        continue;
      }
    }
    out.push(`${text(a)}-${text(b)}`);
  }
  return out.join(' . ');
}

/** An interval's start as nft prints it: "10.0.0.0/24" when it is a prefix, "a-b" otherwise (end is exclusive in the kernel). */
function intervalText(ids: readonly number[], start: string, ends: readonly Buffer[]): string {
  if (ids.length !== 1 || (ids[0] !== 7 && ids[0] !== 8)) return start;
  const af = ids[0] === 7 ? AF_INET : AF_INET6;
  const width = ids[0] === 7 ? 4 : 16;
  const s = parseIp(start).bytes;
  const toBig = (b: Buffer): bigint => BigInt(`0x${b.subarray(0, width).toString('hex')}`);
  const lo = toBig(s);
  // the end that belongs to this start: the smallest one above it
  let hi: bigint | undefined;
  for (const e of ends) {
    const v = toBig(e);
    if (v > lo && (hi === undefined || v < hi)) hi = v;
  }
  const bits = BigInt(width * 8);
  const top = hi ?? 1n << bits;
  const size = top - lo;
  const len = size > 0n && (size & (size - 1n)) === 0n && lo % size === 0n ? Number(bits) - size.toString(2).length + 1 : undefined;
  if (len !== undefined) return len === Number(bits) ? start : `${start}/${len}`;
  const last = Buffer.from((top - 1n).toString(16).padStart(width * 2, '0'), 'hex');
  return `${start}-${formatIp(af, last)}`;
}

/**
 * `nft -j -a list table FAMILY TABLE` over netlink, in the same shape as
 * real.ts parses it (rules with handles, comments, jumps and named sets;
 * sets and maps with their elements as nft text). The table is read in a
 * few dumps, so a writer in between could tear it: the ruleset generation
 * is read before and after, and a changed one means read again.
 * Undefined when the table does not exist.
 */
export function nftListTable(family: Family, table: string, netnsPath?: string): Listing | undefined {
  const sock = openNetfilterSocket(netnsPath);
  try {
    for (let attempt = 0; ; attempt++) {
      const before = generation(sock);
      const listing = listOnce(sock, family, table);
      if (generation(sock) === before || attempt >= 5) return listing;
    }
  } finally {
    sock.close();
  }
}
