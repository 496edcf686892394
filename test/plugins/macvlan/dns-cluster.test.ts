/**
 * macvlan names across hosts when the network uses the etcd IPAM: the
 * network's records go to etcd beside its addresses (shared/dns/cluster.ts),
 * and every host's resolver with a container on the network answers them at
 * 127.0.0.11 inside its containers.
 *
 * Two simulated hosts are namespaces whose eth0s are the two ends of one veth
 * (the underlay, as etcd.test.ts builds them); a real etcd
 * (testkit/etcd-server.ts) is reached from each host through a relay on the
 * host's loopback (etcd.test.ts says why); each host runs its own resolver,
 * `bin/cni-ts dns --dir <its dir>`, inside its namespace, as its systemd unit
 * would. The plugin is bundled from source and exec'd inside the host
 * namespace, as a runtime on that host runs it. Every query is asked from
 * inside a container, to 127.0.0.11. ipvlan shares the steps
 * (shared/childlink.ts); this kernel has no ipvlan, so only its DEL and GC
 * of the etcd records are run here.
 *
 * The tests run in order and build on each other.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import * as esbuild from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKV } from '../../../shared/etcd/kv';
import { withNetns } from '../../../shared/netns/netns';
import { BIN, ROOT, ipJson } from '../../../testkit/exec';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';
import { ip, namespaceFactory, type Netns } from './fixtures';
import { clusterStore } from '../../../ipam/client';

const netns = namespaceFactory();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-macvlan-dnscl-'));
const bundles = { macvlan: path.join(tmp, 'macvlan.js'), ipvlan: path.join(tmp, 'ipvlan.js') };
const keyPrefix = `/macvlan-dns-${process.pid}-${randomBytes(3).toString('hex')}`;
const N1 = 'mvcl1';
const N2 = 'mvcl2';
/** an ipvlan network, on the hosts' second underlay (a parent has macvlans or ipvlans, never both) */
const N3 = 'ipcl3';
const SUBNET: Record<string, string> = { [N1]: '10.81.0.0/24', [N2]: '10.82.0.0/24', [N3]: '10.83.0.0/24' };

let etcd: EtcdServer | undefined;
let kv: EtcdKV | undefined;
const relays: Array<{ server: net.Server; sockets: Set<net.Socket> }> = [];
const resolvers: ChildProcess[] = [];

interface Host {
  ns: Netns;
  node: string;
  port: number;
  /** true: the relay refuses every connection (etcd unreachable from this host) */
  down: { value: boolean };
  dnsDir: string;
}

beforeAll(async () => {
  for (const [type, outfile] of Object.entries(bundles)) {
    esbuild.buildSync({
      stdin: { contents: `require(${JSON.stringify(path.join(ROOT, 'cmd/plugin-io.ts'))}).pluginMain(require(${JSON.stringify(path.join(ROOT, `plugins/${type}/main.ts`))}).plugin);`, resolveDir: ROOT, loader: 'js' },
      bundle: true,
      platform: 'node',
      format: 'cjs',
      external: ['etcd3'],
      outfile,
      logLevel: 'silent',
    });
  }
  etcd = await startEtcd();
  kv = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
}, 60_000);

afterAll(async () => {
  for (const r of resolvers) if (r.exitCode === null) r.kill('SIGTERM');
  await Promise.all(resolvers.map((r) => (r.exitCode === null ? new Promise((res) => r.once('exit', res)) : undefined)));
  for (const r of relays) for (const s of r.sockets) s.destroy();
  await Promise.all(relays.map((r) => new Promise((res) => r.server.close(res))));
  kv?.close();
  await etcd?.stop();
  if (process.env.CNI_TS_TEST_DNS_LOG) for (const f of fs.readdirSync(tmp)) if (f.startsWith('resolver-')) process.stderr.write(fs.readFileSync(path.join(tmp, f), 'utf8'));
  fs.rmSync(tmp, { recursive: true, force: true });
}, 60_000);

/** A relay on the host namespace's loopback to etcd (made out here, next to etcd); returns its port. */
function etcdRelay(host: Netns, down: { value: boolean }): number {
  const upstream = new URL(etcd!.endpoint);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((downstream) => {
    if (down.value) {
      downstream.destroy();
      return;
    }
    const up = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(downstream).add(up);
    const end = () => {
      downstream.destroy();
      up.destroy();
      sockets.delete(downstream);
      sockets.delete(up);
    };
    downstream.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    downstream.pipe(up).pipe(downstream);
  });
  // listen() without an address binds at once, so the socket is made inside the host namespace
  withNetns(host.path, () => {
    server.listen(0);
  });
  relays.push({ server, sockets });
  return (server.address() as net.AddressInfo).port;
}

