/**
 * portmap on a real kernel, with real traffic, after our bridge and after
 * the reference bridge (/usr/lib/cni/bridge + host-local).
 *
 * Everything happens inside namespaces this file creates: HOST plays the
 * host (the plugins run there, so the bridge, the nft tables and the
 * sysctls are its own, never the machine's), OUTSIDE is a client reaching
 * HOST over its own veth, C1 and C2 are containers. The chain is driven the
 * way libcni drives it (conformance/libcni.ts): each plugin gets the
 * previous one's result, DEL gets the cached one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResultCache, Runtime, SpawnInvoker, PluginError, buildOneConfig, parseNetworkConfig, type NetworkConfigList, type RuntimeConf } from '../../../conformance/libcni';
import { AF_INET, IPPROTO, conntrackList } from '../../../shared/netlink/conntrack';
import { ask, buildPlugins, randomId, sh, startServer, trySh, writeNetTools, type NetTools, type PluginDirs } from './kernel';

const EXAMPLE = path.resolve(__dirname, '../../../examples/bridge-portmap.conflist');

let dirs: PluginDirs;
let tools: NetTools;

beforeAll(() => {
  dirs = buildPlugins();
  tools = writeNetTools(dirs.root);
});

afterAll(() => {
  dirs?.cleanup();
});

type Flavour = 'ours' | 'reference';

interface Nets {
  id: string;
  host: string;
  outside: string;
  c1: string;
  c2: string;
  /** second octet for this flavour's subnets */
  x: number;
  bridge: string;
}

/** The network list: the example conflist, moved onto this test's bridge and subnets (v4 and v6). */
function networkList(flavour: Flavour, n: Nets, stateDir: string): NetworkConfigList {
  const raw = JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> };
  raw.name = `pm-${flavour}-${n.id}`;
  // Debian's reference plugins speak up to 1.0.0
  if (flavour === 'reference') (raw as { cniVersion?: string }).cniVersion = '1.0.0';
  const bridge = raw.plugins[0];
  expect(bridge.type).toBe('bridge');
  expect(raw.plugins[1]).toMatchObject({ type: 'portmap', capabilities: { portMappings: true } });
  bridge.bridge = n.bridge;
  const ranges = [[{ subnet: `10.${n.x}.1.0/24` }], [{ subnet: `fd99:${n.x}:1::/64` }]];
  bridge.ipam =
    flavour === 'ours'
      ? { ...(bridge.ipam as object), dataDir: path.join(stateDir, 'ipam'), ranges }
      : { type: 'host-local', dataDir: path.join(stateDir, 'ipam'), ranges };
  return parseNetworkConfig(raw);
}

function createNets(n: Nets): void {
  for (const ns of [n.host, n.outside, n.c1, n.c2]) {
    sh(['ip', 'netns', 'add', ns]);
    sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }
  // OUTSIDE <-> HOST: a link of their own, so OUTSIDE reaches HOST's
  // addresses the way another machine would.
  sh(['ip', '-n', n.host, 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'up0', 'netns', n.outside]);
  sh(['ip', '-n', n.host, 'addr', 'add', `10.${n.x}.2.1/24`, 'dev', 'out0']);
  sh(['ip', '-n', n.host, 'addr', 'add', `fd99:${n.x}:2::1/64`, 'dev', 'out0', 'nodad']);
  sh(['ip', '-n', n.host, 'link', 'set', 'out0', 'up']);
  sh(['ip', '-n', n.outside, 'addr', 'add', `10.${n.x}.2.2/24`, 'dev', 'up0']);
  sh(['ip', '-n', n.outside, 'addr', 'add', `fd99:${n.x}:2::2/64`, 'dev', 'up0', 'nodad']);
  sh(['ip', '-n', n.outside, 'link', 'set', 'up0', 'up']);
  sh(['ip', '-n', n.outside, 'route', 'add', 'default', 'via', `10.${n.x}.2.1`]);
  sh(['ip', '-n', n.outside, '-6', 'route', 'add', 'default', 'via', `fd99:${n.x}:2::1`]);
}

function destroyNets(n: Nets): void {
  for (const ns of [n.c1, n.c2, n.outside, n.host]) trySh(['ip', 'netns', 'del', ns]);
}

/** The portmap table in HOST as nft prints it, or '' when it does not exist. */
function portmapTable(host: string): string {
  try {
    return sh(['ip', 'netns', 'exec', host, 'nft', 'list', 'table', 'inet', 'cni_ts_portmap']);
  } catch {
    return '';
  }
}

interface TableSummary {
  chains: string[];
  elements: number;
}

function summary(host: string): TableSummary | undefined {
  let out: string;
  try {
    out = sh(['ip', 'netns', 'exec', host, 'nft', '-j', 'list', 'table', 'inet', 'cni_ts_portmap']);
  } catch {
    return undefined;
  }
  const items = (JSON.parse(out) as { nftables: Array<Record<string, { name: string; elem?: unknown[] }>> }).nftables;
  return {
    chains: items.filter((i) => i.chain).map((i) => i.chain.name).sort(),
    elements: items.filter((i) => i.map).reduce((n, i) => n + (i.map.elem?.length ?? 0), 0),
  };
}

