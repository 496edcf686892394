/**
 * macvlan with cluster-ipam on its etcd store: the seed's case of one
 * underlay subnet shared by many hosts, each host allocating from blocks it
 * claimed for itself. Two simulated hosts are namespaces whose eth0s are the
 * two ends of one veth (the underlay); a real etcd (etcd-server.ts) holds
 * the network's blocks.
 *
 * The packaged bin/ cannot load etcd3 yet, so the plugin is bundled here with
 * esbuild (etcd3 left external: it reads its .proto files from its own
 * directory) and exec'd inside each host namespace, as a runtime would.
 *
 * etcd listens on 127.0.0.1 of this test's namespace, which a host namespace
 * cannot reach. Each host gets what real clusters often run on every node:
 * a local gateway, here a TCP relay whose listening socket is made inside
 * the host namespace (socket(2) takes the calling thread's namespace) and
 * whose upstream connections are made out here, next to etcd.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as esbuild from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKV } from '../../../shared/etcd/kv';
import { withNetns } from '../../../shared/netns/netns';
import { ROOT, ipJson } from '../../../testkit/exec';
import { ip, namespaceFactory } from './fixtures';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

const netns = namespaceFactory();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-macvlan-etcd-'));
const bundle = path.join(tmp, 'macvlan.js');
const keyPrefix = `/macvlan-test-${process.pid}-${randomBytes(3).toString('hex')}`;
const network = 'mvetcd';
let etcd: EtcdServer | undefined;
let kv: EtcdKV | undefined;
const gateways: net.Server[] = [];
const relayed = new Set<net.Socket>();

beforeAll(async () => {
  esbuild.buildSync({
    stdin: { contents: `require(${JSON.stringify(path.join(ROOT, 'cmd/plugin-io.ts'))}).pluginMain(require(${JSON.stringify(path.join(ROOT, 'plugins/macvlan/main.ts'))}).plugin);`, resolveDir: ROOT, loader: 'js' },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    external: ['etcd3'],
    outfile: bundle,
    logLevel: 'silent',
  });
  etcd = await startEtcd();
  kv = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
});

afterAll(async () => {
  for (const s of relayed) s.destroy();
  await Promise.all(gateways.map((g) => new Promise((resolve) => g.close(resolve))));
  kv?.close();
  await etcd?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A relay listening on the host namespace's loopback, forwarding to etcd; returns its port. */
function etcdGateway(host: { path: string }, upstream: URL): number {
  const server = net.createServer((down) => {
    // made on this thread, in the test's namespace: etcd is reachable here
    const up = net.connect(Number(upstream.port), upstream.hostname);
    relayed.add(down).add(up);
    const end = () => {
      down.destroy();
      up.destroy();
      relayed.delete(down);
      relayed.delete(up);
    };
    down.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    down.pipe(up).pipe(down);
  });
  // listen() without an address binds at once (no lookup), so the socket is
  // made while this thread is inside the host namespace.
  withNetns(host.path, () => {
    server.listen(0);
  });
  gateways.push(server);
  return (server.address() as net.AddressInfo).port;
}

interface Run {
  status: number;
  json: any;
  stderr: string;
}

/**
 * The bundled plugin inside the host namespace. Asynchronous on purpose:
 * the gateways live on this event loop, which spawnSync would stall.
 */
function macvlan(host: string, command: string, container: { path: string }, conf: object, id: string): Promise<Run> {
  const native = ['dist/netlink_native.node', 'shared/netlink/native/build/Release/netlink_native.node'].map((f) => path.join(ROOT, f)).find((f) => fs.existsSync(f));
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    // the bundle lives in a temp dir: find etcd3 in the repository's node_modules
    NODE_PATH: path.join(ROOT, 'node_modules'),
    NETLINK_TS_NATIVE: native ?? '',
    CNI_COMMAND: command,
    CNI_PATH: '/nonexistent',
    CNI_CONTAINERID: id,
    CNI_IFNAME: 'eth0',
    CNI_NETNS: container.path,
  };
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', host, process.execPath, bundle], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ status: code ?? -1, json: stdout.trim() ? JSON.parse(stdout) : undefined, stderr }));
    child.stdin.end(JSON.stringify(conf));
  });
}

