/**
 * The resolver's answers as a pure function (no sockets, no root): names,
 * aliases and short IDs of one network, PTR, the search domain, what is
 * forwarded, and malformed queries (truncated, oversized, wrong class,
 * compression loops, zero or many questions, random bytes) that must get
 * an error answer or nothing and never throw.
 */
import * as dnsPacket from 'dns-packet';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { LoadedNetwork } from '../../../shared/dns/records';
import { answer, buildZone, reverseName } from '../../../shared/dns/zone';

const web: LoadedNetwork = {
  name: 'front',
  domain: 'dns.cni-ts',
  internal: false,
  listen: ['10.88.0.1'],
  subnets: ['10.88.0.0/24', 'fd00:88::/64'],
  entries: [
    { containerId: '0123456789abcdef0123', ifname: 'eth0', names: ['web', 'www'], v4: ['10.88.0.2'], v6: ['fd00:88::2'] },
    { containerId: 'fedcba9876543210fedc', ifname: 'eth0', names: ['db'], v4: ['10.88.0.3'], v6: [] },
  ],
};
const other: LoadedNetwork = {
  ...web,
  name: 'back',
  listen: ['10.89.0.1'],
  subnets: ['10.89.0.0/24'],
  entries: [{ containerId: 'aaaaaaaaaaaaaaaaaaaa', ifname: 'eth0', names: ['secret'], v4: ['10.89.0.2'], v6: [] }],
};
const zone = buildZone(web);
const internalZone = buildZone({ ...web, internal: true });

function q(name: string, type: dnsPacket.RecordType = 'A', extra: Partial<dnsPacket.Packet> = {}): Buffer {
  return dnsPacket.encode({ type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }], ...extra });
}

function reply(query: Buffer, zones = [zone], transport: 'udp' | 'tcp' = 'udp') {
  const d = answer(query, zones, transport);
  if (d.kind !== 'reply') throw new Error(`expected a reply, got ${JSON.stringify(d)}`);
  return dnsPacket.decode(d.packet);
}

const rcode = (p: dnsPacket.DecodedPacket) => (p as unknown as { rcode: string }).rcode;
const data = (p: dnsPacket.DecodedPacket) => (p.answers ?? []).map((a) => String((a as { data: unknown }).data)).sort();

describe('names of the network', () => {
  it('answers a container name, an alias and the short ID, bare or under the domain, in any case, with TTL 0', () => {
    for (const name of ['web', 'www', '0123456789ab', 'web.dns.cni-ts', 'WeB.DNS.cni-ts.', '0123456789AB.dns.cni-ts']) {
      const p = reply(q(name));
      expect(rcode(p)).toBe('NOERROR');
      expect(p.id).toBe(4242);
      expect(p.flag_aa).toBe(true);
      expect(data(p)).toEqual(['10.88.0.2']);
      expect(p.answers?.every((a) => (a as { ttl: number }).ttl === 0)).toBe(true);
    }
  });

  it('answers AAAA with the container\'s IPv6 addresses, and NOERROR with no data where it has none', () => {
    expect(data(reply(q('web', 'AAAA')))).toEqual(['fd00:88::2']);
    const p = reply(q('db', 'AAAA'));
    expect(rcode(p)).toBe('NOERROR');
    expect(p.answers).toEqual([]);
    expect(data(reply(q('web', 'TXT')))).toEqual([]);
  });

  it('answers PTR for IPv4 and IPv6 addresses with the container\'s name under the domain', () => {
    expect(reverseName('10.88.0.2')).toBe('2.0.88.10.in-addr.arpa');
    expect(data(reply(q(reverseName('10.88.0.2'), 'PTR')))).toEqual(['web.dns.cni-ts']);
    expect(data(reply(q(reverseName('fd00:88::2'), 'PTR')))).toEqual(['web.dns.cni-ts']);
    expect(data(reply(q(reverseName('10.88.0.3'), 'PTR')))).toEqual(['db.dns.cni-ts']);
  });

  it('never answers the names or addresses of another network', () => {
    expect(rcode(reply(q('secret.dns.cni-ts')))).toBe('NXDOMAIN');
    // bare: not ours, so forwarded upstream, never answered from the other network
    expect(answer(q('secret'), [zone], 'udp').kind).toBe('forward');
    expect(answer(q(reverseName('10.89.0.2'), 'PTR'), [zone], 'udp').kind).toBe('forward');
    expect(data(reply(q('secret'), [buildZone(other)]))).toEqual(['10.89.0.2']);
  });

  it('says NXDOMAIN for unknown names under the domain, forwards other names, and forwards nothing on an internal network', () => {
    expect(rcode(reply(q('nobody.dns.cni-ts')))).toBe('NXDOMAIN');
    expect(answer(q('example.com'), [zone], 'udp')).toEqual({ kind: 'forward', id: 4242 });
    expect(rcode(reply(q('example.com'), [internalZone]))).toBe('NXDOMAIN');
    expect(rcode(reply(q(reverseName('192.0.2.1'), 'PTR'), [internalZone]))).toBe('NXDOMAIN');
    expect(data(reply(q('web'), [internalZone]))).toEqual(['10.88.0.2']);
  });

  it('answers nothing when the client belongs to no network', () => {
    expect(answer(q('web'), [], 'udp').kind).toBe('drop');
  });

  it('sends a reply too large for plain UDP truncated (TC), and whole over TCP', () => {
    const many: LoadedNetwork = {
      ...web,
      entries: Array.from({ length: 16 }, (_, i) => ({ containerId: `c${i}`.padEnd(20, '0'), ifname: 'eth0', names: ['svc'], v4: [], v6: Array.from({ length: 16 }, (_, j) => `fd00:88::${i}:${j + 1}`) })),
    };
    const z = buildZone(many);
    const udp = reply(q('svc', 'AAAA'), [z], 'udp');
    expect(udp.flag_tc).toBe(true);
    expect(udp.answers).toEqual([]);
    const tcp = reply(q('svc', 'AAAA'), [z], 'tcp');
    expect(tcp.flag_tc).toBe(false);
    expect(tcp.answers?.length).toBe(256);
  });
});

