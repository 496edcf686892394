/**
 * What the resolver answers, as a pure function of the query bytes and the
 * records of the network(s) the query is for: no sockets, no clock, so
 * every malformed packet can be tried here (test/shared/dns/zone.test.ts).
 *
 * Names a network answers: each container's name and aliases and the first
 * 12 characters of its ID, bare or under the network's domain
 * (`web`, `web.dns.cni-ts`); A and AAAA from its addresses on the network;
 * PTR for those addresses. TTL 0, so a restarted container's new address
 * is seen at once (Docker and aardvark-dns answer with small TTLs too).
 *
 * Anything else is either forwarded (the caller does it, upstream.ts) or,
 * on an internal network or under the network's own domain, NXDOMAIN.
 * Malformed queries get FORMERR (when the header can be read back) or
 * nothing; a response, or anything without a 12-byte header, gets nothing,
 * so the resolver can never be made to answer answers in a loop.
 */
import * as dnsPacket from 'dns-packet';
import { parseIp } from '../netlink/ipaddr';
import type { LoadedNetwork } from './records';

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

/** Largest query we look at; a real one (one question, an EDNS OPT) is far smaller. */
export const MAX_QUERY = 4096;

interface Host {
  v4: string[];
  v6: string[];
}

/** One network's names, ready to answer. */
export interface NetZone {
  name: string;
  domain: string;
  internal: boolean;
  upstream?: string[];
  byName: Map<string, Host>;
  /** reverse name (x.x.x.x.in-addr.arpa) -> fully qualified names */
  byPtr: Map<string, string[]>;
}

export function reverseName(ip: string): string {
  const a = parseIp(ip);
  if (a.bytes.length === 4) return `${[...a.bytes].reverse().join('.')}.in-addr.arpa`;
  const nibbles: string[] = [];
  for (const b of a.bytes) nibbles.push((b >> 4).toString(16), (b & 15).toString(16));
  return `${nibbles.reverse().join('.')}.ip6.arpa`;
}

export function buildZone(net: LoadedNetwork): NetZone {
  const domain = net.domain.toLowerCase();
  const byName = new Map<string, Host>();
  const byPtr = new Map<string, string[]>();
  for (const e of net.entries) {
    const names = [...new Set([...e.names, e.containerId.slice(0, 12)].map((n) => n.toLowerCase()))];
    for (const n of names) {
      const h = byName.get(n) ?? { v4: [], v6: [] };
      h.v4.push(...e.v4.filter((a) => !h.v4.includes(a)));
      h.v6.push(...e.v6.filter((a) => !h.v6.includes(a)));
      byName.set(n, h);
    }
    // PTR: the container's own name first (the short ID only when it has none)
    const primary = e.names.length ? e.names[0].toLowerCase() : e.containerId.slice(0, 12).toLowerCase();
    for (const a of [...e.v4, ...e.v6]) {
      const r = reverseName(a);
      const list = byPtr.get(r) ?? [];
      const fq = `${primary}.${domain}`;
      if (!list.includes(fq)) list.push(fq);
      byPtr.set(r, list);
    }
  }
  return { name: net.name, domain, internal: net.internal, upstream: net.upstream, byName, byPtr };
}

export type Decision =
  | { kind: 'reply'; packet: Buffer }
  /** not ours: the caller forwards the query (unless it must not) */
  | { kind: 'forward'; id: number }
  | { kind: 'drop'; why: string };

/** A header-only answer: the query's ID, opcode and RD echoed, QR set, no sections. */
export function errorReply(query: Buffer, rcode: number): Buffer {
  const out = Buffer.alloc(12);
  out.writeUInt16BE(query.readUInt16BE(0), 0);
  const flags = query.readUInt16BE(2);
  out.writeUInt16BE(0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | rcode, 2);
  return out;
}

/**
 * Decide what to do with one query for the given zones (the networks the
 * client belongs to, already checked by the caller). maxSize is the
 * largest reply the transport allows (512 for plain UDP, more with EDNS or
 * over TCP); a larger one is sent truncated (TC) so the client retries on TCP.
 */
