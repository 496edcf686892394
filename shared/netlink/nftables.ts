/**
 * Read-only nf_tables queries over NETLINK_NETFILTER. Rules are still
 * written with `nft -f -` (one atomic transaction per operation); this only
 * answers "is this chain there, and what does its comment say?" in a few
 * microseconds, so an ADD whose network rules are already in place can skip
 * the nft process (about 20 ms) altogether.
 *
 *   struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; };
 *
 * A chain's comment travels in NFTA_CHAIN_USERDATA as libnftnl's TLVs:
 * { u8 type; u8 len; value[len] } with NFTNL_UDATA_CHAIN_COMMENT = 0.
 */
import { attrString, decodeAttrs, readString } from './codec';
import { isNetlinkError, ENOENT } from './errors';
import { NetlinkSocket } from './socket';
import { NetNs } from '../netns/netns';

export const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_GETCHAIN = 4;
const NFTA_CHAIN_TABLE = 1;
const NFTA_CHAIN_NAME = 3;
const NFTA_CHAIN_USERDATA = 12;
const NFTNL_UDATA_CHAIN_COMMENT = 0;

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

/**
 * `nft list chain FAMILY TABLE CHAIN`, reduced to existence and comment;
 * undefined when the table or chain does not exist.
 */
export function nftGetChain(family: NftFamily, table: string, chain: string, netnsPath?: string): ChainInfo | undefined {
  let nsFd: NetNs | undefined;
  if (netnsPath) nsFd = NetNs.open(netnsPath);
  let sock: NetlinkSocket;
  try {
    sock = NetlinkSocket.open(NETLINK_NETFILTER, nsFd?.fd);
  } finally {
    nsFd?.close();
  }
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
