/**
 * Cluster-wide names through the resolver (shared/dns/server.ts with
 * cluster-watch.ts): three simulated hosts, each with its own records
 * directory and its own resolver, sharing one etcd (testkit/fake-kv.ts).
 * Each host's records are written as the overlay's ADD writes them: the
 * local record on the host's gateway-bridge address, answered only to the
 * container's own address there (clientsOnly), and the cluster record in
 * etcd (cluster.ts). Addresses are on loopback: each simulated host's
 * "gateway bridge" is a /24 of a 127.B.0.0/16 of this run's own.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as dnsPacket from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeKV } from '../../../testkit/fake-kv';
import { addressesOf, query } from '../../../shared/dns/client';
import { clusterKey, clusterNames, clusterRef, type ClusterScope } from '../../../shared/dns/cluster';
import { putEntry, removeEntry, type DnsEntry } from '../../../shared/dns/records';
import { Resolver } from '../../../shared/dns/server';

const PORT = 40000 + (process.pid % 20000);
const B = 200 + (process.pid % 50);
const PREFIX = '/cni-ts/overlay';
const SUBNETS: Record<string, string[]> = { ov1: ['10.70.0.0/24'], ov2: ['10.71.0.0/24'] };
const gw = (h: number) => `127.${B}.${h + 1}.1`;
const NODES = ['node-0', 'node-1', 'node-2'];

const kv = new FakeKV();
const dirs: string[] = [];
const resolvers: Resolver[] = [];
const logs: string[] = [];
let nextClient = 10;

function scope(h: number, network: string): ClusterScope {
  return { prefix: PREFIX, network, subnets: SUBNETS[network]!, node: NODES[h]! };
}

function startResolver(h: number): Promise<void> {
  const r = new Resolver({ dir: dirs[h]!, port: PORT, clusterKv: () => kv, clusterRetryMs: 50, log: (m) => logs.push(`h${h} ${m}`) });
  resolvers[h] = r;
  return r.reload();
}

/** As the overlay's ADD on host h: the local record (listen on the gateway bridge, this container's address its client), then etcd. */
async function add(h: number, network: string, id: string, name: string, ip: string): Promise<{ client: string }> {
  const client = `127.${B}.${h + 1}.${nextClient++}`;
  const entry: DnsEntry = { containerId: id.padEnd(16, '0'), ifname: 'eth0', names: [name], v4: [ip], v6: [], clients: [client] };
  putEntry(
    dirs[h]!,
    {
      name: network,
      domain: 'dns.cni-ts',
      internal: false,
      listen: [gw(h)],
      subnets: [`127.${B}.${h + 1}.0/24`],
      upstream: [`127.${B}.9.9:${PORT}`],
      clientsOnly: true,
      cluster: clusterRef(scope(h, network), { endpoints: ['127.0.0.1:2379'] }),
    },
    entry,
  );
  if (!kv.down) await clusterNames(kv, scope(h, network), { op: 'add', entry });
  await resolvers[h]!.reload();
  return { client };
}

async function del(h: number, network: string, id: string): Promise<void> {
  await clusterNames(kv, scope(h, network), { op: 'del', containerId: id.padEnd(16, '0'), ifname: 'eth0' });
  removeEntry(dirs[h]!, network, id.padEnd(16, '0'), 'eth0');
  await resolvers[h]!.reload();
}

async function ask(h: number, from: string, name: string, type: dnsPacket.RecordType = 'A') {
  return query(name, type, { server: gw(h), from, port: PORT, timeoutMs: 400 });
}

/** The reply's rcode (dns-packet decodes it; its typings leave it out). */
async function rcode(h: number, from: string, name: string): Promise<string | undefined> {
  return ((await ask(h, from, name)) as unknown as { rcode?: string } | undefined)?.rcode;
}

