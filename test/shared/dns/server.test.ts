/**
 * The resolver on real sockets, all on loopback addresses (127.0.x.y play
 * the networks' gateways and containers; a client "in" a network sends from
 * an address inside its subnet): answers, forwarding to a fake upstream,
 * reload, and the guards: listen only on gateway addresses inside the
 * network, answer only clients inside the network the query was sent to,
 * forward nothing for outsiders, bounded TCP connections per client, idle
 * TCP connections closed.
 */
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addressesOf, query, rawQuery } from '../../../shared/dns/client';
import { putEntry, removeEntry, type DnsNetwork } from '../../../shared/dns/records';
import { MAX_TCP_PER_CLIENT, Resolver } from '../../../shared/dns/server';

const PORT = 20000 + (process.pid % 20000);
// a /16 of loopback of our own, from the pid, so parallel runs do not meet
const B = 100 + (process.pid % 100);
const X = `127.${B}.1`; // network X: 127.B.1.0/24, gateway .53
const Y = `127.${B}.2`; // network Y
const OUT = `127.${B}.9.9`; // a host address in no network
const UP = `127.${B}.8.8`; // fake upstream

let dir: string;
let resolver: Resolver;
const logs: string[] = [];

function network(name: string, prefix: string, extra: Partial<DnsNetwork> = {}): DnsNetwork {
  return { name, domain: 'dns.cni-ts', internal: false, listen: [`${prefix}.53`], subnets: [`${prefix}.0/24`], upstream: [`${UP}:${PORT}`], ...extra };
}

async function ask(name: string, server: string, from: string, type: dnsPacket.RecordType = 'A') {
  return query(name, type, { server, from, port: PORT, timeoutMs: 400 });
}

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-'));
  putEntry(dir, network('netx', X), { containerId: 'x1'.padEnd(20, '0'), ifname: 'eth0', names: ['alpha', 'a1'], v4: [`${X}.2`], v6: [] });
  putEntry(dir, network('nety', Y), { containerId: 'y1'.padEnd(20, '0'), ifname: 'eth0', names: ['bravo'], v4: [`${Y}.2`], v6: [] });
  logs.length = 0;
  resolver = new Resolver({ dir, port: PORT, log: (m) => logs.push(m), tcpIdleMs: 300 });
  await resolver.reload();
});

