/**
 * Name resolution on bridge networks, through bin/bridge in a Lab (a private
 * namespace plays the host, so the resolver the first ADD starts runs
 * there, and every query travels between the lab's namespaces): names,
 * aliases and short IDs answer from the other containers of the network,
 * result.dns names the resolver, an internal network resolves its own names
 * and nothing outside, networks never see each other's names, a name is
 * gone right after DEL, GC drops unlisted names, CHECK asks the resolver,
 * and a killed resolver comes back with nothing lost.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BRIDGE_BIN, type Container, type Network, type Outcome, Lab } from './lab';

const V = '1.0.0';
let lab: Lab;
let dnsDir: string;
let A: Network; // two containers
let C: Network; // another network
let B: Network; // internal

beforeAll(() => {
  if (!fs.existsSync(BRIDGE_BIN)) throw new Error(`${BRIDGE_BIN} missing: run ./build.sh first`);
  lab = new Lab();
  dnsDir = path.join(lab.dir, 'dns');
  // upstream: a loopback port of the lab's host where nothing listens, so nothing forwarded ever leaves the lab
  const dns = { enabled: true, dataDir: dnsDir, upstream: ['127.0.0.1:9'] };
  A = lab.network({ dns, capabilities: { aliases: true } });
  C = lab.network({ dns });
  B = lab.network({ dns, internal: true, isDefaultGateway: false });
});
afterAll(() => {
  if (process.env.CNI_TS_TEST_DNS_LOG) process.stderr.write(fs.readFileSync(path.join(dnsDir, 'resolver.log'), 'utf8'));
  killResolver();
  lab?.cleanup();
});
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

function ok(o: Outcome): Outcome['json'] {
  expect(o.status, `exit ${o.status} ${o.signal ?? ''}\n${o.stdout}\n${o.stderr}`).toBe(0);
  return o.json;
}

function resolverPid(): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(dnsDir, 'resolver.pid'), 'utf8'));
  } catch {
    return undefined;
  }
}

function killResolver(): void {
  const pid = resolverPid();
  if (pid) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

interface Attached {
  c: Container;
  conf: Record<string, unknown>;
  result: Outcome['json'];
  ip: string;
}

function attach(net: Network, name: string, runtimeConfig?: Record<string, unknown>): Attached {
  const c = lab.container();
  const conf = net.conf(V, runtimeConfig ? { runtimeConfig } : {});
  const result = ok(lab.run({ command: 'ADD', conf, container: c, env: { CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${name};K8S_POD_NAME=${name}` } }));
  return { c, conf, result, ip: result.ips[0].address.split('/')[0] };
}

function del(a: Attached): void {
  ok(lab.run({ command: 'DEL', conf: { ...a.conf, prevResult: a.result }, container: a.c }));
}

/**
 * One query from inside a namespace (node with the lab's netns), the reply
 * decoded; undefined when nothing came back within a second.
 */
