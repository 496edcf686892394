/**
 * Connection tracking entries over NETLINK_NETFILTER (ctnetlink): list them,
 * and delete the ones a published port must not inherit.
 *
 * Why portmap needs it: NAT is decided on a flow's first packet. A UDP
 * client that was already sending to a host port before the port was
 * published (a DNS client retrying, a game client) keeps its conntrack
 * entry, refreshed by every datagram, and with it the old decision: its
 * packets keep going to the host instead of the new container. Deleting the
 * entry makes the next datagram a new flow, which the DNAT rule catches.
 *
 *   struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; };
 *   CTA_TUPLE_ORIG { CTA_TUPLE_IP { CTA_IP_V4_SRC/DST | CTA_IP_V6_SRC/DST },
 *                    CTA_TUPLE_PROTO { CTA_PROTO_NUM u8, CTA_PROTO_SRC_PORT be16, CTA_PROTO_DST_PORT be16 } }
 */
import { attrBytes, decodeAttrs, type Attr } from './codec';
import { ENOENT, isNetlinkError } from './errors';
import { canonicalIp, formatIp } from './ipaddr';
import { openNetfilterSocket } from './nftables';
import type { NetlinkSocket } from './socket';

const NFNL_SUBSYS_CTNETLINK = 1;
const IPCTNL_MSG_CT_GET = 1;
const IPCTNL_MSG_CT_DELETE = 2;
const NLM_F_DUMP = 0x300;
const NLA_F_NESTED = 0x8000;

const CTA_TUPLE_ORIG = 1;
const CTA_TUPLE_REPLY = 2;
const CTA_ZONE = 18;
const CTA_TUPLE_IP = 1;
const CTA_TUPLE_PROTO = 2;
const CTA_IP_V4_SRC = 1;
const CTA_IP_V4_DST = 2;
const CTA_IP_V6_SRC = 3;
const CTA_IP_V6_DST = 4;
const CTA_PROTO_NUM = 1;
const CTA_PROTO_SRC_PORT = 2;
const CTA_PROTO_DST_PORT = 3;

export const AF_INET = 2;
export const AF_INET6 = 10;
export const IPPROTO = { tcp: 6, udp: 17, sctp: 132 } as const;

export interface ConntrackTuple {
  src: string;
  dst: string;
  /** IPPROTO_* */
  proto: number;
  srcPort?: number;
  dstPort?: number;
}

export interface ConntrackFlow {
  family: typeof AF_INET | typeof AF_INET6;
  orig: ConntrackTuple;
  reply?: ConntrackTuple;
  /** what identifies the entry to the kernel, for deleting it */
  readonly key: Attr[];
}

function decodeTuple(buf: Buffer): ConntrackTuple | undefined {
  const a = decodeAttrs(buf);
  const ip = a.get(CTA_TUPLE_IP);
  const proto = a.get(CTA_TUPLE_PROTO);
  if (!ip || !proto) return undefined;
  const ipa = decodeAttrs(ip);
  const src = ipa.get(CTA_IP_V4_SRC) ?? ipa.get(CTA_IP_V6_SRC);
  const dst = ipa.get(CTA_IP_V4_DST) ?? ipa.get(CTA_IP_V6_DST);
  const pa = decodeAttrs(proto);
  const num = pa.get(CTA_PROTO_NUM);
  if (!src || !dst || !num) return undefined;
  return {
    src: formatIp(src.length === 4 ? AF_INET : AF_INET6, src),
    dst: formatIp(dst.length === 4 ? AF_INET : AF_INET6, dst),
    proto: num[0],
    srcPort: pa.get(CTA_PROTO_SRC_PORT)?.readUInt16BE(0),
    dstPort: pa.get(CTA_PROTO_DST_PORT)?.readUInt16BE(0),
  };
}

function nfgenmsg(family: number): Buffer {
  return Buffer.from([family, 0, 0, 0]);
}

function dump(sock: NetlinkSocket, family: typeof AF_INET | typeof AF_INET6): ConntrackFlow[] {
  const messages = sock.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_DUMP, nfgenmsg(family), [], 'conntrack -L');
  const flows: ConntrackFlow[] = [];
  for (const m of messages) {
    const a = decodeAttrs(m.payload, 4);
    const origRaw = a.get(CTA_TUPLE_ORIG);
    const orig = origRaw && decodeTuple(origRaw);
    if (!orig) continue;
    const replyRaw = a.get(CTA_TUPLE_REPLY);
    // The kernel finds an entry by its original tuple (and zone).
    const key: Attr[] = [attrBytes(CTA_TUPLE_ORIG | NLA_F_NESTED, Buffer.from(origRaw))];
    const zone = a.get(CTA_ZONE);
    if (zone) key.push(attrBytes(CTA_ZONE, Buffer.from(zone)));
    flows.push({ family, orig, reply: replyRaw ? decodeTuple(replyRaw) : undefined, key });
  }
  return flows;
}

/** `conntrack -L` for one family, in the namespace at netnsPath (ours when omitted). */
export function conntrackList(family: typeof AF_INET | typeof AF_INET6, netnsPath?: string): ConntrackFlow[] {
  const sock = openNetfilterSocket(netnsPath);
  try {
    return dump(sock, family);
  } finally {
    sock.close();
  }
}

/**
 * Deletes, in both families, the entries of `proto` whose original
 * destination port is one of `dstPorts` (one dump per family, however many
 * ports), except those already answered from one of `keepReplyFrom` (flows
 * already translated to the container stay). An entry that expired
 * meanwhile is not an error. Returns how many were deleted.
 */
export function conntrackDeleteByDstPorts(proto: number, dstPorts: readonly number[], keepReplyFrom: readonly string[] = [], netnsPath?: string): number {
  const ports = new Set(dstPorts);
  const keep = new Set(keepReplyFrom.map(canonicalIp));
  const sock = openNetfilterSocket(netnsPath);
  let deleted = 0;
  try {
    for (const family of [AF_INET, AF_INET6] as const) {
      for (const flow of dump(sock, family)) {
        if (flow.orig.proto !== proto || flow.orig.dstPort === undefined || !ports.has(flow.orig.dstPort)) continue;
        if (flow.reply && keep.has(flow.reply.src)) continue;
        try {
          sock.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, 0, nfgenmsg(family), flow.key, 'conntrack -D');
          deleted++;
        } catch (e) {
          if (!isNetlinkError(e, ENOENT)) throw e;
        }
      }
    }
  } finally {
    sock.close();
  }
  return deleted;
}
