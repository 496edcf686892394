/**
 * Loopback publishing against hostile neighbours, on a real kernel with real
 * traffic (moby#41872, CVE-2020-8558).
 *
 * Everything happens inside namespaces this file creates: HOST plays the
 * host (bridge, portmap's table and sysctls are its own), OUTSIDE is a
 * machine on HOST's L2, C1 publishes ports, C2 is another container on the
 * same bridge. The attackers send to 127.0.0.1 through HOST's MAC the way a
 * crafted frame would: their own loopback address is removed, 127.0.0.0/8 is
 * routed via HOST's address on the shared link, and route_localnet is on at
 * their end so that answers from 127.0.0.1 are accepted. That is all on
 * their side of the wire, which is theirs to configure.
 *
 * What must hold: a port published on 127.0.0.1 answers HOST itself and
 * nobody else; no one but HOST reaches a service HOST binds to 127.0.0.1,
 * although portmap turned route_localnet on for the bridge; and the
 * positive controls (the same attackers do reach what is published on a
 * real address) show the attack paths are open up to the guards.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResultCache, Runtime, SpawnInvoker, parseNetworkConfig, type NetworkConfigList, type RuntimeConf } from '../../../conformance/libcni';
import { ask, buildPlugins, randomId, sh, startServer, trySh, writeNetTools, type NetTools, type PluginDirs } from './kernel';

const EXAMPLE = path.resolve(__dirname, '../../../examples/bridge-portmap.conflist');
/** Published on 127.0.0.1 only. */
const LO_PORT = 18090;
/** Published on every address. */
const ANY_PORT = 18091;
/** HOST's own service on 127.0.0.1 (etcd's default endpoint stands for it). */
const HOST_LO_SERVICE = 23790;
/** How long an answer that must not come is waited for. */
const NO_ANSWER_MS = 1500;

let dirs: PluginDirs;
let tools: NetTools;

const id = randomId();
const ns = { host: `pmlh-${id}`, outside: `pmlo-${id}`, c1: `pmlc1-${id}`, c2: `pmlc2-${id}` };
const x = 100 + Math.floor(Math.random() * 150);
const v4 = (net: 1 | 2, h: number) => `10.${x}.${net}.${h}`;
let list: NetworkConfigList;
let runtime: Runtime;
const servers: ChildProcess[] = [];

const container = (name: string, netns: string, portMappings: unknown[]): RuntimeConf => ({
  containerId: `${name}-${id}`,
  netns: `/var/run/netns/${netns}`,
  ifname: 'eth0',
  args: [],
  capabilityArgs: { portMappings },
});
const rt1 = () =>
  container('c1', ns.c1, [
    { hostPort: LO_PORT, containerPort: 8080, protocol: 'tcp', hostIP: '127.0.0.1' },
    { hostPort: ANY_PORT, containerPort: 8080, protocol: 'tcp' },
  ]);
const rt2 = () => container('c2', ns.c2, []);

const inNs = (netns: string, ...argv: string[]) => sh(['ip', 'netns', 'exec', netns, ...argv]);
const setSysctl = (netns: string, key: string, value: string) => inNs(netns, 'sh', '-c', `echo ${value} > /proc/sys/${key}`);

/** Make `netns` send 127.0.0.0/8 to `via` over the wire, and accept answers from 127.0.0.1. */
function routeLoopbackVia(netns: string, via: string): void {
  sh(['ip', '-n', netns, 'addr', 'del', '127.0.0.1/8', 'dev', 'lo']);
  sh(['ip', '-n', netns, 'route', 'add', '127.0.0.0/8', 'via', via]);
  setSysctl(netns, 'net/ipv4/conf/all/route_localnet', '1');
}

/** A TCP service on HOST's 127.0.0.1 only; resolves once it listens. */
function startHostLoopbackService(): Promise<ChildProcess> {
  const script = `require('node:net').createServer((s) => s.end('HOSTLO\\n')).listen(${HOST_LO_SERVICE}, '127.0.0.1', () => process.stdout.write('ready\\n'));`;
  const p = spawn('ip', ['netns', 'exec', ns.host, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    p.stdout?.on('data', (d) => {
      if (String(d).includes('ready')) resolve(p);
    });
    p.on('exit', (code) => reject(new Error(`host service exited ${code}`)));
  });
}