/** The addresses the name answers with, once they are `want` (cluster records arrive through the watch), or the last seen. */
async function resolvesTo(h: number, from: string, name: string, want: string[]): Promise<string[]> {
  let got: string[] = [];
  for (let i = 0; i < 40; i++) {
    got = addressesOf(await ask(h, from, name));
    if (got.join() === want.join()) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return got;
}

const clients: Record<string, string> = {};

beforeAll(async () => {
  for (let h = 0; h < 3; h++) {
    dirs.push(fs.mkdtempSync(path.join(os.tmpdir(), `cni-dns-cluster-h${h}-`)));
    await startResolver(h);
  }
  clients.alpha = (await add(0, 'ov1', 'a1', 'alpha', '10.70.0.2')).client;
  clients.bravo = (await add(1, 'ov1', 'b1', 'bravo', '10.70.0.3')).client;
  clients.charlie = (await add(2, 'ov1', 'c1', 'charlie', '10.70.0.4')).client;
  // ov2 on hosts 0 and 1: same resolvers, same gateway-bridge addresses
  clients.delta = (await add(0, 'ov2', 'd1', 'delta', '10.71.0.2')).client;
  clients.echo = (await add(1, 'ov2', 'e1', 'echo', '10.71.0.3')).client;
});

afterAll(async () => {
  for (const r of resolvers) await r.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('overlay names across three simulated hosts', () => {
  it('a container on each host resolves the containers of the two others by name', async () => {
    expect(await resolvesTo(0, clients.alpha!, 'bravo.dns.cni-ts', ['10.70.0.3'])).toEqual(['10.70.0.3']);
    expect(await resolvesTo(0, clients.alpha!, 'charlie', ['10.70.0.4'])).toEqual(['10.70.0.4']);
    expect(await resolvesTo(1, clients.bravo!, 'charlie.dns.cni-ts', ['10.70.0.4'])).toEqual(['10.70.0.4']);
    expect(await resolvesTo(2, clients.charlie!, 'alpha.dns.cni-ts', ['10.70.0.2'])).toEqual(['10.70.0.2']);
    // the short ID and the reverse name of a remote container too
    expect(await resolvesTo(2, clients.charlie!, 'b10000000000.dns.cni-ts', ['10.70.0.3'])).toEqual(['10.70.0.3']);
    const ptr = await ask(2, clients.charlie!, '3.0.70.10.in-addr.arpa', 'PTR');
    expect(ptr?.answers?.map((a) => (a as { data: unknown }).data)).toEqual(['bravo.dns.cni-ts']);
  });

  it('two overlay networks never see each other\'s names, though they share the resolver\'s address: the asking address picks the network', async () => {
    expect(await resolvesTo(0, clients.delta!, 'echo.dns.cni-ts', ['10.71.0.3'])).toEqual(['10.71.0.3']);
    // from ov1's container on host 0: ov2's names (local or remote) do not exist
    expect((await rcode(0, clients.alpha!, 'delta.dns.cni-ts'))).toBe('NXDOMAIN');
    expect((await rcode(0, clients.alpha!, 'echo.dns.cni-ts'))).toBe('NXDOMAIN');
    // and the other way round
    expect((await rcode(0, clients.delta!, 'bravo.dns.cni-ts'))).toBe('NXDOMAIN');
    expect((await rcode(0, clients.delta!, 'alpha.dns.cni-ts'))).toBe('NXDOMAIN');
  });

  it('even the resolver\'s own address is not a client of a network that shares it', async () => {
    expect(await ask(0, gw(0), 'a10000000000.dns.cni-ts')).toBeUndefined();
  });

  it('an address on the gateway bridge that is no container\'s gets no answer at all', async () => {
    expect(await ask(0, `127.${B}.1.250`, 'alpha.dns.cni-ts')).toBeUndefined();
  });

  it('a forged record in etcd (another network\'s address, malformed JSON, under another key) is ignored, and the rest still answers', async () => {
    const forge = (id: string, value: string) => kv.txn({ success: [{ put: clusterKey(PREFIX, 'ov1', id, 'eth0'), value }] }, Date.now() + 1000);
    await forge('evil1', JSON.stringify({ network: 'ov1', containerId: 'evil1', ifname: 'eth0', names: ['evil'], v4: ['10.71.0.66'], v6: [], host: 'node-2' }));
    await forge('evil2', '{"network": "ov1", "names": ["evil2"');
    await forge('evil3', JSON.stringify({ network: 'ov1', containerId: 'other', ifname: 'eth0', names: ['evil3'], v4: ['10.70.0.66'], v6: [], host: 'node-2' }));
    // a record in ov1's keys naming ov1's addresses with a name of ov2: answered in ov1 only (as any ov1 name)
    await forge('ok1', JSON.stringify({ network: 'ov1', containerId: 'ok1', ifname: 'eth0', names: ['foxtrot'], v4: ['10.70.0.9'], v6: [], host: 'node-2' }));
    expect(await resolvesTo(0, clients.alpha!, 'foxtrot.dns.cni-ts', ['10.70.0.9'])).toEqual(['10.70.0.9']);
    for (const name of ['evil', 'evil2', 'evil3']) expect((await rcode(0, clients.alpha!, `${name}.dns.cni-ts`))).toBe('NXDOMAIN');
    expect(addressesOf(await ask(0, clients.alpha!, 'bravo.dns.cni-ts'))).toEqual(['10.70.0.3']);
    expect(logs.some((l) => l.includes('ignoring cluster record') && l.includes('outside the network'))).toBe(true);
    expect(logs.some((l) => l.includes('10.71.0.66"'))).toBe(false);
    await kv.txn({ success: ['evil1', 'evil2', 'evil3', 'ok1'].map((id) => ({ delete: clusterKey(PREFIX, 'ov1', id, 'eth0') })) }, Date.now() + 1000);
    expect(await resolvesTo(0, clients.alpha!, 'foxtrot.dns.cni-ts', [])).toEqual([]);
  });

  it('a name is gone on every host after its DEL', async () => {
    const { client } = await add(2, 'ov1', 'g1', 'golf', '10.70.0.7');
    expect(await resolvesTo(0, clients.alpha!, 'golf.dns.cni-ts', ['10.70.0.7'])).toEqual(['10.70.0.7']);
    expect(await resolvesTo(1, clients.bravo!, 'golf.dns.cni-ts', ['10.70.0.7'])).toEqual(['10.70.0.7']);
    await del(2, 'ov1', 'g1');
    // on its own host, at once (the local record went, and the reload returned)
    expect((await rcode(2, clients.charlie!, 'golf.dns.cni-ts'))).toBe('NXDOMAIN');
    expect(await ask(2, client, 'golf.dns.cni-ts')).toBeUndefined();
    expect(await resolvesTo(0, clients.alpha!, 'golf.dns.cni-ts', [])).toEqual([]);
    expect(await resolvesTo(1, clients.bravo!, 'golf.dns.cni-ts', [])).toEqual([]);
    expect((await rcode(0, clients.alpha!, 'golf.dns.cni-ts'))).toBe('NXDOMAIN');
  });

  it('keeps each cluster network\'s records in a 0600 snapshot on disk', () => {
    const file = resolvers[0]!.cluster.snapshotFile('ov1');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const snap = JSON.parse(fs.readFileSync(file, 'utf8')) as { records: { names: string[] }[] };
    expect(snap.records.map((r) => r.names[0]).sort()).toEqual(['alpha', 'bravo', 'charlie']);
  });

  it('with etcd stopped, local names still answer and remote names answer from the snapshot, across a resolver restart too', async () => {
    kv.down = true;
    try {
      // a change under the prefix while down: the resolver's re-read fails, and it keeps what it had
      const { client } = await add(0, 'ov1', 'h1', 'hotel', '10.70.0.8');
      expect(addressesOf(await ask(0, client, 'hotel.dns.cni-ts'))).toEqual(['10.70.0.8']);
      expect(addressesOf(await ask(0, clients.alpha!, 'alpha.dns.cni-ts'))).toEqual(['10.70.0.2']);
      expect(addressesOf(await ask(0, clients.alpha!, 'charlie.dns.cni-ts'))).toEqual(['10.70.0.4']);
      // a resolver started while etcd is down: local names from its records, remote ones from the snapshot
      await resolvers[0]!.close();
      await startResolver(0);
      expect(resolvers[0]!.cluster.stale('ov1')).toBe(true);
      expect(addressesOf(await ask(0, client, 'hotel.dns.cni-ts'))).toEqual(['10.70.0.8']);
      expect(addressesOf(await ask(0, clients.alpha!, 'bravo.dns.cni-ts'))).toEqual(['10.70.0.3']);
      expect(addressesOf(await ask(0, clients.alpha!, 'charlie.dns.cni-ts'))).toEqual(['10.70.0.4']);
      expect(addressesOf(await ask(0, clients.delta!, 'echo.dns.cni-ts'))).toEqual(['10.71.0.3']);
    } finally {
      kv.down = false;
    }
    // etcd back: the resolver catches up by itself (its retry), names added meanwhile elsewhere answer
    await add(1, 'ov1', 'i1', 'india', '10.70.0.10');
    expect(await resolvesTo(0, clients.alpha!, 'india.dns.cni-ts', ['10.70.0.10'])).toEqual(['10.70.0.10']);
    await del(1, 'ov1', 'i1');
    await del(0, 'ov1', 'h1');
  });

  it('every resolver restarted loses nothing', async () => {
    for (let h = 0; h < 3; h++) {
      await resolvers[h]!.close();
      await startResolver(h);
    }
    const all: Array<[number, string, string, string]> = [
      [0, clients.alpha!, 'bravo', '10.70.0.3'],
      [0, clients.alpha!, 'charlie', '10.70.0.4'],
      [1, clients.bravo!, 'alpha', '10.70.0.2'],
      [2, clients.charlie!, 'bravo', '10.70.0.3'],
      [0, clients.delta!, 'echo', '10.71.0.3'],
      [1, clients.echo!, 'delta', '10.71.0.2'],
    ];
    for (const [h, from, name, ip] of all) expect(addressesOf(await ask(h, from, `${name}.dns.cni-ts`))).toEqual([ip]);
  });
});