async function eventually(fn: () => boolean, ms = 20_000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (fn()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The host's resolver, `bin/cni-ts dns`, inside the host namespace. */
async function startResolver(h: Host): Promise<void> {
  fs.mkdirSync(h.dnsDir, { recursive: true, mode: 0o700 });
  const log = fs.openSync(path.join(tmp, `resolver-${h.node}.log`), 'a');
  const child = spawn('ip', ['netns', 'exec', h.ns.name, path.join(BIN, 'cni-ts'), 'dns', '--dir', h.dnsDir], { stdio: ['ignore', log, log], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  fs.closeSync(log);
  resolvers.push(child);
  if (!(await eventually(() => fs.existsSync(path.join(h.dnsDir, 'resolver.pid')), 30_000))) throw new Error(`the resolver of ${h.node} did not start`);
}

interface Run {
  status: number;
  json: any;
  stderr: string;
}

/** The bundled plugin (the config's type) inside the host namespace (asynchronous: the relays live on this event loop). */
function macvlan(h: Host, command: string, c: Netns | undefined, conf: object, id: string, cniArgs = ''): Promise<Run> {
  const native = ['dist/netlink_native.node', 'shared/netlink/native/build/Release/netlink_native.node'].map((f) => path.join(ROOT, f)).find((f) => fs.existsSync(f));
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    NODE_PATH: path.join(ROOT, 'node_modules'),
    NETLINK_TS_NATIVE: native ?? '',
    CNI_COMMAND: command,
    CNI_PATH: '/nonexistent',
  };
  if (command !== 'GC') Object.assign(env, { CNI_CONTAINERID: id, CNI_IFNAME: 'eth0', CNI_NETNS: c?.path ?? '', CNI_ARGS: cniArgs });
  const type = (conf as { type: keyof typeof bundles }).type;
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', h.ns.name, process.execPath, bundles[type]], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ status: code ?? -1, json: stdout.trim() ? JSON.parse(stdout) : undefined, stderr }));
    child.stdin.end(JSON.stringify(conf));
  });
}

function conf(h: Host, network: string): any {
  return {
    cniVersion: '1.1.0',
    name: network,
    ...(network === N3 ? { type: 'ipvlan', master: 'eth1', mode: 'l2' } : { type: 'macvlan', master: 'eth0', mode: 'bridge' }),
    stateDir: path.join(tmp, h.node, 'state'),
    // upstream: a loopback port where nothing listens: nothing forwarded leaves the test
    dns: { enabled: true, dataDir: h.dnsDir, upstream: ['127.0.0.1:9'] },
    ipam: {
      type: 'cluster-ipam',
      store: 'etcd',
      ranges: [[{ subnet: SUBNET[network] }]],
      etcd: { endpoints: [`http://127.0.0.1:${h.port}`], keyPrefix, blockSize: 28, nodeName: h.node, hostId: `host-id-${h.node}`, requestTimeoutMs: 2000 },
    },
  };
}

type Reply = dnsPacket.DecodedPacket & { rcode: string };

/** One UDP query from inside the container to 127.0.0.11:53; undefined when nothing came back within a second. */
function ask(c: Netns, name: string): Reply | undefined {
  const q = dnsPacket.encode({ type: 'query', id: 77, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name, class: 'IN' }] });
  const script =
    `const q=Buffer.from(process.argv[1],'hex');const t=setTimeout(()=>{console.log('none');process.exit(0)},1000);` +
    `const s=require('dgram').createSocket('udp4');s.on('message',(m)=>{console.log(m.toString('hex'));process.exit(0)});s.send(q,53,'127.0.0.11');`;
  const r = spawnSync('ip', ['netns', 'exec', c.name, process.execPath, '-e', script, q.toString('hex')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  const out = r.stdout.trim();
  return out === 'none' ? undefined : (dnsPacket.decode(Buffer.from(out, 'hex')) as Reply);
}

const addrs = (r: dnsPacket.DecodedPacket | undefined) => (r?.answers ?? []).filter((a) => a.type === 'A').map((a) => String((a as { data: unknown }).data)).sort();

/** The addresses `name` resolves to from inside c, once they are `want` (or whatever they are after 20 s). */
async function resolves(c: Netns, name: string, want: string[]): Promise<string[]> {
  let got: string[] = [];
  await eventually(() => (got = addrs(ask(c, name))).join() === want.join());
  return got;
}

async function dnsKeys(network: string): Promise<string[]> {
  const { results } = await kv!.txn({ success: [{ get: `${keyPrefix}/dns/${network}/`, prefix: true }] }, Date.now() + 5000);
  return results[0]!.map((k) => k.key.slice(`${keyPrefix}/dns/${network}/`.length));
}

interface Attached {
  h: Host;
  c: Netns;
  id: string;
  conf: any;
  result: any;
  ip: string;
}

describe('macvlan names across two hosts with the etcd IPAM (records in etcd, one resolver per host)', () => {
  let A: Host;
  let B: Host;
  let web: Attached;
  let db: Attached;

  const attach = async (h: Host, network: string, name: string): Promise<Attached> => {
    const c = netns('mvclc');
    ip('-n', c.name, 'link', 'set', 'lo', 'up');
    const id = `${name}-${path.basename(c.path)}`;
    const cf = conf(h, network);
    const r = await macvlan(h, 'ADD', c, cf, id, `IgnoreUnknown=1;K8S_POD_NAME=${name}`);
    expect(r.status, `${JSON.stringify(r.json)}\n${r.stderr}`).toBe(0);
    return { h, c, id, conf: cf, result: r.json, ip: String(r.json.ips[0].address).split('/')[0] };
  };
  const run = async (a: Attached, command: string) => macvlan(a.h, command, a.c, { ...a.conf, prevResult: a.result }, a.id);

  beforeAll(async () => {
    const [na, nb] = [netns('mvclh'), netns('mvclh')];
    for (const dev of ['eth0', 'eth1']) ip('-n', na.name, 'link', 'add', dev, 'type', 'veth', 'peer', 'name', dev, 'netns', nb.name);
    for (const n of [na, nb]) for (const dev of ['eth0', 'eth1', 'lo']) ip('-n', n.name, 'link', 'set', dev, 'up');
    const host = (ns: Netns, node: string): Host => {
      const down = { value: false };
      return { ns, node, down, port: etcdRelay(ns, down), dnsDir: path.join(tmp, node, 'dns') };
    };
    A = host(na, 'node-a');
    B = host(nb, 'node-b');
    await startResolver(A);
    await startResolver(B);
  }, 60_000);

  it('a container on host A resolves one on host B by name through 127.0.0.11, and B resolves A', async () => {
    web = await attach(A, N1, 'web');
    db = await attach(B, N1, 'db');
    expect(web.result.dns).toEqual({ nameservers: ['127.0.0.11'], search: ['dns.cni-ts'] });
    // the records sit in etcd beside the network's addresses
    expect((await dnsKeys(N1)).sort()).toEqual([`${db.id}/eth0`, `${web.id}/eth0`].sort());
    expect(await resolves(web.c, 'db', [db.ip])).toEqual([db.ip]);
    expect(await resolves(web.c, `${db.id.slice(0, 12)}.dns.cni-ts`, [db.ip])).toEqual([db.ip]);
    expect(await resolves(db.c, 'web.dns.cni-ts', [web.ip])).toEqual([web.ip]);
    // and the name reaches the container: they share the underlay
    expect(spawnSync('ip', ['netns', 'exec', web.c.name, 'busybox', 'ping', '-c', '1', '-W', '2', db.ip]).status).toBe(0);
  }, 120_000);

  it('CHECK verifies the record in etcd and the name answering; a record gone from etcd fails it', async () => {
    const ok = await run(db, 'CHECK');
    expect(ok.status, `${JSON.stringify(ok.json)}\n${ok.stderr}`).toBe(0);
    const key = `${keyPrefix}/dns/${N1}/${db.id}/eth0`;
    const { results } = await kv!.txn({ success: [{ get: key }] }, Date.now() + 5000);
    const saved = results[0]![0]!.value;
    await kv!.txn({ success: [{ delete: key }] }, Date.now() + 5000);
    const bad = await run(db, 'CHECK');
    expect(bad.status).not.toBe(0);
    expect(bad.json.code).toBe(999);
    expect(bad.json.msg).toMatch(/DNS record .* missing from etcd/);
    await kv!.txn({ success: [{ put: key, value: saved }] }, Date.now() + 5000);
    expect((await run(db, 'CHECK')).status).toBe(0);
  }, 60_000);

  it('a second network on the same hosts sees its own names across hosts, and never the first one\'s', async () => {
    const other = await attach(A, N2, 'other');
    const far = await attach(B, N2, 'far');
    expect(await resolves(other.c, 'far', [far.ip])).toEqual([far.ip]);
    expect(ask(other.c, 'db.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(ask(other.c, 'web.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(ask(web.c, 'far.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(ask(db.c, 'other.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
  }, 120_000);

  it('with etcd unreachable from both hosts, local names still answer and the other host\'s from the snapshot', async () => {
    for (const h of [A, B]) h.down.value = true;
    // the resolvers' open watches break too
    for (const r of relays) for (const sock of r.sockets) sock.destroy();
    try {
      expect(addrs(ask(web.c, 'web'))).toEqual([web.ip]);
      expect(addrs(ask(web.c, 'db'))).toEqual([db.ip]);
      expect(addrs(ask(db.c, 'web'))).toEqual([web.ip]);
    } finally {
      for (const h of [A, B]) h.down.value = false;
    }
  }, 60_000);

  // This kernel has no ipvlan (test/plugins/ipvlan/ipvlan.test.ts): what needs no ipvlan link is
  // tested here, that the ipvlan plugin reaches the same etcd records (its ADD runs the same
  // steps, shared/childlink.ts; its connectivity is the VM's test).
  it('ipvlan: DEL and GC remove its records from etcd as macvlan\'s', async () => {
    const put = async (id: string, ip: string) => {
      const rec = { network: N3, containerId: id, ifname: 'eth0', names: [id], v4: [ip], v6: [], host: B.node };
      await kv!.txn({ success: [{ put: `${keyPrefix}/dns/${N3}/${id}/eth0`, value: JSON.stringify(rec) }] }, Date.now() + 5000);
    };
    await put('ivdel', '10.83.0.5');
    await put('ivgc', '10.83.0.6');
    const c = netns('mvclc');
    const d = await macvlan(B, 'DEL', c, conf(B, N3), 'ivdel');
    expect(d.status, `${JSON.stringify(d.json)}\n${d.stderr}`).toBe(0);
    expect(await dnsKeys(N3)).toEqual(['ivgc/eth0']);
    const g = await macvlan(B, 'GC', undefined, { ...conf(B, N3), 'cni.dev/valid-attachments': [] }, '');
    expect(g.status, `${JSON.stringify(g.json)}\n${g.stderr}`).toBe(0);
    expect(await dnsKeys(N3)).toEqual([]);
  }, 60_000);

  it('with etcd unreachable from the host, ADD fails with code 11 and leaves nothing behind', async () => {
    B.down.value = true;
    try {
      const c = netns('mvclc');
      const id = `late-${path.basename(c.path)}`;
      const r = await macvlan(B, 'ADD', c, conf(B, N1), id, 'IgnoreUnknown=1;K8S_POD_NAME=late');
      expect(r.status).not.toBe(0);
      expect(r.json.code).toBe(11);
      expect(ipJson(['-n', c.name, 'link', 'show']).map((l) => l.ifname)).toEqual(['lo']);
      expect(ask(db.c, 'late.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
      // DEL cannot reach etcd either: 11, for the runtime to retry
      expect((await macvlan(B, 'DEL', c, conf(B, N1), id)).json?.code).toBe(11);
    } finally {
      B.down.value = false;
    }
    expect((await dnsKeys(N1)).sort()).toEqual([`${db.id}/eth0`, `${web.id}/eth0`].sort());
  }, 120_000);

  it('an ADD failing after its record went to etcd takes the record back out, and its address', async () => {
    const ips = async () => (await kv!.txn({ success: [{ get: `${keyPrefix}/networks/${N1}/ips/`, prefix: true }] }, Date.now() + 5000)).results[0]!.map((k) => k.key).sort();
    const before = await ips();
    // the host's records directory cannot be made (under a file): the step after the etcd write fails
    const file = path.join(tmp, 'not-a-dir');
    fs.writeFileSync(file, '');
    const c = netns('mvclc');
    const id = `broken-${path.basename(c.path)}`;
    const r = await macvlan(B, 'ADD', c, { ...conf(B, N1), dns: { enabled: true, dataDir: path.join(file, 'dns') } }, id, 'IgnoreUnknown=1;K8S_POD_NAME=broken');
    expect(r.status).not.toBe(0);
    expect(r.stderr).not.toMatch(/undo "[^"]*" failed/);
    expect((await dnsKeys(N1)).sort()).toEqual([`${db.id}/eth0`, `${web.id}/eth0`].sort());
    expect(await ips()).toEqual(before);
    expect(ipJson(['-n', c.name, 'link', 'show']).map((l) => l.ifname)).toEqual(['lo']);
  }, 60_000);

  it('after DEL on B the name is gone on A; DEL again changes nothing', async () => {
    const d = await run(db, 'DEL');
    expect(d.status, `${JSON.stringify(d.json)}\n${d.stderr}`).toBe(0);
    expect(await dnsKeys(N1)).toEqual([`${web.id}/eth0`]);
    expect(await resolves(web.c, 'db', [])).toEqual([]);
    expect(ask(web.c, 'db.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(addrs(ask(web.c, 'web'))).toEqual([web.ip]);
    const again = await run(db, 'DEL');
    expect(again.status, `${JSON.stringify(again.json)}\n${again.stderr}`).toBe(0);
  }, 120_000);

  it('GC removes this node\'s records of unlisted attachments from etcd, and only this node\'s', async () => {
    const g = await macvlan(B, 'GC', undefined, { ...conf(B, N2), 'cni.dev/valid-attachments': [] }, '');
    expect(g.status, `${JSON.stringify(g.json)}\n${g.stderr}`).toBe(0);
    const left = await dnsKeys(N2);
    expect(left).toHaveLength(1);
    expect(left[0]).toMatch(/^other-/);
  }, 60_000);
});

describe('ipam/client.ts clusterStore: where a network\'s names are cluster-wide', () => {
  const ctxOf = (config: object) => ({ config, stdinData: Buffer.from(JSON.stringify(config)), args: {} }) as unknown as Parameters<typeof clusterStore>[0];
  const net = (ipam: object | undefined) => ({ cniVersion: '1.1.0', name: 'n1', type: 'macvlan', ...(ipam ? { ipam } : {}) });

  it('is none without the etcd store: names stay on the host', async () => {
    expect(await clusterStore(ctxOf(net(undefined)))).toBeUndefined();
    expect(await clusterStore(ctxOf(net({ type: 'host-local', subnet: '10.9.0.0/24' })))).toBeUndefined();
    expect(await clusterStore(ctxOf(net({ type: 'cluster-ipam', ranges: [[{ subnet: '10.9.0.0/24' }]] })))).toBeUndefined();
  });

  it('is the IPAM\'s prefix, node and connection fields (never a secret), with every range set\'s subnet', async () => {
    const pw = path.join(tmp, 'password');
    fs.writeFileSync(pw, 'the-secret', { mode: 0o600 });
    const s = await clusterStore(
      ctxOf(
        net({
          type: 'cluster-ipam',
          store: 'etcd',
          ranges: [[{ subnet: '10.9.0.0/24' }, { subnet: '10.10.0.0/24' }], [{ subnet: 'fd00:9::/64' }]],
          etcd: { endpoints: ['http://127.0.0.1:1'], keyPrefix: '/p', nodeName: 'n-a', hostId: 'h', username: 'u', passwordFile: pw, insecure: true, requestTimeoutMs: 1234 },
        }),
      ),
    );
    expect(s?.scope).toEqual({ prefix: '/p', network: 'n1', subnets: ['10.9.0.0/24', '10.10.0.0/24', 'fd00:9::/64'], node: 'n-a', timeoutMs: 1234 });
    expect(s?.etcd).toEqual({ endpoints: ['http://127.0.0.1:1'], username: 'u', passwordFile: pw, insecure: true, requestTimeoutMs: 1234 });
    expect(JSON.stringify(s)).not.toContain('the-secret');
  });

  it('refuses a bad etcd section with code 7 before connecting', async () => {
    const bad = net({ type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.9.0.0/24' }]], etcd: { endpoints: ['http://127.0.0.1:1'], password: 'inline', hostId: 'h', nodeName: 'n' } });
    await expect(clusterStore(ctxOf(bad))).rejects.toMatchObject({ code: 7 });
  });
});