afterEach(async () => {
  await resolver.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('answers on the networks\' gateways', () => {
  it('listens on each network\'s gateway address only', () => {
    expect(resolver.listening().sort()).toEqual([`${X}.53`, `${Y}.53`]);
  });

  it('answers a name, an alias and the short ID of its own network over UDP', async () => {
    for (const n of ['alpha', 'a1.dns.cni-ts', 'x10000000000']) {
      expect(addressesOf(await ask(n, `${X}.53`, `${X}.7`))).toEqual([`${X}.2`]);
    }
  });

  it('answers over TCP', async () => {
    const reply = await tcpAsk(`${X}.53`, `${X}.7`, 'alpha');
    expect(addressesOf(reply)).toEqual([`${X}.2`]);
  });

  it('sees a new name after a reload, and not a removed one', async () => {
    putEntry(dir, network('netx', X), { containerId: 'x2'.padEnd(20, '0'), ifname: 'eth0', names: ['charlie'], v4: [`${X}.3`], v6: [] });
    expect((await ask('charlie.dns.cni-ts', `${X}.53`, `${X}.7`)) as unknown as { rcode: string }).toMatchObject({ rcode: 'NXDOMAIN' });
    await resolver.reload();
    expect(addressesOf(await ask('charlie', `${X}.53`, `${X}.7`))).toEqual([`${X}.3`]);
    removeEntry(dir, 'netx', 'x2'.padEnd(20, '0'), 'eth0');
    await resolver.reload();
    expect((await ask('charlie.dns.cni-ts', `${X}.53`, `${X}.7`)) as unknown as { rcode: string }).toMatchObject({ rcode: 'NXDOMAIN' });
  });

  it('stops listening on a network\'s gateway when its last record goes', async () => {
    removeEntry(dir, 'nety', 'y1'.padEnd(20, '0'), 'eth0');
    await resolver.reload();
    expect(resolver.listening()).toEqual([`${X}.53`]);
  });

  it('survives a restart with nothing lost: a new resolver on the same directory answers the same names', async () => {
    await resolver.close();
    resolver = new Resolver({ dir, port: PORT });
    await resolver.reload();
    expect(addressesOf(await ask('alpha', `${X}.53`, `${X}.7`))).toEqual([`${X}.2`]);
    expect(addressesOf(await ask('bravo', `${Y}.53`, `${Y}.7`))).toEqual([`${Y}.2`]);
  });
});

describe('forwarding', () => {
  let upstream: dgram.Socket;
  let seen: string[];
  beforeEach(async () => {
    seen = [];
    upstream = dgram.createSocket('udp4');
    upstream.on('message', (m, r) => {
      const p = dnsPacket.decode(m);
      seen.push(p.questions![0].name);
      upstream.send(dnsPacket.encode({ type: 'response', id: p.id, flags: dnsPacket.RECURSION_AVAILABLE, questions: p.questions, answers: [{ type: 'A', name: p.questions![0].name, ttl: 60, data: '127.1.2.3' }] }), r.port, r.address);
    });
    await new Promise<void>((res) => upstream.bind(PORT, UP, () => res()));
  });
  afterEach(() => upstream.close());

  it('forwards names that are not the network\'s to the upstream and relays the answer', async () => {
    expect(addressesOf(await ask('example.org', `${X}.53`, `${X}.7`))).toEqual(['127.1.2.3']);
    expect(seen).toEqual(['example.org']);
  });

  it('forwards nothing on an internal network: NXDOMAIN', async () => {
    putEntry(dir, network('netx', X, { internal: true }), { containerId: 'x1'.padEnd(20, '0'), ifname: 'eth0', names: ['alpha'], v4: [`${X}.2`], v6: [] });
    await resolver.reload();
    const r = await ask('example.org', `${X}.53`, `${X}.7`);
    expect((r as unknown as { rcode: string }).rcode).toBe('NXDOMAIN');
    expect(addressesOf(await ask('alpha', `${X}.53`, `${X}.7`))).toEqual([`${X}.2`]);
    expect(seen).toEqual([]);
  });

  it('is not an open resolver: a query from outside every network is neither answered nor forwarded', async () => {
    expect(await ask('example.org', `${X}.53`, OUT)).toBeUndefined();
    expect(seen).toEqual([]);
  });
});

describe('guards', () => {
  it('never listens on a wildcard address, nor on an address outside the network\'s subnets', async () => {
    putEntry(dir, network('wild', `127.${B}.3`, { listen: ['0.0.0.0', OUT] }), { containerId: 'w1'.padEnd(20, '0'), ifname: 'eth0', names: ['w'], v4: [`127.${B}.3.2`], v6: [] });
    await resolver.reload();
    expect(resolver.listening().sort()).toEqual([`${X}.53`, `${Y}.53`]);
    expect(await ask('w', OUT, `127.${B}.3.7`)).toBeUndefined();
    expect(logs.join('\n')).toMatch(/not listening on 0\.0\.0\.0/);
  });

  it('answers a client of network X nothing of network Y, even sent to Y\'s gateway', async () => {
    expect(await ask('bravo', `${Y}.53`, `${X}.7`)).toBeUndefined();
    expect(await ask('alpha', `${Y}.53`, `${X}.7`)).toBeUndefined();
    // and on its own gateway, Y's name is not X's
    expect((await ask('bravo.dns.cni-ts', `${X}.53`, `${X}.7`)) as unknown as { rcode: string }).toMatchObject({ rcode: 'NXDOMAIN' });
  });

  it('answers a host address outside every network nothing, over UDP and TCP', async () => {
    expect(await ask('alpha', `${X}.53`, OUT)).toBeUndefined();
    await expect(tcpAsk(`${X}.53`, OUT, 'alpha')).rejects.toThrow(/closed/);
  });

  it(`accepts at most ${MAX_TCP_PER_CLIENT} TCP connections per client`, async () => {
    const socks: net.Socket[] = [];
    try {
      for (let i = 0; i < MAX_TCP_PER_CLIENT; i++) socks.push(await connect(`${X}.53`, `${X}.7`));
      const extra = await connect(`${X}.53`, `${X}.7`);
      socks.push(extra);
      await new Promise<void>((res) => (extra.destroyed ? res() : extra.once('close', () => res())));
      // the others are still open, and another client still gets in
      expect(socks.slice(0, -1).every((s) => !s.destroyed)).toBe(true);
      expect(addressesOf(await tcpAsk(`${X}.53`, `${X}.8`, 'alpha'))).toEqual([`${X}.2`]);
    } finally {
      for (const s of socks) s.destroy();
    }
  });

  it('closes an idle TCP connection (a client holding a slot without asking)', async () => {
    const s = await connect(`${X}.53`, `${X}.7`);
    s.write(Buffer.from([0, 40, 1, 2])); // a prefix of a message, never completed
    await new Promise<void>((res) => s.once('close', () => res()));
    expect(s.destroyed).toBe(true);
  });

  it('a malformed UDP query gets FORMERR, and the resolver still answers afterwards', async () => {
    const bad = Buffer.concat([Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    const r = await rawQuery(bad, { server: `${X}.53`, from: `${X}.7`, port: PORT, timeoutMs: 400 });
    expect(r && (dnsPacket.decode(r) as unknown as { rcode: string }).rcode).toBe('FORMERR');
    expect(addressesOf(await ask('alpha', `${X}.53`, `${X}.7`))).toEqual([`${X}.2`]);
  });
});

function connect(host: string, from: string): Promise<net.Socket> {
  return new Promise((res, rej) => {
    const s = net.connect({ host, port: PORT, localAddress: from }, () => res(s));
    s.once('error', rej);
  });
}

async function tcpAsk(server: string, from: string, name: string): Promise<dnsPacket.DecodedPacket> {
  const s = await connect(server, from);
  const msg = dnsPacket.streamEncode({ type: 'query', id: 77, questions: [{ type: 'A', name }] });
  return new Promise((res, rej) => {
    let buf = Buffer.alloc(0);
    s.on('data', (c) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        s.destroy();
        res(dnsPacket.streamDecode(buf) as dnsPacket.DecodedPacket);
      }
    });
    s.once('close', () => rej(new Error('connection closed without an answer')));
    s.write(msg);
  });
}

