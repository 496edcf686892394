/**
 * Firewall recovery and the operator's chain on a real kernel, with real
 * traffic, in namespaces this file creates: HOST plays the host (plugins,
 * tables, records and `cni-ts firewall-reload` all run there), OUTSIDE is a
 * client on its own link to HOST (no route to the container subnets, so it
 * answers a container only when HOST masquerades), C1 publishes a port on
 * network A (bridge + portmap), C2 sits on network B.
 *
 * After `nft flush ruleset` in HOST: published ports, masquerade and the
 * isolation between networks all work again, first through `cni-ts
 * firewall-reload`, then through the daemon's table watch, with no
 * container added again. A drop rule in the user chain blocks a published
 * port and survives ADD, DEL and firewall-reload.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResultCache, Runtime, SpawnInvoker, parseNetworkConfig, type NetworkConfigList, type RuntimeConf } from '../../conformance/libcni';
import { ask, buildPlugins, randomId, sh, startServer, trySh, writeNetTools, type NetTools, type PluginDirs } from '../plugins/portmap/kernel';
import { realFirewallTables, startFirewallWatch } from '../../cmd/firewall-reload';

const EXAMPLE = path.resolve(__dirname, '../../examples/bridge-portmap.conflist');

const id = randomId();
const x = 100 + Math.floor(Math.random() * 150);
const HOST = `fwh-${id}`;
const OUTSIDE = `fwo-${id}`;
const C1 = `fwc1-${id}`;
const C2 = `fwc2-${id}`;
const C3 = `fwc3-${id}`;
const v4 = (net: number, host: number) => `10.${x}.${net}.${host}`;

let dirs: PluginDirs;
let tools: NetTools;
let runtime: Runtime;
let netA: NetworkConfigList;
let netB: NetworkConfigList;
const servers: ChildProcess[] = [];

/** A TCP server in OUTSIDE that answers with the address it sees the client at. */
function startPeerEcho(port: number): Promise<ChildProcess> {
  const code = `require('node:net').createServer((s) => s.end(s.remoteAddress.replace(/^::ffff:/, '') + '\\n')).listen(${port}, '0.0.0.0', () => process.stdout.write('ready\\n'));`;
  const p = spawn('ip', ['netns', 'exec', OUTSIDE, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    p.stdout?.on('data', (d) => String(d).includes('ready') && resolve(p));
    p.on('exit', (c) => reject(new Error(`peer echo exited ${c}`)));
  });
}

function network(name: string, bridge: string, subnet: string, withPortmap: boolean, stateDir: string): NetworkConfigList {
  const raw = JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> };
  raw.name = name;
  raw.plugins[0].bridge = bridge;
  raw.plugins[0].ipam = { ...(raw.plugins[0].ipam as object), dataDir: path.join(stateDir, 'ipam'), ranges: [[{ subnet }]] };
  if (!withPortmap) raw.plugins.splice(1);
  return parseNetworkConfig(raw);
}

const rt = (ns: string, portMappings: unknown[] = []): RuntimeConf => ({
  containerId: `${ns}-ctr`,
  netns: `/var/run/netns/${ns}`,
  ifname: 'eth0',
  args: [],
  capabilityArgs: { portMappings },
});
const C1_PORTS = [{ hostPort: 28080, containerPort: 8080, protocol: 'tcp' }];

function nftIn(...args: string[]): string {
  return sh(['ip', 'netns', 'exec', HOST, 'nft', ...args]);
}

function firewallReload(): void {
  sh(['ip', 'netns', 'exec', HOST, 'env', `NETLINK_TS_NATIVE=${path.join(dirs.root, 'netlink_native.node')}`, process.execPath, path.join(dirs.root, 'cni-ts.js'), 'firewall-reload']);
}

/** The three things a flush breaks, as the clients see them. */
function published(): string {
  return ask(tools, OUTSIDE, 'tcp', v4(2, 1), 28080, { waitMs: 2000 });
}
function masqueraded(): string {
  return ask(tools, C1, 'tcp', v4(2, 2), 29000, { waitMs: 2000 });
}
function crossNetwork(): string {
  return ask(tools, C2, 'tcp', v4(1, 2), 8080, { waitMs: 1500 });
}

function expectAllWorking(): void {
  expect(published()).toBe('C1');
  expect(masqueraded()).toBe(v4(2, 1));
  expect(crossNetwork()).toBe('ERR:TIMEOUT');
  // the martian guard route_localnet relies on
  expect(nftIn('list', 'chain', 'inet', 'cni_ts_portmap', 'input')).toContain('ip daddr 127.0.0.0/8 drop');
}

