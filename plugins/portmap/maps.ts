/**
 * The port registry's maps read over netlink instead of `nft -j list`: the
 * same Listing (sets only, keys and values in nft's text form) that the
 * conflict check and the ADD transaction take, for a few microseconds
 * instead of an nft process. Chains are not read: ADD needs only elements.
 *
 * In the kernel a concatenated key is its fields one after another, each
 * padded to 4 bytes: nf_proto (1 byte), inet_proto (1), inet_service (2,
 * network order), ipv4_addr (4), ipv6_addr (16).
 */
import { AF_INET, AF_INET6 } from '../../shared/netlink/consts';
import { formatIp } from '../../shared/netlink/ipaddr';
import { nftListElements } from '../../shared/netlink/nftables';
import type { Listing, ListedSet } from '../../shared/nft/nft-interface';
import { MAP_TYPES, T } from './rules';

const NFPROTO_NAMES: Record<number, string> = { 2: 'ipv4', 10: 'ipv6' };
const IPPROTO_NAMES: Record<number, string> = { 6: 'tcp', 17: 'udp', 132: 'sctp' };

const WIDTH: Record<string, number> = { nf_proto: 1, inet_proto: 1, inet_service: 2, ipv4_addr: 4, ipv6_addr: 16 };

/** One field of a key as nft prints it. */
function fieldText(type: string, b: Buffer): string {
  switch (type) {
    case 'nf_proto':
      return NFPROTO_NAMES[b[0]] ?? String(b[0]);
    case 'inet_proto':
      return IPPROTO_NAMES[b[0]] ?? String(b[0]);
    case 'inet_service':
      return String(b.readUInt16BE(0));
    case 'ipv4_addr':
      return formatIp(AF_INET, b);
    case 'ipv6_addr':
      return formatIp(AF_INET6, b);
    default:
      throw new Error(`portmap: no text form for key type ${type}`);
  }
}

/** A concatenated key's bytes as "ipv4 . tcp . 8080". */
export function keyText(types: readonly string[], key: Buffer): string {
  const out: string[] = [];
  let off = 0;
  for (const type of types) {
    const width = WIDTH[type];
    out.push(fieldText(type, key.subarray(off, off + width)));
    off += (width + 3) & ~3;
  }
  return out.join(' . ');
}

/** The portmap table's maps, as a Listing; undefined when the table is absent. */
export function listMaps(netnsPath?: string): Listing | undefined {
  const sets: ListedSet[] = [];
  for (const [name, types] of Object.entries(MAP_TYPES)) {
    const raw = nftListElements(T.family, T.table, name, netnsPath);
    if (raw === undefined) {
      // no table at all, or a table from an older layout: let the caller see "absent"
      if (sets.length === 0) return undefined;
      continue;
    }
    sets.push({
      kind: 'map',
      name,
      handle: 0,
      type: types.join(' . '),
      valueType: 'verdict',
      flags: [],
      elements: raw.map((e) => ({ key: keyText(types, e.key), value: e.verdict })),
    });
  }
  return { family: T.family, table: T.table, chains: [], sets };
}
