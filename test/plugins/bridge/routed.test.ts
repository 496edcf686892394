/**
 * Docker's gateway modes (gatewayMode, gatewayModeIPv6) and the SNAT source
 * address (outboundAddr4) on a real kernel, with real traffic.
 *
 * The lab's host namespace plays the host; a "LAN" namespace sits on a
 * routed link to it and routes 10.0.0.0/8 through it, as a neighbour on a
 * LAN with a route to the container subnets would. Containers run a server
 * that answers with its name and the peer address it sees, the LAN one
 * answers with the peer address: what each side sees tells whether the
 * traffic was NATed. Published ports come from our portmap, chained after
 * the bridge the way a runtime chains them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BRIDGE_BIN, Lab, ROOT, type Container, type Network, type Outside } from './lab';
import { FakeNft } from '../../../testkit/fake-nft';
import { OwnedTable } from '../../../shared/nft/table';
import { BRIDGE_TABLE, addNetworkRules, networkSignature, type NetworkFirewall } from '../../../plugins/bridge/firewall';

const V = '1.0.0';
/** The container's published port (host side HOST_PORT) and an unpublished one. */
const PUBLISHED = 8080;
const UNPUBLISHED = 9090;
const HOST_PORT = 18480;
/** A server on the LAN side, for the container's egress. */
const LAN_PORT = 7070;
/** How long an answer that must not come is waited for. */
const NO_ANSWER_MS = 1500;

const SERVER = `
const net = require('node:net');
const [name, ...ports] = process.argv.slice(2);
let pending = ports.length;
for (const p of ports) net.createServer((s) => s.end(name + ' ' + s.remoteAddress.replace(/^::ffff:/, '') + '\\n')).listen({ port: Number(p), host: '::', ipv6Only: false }, () => { if (--pending === 0) process.stdout.write('ready\\n'); });
`;
const CLIENT = `
const net = require('node:net');
const [host, port, waitMs] = process.argv.slice(2);
const done = (s) => { process.stdout.write(s.trim()); process.exit(0); };
setTimeout(() => done('ERR:TIMEOUT'), Number(waitMs));
let data = '';
const s = net.connect({ host, port: Number(port) });
s.on('data', (d) => { data += d; });
s.on('end', () => done(data));
s.on('error', (e) => done('ERR:' + e.code));
`;

let lab: Lab;
let lan: Outside;
let serverJs: string;
let clientJs: string;
const servers: ChildProcess[] = [];

function startServer(ns: string, name: string, ports: number[]): Promise<void> {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, serverJs, name, ...ports.map(String)], { stdio: ['ignore', 'pipe', 'pipe'] });
  servers.push(p);
  return new Promise((resolve, reject) => {
    p.stdout?.on('data', (d) => String(d).includes('ready') && resolve());
    p.on('exit', (code) => reject(new Error(`server in ${ns} exited ${code}`)));
  });
}

/** What a TCP client in `ns` gets from host:port: "<name> <peer address seen>", or "ERR:<code>". */
function ask(ns: string, host: string, port: number, waitMs = 8000): string {
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, clientJs, host, String(port), String(waitMs)], { encoding: 'utf8', timeout: 20_000 });
  return (r.stdout ?? '').trim();
}