function conf(node: string, gatewayPort: number): object {
  return {
    cniVersion: '1.1.0',
    name: network,
    type: 'macvlan',
    master: 'eth0',
    mode: 'bridge',
    stateDir: path.join(tmp, node, 'state'),
    ipam: {
      type: 'cluster-ipam',
      store: 'etcd',
      ranges: [[{ subnet: '10.78.0.0/24' }]],
      etcd: { endpoints: [`http://127.0.0.1:${gatewayPort}`], keyPrefix, blockSize: 28, nodeName: node, hostId: `host-id-${node}` },
    },
  };
}

function pings(from: string, to: string): boolean {
  return spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', '1', '-W', '2', to], { encoding: 'utf8' }).status === 0;
}

/** block CIDR -> the node that claimed it, as etcd holds it */
async function claims(): Promise<Map<string, string>> {
  const { results } = await kv!.txn({ success: [{ get: `${keyPrefix}/networks/${network}/blocks/`, prefix: true }] }, Date.now() + 5000);
  return new Map(results[0]!.map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1).replace('_', '/'), k.value]));
}

function inCidr(address: string, cidr: string): boolean {
  const toInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const [net4, len] = cidr.split('/');
  const size = 2 ** (32 - Number(len));
  return Math.floor(toInt(address) / size) === Math.floor(toInt(net4) / size);
}

const addrOf = (r: Run) => String(r.json.ips[0].address).split('/')[0];

describe('macvlan on one underlay subnet shared by two hosts (cluster-ipam, etcd per-host blocks)', () => {
  it('each host allocates from a block of its own, and containers on different hosts reach each other', async () => {
    const [ha, hb] = [netns('mveh'), netns('mveh')];
    ip('-n', ha.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', hb.name);
    for (const h of [ha, hb]) {
      ip('-n', h.name, 'link', 'set', 'eth0', 'up');
      ip('-n', h.name, 'link', 'set', 'lo', 'up');
    }
    const upstream = new URL(etcd!.endpoint);
    const confA = conf('node-a', etcdGateway(ha, upstream));
    const confB = conf('node-b', etcdGateway(hb, upstream));
    const [c1, c2, c3] = [netns('mvec'), netns('mvec'), netns('mvec')];

    const r1 = await macvlan(ha.name, 'ADD', c1, confA, 'c1');
    expect(r1.status, `${JSON.stringify(r1.json)} ${r1.stderr}`).toBe(0);
    const r2 = await macvlan(hb.name, 'ADD', c2, confB, 'c2');
    expect(r2.status, `${JSON.stringify(r2.json)} ${r2.stderr}`).toBe(0);
    const r3 = await macvlan(ha.name, 'ADD', c3, confA, 'c3');
    expect(r3.status, `${JSON.stringify(r3.json)} ${r3.stderr}`).toBe(0);

    // one subnet on the wire; blocks are only the allocation's unit
    for (const r of [r1, r2, r3]) expect(r.json.ips[0].address).toMatch(/^10\.78\.0\.\d+\/24$/);
    const owner = await claims();
    const blockOf = (a: string) => [...owner.keys()].find((b) => inCidr(a, b));
    const [b1, b2, b3] = [r1, r2, r3].map((r) => blockOf(addrOf(r)));
    expect(b1 && owner.get(b1)).toBe('node-a');
    expect(b2 && owner.get(b2)).toBe('node-b');
    expect(b3).toBe(b1);
    expect(b2).not.toBe(b1);

    const [link] = ipJson(['-n', c1.name, '-d', 'link', 'show', 'eth0']);
    expect(link.linkinfo.info_kind).toBe('macvlan');
    expect(pings(c1.name, addrOf(r2))).toBe(true);
    expect(pings(c2.name, addrOf(r1))).toBe(true);
    expect(pings(c2.name, addrOf(r3))).toBe(true);

    expect((await macvlan(ha.name, 'CHECK', c1, { ...confA, prevResult: r1.json }, 'c1')).status).toBe(0);
    for (const [h, c, cf, id] of [
      [ha, c1, confA, 'c1'],
      [hb, c2, confB, 'c2'],
      [ha, c3, confA, 'c3'],
    ] as const) {
      const d = await macvlan(h.name, 'DEL', c, cf, id);
      expect(d.status, `${JSON.stringify(d.json)} ${d.stderr}`).toBe(0);
      expect(ipJson(['-n', c.name, 'link', 'show']).map((l) => l.ifname)).not.toContain('eth0');
    }
    // every address went back to etcd
    const { results } = await kv!.txn({ success: [{ get: `${keyPrefix}/networks/${network}/ips/`, prefix: true }] }, Date.now() + 5000);
    expect(results[0]).toEqual([]);
  });
});