beforeAll(async () => {
  dirs = buildPlugins();
  tools = writeNetTools(dirs.root);
  for (const ns of [HOST, OUTSIDE, C1, C2, C3]) {
    sh(['ip', 'netns', 'add', ns]);
    sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }
  sh(['ip', '-n', HOST, 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'up0', 'netns', OUTSIDE]);
  sh(['ip', '-n', HOST, 'addr', 'add', `${v4(2, 1)}/24`, 'dev', 'out0']);
  sh(['ip', '-n', HOST, 'link', 'set', 'out0', 'up']);
  sh(['ip', '-n', OUTSIDE, 'addr', 'add', `${v4(2, 2)}/24`, 'dev', 'up0']);
  sh(['ip', '-n', OUTSIDE, 'link', 'set', 'up0', 'up']);
  const stateDir = fs.mkdtempSync(path.join(dirs.root, 'state-'));
  netA = network(`fw-a-${id}`, `fwa-${id}`, `${v4(1, 0)}/24`, true, stateDir);
  netB = network(`fw-b-${id}`, `fwb-${id}`, `${v4(3, 0)}/24`, false, stateDir);
  runtime = new Runtime([dirs.ours], new SpawnInvoker({ name: HOST, path: `/var/run/netns/${HOST}` }), new ResultCache(path.join(stateDir, 'cache')));
  runtime.add(netA, rt(C1, C1_PORTS));
  runtime.add(netB, rt(C2));
  servers.push(await startServer(tools, C1, 8080, 5353, 'C1'));
  servers.push(await startPeerEcho(29000));
}, 120_000);

afterAll(() => {
  for (const s of servers) s.kill('SIGKILL');
  try {
    runtime?.del(netA, rt(C1, C1_PORTS));
    runtime?.del(netB, rt(C2));
  } catch {
    // the namespaces go anyway
  }
  for (const ns of [C1, C2, C3, OUTSIDE, HOST]) trySh(['ip', 'netns', 'del', ns]);
  dirs?.cleanup();
});

describe('firewall recovery after nft flush ruleset', () => {
  it('starts with published ports, masquerade and isolation working', () => {
    expectAllWorking();
  });

  it('cni-ts firewall-reload puts them back, no container added again', () => {
    nftIn('flush', 'ruleset');
    // what the flush broke (isolation gone: B reaches A's container)
    expect(published()).not.toBe('C1');
    expect(masqueraded()).not.toBe(v4(2, 1));
    expect(crossNetwork()).toBe('C1');
    firewallReload();
    expectAllWorking();
    // a second reload changes nothing that matters
    firewallReload();
    expectAllWorking();
  }, 60_000);

  it("the daemon's table watch rebuilds the tables by itself", async () => {
    const stop = startFirewallWatch(() => {}, realFirewallTables({ netnsPath: `/var/run/netns/${HOST}` }), { netnsPath: `/var/run/netns/${HOST}`, pollMs: 200 });
    try {
      nftIn('flush', 'ruleset');
      // generous bound: the watch drains every 200 ms
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && !nftIn('list', 'tables').includes('cni_ts_bridge')) await new Promise((r) => setTimeout(r, 100));
      expectAllWorking();
    } finally {
      stop();
    }
  }, 60_000);
});

describe('the user chain (DOCKER-USER)', () => {
  it("a drop rule there blocks a published port and survives ADD, DEL and firewall-reload", () => {
    nftIn('add', 'rule', 'inet', 'cni_ts_bridge', 'user', 'ip', 'saddr', v4(2, 2), 'tcp', 'dport', '8080', 'drop');
    const blocked = () => expect(published()).toBe('ERR:TIMEOUT');
    blocked();
    runtime.add(netA, rt(C3, [{ hostPort: 28081, containerPort: 8080, protocol: 'tcp' }]));
    blocked();
    runtime.del(netA, rt(C3, [{ hostPort: 28081, containerPort: 8080, protocol: 'tcp' }]));
    blocked();
    firewallReload();
    blocked();
    expect(nftIn('list', 'chain', 'inet', 'cni_ts_bridge', 'user')).toContain(`ip saddr ${v4(2, 2)} tcp dport 8080 drop`);
    // and it is the rule doing it
    nftIn('flush', 'chain', 'inet', 'cni_ts_bridge', 'user');
    expect(published()).toBe('C1');
  }, 60_000);
});