function ask(ns: string, server: string, name: string, type: dnsPacket.RecordType = 'A'): (dnsPacket.DecodedPacket & { rcode: string }) | undefined {
  const q = dnsPacket.encode({ type: 'query', id: 99, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  const script = `const s=require('dgram').createSocket(process.argv[2].includes(':')?'udp6':'udp4');const t=setTimeout(()=>{console.log('none');process.exit(0)},1000);` +
    `s.on('message',(m)=>{console.log(m.toString('hex'));process.exit(0)});s.send(Buffer.from(process.argv[1],'hex'),53,process.argv[2]);`;
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', script, q.toString('hex'), server], { encoding: 'utf8' });
  const out = r.stdout.trim();
  if (r.status !== 0) throw new Error(r.stderr);
  if (out === 'none') return undefined;
  return dnsPacket.decode(Buffer.from(out, 'hex')) as dnsPacket.DecodedPacket & { rcode: string };
}

function gone(pid: number): boolean {
  try {
    return / [ZX] /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** Waits (bounded, never timed) until the process has exited. */
async function waitGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 500 && !gone(pid); i++) await new Promise((r) => setTimeout(r, 20));
  return gone(pid);
}

const addrs = (r: dnsPacket.DecodedPacket | undefined) => (r?.answers ?? []).map((a) => String((a as { data: unknown }).data)).sort();

describe('bridge networks with dns.enabled', () => {
  let web: Attached;
  let db: Attached;
  let other: Attached;
  let inner: Attached;

  beforeAll(() => {
    web = attach(A, 'web', { aliases: { [A.name]: ['www', 'front'] } });
    db = attach(A, 'db');
    other = attach(C, 'other');
    inner = attach(B, 'inner');
  });

  it('returns result.dns naming the gateway and the search domain', () => {
    expect(web.result.dns).toEqual({ nameservers: [A.gateway], search: ['dns.cni-ts'] });
    expect(inner.result.dns).toEqual({ nameservers: [B.gateway], search: ['dns.cni-ts'] });
  });

  it('starts one resolver, listening on the gateways', () => {
    const pid = resolverPid()!;
    expect(pid).toBeGreaterThan(1);
    expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).toContain('dns');
    const running = lab.processesInHost().filter((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes(dnsDir);
      } catch {
        return false;
      }
    });
    expect(running).toEqual([pid]);
  });

  it('answers a container\'s name, its aliases and its short ID to another container of the network', () => {
    for (const n of ['web', 'www', 'front.dns.cni-ts', web.c.id.slice(0, 12)]) expect(addrs(ask(db.c.ns, A.gateway, n)), n).toEqual([web.ip]);
    const ptr = web.ip.split('.').reverse().join('.') + '.in-addr.arpa';
    expect(addrs(ask(db.c.ns, A.gateway, ptr, 'PTR'))).toEqual(['web.dns.cni-ts']);
  });

  it('CHECK asks the resolver and passes', () => {
    ok(lab.run({ command: 'CHECK', conf: { ...web.conf, prevResult: web.result }, container: web.c, env: { CNI_ARGS: 'K8S_POD_NAME=web' } }));
  });

  it('never shows one network\'s names to another: not on its own gateway, not on the other\'s', () => {
    expect(ask(other.c.ns, C.gateway, 'web.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(ask(other.c.ns, A.gateway, 'web.dns.cni-ts')).toBeUndefined();
    expect(ask(other.c.ns, A.gateway, 'other.dns.cni-ts')).toBeUndefined();
    expect(addrs(ask(other.c.ns, C.gateway, 'other'))).toEqual([other.ip]);
  });

  it('an internal network resolves its own names and nothing outside', () => {
    expect(addrs(ask(inner.c.ns, B.gateway, 'inner'))).toEqual([inner.ip]);
    expect(ask(inner.c.ns, B.gateway, 'example.org')?.rcode).toBe('NXDOMAIN');
    expect(ask(inner.c.ns, B.gateway, 'web.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
  });

  it('a dual-stack network answers A and AAAA, on its IPv4 and its IPv6 gateway, and CHECK asks both', () => {
    const D = lab.network({ dns: { enabled: true, dataDir: dnsDir, upstream: ['127.0.0.1:9'] } });
    const dual = D.conf(V, { ipam: { type: 'cluster-ipam', dataDir: lab.dataDir, ranges: [[{ subnet: D.subnet }], [{ subnet: D.subnet6 }]] } });
    const run = (name: string) => {
      const c = lab.container();
      const result = ok(lab.run({ command: 'ADD', conf: dual, container: c, env: { CNI_ARGS: `K8S_POD_NAME=${name}` } }));
      const ips = (result.ips as { address: string }[]).map((i) => i.address.split('/')[0]);
      return { c, result, v4: ips.find((i) => !i.includes(':'))!, v6: ips.find((i) => i.includes(':'))! };
    };
    const x = run('dualx');
    const y = run('dualy');
    expect(x.result.dns.nameservers).toEqual([D.gateway, D.gateway6]);
    expect(addrs(ask(y.c.ns, D.gateway, 'dualx'))).toEqual([x.v4]);
    expect(addrs(ask(y.c.ns, D.gateway6, 'dualx', 'AAAA'))).toEqual([x.v6]);
    expect(addrs(ask(y.c.ns, D.gateway6, 'dualx'))).toEqual([x.v4]);
    ok(lab.run({ command: 'CHECK', conf: { ...dual, prevResult: x.result }, container: x.c }));
    ok(lab.run({ command: 'GC', conf: { ...dual, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] } }));
    expect(ask(y.c.ns, D.gateway, 'dualx.dns.cni-ts')).toBeUndefined();
  });

  it('an ADD that fails after writing the record (the resolver cannot start) leaves no record and no address behind', () => {
    const dir = path.join(lab.dir, 'dns-broken');
    // resolver.lock a directory: the records are written, starting the resolver fails
    fs.mkdirSync(path.join(dir, 'resolver.lock'), { recursive: true });
    const E = lab.network({ dns: { enabled: true, dataDir: dir, upstream: ['127.0.0.1:9'] } });
    const o = lab.run({ command: 'ADD', conf: E.conf(V), container: lab.container(), env: { CNI_ARGS: 'K8S_POD_NAME=doomed' } });
    expect(o.status).toBe(1);
    expect(fs.existsSync(path.join(dir, 'networks', E.name))).toBe(false);
    expect(lab.allocations(E.name)).toEqual([]);
  });

  it('a name is gone right after its container\'s DEL, and a second DEL succeeds', () => {
    const tmp = attach(A, 'ephemeral');
    expect(addrs(ask(db.c.ns, A.gateway, 'ephemeral'))).toEqual([tmp.ip]);
    const mac = lab.link(lab.host, A.bridge).address;
    del(tmp);
    // the bridge keeps its MAC when a port goes (else every container's ARP entry for the resolver is stale)
    expect(lab.link(lab.host, A.bridge).address).toBe(mac);
    expect(ask(db.c.ns, A.gateway, 'ephemeral.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    del(tmp);
  });

  it('GC drops the names of attachments the runtime no longer lists', () => {
    const tmp = attach(A, 'collected');
    expect(addrs(ask(db.c.ns, A.gateway, 'collected'))).toEqual([tmp.ip]);
    ok(lab.run({ command: 'GC', conf: { ...A.conf('1.1.0'), 'cni.dev/valid-attachments': [web, db].map((a) => ({ containerID: a.c.id, ifname: 'eth0' })) } }));
    expect(ask(db.c.ns, A.gateway, 'collected.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(addrs(ask(db.c.ns, A.gateway, 'web'))).toEqual([web.ip]);
  });

  it('CHECK fails when the resolver does not answer the name', async () => {
    const pid = resolverPid()!;
    process.kill(pid, 'SIGKILL');
    await waitGone(pid);
    const o = lab.run({ command: 'CHECK', conf: { ...web.conf, prevResult: web.result }, container: web.c });
    expect(o.status).toBe(1);
    expect(o.json.msg).toMatch(/the resolver on .* answers/);
  });

  it('a killed resolver is started again by the next ADD, with every name still there', async () => {
    const before = resolverPid()!;
    try {
      process.kill(before, 'SIGKILL');
    } catch {
      // the test before killed it already
    }
    await waitGone(before);
    const late = attach(C, 'late');
    expect(resolverPid()).not.toBe(before);
    expect(addrs(ask(db.c.ns, A.gateway, 'web'))).toEqual([web.ip]);
    expect(addrs(ask(inner.c.ns, B.gateway, 'inner'))).toEqual([inner.ip]);
    expect(addrs(ask(other.c.ns, C.gateway, 'late'))).toEqual([late.ip]);
  });

  it('the resolver exits after the last DEL on the last DNS network', async () => {
    const pid = resolverPid()!;
    for (const d of fs.readdirSync(path.join(dnsDir, 'networks'))) {
      const net = [A, B, C].find((n) => n.name === d)!;
      ok(lab.run({ command: 'GC', conf: { ...net.conf('1.1.0'), 'cni.dev/valid-attachments': [] } }));
    }
    expect(await waitGone(pid)).toBe(true);
  });

  it('concurrent first ADDs start one resolver, never two', async () => {
    // every record is gone and the resolver exited (the test before): these ADDs race to start it
    const net = lab.network({ dns: { enabled: true, dataDir: dnsDir, upstream: ['127.0.0.1:9'] } });
    const cs = [0, 1, 2, 3].map(() => lab.container());
    const runs = cs.map((c, i) => lab.start({ command: 'ADD', conf: net.conf(V), container: c, env: { CNI_ARGS: `K8S_POD_NAME=racer${i}` } }).done);
    const outs = await Promise.all(runs);
    for (const o of outs) ok(o);
    const resolvers = lab.processesInHost().filter((p) => {
      try {
        const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
        return argv.includes('dns') && argv.includes(dnsDir);
      } catch {
        return false;
      }
    });
    expect(resolvers).toEqual([resolverPid()]);
    for (let i = 0; i < 4; i++) expect(addrs(ask(cs[(i + 1) % 4].ns, net.gateway, `racer${i}`))).toEqual([outs[i].json.ips[0].address.split('/')[0]]);
    ok(lab.run({ command: 'GC', conf: { ...net.conf('1.1.0'), 'cni.dev/valid-attachments': [] } }));
  });
});
