/**
 * rtnetlink route messages. Pure: no socket here.
 *
 *   struct rtmsg { unsigned char rtm_family, rtm_dst_len, rtm_src_len, rtm_tos;
 *                  unsigned char rtm_table, rtm_protocol, rtm_scope, rtm_type;
 *                  unsigned rtm_flags; };
 */
import * as C from './consts';
import { Attr, attrBytes, attrNested, attrU32, decodeAttrs, readU32 } from './codec';
import { AddressParseError, formatIp, networkOf, parseCidr, parseIp } from './ipaddr';

export interface RouteSpec {
  /** destination CIDR; "default", "0.0.0.0/0" and "::/0" are the default route */
  dst: string;
  gw?: string;
  /** output interface index */
  oifIndex?: number;
  /** preferred source address */
  src?: string;
  /** RT_SCOPE_*; defaults to link scope for a route without gateway, universe otherwise */
  scope?: number;
  table?: number;
  /** metric (RTA_PRIORITY) */
  priority?: number;
  mtu?: number;
  advmss?: number;
  /** gateway is reachable on the link even if no prefix route covers it */
  onlink?: boolean;
  /** RTN_*; unicast by default */
  type?: number;
  /** IPv4 or IPv6 default route when dst is "default" (defaults from gw, else IPv4) */
  family?: number;
}

interface ResolvedDst {
  family: number;
  bytes?: Buffer;
  prefixLen: number;
}

function resolveDst(spec: RouteSpec): ResolvedDst {
  if (spec.dst === 'default') {
    const family = spec.family ?? (spec.gw ? parseIp(spec.gw).family : C.AF_INET);
    return { family, prefixLen: 0 };
  }
  const c = networkOf(parseCidr(spec.dst));
  return { family: c.family, bytes: c.prefixLen ? c.bytes : undefined, prefixLen: c.prefixLen };
}

export function rtmsg(family: number, dstLen: number, table: number, protocol: number, scope: number, type: number, flags = 0): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  b.writeUInt8(dstLen, 1);
  b.writeUInt8(table < 256 ? table : C.RT_TABLE_UNSPEC, 4);
  b.writeUInt8(protocol, 5);
  b.writeUInt8(scope, 6);
  b.writeUInt8(type, 7);
  b.writeUInt32LE(flags >>> 0, 8);
  return b;
}

/** Family header and attributes for RTM_NEWROUTE / RTM_DELROUTE. */
export function routeMessage(spec: RouteSpec, forDelete: boolean): { header: Buffer; attrs: Attr[] } {
  const dst = resolveDst(spec);
  const table = spec.table ?? C.RT_TABLE_MAIN;
  const attrs: Attr[] = [];
  if (dst.bytes) attrs.push(attrBytes(C.RTA_DST, dst.bytes));
  if (spec.gw) {
    const gw = parseIp(spec.gw);
    if (gw.family !== dst.family) throw new AddressParseError(`gateway ${spec.gw} is not of the destination's family`);
    attrs.push(attrBytes(C.RTA_GATEWAY, gw.bytes));
  }
  if (spec.oifIndex !== undefined) attrs.push(attrU32(C.RTA_OIF, spec.oifIndex));
  if (spec.src) attrs.push(attrBytes(C.RTA_PREFSRC, parseIp(spec.src).bytes));
  if (spec.priority !== undefined) attrs.push(attrU32(C.RTA_PRIORITY, spec.priority));
  attrs.push(attrU32(C.RTA_TABLE, table));
  const metrics: Attr[] = [];
  if (spec.mtu) metrics.push(attrU32(C.RTAX_MTU, spec.mtu));
  if (spec.advmss) metrics.push(attrU32(C.RTAX_ADVMSS, spec.advmss));
  if (metrics.length) attrs.push(attrNested(C.RTA_METRICS, metrics));
  // As iproute2 does: a delete matches any scope/protocol/type unless told.
  const scope = spec.scope ?? (forDelete ? C.RT_SCOPE_NOWHERE : spec.gw ? C.RT_SCOPE_UNIVERSE : C.RT_SCOPE_LINK);
  const protocol = forDelete ? 0 : C.RTPROT_BOOT;
  const type = spec.type ?? (forDelete ? 0 : C.RTN_UNICAST);
  const header = rtmsg(dst.family, dst.prefixLen, table, protocol, scope, type, spec.onlink ? C.RTNH_F_ONLINK : 0);
  return { header, attrs };
}

/** A route as the kernel reports it (ip -j route show). */
export interface Route {
  family: number;
  /** "10.1.0.0/24" or "default" */
  dst: string;
  gw?: string;
  oifIndex?: number;
  src?: string;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  priority?: number;
  mtu?: number;
  advmss?: number;
}

export function parseRoute(payload: Buffer): Route {
  const family = payload.readUInt8(0);
  const dstLen = payload.readUInt8(1);
  const a = decodeAttrs(payload, 12);
  const dstBytes = a.get(C.RTA_DST);
  const gw = a.get(C.RTA_GATEWAY);
  const src = a.get(C.RTA_PREFSRC);
  const route: Route = {
    family,
    dst: dstBytes && dstLen ? `${formatIp(family, dstBytes)}/${dstLen}` : 'default',
    gw: gw ? formatIp(family, gw) : undefined,
    oifIndex: readU32(a.get(C.RTA_OIF)),
    src: src ? formatIp(family, src) : undefined,
    table: readU32(a.get(C.RTA_TABLE)) ?? payload.readUInt8(4),
    protocol: payload.readUInt8(5),
    scope: payload.readUInt8(6),
    type: payload.readUInt8(7),
    priority: readU32(a.get(C.RTA_PRIORITY)),
  };
  const metrics = a.get(C.RTA_METRICS);
  if (metrics) {
    const m = decodeAttrs(metrics);
    route.mtu = readU32(m.get(C.RTAX_MTU));
    route.advmss = readU32(m.get(C.RTAX_ADVMSS));
  }
  return route;
}
