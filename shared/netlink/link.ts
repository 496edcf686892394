/**
 * rtnetlink link messages: the ifinfomsg header, the typed link specs we can
 * create (one per kind, as vishvananda/netlink's Veth/Bridge/Macvlan/...), and
 * the parsed view of a link the kernel reports. Pure: no socket here.
 *
 *   struct ifinfomsg { unsigned char ifi_family; unsigned char __ifi_pad;
 *                      unsigned short ifi_type; int ifi_index;
 *                      unsigned ifi_flags; unsigned ifi_change; };
 */
import * as C from './consts';
import {
  Attr,
  attrBytes,
  attrNested,
  attrString,
  attrU16be,
  attrU32,
  attrU8,
  decodeAttrs,
  encodeAttrs,
  readString,
  readU16,
  readU32,
  readU8,
} from './codec';
import { formatIp, formatMac, parseIp, parseMac } from './ipaddr';

export function ifinfomsg(index = 0, flags = 0, change = 0, family: number = C.AF_UNSPEC): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

export type MacvlanMode = 'private' | 'vepa' | 'bridge' | 'passthru';
export type IpvlanMode = 'l2' | 'l3' | 'l3s';
export type IpvlanFlag = 'bridge' | 'private' | 'vepa';

/** Attributes every kind may set at creation. */
export interface LinkCommon {
  name: string;
  mtu?: number;
  mac?: string;
  txqlen?: number;
  /** create the link directly inside the namespace open at this fd */
  netnsFd?: number;
  up?: boolean;
}

export interface VethSpec extends LinkCommon {
  kind: 'veth';
  peerName: string;
  peerMac?: string;
  peerMtu?: number;
  /** place the peer in another namespace at creation (ip link add ... peer name X netns NS) */
  peerNetnsFd?: number;
}
export interface BridgeSpec extends LinkCommon {
  kind: 'bridge';
  vlanFiltering?: boolean;
}
export interface MacvlanSpec extends LinkCommon {
  kind: 'macvlan';
  /** parent's ifindex in the namespace the request is sent to */
  parentIndex: number;
  mode: MacvlanMode;
}
export interface IpvlanSpec extends LinkCommon {
  kind: 'ipvlan';
  parentIndex: number;
  mode: IpvlanMode;
  flag?: IpvlanFlag;
}
export interface VlanSpec extends LinkCommon {
  kind: 'vlan';
  parentIndex: number;
  vlanId: number;
}
export interface VxlanSpec extends LinkCommon {
  kind: 'vxlan';
  vni: number;
  /** UDP destination port; 4789 is IANA's */
  port?: number;
  /** local VTEP address */
  local?: string;
  /** underlay device index */
  parentIndex?: number;
  /** off unless asked: entries are programmed statically (unlike `ip`, whose default is on) */
  learning?: boolean;
  ttl?: number;
  udpCsum?: boolean;
  /** answer ARP/NDP from the device's own neighbour table (cannot be changed after creation) */
  proxy?: boolean;
}
export interface DummySpec extends LinkCommon {
  kind: 'dummy';
}
export type LinkSpec = VethSpec | BridgeSpec | MacvlanSpec | IpvlanSpec | VlanSpec | VxlanSpec | DummySpec;

const macvlanModes: Record<MacvlanMode, number> = {
  private: C.MACVLAN_MODE_PRIVATE,
  vepa: C.MACVLAN_MODE_VEPA,
  bridge: C.MACVLAN_MODE_BRIDGE,
  passthru: C.MACVLAN_MODE_PASSTHRU,
};
const ipvlanModes: Record<IpvlanMode, number> = { l2: C.IPVLAN_MODE_L2, l3: C.IPVLAN_MODE_L3, l3s: C.IPVLAN_MODE_L3S };
const ipvlanFlags: Record<IpvlanFlag, number> = { bridge: 0, private: C.IPVLAN_F_PRIVATE, vepa: C.IPVLAN_F_VEPA };