export function answer(query: Buffer, zones: readonly NetZone[], transport: 'udp' | 'tcp'): Decision {
  if (query.length < 12) return { kind: 'drop', why: 'shorter than a DNS header' };
  const flags = query.readUInt16BE(2);
  if (flags & 0x8000) return { kind: 'drop', why: 'a response, not a query' };
  if (query.length > MAX_QUERY) return { kind: 'reply', packet: errorReply(query, RCODE.FORMERR) };
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { kind: 'reply', packet: errorReply(query, RCODE.NOTIMP) };
  // one question, no answers or authorities, at most one additional (EDNS OPT)
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((o) => query.readUInt16BE(o));
  if (qd !== 1 || an !== 0 || ns !== 0 || ar > 1) return { kind: 'reply', packet: errorReply(query, RCODE.FORMERR) };
  let decoded: dnsPacket.DecodedPacket;
  try {
    decoded = dnsPacket.decode(query);
  } catch {
    return { kind: 'reply', packet: errorReply(query, RCODE.FORMERR) };
  }
  const q = decoded.questions?.[0];
  if (!q || typeof q.name !== 'string') return { kind: 'reply', packet: errorReply(query, RCODE.FORMERR) };
  const opt = decoded.additionals?.find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
  if (decoded.additionals?.length && !opt) return { kind: 'reply', packet: errorReply(query, RCODE.FORMERR) };
  if ((q.class ?? 'IN') !== 'IN') return { kind: 'reply', packet: errorReply(query, RCODE.REFUSED) };
  if (zones.length === 0) return { kind: 'drop', why: 'no network' };

  const name = q.name.toLowerCase().replace(/\.$/, '');
  // dns-packet decodes type 255 as 'ANY', which its typings leave out
  const qtype = q.type as string;
  const id = decoded.id ?? 0;
  const reply = (rcode: number, answers: dnsPacket.Answer[]): Decision => {
    const maxSize = transport === 'tcp' ? 65535 : Math.min(Math.max(opt?.udpPayloadSize ?? 512, 512), 4096);
    const base = { type: 'response' as const, id, questions: [{ type: q.type, class: 'IN' as const, name: q.name }] };
    const f = dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_AVAILABLE | (flags & dnsPacket.RECURSION_DESIRED) | rcode;
    let packet = dnsPacket.encode({ ...base, flags: f, answers });
    if (packet.length > maxSize) packet = dnsPacket.encode({ ...base, flags: f | dnsPacket.TRUNCATED_RESPONSE, answers: [] });
    return { kind: 'reply', packet };
  };
  const internal = zones.some((z) => z.internal);

  if (name.endsWith('.in-addr.arpa') || name.endsWith('.ip6.arpa')) {
    const names = zones.flatMap((z) => z.byPtr.get(name) ?? []);
    if (names.length) {
      if (qtype !== 'PTR' && qtype !== 'ANY') return reply(RCODE.NOERROR, []);
      return reply(RCODE.NOERROR, names.map((data) => ({ type: 'PTR' as const, name: q.name, ttl: 0, data })));
    }
    return internal ? reply(RCODE.NXDOMAIN, []) : { kind: 'forward', id };
  }

  let ours = false;
  const host: Host = { v4: [], v6: [] };
  for (const z of zones) {
    let short: string | undefined = name;
    if (name === z.domain) ours = true;
    if (name.endsWith(`.${z.domain}`)) {
      ours = true;
      short = name.slice(0, -z.domain.length - 1);
    }
    const h = short === undefined ? undefined : z.byName.get(short);
    if (h) {
      ours = true;
      host.v4.push(...h.v4);
      host.v6.push(...h.v6);
    }
  }
  if (host.v4.length || host.v6.length) {
    const answers: dnsPacket.Answer[] = [];
    if (qtype === 'A' || qtype === 'ANY') for (const data of host.v4) answers.push({ type: 'A', name: q.name, ttl: 0, data });
    if (qtype === 'AAAA' || qtype === 'ANY') for (const data of host.v6) answers.push({ type: 'AAAA', name: q.name, ttl: 0, data });
    // the name exists: other types are NOERROR with no data
    return reply(RCODE.NOERROR, answers);
  }
  if (ours || internal) return reply(RCODE.NXDOMAIN, []);
  return { kind: 'forward', id };
}