beforeAll(async () => {
  dirs = buildPlugins();
  tools = writeNetTools(dirs.root);
  for (const n of Object.values(ns)) {
    sh(['ip', 'netns', 'add', n]);
    sh(['ip', '-n', n, 'link', 'set', 'lo', 'up']);
  }
  // OUTSIDE <-> HOST: a link of their own, the LAN
  sh(['ip', '-n', ns.host, 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'up0', 'netns', ns.outside]);
  sh(['ip', '-n', ns.host, 'addr', 'add', `${v4(2, 1)}/24`, 'dev', 'out0']);
  sh(['ip', '-n', ns.host, 'link', 'set', 'out0', 'up']);
  sh(['ip', '-n', ns.outside, 'addr', 'add', `${v4(2, 2)}/24`, 'dev', 'up0']);
  sh(['ip', '-n', ns.outside, 'link', 'set', 'up0', 'up']);
  sh(['ip', '-n', ns.outside, 'route', 'add', 'default', 'via', v4(2, 1)]);

  const stateDir = fs.mkdtempSync(path.join(dirs.root, 'state-'));
  const raw = JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> };
  raw.name = `pml-${id}`;
  raw.plugins[0].bridge = `pmlbr-${id}`;
  raw.plugins[0].ipam = { ...(raw.plugins[0].ipam as object), dataDir: path.join(stateDir, 'ipam'), ranges: [[{ subnet: `${v4(1, 0)}/24` }]] };
  list = parseNetworkConfig(raw);
  runtime = new Runtime([dirs.ours], new SpawnInvoker({ name: ns.host, path: `/var/run/netns/${ns.host}` }), new ResultCache(path.join(stateDir, 'cache')));

  runtime.add(list, rt1());
  runtime.add(list, rt2());
  servers.push(await startServer(tools, ns.c1, 8080, 5353, 'C1'));
  servers.push(await startHostLoopbackService());
  routeLoopbackVia(ns.outside, v4(2, 1));
  routeLoopbackVia(ns.c2, v4(1, 1));
});

afterAll(() => {
  for (const s of servers) s.kill('SIGKILL');
  for (const n of [ns.c1, ns.c2, ns.outside, ns.host]) trySh(['ip', 'netns', 'del', n]);
  dirs?.cleanup();
});

describe('ports published on 127.0.0.1', () => {
  it("answer the host's own connections, with route_localnet on for the bridge", () => {
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', LO_PORT)).toBe('C1');
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', ANY_PORT)).toBe('C1');
    expect(inNs(ns.host, 'cat', `/proc/sys/net/ipv4/conf/pmlbr-${id}/route_localnet`).trim()).toBe('1');
  });

  it('are not reached by a neighbour sending to 127.0.0.1 through the host', () => {
    // control: the neighbour's packets do reach the host and the container
    expect(ask(tools, ns.outside, 'tcp', v4(2, 1), ANY_PORT)).toBe('C1');
    expect(ask(tools, ns.outside, 'tcp', '127.0.0.1', LO_PORT, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.outside, 'tcp', '127.0.0.1', ANY_PORT, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
  });

  it('are not reached by a container on the bridge sending to 127.0.0.1 through the host', () => {
    // control: the container reaches C1 through the host's bridge address
    expect(ask(tools, ns.c2, 'tcp', v4(1, 1), ANY_PORT)).toBe('C1');
    expect(ask(tools, ns.c2, 'tcp', '127.0.0.1', LO_PORT, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.c2, 'tcp', '127.0.0.1', ANY_PORT, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
  });
});

describe("the host's services on 127.0.0.1", () => {
  it('answer the host', () => {
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', HOST_LO_SERVICE)).toBe('HOSTLO');
  });

  it('are not reached by a container on the bridge, although route_localnet is on there', () => {
    expect(ask(tools, ns.c2, 'tcp', '127.0.0.1', HOST_LO_SERVICE, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
  });

  it('are not reached by a neighbour, even with route_localnet on for every interface', () => {
    // what another plugin or an admin may have done; our guard does not depend on who did it
    setSysctl(ns.host, 'net/ipv4/conf/all/route_localnet', '1');
    try {
      expect(ask(tools, ns.outside, 'tcp', '127.0.0.1', HOST_LO_SERVICE, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
      expect(ask(tools, ns.host, 'tcp', '127.0.0.1', LO_PORT)).toBe('C1');
    } finally {
      setSysctl(ns.host, 'net/ipv4/conf/all/route_localnet', '0');
    }
  });
});

describe('after DEL', () => {
  it('the guard stays while route_localnet does', () => {
    runtime.del(list, rt1());
    expect(inNs(ns.host, 'cat', `/proc/sys/net/ipv4/conf/pmlbr-${id}/route_localnet`).trim()).toBe('1');
    expect(ask(tools, ns.c2, 'tcp', '127.0.0.1', HOST_LO_SERVICE, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', HOST_LO_SERVICE)).toBe('HOSTLO');
  });
});