/** portmap chained after the bridge: the portmap beside the bridge the lab installed (the same build), run in the lab's host. */
function portmap(command: 'ADD' | 'DEL', net: Network, c: Container, prevResult: unknown, portMappings: unknown[]): void {
  const bin = path.join(path.dirname(lab.binary), 'portmap');
  if (!fs.existsSync(bin)) fs.copyFileSync(path.join(path.dirname(BRIDGE_BIN), 'portmap'), bin);
  const conf = { cniVersion: V, name: net.name, type: 'portmap', snat: true, runtimeConfig: { portMappings }, prevResult };
  const r = spawnSync('nsenter', [`--net=${lab.hostPath}`, '--', bin], { env: lab.env({ command, conf, container: c }), input: JSON.stringify(conf), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`portmap ${command} failed: ${r.stdout}${r.stderr}`);
}

interface Attached {
  c: Container;
  ip: string;
  result: any;
}

/** A container on `net` running the server on both ports, PUBLISHED published as HOST_PORT+offset. */
async function attach(net: Network, extra: Record<string, unknown>, hostPort?: number): Promise<Attached> {
  const c = lab.container();
  const out = lab.run({ command: 'ADD', conf: net.conf(V, extra), container: c });
  expect(out.status, out.stdout + out.stderr).toBe(0);
  const ip = out.json.ips[0].address.split('/')[0];
  if (hostPort) portmap('ADD', net, c, out.json, [{ hostPort, containerPort: PUBLISHED, protocol: 'tcp' }]);
  await startServer(c.ns, c.id, [PUBLISHED, UNPUBLISHED]);
  return { c, ip, result: out.json };
}

function masqChain(bridge: string): string {
  return spawnSync('ip', ['netns', 'exec', lab.host, 'nft', 'list', 'chain', 'inet', 'cni_ts_bridge', `net-${bridge}-masq`], { encoding: 'utf8' }).stdout;
}

beforeAll(async () => {
  lab = new Lab({ daemon: false });
  serverJs = path.join(lab.dir, 'server.js');
  clientJs = path.join(lab.dir, 'client.js');
  fs.writeFileSync(serverJs, SERVER);
  fs.writeFileSync(clientJs, CLIENT);
  lan = lab.outside(true);
  // A second host address on the LAN link: the outbound (SNAT) address of one network.
  const lanDev = lab.ipj(lab.host, 'route', 'get', lan.ip)[0].dev as string;
  lab.ip(lab.host, 'addr', 'add', `${lan.hostIp.replace(/\.1$/, '.3')}/24`, 'dev', lanDev);
  await startServer(lan.ns, 'lan', [LAN_PORT]);
}, 60_000);

afterAll(() => {
  for (const s of servers) s.kill('SIGKILL');
  lab?.cleanup();
});

describe('gatewayMode routed', () => {
  let net: Network;
  let a: Attached;
  beforeAll(async () => {
    net = lab.network();
    // the modes of examples/bridge-routed.conflist, as users copy them
    const example = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples/bridge-routed.conflist'), 'utf8')).plugins[0];
    expect(example.gatewayMode).toBe('routed');
    a = await attach(net, { gatewayMode: example.gatewayMode, gatewayModeIPv6: example.gatewayModeIPv6 }, HOST_PORT);
  }, 60_000);

  it('lets the LAN reach a published port, and the container sees the LAN address (no NAT)', () => {
    expect(ask(lan.ns, lan.hostIp, HOST_PORT)).toBe(`${a.c.id} ${lan.ip}`);
  });

  it('closes every port that is not published to routed access from the LAN', () => {
    expect(ask(lan.ns, a.ip, UNPUBLISHED, NO_ANSWER_MS)).toMatch(/^ERR:/);
    // the container port itself is not a published one: only its DNATed host port is
    expect(ask(lan.ns, a.ip, PUBLISHED, NO_ANSWER_MS)).toMatch(/^ERR:/);
  });

  it('answers ICMP echo from the LAN, as Docker does in routed mode', () => {
    expect(lab.reachable(lan.ns, a.ip)).toBe(true);
  });

  it('routes the container out without masquerade: the LAN sees the container address', () => {
    expect(ask(a.c.ns, lan.ip, LAN_PORT)).toBe(`lan ${a.ip}`);
    expect(masqChain(net.bridge)).not.toMatch(/masquerade|snat/);
  });

  it('refuses ipMasq together with routed (code 7)', () => {
    const out = lab.run({ command: 'ADD', conf: net.conf(V, { gatewayMode: 'routed', ipMasq: true }), container: lab.container() });
    expect(out.status).not.toBe(0);
    expect(out.json.code).toBe(7);
  });
});

describe('gatewayMode nat (protected) and nat-unprotected', () => {
  it('nat: masquerades egress, reaches published ports, closes direct routed access to unpublished ones', async () => {
    const net = lab.network();
    const a = await attach(net, { gatewayMode: 'nat' }, HOST_PORT + 1);
    expect(ask(a.c.ns, lan.ip, LAN_PORT)).toBe(`lan ${lan.hostIp}`);
    expect(ask(lan.ns, lan.hostIp, HOST_PORT + 1)).toBe(`${a.c.id} ${lan.ip}`);
    expect(ask(lan.ns, a.ip, UNPUBLISHED, NO_ANSWER_MS)).toMatch(/^ERR:/);
    expect(masqChain(net.bridge)).toMatch(/masquerade/);
  });

  it('nat-unprotected: masquerades egress and leaves direct routed access open', async () => {
    const net = lab.network();
    const a = await attach(net, { gatewayMode: 'nat-unprotected' });
    expect(ask(a.c.ns, lan.ip, LAN_PORT)).toBe(`lan ${lan.hostIp}`);
    expect(ask(lan.ns, a.ip, UNPUBLISHED)).toBe(`${a.c.id} ${lan.ip}`);
  });
});

describe('gatewayMode isolated', () => {
  it('gives the container no route out and the bridge no gateway address; nothing is routed either way', async () => {
    const net = lab.network();
    const a = await attach(net, { gatewayMode: 'isolated' });
    expect(lab.routes(a.c.ns).some((r) => r.dst === 'default')).toBe(false);
    expect(lab.addrs(lab.host, net.bridge)).not.toContain(`${net.gateway}/24`);
    expect(ask(a.c.ns, lan.ip, LAN_PORT, NO_ANSWER_MS)).toMatch(/^ERR:/);
    expect(ask(lan.ns, a.ip, UNPUBLISHED, NO_ANSWER_MS)).toMatch(/^ERR:/);
    expect(lab.reachable(lan.ns, a.ip)).toBe(false);
  });
});

describe('outboundAddr4 (the SNAT source address)', () => {
  it('makes NATed egress leave from that address instead of the masquerade choice', async () => {
    const net = lab.network();
    const outbound = lan.hostIp.replace(/\.1$/, '.3');
    const a = await attach(net, { ipMasq: true, outboundAddr4: outbound });
    expect(ask(a.c.ns, lan.ip, LAN_PORT)).toBe(`lan ${outbound}`);
    expect(masqChain(net.bridge)).toContain(`snat ip to ${outbound}`);
  });

  it('is refused (code 7) on a network that does not NAT IPv4', () => {
    const net = lab.network();
    const out = lab.run({ command: 'ADD', conf: net.conf(V, { gatewayMode: 'routed', outboundAddr4: '10.250.0.1' }), container: lab.container() });
    expect(out.json.code).toBe(7);
    const bad = lab.run({ command: 'ADD', conf: net.conf(V, { ipMasq: true, outboundAddr4: 'fd00::1' }), container: lab.container() });
    expect(bad.json.code).toBe(7);
  });
});

describe('the gateway mode rules (FakeNft)', () => {
  const base: NetworkFirewall = { bridge: 'br-g', subnets: ['10.7.0.0/24', 'fd07::/64'], masquerade: false, internal: false };
  const dump = (n: NetworkFirewall): string => {
    const nft = new FakeNft();
    addNetworkRules(new OwnedTable(BRIDGE_TABLE, { nft, lock: (fn) => fn() }), n);
    return nft.dump();
  };

  it('gives each mode its own signature, so changing the mode rewrites the rules', () => {
    const sigs = new Set([undefined, 'nat', 'nat-unprotected', 'routed', 'isolated'].map((m) => networkSignature(m ? { ...base, gateway: { ipv4: m as any } } : base)));
    expect(sigs.size).toBe(5);
    expect(networkSignature({ ...base, snatTo: { ipv4: '192.0.2.9' } })).not.toBe(networkSignature(base));
  });

  it('NATs IPv4 and routes IPv6 when the families differ (Docker: nat for v4, routed for v6)', () => {
    const text = dump({ ...base, gateway: { ipv4: 'nat', ipv6: 'routed' } });
    expect(text).toContain('ip saddr 10.7.0.0/24 ip daddr != 10.7.0.0/24 oifname != "br-g" masquerade');
    expect(text).not.toMatch(/ip6 saddr fd07::\/64 .*masquerade/);
    expect(text).toContain('meta nfproto ipv6 icmpv6 type echo-request return');
    expect(text).toContain('meta nfproto ipv6 drop comment "gateway mode routed (ipv6): unpublished ports closed"');
    expect(text).toContain('meta nfproto ipv4 drop comment "gateway mode nat (ipv4): unpublished ports closed"');
  });

  it('adds no filter for nat-unprotected and none when no mode is set', () => {
    for (const n of [{ ...base, gateway: { ipv4: 'nat-unprotected', ipv6: 'nat-unprotected' } } as NetworkFirewall, base]) {
      expect(dump(n)).not.toMatch(/ct status dnat|meta nfproto ipv\d drop/);
    }
  });

  it('snats to the outbound address of its family only', () => {
    const text = dump({ ...base, gateway: { ipv4: 'nat', ipv6: 'nat' }, snatTo: { ipv6: 'fd99::9' } });
    expect(text).toContain('ip6 saddr fd07::/64 ip6 daddr != fd07::/64 oifname != "br-g" snat ip6 to fd99::9');
    expect(text).toContain('ip saddr 10.7.0.0/24 ip daddr != 10.7.0.0/24 oifname != "br-g" masquerade');
  });
});
