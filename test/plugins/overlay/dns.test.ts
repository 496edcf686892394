/**
 * Overlay names end to end: three simulated hosts (testkit/overlay/lab.ts:
 * namespaces on one underlay, a real etcd, each host's agent), each with its
 * own resolver (`cni-ts dns`, run as its systemd unit would, with its own
 * records directory), the plugin invoked in each host's namespace with
 * `"dns": {"enabled": true}`. Containers ask their host's resolver on the
 * gateway-bridge address the ADD result names, through their egress
 * interface, with busybox nslookup and ping (resolv.conf written from the
 * result's `dns`, as podman writes it).
 *
 * The tests run in order and build on each other.
 */
import { type ChildProcess, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, eventually, sleep } from '../../../testkit/overlay/lab';

const SUBNET_A = '10.62.0.0/24';
const SUBNET_B = '10.63.0.0/24';

describe('overlay names across three simulated hosts, from etcd', () => {
  const lab = new Lab(3);
  const resolvers = new Map<number, ChildProcess>();
  const c: string[] = [];
  const ip = new Map<string, string>();
  const results = new Map<string, object>();
  const etcNetns: string[] = [];

  const dnsDir = (h: number) => path.join(lab.dir, `dns-h${h}`);

  function conf(h: number, network: string, alias: string) {
    const cf = lab.conf(h, network, network === 'ovA' ? SUBNET_A : SUBNET_B, { dns: { enabled: true, dataDir: dnsDir(h) }, runtimeConfig: { aliases: [alias] } }) as {
      ipam: { etcd: { keyPrefix: string } };
    };
    // cluster-ipam: one key prefix per network (as multihost.test.ts)
    if (network !== 'ovA') cf.ipam.etcd.keyPrefix += `-${network}`;
    return cf;
  }

  function add(h: number, network: string, alias: string) {
    const container = lab.addContainer();
    c.push(container);
    const r = lab.plugin(h, 'ADD', container, conf(h, network, alias));
    if (r.status !== 0) throw new Error(`ADD ${alias} on h${h} failed: ${r.stdout} ${r.stderr}`);
    ip.set(alias, r.json.ips[0].address.split('/')[0]);
    results.set(alias, r.json);
    // what podman does with the result's dns: the container's resolv.conf (ip netns exec mounts /etc/netns/<name>/)
    const dir = `/etc/netns/${container}`;
    fs.mkdirSync(dir, { recursive: true });
    etcNetns.push(dir);
    fs.writeFileSync(path.join(dir, 'resolv.conf'), `nameserver ${r.json.dns.nameservers.join('\nnameserver ')}\nsearch ${r.json.dns.search.join(' ')}\n`);
    return { container, result: r.json };
  }

  /** The IPv4 addresses the container's resolver gives for name (none when it does not resolve). */
  function lookup(container: string, name: string): string[] {
    const r = spawnSync('ip', ['netns', 'exec', container, 'busybox', 'nslookup', '-type=a', name], { encoding: 'utf8', timeout: 20_000 });
    const answer = r.stdout.split(/\n\s*\n/).slice(1).join('\n');
    return [...answer.matchAll(/^Address:\s*([0-9.]+)\s*$/gm)].map((m) => m[1]!).sort();
  }

  async function resolves(container: string, name: string, want: string[]): Promise<string[]> {
    let got: string[] = [];
    await eventually(() => (got = lookup(container, name)).join() === want.join(), 20_000);
    return got;
  }

  async function startResolver(h: number): Promise<void> {
    resolvers.set(h, lab.startResolver(h, dnsDir(h)));
    const pid = path.join(dnsDir(h), 'resolver.pid');
    if (!(await eventually(() => fs.existsSync(pid), 30_000))) throw new Error(`resolver h${h} did not start`);
  }

  async function stopResolver(h: number): Promise<void> {
    const r = resolvers.get(h);
    resolvers.delete(h);
    if (!r || r.exitCode !== null) return;
    const gone = new Promise((res) => r.once('exit', res));
    r.kill('SIGTERM');
    await gone;
  }

  beforeAll(async () => {
    await lab.setUp();
    for (let i = 0; i < 3; i++) lab.startAgent(i);
    const up = await eventually(() => {
      try {
        return lab.snapshot().hosts.length === 3;
      } catch {
        return false;
      }
    });
    if (!up) throw new Error(`agents did not register:\n${lab.agentLog(0)}`);
    for (let i = 0; i < 3; i++) await startResolver(i);
  }, 180_000);

  afterAll(async () => {
    for (const h of [...resolvers.keys()]) await stopResolver(h).catch(() => undefined);
    for (const d of etcNetns) fs.rmSync(d, { recursive: true, force: true });
    await lab.tearDown();
  }, 120_000);

  it('ADD names the resolver on the gateway bridge in the result, and a container resolves and pings containers on the two other hosts by name', async () => {
    const a = add(0, 'ovA', 'web0');
    add(1, 'ovA', 'web1');
    add(2, 'ovA', 'web2');
    expect(a.result.dns).toEqual({ nameservers: ['172.18.0.1'], search: ['dns.cni-ts'] });
    expect(await resolves(c[0]!, 'web1', [ip.get('web1')!])).toEqual([ip.get('web1')]);
    expect(await resolves(c[0]!, 'web2.dns.cni-ts', [ip.get('web2')!])).toEqual([ip.get('web2')]);
    expect(await resolves(c[2]!, 'web0', [ip.get('web0')!])).toEqual([ip.get('web0')]);
    expect(await resolves(c[1]!, 'web2', [ip.get('web2')!])).toEqual([ip.get('web2')]);
    // by name over the overlay, through the search domain
    expect(await eventually(() => spawnSync('ip', ['netns', 'exec', c[0]!, 'busybox', 'ping', '-c', '1', '-W', '2', 'web2'], { encoding: 'utf8' }).status === 0)).toBe(true);
    // CHECK asks the name of etcd and of the resolver
    const check = lab.plugin(1, 'CHECK', c[1]!, { ...conf(1, 'ovA', 'web1'), prevResult: results.get('web1') });
    expect(check.status, `${check.stdout}${check.stderr}\n${fs.readFileSync(path.join(lab.dir, 'dns-h1.log'), 'utf8').slice(-3000)}`).toBe(0);
  }, 180_000);

  it('a second overlay network on the same hosts never sees the first one\'s names, nor the first its', async () => {
    add(0, 'ovB', 'db0');
    add(1, 'ovB', 'db1');
    const [b0] = c.slice(-2);
    expect(await resolves(b0!, 'db1', [ip.get('db1')!])).toEqual([ip.get('db1')]);
    expect(lookup(b0!, 'web1.dns.cni-ts')).toEqual([]);
    expect(lookup(b0!, 'web0.dns.cni-ts')).toEqual([]);
    expect(lookup(c[0]!, 'db1.dns.cni-ts')).toEqual([]);
    expect(lookup(c[0]!, 'db0.dns.cni-ts')).toEqual([]);
  }, 120_000);

  it('with etcd stopped, local names still answer and remote ones answer from the snapshot, also from a resolver restarted meanwhile', async () => {
    await lab.stopEtcd();
    expect(lookup(c[0]!, 'web0')).toEqual([ip.get('web0')]);
    expect(lookup(c[0]!, 'web1')).toEqual([ip.get('web1')]);
    await stopResolver(0);
    await startResolver(0);
    expect(await resolves(c[0]!, 'web0', [ip.get('web0')!])).toEqual([ip.get('web0')]);
    expect(lookup(c[0]!, 'web1')).toEqual([ip.get('web1')]);
    expect(lookup(c[0]!, 'web2')).toEqual([ip.get('web2')]);
    await lab.startEtcd();
    // the agents and the resolvers reconnect by themselves
    await sleep(500);
  }, 120_000);

  it('a name is gone on every host after its DEL', async () => {
    const del = lab.plugin(1, 'DEL', c[1]!, conf(1, 'ovA', 'web1'));
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect(await resolves(c[0]!, 'web1', [])).toEqual([]);
    expect(await resolves(c[2]!, 'web1', [])).toEqual([]);
    expect(lookup(c[0]!, 'web2')).toEqual([ip.get('web2')]);
  }, 120_000);

  it('examples/overlay-dns.conflist as users copy it (pointed at the lab): containers on two hosts resolve each other', async () => {
    const file = path.join(__dirname, '../../../examples/overlay-dns.conflist');
    const dnsOf = (JSON.parse(fs.readFileSync(file, 'utf8')) as { plugins: { dns: object }[] }).plugins[0]!.dns;
    const example = (h: number) => lab.exampleConf(h, file, { dns: { ...dnsOf, dataDir: dnsDir(h) }, runtimeConfig: { aliases: [`ex${h}`] } });
    const made: Array<{ h: number; container: string; result: any }> = [];
    try {
      for (const h of [0, 2]) {
        const container = lab.addContainer();
        c.push(container);
        const r = lab.plugin(h, 'ADD', container, example(h));
        expect(r.status, r.stdout + r.stderr).toBe(0);
        expect(r.json.cniVersion).toBe('1.0.0');
        made.push({ h, container, result: r.json });
        const dir = `/etc/netns/${container}`;
        fs.mkdirSync(dir, { recursive: true });
        etcNetns.push(dir);
        fs.writeFileSync(path.join(dir, 'resolv.conf'), `nameserver ${r.json.dns.nameservers.join('\nnameserver ')}\nsearch ${r.json.dns.search.join(' ')}\n`);
      }
      const addrOf = (m: { result: any }) => m.result.ips[0].address.split('/')[0] as string;
      expect(await resolves(made[0]!.container, 'ex2', [addrOf(made[1]!)])).toEqual([addrOf(made[1]!)]);
      expect(await resolves(made[1]!.container, 'ex0.dns.cni-ts', [addrOf(made[0]!)])).toEqual([addrOf(made[0]!)]);
    } finally {
      for (const m of made) lab.plugin(m.h, 'DEL', m.container, { ...example(m.h), prevResult: m.result });
    }
  }, 120_000);
});