function codeOf(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof PluginError) return e.cniError?.code;
    throw e;
  }
  return undefined;
}

describe.each<Flavour>(['ours', 'reference'])('portmap after %s bridge', (flavour) => {
  const id = randomId();
  const n: Nets = {
    id,
    host: `pmh-${id}`,
    outside: `pmo-${id}`,
    c1: `pmc1-${id}`,
    c2: `pmc2-${id}`,
    x: 100 + Math.floor(Math.random() * 150),
    bridge: `pmbr-${id}`,
  };
  const v4 = (net: 1 | 2, host: number) => `10.${n.x}.${net}.${host}`;
  const v6 = (net: 1 | 2, host: number) => `fd99:${n.x}:${net}::${host}`;
  let stateDir: string;
  let list: NetworkConfigList;
  let runtime: Runtime;
  let server: ChildProcess | undefined;
  const rt1 = (): RuntimeConf => ({
    containerId: `c1-${id}`,
    netns: `/var/run/netns/${n.c1}`,
    ifname: 'eth0',
    args: [],
    capabilityArgs: {
      portMappings: [
        { hostPort: 18080, containerPort: 8080, protocol: 'tcp' },
        { hostPort: 18053, containerPort: 5353, protocol: 'udp' },
        // published on OUTSIDE's side of HOST only
        { hostPort: 18081, containerPort: 8080, protocol: 'tcp', hostIP: v4(2, 1) },
      ],
    },
  });
  const rt2 = (portMappings: unknown[]): RuntimeConf => ({
    containerId: `c2-${id}`,
    netns: `/var/run/netns/${n.c2}`,
    ifname: 'eth0',
    args: [],
    capabilityArgs: { portMappings },
  });

  beforeAll(async () => {
    stateDir = fs.mkdtempSync(path.join(dirs.root, `${flavour}-`));
    createNets(n);
    list = networkList(flavour, n, stateDir);
    runtime = new Runtime([flavour === 'ours' ? dirs.ours : dirs.reference], new SpawnInvoker({ name: n.host, path: `/var/run/netns/${n.host}` }), new ResultCache(path.join(stateDir, 'cache')));
  });

  afterAll(() => {
    server?.kill('SIGKILL');
    destroyNets(n);
  });

  it('ADD publishes the ports and passes the bridge result through', async () => {
    const result = runtime.add(list, rt1()) as { ips: Array<{ address: string }> };
    expect(result.ips.map((i) => i.address).sort()).toEqual([`${v4(1, 2)}/24`, `${v6(1, 2)}/64`].sort());
    server = await startServer(tools, n.c1, 8080, 5353, 'C1');
  });

  it('forwards TCP and UDP from outside the host, over IPv4 and IPv6', () => {
    expect(ask(tools, n.outside, 'tcp', v4(2, 1), 18080)).toBe('C1');
    expect(ask(tools, n.outside, 'tcp', v6(2, 1), 18080)).toBe('C1');
    expect(ask(tools, n.outside, 'udp', v4(2, 1), 18053)).toBe('C1');
    expect(ask(tools, n.outside, 'udp', v6(2, 1), 18053)).toBe('C1');
  });

  it('forwards from the host itself: 127.0.0.1, its bridge address, its IPv6 addresses', () => {
    expect(ask(tools, n.host, 'tcp', '127.0.0.1', 18080)).toBe('C1');
    expect(ask(tools, n.host, 'tcp', v4(1, 1), 18080)).toBe('C1');
    expect(ask(tools, n.host, 'tcp', v6(1, 1), 18080)).toBe('C1');
    expect(ask(tools, n.host, 'udp', '127.0.0.1', 18053)).toBe('C1');
    expect(sh(['ip', 'netns', 'exec', n.host, 'cat', `/proc/sys/net/ipv4/conf/${n.bridge}/route_localnet`]).trim()).toBe('1');
  });

  it('forwards a container to its own published port through a host address (hairpin)', () => {
    expect(ask(tools, n.c1, 'tcp', v4(1, 1), 18080)).toBe('C1');
    expect(ask(tools, n.c1, 'tcp', v4(2, 1), 18080)).toBe('C1');
    expect(ask(tools, n.c1, 'tcp', v6(1, 1), 18080)).toBe('C1');
    expect(ask(tools, n.c1, 'udp', v4(1, 1), 18053)).toBe('C1');
  });

  it('honours hostIP: the port is published on that address and no other', () => {
    expect(ask(tools, n.outside, 'tcp', v4(2, 1), 18081)).toBe('C1');
    // nothing listens on HOST itself, so an unforwarded connection is refused
    expect(ask(tools, n.host, 'tcp', v4(1, 1), 18081)).toBe('ERR:ECONNREFUSED');
    expect(ask(tools, n.host, 'tcp', '127.0.0.1', 18081)).toBe('ERR:ECONNREFUSED');
  });

  it('CHECK passes while the mappings are installed', () => {
    runtime.check(list, rt1());
  });

  it('refuses a host port another container publishes with code 110, applying nothing', () => {
    const before = portmapTable(n.host);
    const conflicting = [
      [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }],
      // C1 holds 10.x.2.1:18081; a wildcard claim of that port overlaps it
      [{ hostPort: 18081, containerPort: 80, protocol: 'tcp' }],
      // and C1's wildcard 18080 covers every specific address
      [{ hostPort: 18080, containerPort: 80, protocol: 'tcp', hostIP: v4(1, 1) }],
    ];
    for (const mappings of conflicting) {
      expect(codeOf(() => runtime.add(list, rt2(mappings)))).toBe(110);
      expect(portmapTable(n.host)).toBe(before);
      // the runtime cleans the failed attachment up (no cached result: DEL without prevResult)
      runtime.del(list, rt2(mappings));
      expect(portmapTable(n.host)).toBe(before);
    }
    expect(ask(tools, n.outside, 'tcp', v4(2, 1), 18080)).toBe('C1');
  });

  it('lets another container use the same port on another host address, and its neighbour reach C1 through the host', () => {
    runtime.add(list, rt2([{ hostPort: 18081, containerPort: 80, protocol: 'tcp', hostIP: v4(1, 1) }]));
    expect(ask(tools, n.c2, 'tcp', v4(1, 1), 18080)).toBe('C1');
    expect(ask(tools, n.c2, 'tcp', v4(2, 1), 18081)).toBe('C1');
    runtime.del(list, rt2([{ hostPort: 18081, containerPort: 80, protocol: 'tcp', hostIP: v4(1, 1) }]));
  });

  it('a UDP client already sending to a port before it was published reaches the container once it is (stale conntrack entries are deleted)', async () => {
    // The client's flow exists before the mapping: nothing answers on HOST,
    // but conntrack keeps the flow (and its "no NAT" decision) while it sends.
    expect(ask(tools, n.outside, 'udp', v4(2, 1), 18055, { srcPort: 41055, waitMs: 1000 })).toBe('ERR:TIMEOUT');
    const stale = () => conntrackList(AF_INET, `/var/run/netns/${n.host}`).filter((f) => f.orig.proto === IPPROTO.udp && f.orig.dstPort === 18055 && f.orig.srcPort === 41055);
    // (HOST tracks connections since the first test's NAT rules)
    expect(stale().map((f) => f.reply?.src)).toEqual([v4(2, 1)]);
    const c2server = await startServer(tools, n.c2, 8081, 5353, 'C2');
    const mappings = [{ hostPort: 18055, containerPort: 5353, protocol: 'udp' }];
    try {
      const added = runtime.add(list, rt2(mappings)) as { ips: Array<{ address: string }> };
      const c2 = added.ips.map((i) => i.address.split('/')[0]).find((a) => a.includes('.'));
      // the same flow (same source port) now reaches C2, through a new entry
      expect(ask(tools, n.outside, 'udp', v4(2, 1), 18055, { srcPort: 41055 })).toBe('C2');
      expect(stale().map((f) => f.reply?.src)).toEqual([c2]);
    } finally {
      c2server.kill('SIGKILL');
      runtime.del(list, rt2(mappings));
    }
  });

  it('re-ADD of the same container is idempotent', () => {
    // portmap alone, as a runtime retrying the chain's last step would call it
    const before = portmapTable(n.host);
    const cached = runtime.cache.get(list.name, rt1().containerId, 'eth0');
    const conf = buildOneConfig(list, list.plugins[1], cached, rt1());
    const r = runtime.exec('portmap', runtime.env('ADD', rt1()), JSON.stringify(conf));
    expect(r.status).toBe(0);
    expect(portmapTable(n.host)).toBe(before);
    expect(ask(tools, n.outside, 'tcp', v4(2, 1), 18080)).toBe('C1');
  });

  it('DEL removes every container rule and element, and is idempotent', () => {
    runtime.del(list, rt1());
    expect(summary(n.host)).toEqual({ chains: ['dispatch', 'input', 'output', 'postrouting', 'prerouting', 'skeleton'], elements: 0 });
    expect(ask(tools, n.outside, 'tcp', v4(2, 1), 18080)).toBe('ERR:ECONNREFUSED');
    // again, with the cache entry gone (no prevResult)
    runtime.del(list, rt1());
    // and with the table gone
    sh(['ip', 'netns', 'exec', n.host, 'nft', 'delete', 'table', 'inet', 'cni_ts_portmap']);
    runtime.del(list, rt1());
    expect(summary(n.host)).toBeUndefined();
  });
});