function commonAttrs(s: LinkCommon): Attr[] {
  const attrs: Attr[] = [attrString(C.IFLA_IFNAME, s.name)];
  if (s.mtu !== undefined) attrs.push(attrU32(C.IFLA_MTU, s.mtu));
  if (s.mac !== undefined) attrs.push(attrBytes(C.IFLA_ADDRESS, parseMac(s.mac)));
  if (s.txqlen !== undefined) attrs.push(attrU32(C.IFLA_TXQLEN, s.txqlen));
  if (s.netnsFd !== undefined) attrs.push(attrU32(C.IFLA_NET_NS_FD, s.netnsFd));
  return attrs;
}

/** The attributes of RTM_NEWLINK for a spec (after the ifinfomsg). */
export function linkAddAttrs(spec: LinkSpec): Attr[] {
  const attrs = commonAttrs(spec);
  const data: Attr[] = [];
  switch (spec.kind) {
    case 'veth': {
      // VETH_INFO_PEER carries a whole ifinfomsg followed by the peer's attributes.
      const peer: Attr[] = [attrString(C.IFLA_IFNAME, spec.peerName)];
      if (spec.peerMtu ?? spec.mtu) peer.push(attrU32(C.IFLA_MTU, (spec.peerMtu ?? spec.mtu)!));
      if (spec.peerMac) peer.push(attrBytes(C.IFLA_ADDRESS, parseMac(spec.peerMac)));
      if (spec.peerNetnsFd !== undefined) peer.push(attrU32(C.IFLA_NET_NS_FD, spec.peerNetnsFd));
      data.push(attrBytes(C.VETH_INFO_PEER, Buffer.concat([ifinfomsg(), encodeAttrs(peer)])));
      break;
    }
    case 'bridge':
      if (spec.vlanFiltering !== undefined) data.push(attrU8(C.IFLA_BR_VLAN_FILTERING, spec.vlanFiltering ? 1 : 0));
      break;
    case 'macvlan':
      attrs.push(attrU32(C.IFLA_LINK, spec.parentIndex));
      data.push(attrU32(C.IFLA_MACVLAN_MODE, macvlanModes[spec.mode]));
      break;
    case 'ipvlan':
      attrs.push(attrU32(C.IFLA_LINK, spec.parentIndex));
      data.push({ type: C.IFLA_IPVLAN_MODE, value: u16le(ipvlanModes[spec.mode]) });
      data.push({ type: C.IFLA_IPVLAN_FLAGS, value: u16le(ipvlanFlags[spec.flag ?? 'bridge']) });
      break;
    case 'vlan':
      attrs.push(attrU32(C.IFLA_LINK, spec.parentIndex));
      data.push({ type: C.IFLA_VLAN_ID, value: u16le(spec.vlanId) });
      break;
    case 'vxlan': {
      data.push(attrU32(C.IFLA_VXLAN_ID, spec.vni));
      data.push(attrU16be(C.IFLA_VXLAN_PORT, spec.port ?? 4789));
      data.push(attrU8(C.IFLA_VXLAN_LEARNING, spec.learning ? 1 : 0));
      if (spec.ttl !== undefined) data.push(attrU8(C.IFLA_VXLAN_TTL, spec.ttl));
      if (spec.udpCsum !== undefined) data.push(attrU8(C.IFLA_VXLAN_UDP_CSUM, spec.udpCsum ? 1 : 0));
      if (spec.proxy !== undefined) data.push(attrU8(C.IFLA_VXLAN_PROXY, spec.proxy ? 1 : 0));
      if (spec.parentIndex !== undefined) data.push(attrU32(C.IFLA_VXLAN_LINK, spec.parentIndex));
      if (spec.local) {
        const ip = parseIp(spec.local);
        data.push(attrBytes(ip.family === C.AF_INET ? C.IFLA_VXLAN_LOCAL : C.IFLA_VXLAN_LOCAL6, ip.bytes));
      }
      break;
    }
    case 'dummy':
      break;
  }
  const info: Attr[] = [attrString(C.IFLA_INFO_KIND, spec.kind)];
  if (data.length) info.push(attrNested(C.IFLA_INFO_DATA, data));
  attrs.push(attrNested(C.IFLA_LINKINFO, info));
  return attrs;
}