describe('malformed queries get an error answer or nothing, never a throw', () => {
  const header = (id: number, flags: number, qd: number, an = 0, ns = 0, ar = 0) => {
    const b = Buffer.alloc(12);
    [id, flags, qd, an, ns, ar].forEach((v, i) => b.writeUInt16BE(v, i * 2));
    return b;
  };

  it('drops anything shorter than a header, and responses (no reflection loops)', () => {
    expect(answer(Buffer.alloc(0), [zone], 'udp').kind).toBe('drop');
    expect(answer(Buffer.from([1, 2, 3]), [zone], 'udp').kind).toBe('drop');
    const resp = q('web');
    resp.writeUInt16BE(resp.readUInt16BE(2) | 0x8000, 2);
    expect(answer(resp, [zone], 'udp').kind).toBe('drop');
  });

  it('FORMERR for a truncated question, at every length', () => {
    const full = q('web.dns.cni-ts');
    for (let len = 12; len < full.length; len++) {
      const p = reply(full.subarray(0, len));
      expect(rcode(p)).toBe('FORMERR');
      expect(p.id).toBe(4242);
    }
  });

  it('FORMERR for zero questions and for two', () => {
    expect(rcode(reply(header(7, 0x0100, 0)))).toBe('FORMERR');
    const two = dnsPacket.encode({ type: 'query', id: 7, questions: [{ type: 'A', name: 'web' }, { type: 'A', name: 'db' }] });
    expect(rcode(reply(two))).toBe('FORMERR');
    // answers in a query
    expect(rcode(reply(header(7, 0, 1, 1)))).toBe('FORMERR');
  });

  it('FORMERR for an oversized query', () => {
    const big = Buffer.concat([q('web'), Buffer.alloc(5000)]);
    expect(rcode(reply(big))).toBe('FORMERR');
  });

  it('REFUSED for a class other than IN (CHAOS version.bind)', () => {
    const ch = dnsPacket.encode({ type: 'query', id: 9, questions: [{ type: 'TXT', name: 'version.bind', class: 'CH' }] });
    expect(rcode(reply(ch))).toBe('REFUSED');
  });

  it('NOTIMP for opcodes other than QUERY', () => {
    const upd = q('web');
    upd.writeUInt16BE((upd.readUInt16BE(2) & ~0x7800) | (5 << 11), 2);
    expect(rcode(reply(upd))).toBe('NOTIMP');
  });

  it('FORMERR for compression loops: a name pointing at itself, and two pointing at each other', () => {
    // question name at offset 12 is a pointer to offset 12
    const self = Buffer.concat([header(1, 0, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    expect(rcode(reply(self))).toBe('FORMERR');
    // label "a" then a pointer back to 12 (forward/backward loop)
    const loop = Buffer.concat([header(2, 0, 1), Buffer.from([1, 0x61, 0xc0, 12, 0, 1, 0, 1])]);
    expect(rcode(reply(loop))).toBe('FORMERR');
    // a pointer past the end
    const wild = Buffer.concat([header(3, 0, 1), Buffer.from([0xc0, 0xff, 0, 1, 0, 1])]);
    expect(rcode(reply(wild))).toBe('FORMERR');
  });

  it('random bytes: never throws; any reply is a well-formed response carrying the query\'s ID', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), (bytes) => {
        const buf = Buffer.from(bytes);
        const d = answer(buf, [zone, internalZone], 'udp');
        if (d.kind === 'reply') {
          const p = dnsPacket.decode(d.packet);
          expect(p.type).toBe('response');
          expect(p.id).toBe(buf.readUInt16BE(0));
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('valid queries with random bytes flipped: never throws', () => {
    const base = q('web.dns.cni-ts', 'AAAA', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as dnsPacket.Answer] });
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), (flips) => {
        const b = Buffer.from(base);
        for (const [i, v] of flips) b[i] = v;
        const d = answer(b, [zone], 'udp');
        if (d.kind === 'reply') expect(dnsPacket.decode(d.packet).type).toBe('response');
      }),
      { numRuns: 3000 },
    );
  });
});
