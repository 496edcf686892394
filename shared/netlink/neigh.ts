/**
 * rtnetlink neighbour messages: ARP/NDP entries (family AF_INET/AF_INET6)
 * and bridge/VXLAN forwarding-database entries (family AF_BRIDGE). Pure.
 *
 *   struct ndmsg { __u8 ndm_family; __u8 ndm_pad1; __u16 ndm_pad2;
 *                  __s32 ndm_ifindex; __u16 ndm_state; __u8 ndm_flags;
 *                  __u8 ndm_type; };
 */
import * as C from './consts';
import { decodeAttrs, readU32 } from './codec';
import { formatIp, formatMac } from './ipaddr';

export function ndmsg(family: number, ifindex: number, state: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  b.writeInt32LE(ifindex, 4);
  b.writeUInt16LE(state, 8);
  b.writeUInt8(flags, 10);
  return b;
}

/** A neighbour or FDB entry as the kernel reports it (ip -j neigh / bridge -j fdb). */
export interface Neigh {
  family: number;
  ifindex: number;
  state: number;
  flags: number;
  /** IP for ARP/NDP entries; the remote VTEP for VXLAN FDB entries */
  ip?: string;
  mac?: string;
  vni?: number;
  masterIndex?: number;
}

export function parseNeigh(payload: Buffer): Neigh {
  const family = payload.readUInt8(0);
  const a = decodeAttrs(payload, 12);
  const dst = a.get(C.NDA_DST);
  const ll = a.get(C.NDA_LLADDR);
  return {
    family,
    ifindex: payload.readInt32LE(4),
    state: payload.readUInt16LE(8),
    flags: payload.readUInt8(10),
    ip: dst ? formatIp(dst.length === 4 ? C.AF_INET : C.AF_INET6, dst) : undefined,
    mac: ll && ll.length === 6 ? formatMac(ll) : undefined,
    vni: readU32(a.get(C.NDA_VNI)),
    masterIndex: readU32(a.get(C.NDA_MASTER)),
  };
}