function u16le(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}

/** What the kernel reports about a link (ip -j link show). */
export interface Link {
  index: number;
  name: string;
  /** IFF_* flags */
  flags: number;
  up: boolean;
  mtu: number;
  mac?: string;
  /** 'veth', 'bridge', 'macvlan', ... ; undefined for physical/loopback */
  kind?: string;
  /** the bridge (or bond) this link is enslaved to */
  masterIndex?: number;
  /** IFLA_LINK: parent for macvlan/ipvlan/vlan, peer index for veth */
  parentIndex?: number;
  /** set when the parent/peer lives in another namespace */
  linkNetnsId?: number;
  operState?: number;
  promiscuity?: number;
  slaveKind?: string;
  macvlanMode?: MacvlanMode;
  ipvlanMode?: IpvlanMode;
  vlanId?: number;
  vxlan?: { vni?: number; port?: number; local?: string; learning?: boolean; parentIndex?: number };
}

export function parseLink(payload: Buffer): Link {
  const index = payload.readInt32LE(4);
  const flags = payload.readUInt32LE(8);
  const a = decodeAttrs(payload, 16);
  const addr = a.get(C.IFLA_ADDRESS);
  const link: Link = {
    index,
    name: readString(a.get(C.IFLA_IFNAME)) ?? '',
    flags,
    up: (flags & C.IFF_UP) !== 0,
    mtu: readU32(a.get(C.IFLA_MTU)) ?? 0,
    mac: addr && addr.length === 6 ? formatMac(addr) : undefined,
    masterIndex: readU32(a.get(C.IFLA_MASTER)),
    parentIndex: readU32(a.get(C.IFLA_LINK)),
    linkNetnsId: a.has(C.IFLA_LINK_NETNSID) ? a.get(C.IFLA_LINK_NETNSID)!.readInt32LE(0) : undefined,
    operState: readU8(a.get(C.IFLA_OPERSTATE)),
    promiscuity: readU32(a.get(C.IFLA_PROMISCUITY)),
  };
  const infoBuf = a.get(C.IFLA_LINKINFO);
  if (infoBuf) {
    const info = decodeAttrs(infoBuf);
    link.kind = readString(info.get(C.IFLA_INFO_KIND));
    link.slaveKind = readString(info.get(C.IFLA_INFO_SLAVE_KIND));
    const dataBuf = info.get(C.IFLA_INFO_DATA);
    if (dataBuf) parseKindData(link, decodeAttrs(dataBuf));
  }
  return link;
}

function parseKindData(link: Link, d: Map<number, Buffer>): void {
  switch (link.kind) {
    case 'macvlan': {
      const mode = readU32(d.get(C.IFLA_MACVLAN_MODE));
      link.macvlanMode = (Object.keys(macvlanModes) as MacvlanMode[]).find((k) => macvlanModes[k] === mode);
      break;
    }
    case 'ipvlan': {
      const mode = readU16(d.get(C.IFLA_IPVLAN_MODE));
      link.ipvlanMode = (Object.keys(ipvlanModes) as IpvlanMode[]).find((k) => ipvlanModes[k] === mode);
      break;
    }
    case 'vlan':
      link.vlanId = readU16(d.get(C.IFLA_VLAN_ID));
      break;
    case 'vxlan': {
      const local = d.get(C.IFLA_VXLAN_LOCAL) ?? d.get(C.IFLA_VXLAN_LOCAL6);
      const port = d.get(C.IFLA_VXLAN_PORT);
      link.vxlan = {
        vni: readU32(d.get(C.IFLA_VXLAN_ID)),
        port: port ? port.readUInt16BE(0) : undefined,
        local: local ? formatIp(local.length === 4 ? C.AF_INET : C.AF_INET6, local) : undefined,
        learning: d.has(C.IFLA_VXLAN_LEARNING) ? readU8(d.get(C.IFLA_VXLAN_LEARNING)) === 1 : undefined,
        parentIndex: readU32(d.get(C.IFLA_VXLAN_LINK)),
      };
      break;
    }
    default:
      break;
  }
}
