/**
 * Port ranges (Docker's `-p 8000-8010:80-90`, netavark's `range`): one map
 * element per port (its DNAT target as data), one masquerade interval, all
 * in the ADD's one element batch; a
 * range overlapping a held port is refused with code 110 naming the holder;
 * DEL removes it. Logic on FakeNft, then real traffic on a kernel.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { claimsFor, containerAddrs } from '../../../plugins/portmap/config';
import { ResultCache, Runtime, SpawnInvoker, parseNetworkConfig, type RuntimeConf } from '../../../conformance/libcni';
import { call, fakeHost, portmapConf, type FakeHost } from './harness';
import { ask, buildPlugins, randomId, sh, startServer, trySh, writeNetTools, type NetTools, type PluginDirs } from './kernel';

const range = (hostPort: number, containerPort: number, n: number, extra: Record<string, unknown> = {}) => ({ hostPort, containerPort, protocol: 'tcp', range: n, ...extra });

let nft: FakeNft;
let host: FakeHost;
const add = (mappings: unknown[], containerId = 'c1') => call(host, { command: 'ADD', containerId, conf: portmapConf({ mappings, ips: ['10.1.0.5/24'] }) });
const del = (mappings: unknown[], containerId = 'c1') => call(host, { command: 'DEL', containerId, conf: portmapConf({ mappings, ips: ['10.1.0.5/24'] }) });
const elements = (map: string) => (nft.list('inet', 'cni_ts_portmap')?.sets.find((s) => s.name === map)?.elements ?? []).map((e) => e.key);

describe('port ranges on the fake', () => {
  beforeEach(() => {
    nft = new FakeNft();
    host = fakeHost(nft);
  });

  it('publishes 8000-8010 -> 80-90 as one element per port and one masquerade interval, in one batch', async () => {
    expect((await add([range(8000, 80, 11)])).code).toBe(0);
    expect(nft.batches).toBe(1);
    const values = (nft.list('inet', 'cni_ts_portmap')?.sets.find((s) => s.name === 'wildcard4')?.elements ?? []).map((e) => `${e.key} : ${e.value}`);
    expect(values.sort()).toEqual(Array.from({ length: 11 }, (_, i) => `tcp . ${8000 + i} : 10.1.0.5 . ${80 + i}`).sort());
    expect(elements('masq_ports4')).toEqual(['127.0.0.0/8 . 10.1.0.5 . tcp . 80-90', '10.1.0.0/24 . 10.1.0.5 . tcp . 80-90']);
    expect((await call(host, { command: 'CHECK', conf: portmapConf({ mappings: [range(8000, 80, 11)], ips: ['10.1.0.5/24'] }) })).code).toBe(0);
  });

  it('keeps the port when both sides of the range are the same', async () => {
    expect((await add([range(9000, 9000, 3)])).code).toBe(0);
    expect(nft.dump()).toContain('tcp . 9000 comment "cni-ts:net1:c1:eth0" : 10.1.0.5 . 9000, tcp . 9001 comment "cni-ts:net1:c1:eth0" : 10.1.0.5 . 9001');
  });

  it('refuses a range over a port another container holds with code 110 naming it, applying nothing', async () => {
    expect((await add([{ hostPort: 8005, containerPort: 80, protocol: 'tcp' }], 'other')).code).toBe(0);
    const before = nft.dump();
    const r = await add([range(8000, 80, 11)]);
    expect(r.out?.code).toBe(110);
    expect(JSON.stringify(r.out)).toContain('container other');
    expect(JSON.stringify(r.out)).toContain('tcp 0.0.0.0:8005');
    expect(nft.dump()).toBe(before);
  });

  it('refuses a port inside a range another container holds with code 110 naming it', async () => {
    expect((await add([range(8000, 80, 11)], 'holder')).code).toBe(0);
    const r = await add([{ hostPort: 8010, containerPort: 80, protocol: 'tcp', hostIP: '10.9.9.9' }], 'c2');
    expect(r.out?.code).toBe(110);
    expect(JSON.stringify(r.out)).toContain('container holder');
  });

  it('DEL removes every port of the range', async () => {
    await add([range(8000, 80, 11), { hostPort: 7000, containerPort: 70, protocol: 'udp' }]);
    expect((await del([range(8000, 80, 11), { hostPort: 7000, containerPort: 70, protocol: 'udp' }])).code).toBe(0);
    expect(elements('wildcard4')).toEqual([]);
    expect(elements('masq_ports4')).toEqual([]);
    // and without the mappings nor a record (the table is read once)
    await add([range(8000, 80, 11)]);
    host.records!.remove('cni-ts:net1:c1:eth0');
    expect((await call(host, { command: 'DEL', containerId: 'c1', conf: portmapConf({}) })).code).toBe(0);
    expect(elements('wildcard4')).toEqual([]);
  });

  it('refuses a range past port 65535, and two mappings of one request whose ranges overlap, with code 7', async () => {
    expect((await add([range(65530, 80, 10)])).out?.code).toBe(7);
    expect((await add([range(8000, 80, 11), range(8010, 180, 5)])).out?.code).toBe(7);
    expect(nft.applied).toHaveLength(0);
    expect(nft.batches).toBe(0);
  });

  it('counts an exact repeat of a range once', () => {
    const addrs = containerAddrs({ cniVersion: '1.1.0', ips: [{ address: '10.1.0.5/24' }] }, 'eth0');
    const m = { hostPort: 8000, containerPort: 80, protocol: 'tcp' as const, range: 5 };
    expect(claimsFor([m, m], addrs)).toHaveLength(1);
  });
});

describe('port ranges on a kernel', () => {
  const id = randomId();
  const x = 100 + Math.floor(Math.random() * 150);
  const HOST = `rgh-${id}`;
  const OUTSIDE = `rgo-${id}`;
  const C = `rgc-${id}`;
  let dirs: PluginDirs;
  let tools: NetTools;
  let runtime: Runtime;
  let server: ChildProcess | undefined;
  const list = () => {
    const raw = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../examples/bridge-portmap-range.conflist'), 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> };
    raw.name = `rg-${id}`;
    raw.plugins[0].bridge = `rgbr-${id}`;
    raw.plugins[0].ipam = { ...(raw.plugins[0].ipam as object), dataDir: path.join(dirs.root, 'ipam'), ranges: [[{ subnet: `10.${x}.1.0/24` }]] };
    return parseNetworkConfig(raw);
  };
  const rt: RuntimeConf = {
    containerId: `rg-${id}`,
    netns: `/var/run/netns/${C}`,
    ifname: 'eth0',
    args: [],
    capabilityArgs: { portMappings: [{ hostPort: 28100, containerPort: 8080, protocol: 'tcp', range: 10 }] },
  };

  beforeAll(async () => {
    dirs = buildPlugins();
    tools = writeNetTools(dirs.root);
    for (const ns of [HOST, OUTSIDE, C]) {
      sh(['ip', 'netns', 'add', ns]);
      sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
    sh(['ip', '-n', HOST, 'link', 'add', 'out0', 'type', 'veth', 'peer', 'name', 'up0', 'netns', OUTSIDE]);
    sh(['ip', '-n', HOST, 'addr', 'add', `10.${x}.2.1/24`, 'dev', 'out0']);
    sh(['ip', '-n', HOST, 'link', 'set', 'out0', 'up']);
    sh(['ip', '-n', OUTSIDE, 'addr', 'add', `10.${x}.2.2/24`, 'dev', 'up0']);
    sh(['ip', '-n', OUTSIDE, 'link', 'set', 'up0', 'up']);
    sh(['ip', '-n', OUTSIDE, 'route', 'add', 'default', 'via', `10.${x}.2.1`]);
    runtime = new Runtime([dirs.ours], new SpawnInvoker({ name: HOST, path: `/var/run/netns/${HOST}` }), new ResultCache(path.join(dirs.root, 'cache')));
  }, 60_000);

  afterAll(() => {
    server?.kill('SIGKILL');
    for (const ns of [C, OUTSIDE, HOST]) trySh(['ip', 'netns', 'del', ns]);
    dirs?.cleanup();
  });

  it('forwards each port of a shifted range to its own container port, and DEL stops it', async () => {
    runtime.add(list(), rt);
    server = await startServer(tools, C, 8085, 5353, 'C');
    // 28105 is the range's sixth port: container port 8085
    expect(ask(tools, OUTSIDE, 'tcp', `10.${x}.2.1`, 28105)).toBe('C');
    // 28104 goes to 8084, where nothing listens
    expect(ask(tools, OUTSIDE, 'tcp', `10.${x}.2.1`, 28104)).toBe('ERR:ECONNREFUSED');
    // no rule per container: ten elements, each with its own target port
    const table = sh(['ip', 'netns', 'exec', HOST, 'nft', 'list', 'map', 'inet', 'cni_ts_portmap', 'wildcard4']);
    expect(table.match(/tcp \. 281\d\d comment "[^"]+" : 10\.\d+\.1\.\d+ \. 80\d\d/g)).toHaveLength(10);
    runtime.del(list(), rt);
    expect(ask(tools, OUTSIDE, 'tcp', `10.${x}.2.1`, 28105, { waitMs: 1500 })).not.toBe('C');
  }, 60_000);
});
