/**
 * Name resolution on macvlan networks, through the packaged bin/macvlan: a
 * macvlan container cannot reach its host, so the resolver the first ADD
 * starts answers at 127.0.0.11 inside each container (a listener in the
 * container's namespace and a redirect of 127.0.0.11:53 there). Two
 * containers resolve each other by name and alias; a second network sees
 * none of them; result.dns names 127.0.0.11; CHECK asks there; after DEL the
 * name is gone and the container's listener and redirect with it; a killed
 * resolver is started again by the next ADD and answers every container;
 * GC drops unlisted names. Every "host" is a namespace made here with a veth
 * as its parent eth0; every query is asked from inside a container.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN } from '../../../testkit/exec';
import { ip, namespaceFactory, type Netns } from './fixtures';

const netns = namespaceFactory();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-macvlan-dns-'));
const dnsDir = path.join(tmp, 'dns');

function resolverPid(): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(dnsDir, 'resolver.pid'), 'utf8'));
  } catch {
    return undefined;
  }
}

function kill(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

afterAll(() => {
  if (process.env.CNI_TS_TEST_DNS_LOG) process.stderr.write(fs.readFileSync(path.join(dnsDir, 'resolver.log'), 'utf8'));
  kill(resolverPid());
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Run {
  status: number;
  json: any;
  stderr: string;
}

/** bin/macvlan inside the host namespace, as a runtime on that host runs it. */
function macvlan(host: string, command: string, c: Netns | undefined, conf: object, id: string, cniArgs = ''): Run {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: command, CNI_PATH: BIN };
  if (command !== 'GC') Object.assign(env, { CNI_CONTAINERID: id, CNI_IFNAME: 'eth0', CNI_NETNS: c?.path ?? '', CNI_ARGS: cniArgs });
  const r = spawnSync('ip', ['netns', 'exec', host, path.join(BIN, 'macvlan')], { env, input: JSON.stringify(conf), encoding: 'utf8' });
  return { status: r.status ?? -1, json: r.stdout.trim() ? JSON.parse(r.stdout) : undefined, stderr: r.stderr };
}

function ok(r: Run): any {
  expect(r.status, `${JSON.stringify(r.json)}\n${r.stderr}`).toBe(0);
  return r.json;
}

function conf(name: string, subnet: string, extra: object = {}): any {
  return {
    cniVersion: '1.0.0',
    name,
    type: 'macvlan',
    master: 'eth0',
    mode: 'bridge',
    capabilities: { aliases: true },
    // upstream: a loopback port of the host where nothing listens: nothing forwarded leaves the test
    dns: { enabled: true, dataDir: dnsDir, upstream: ['127.0.0.1:9'] },
    ipam: { type: 'cluster-ipam', dataDir: path.join(tmp, name), ranges: [[{ subnet }]] },
    ...extra,
  };
}

type Reply = dnsPacket.DecodedPacket & { rcode: string };

/** One query from inside the container to 127.0.0.11:53 (udp or tcp); undefined when nothing came back within a second. */
function ask(c: Netns, name: string, proto: 'udp' | 'tcp' = 'udp'): Reply | undefined {
  const q = dnsPacket.encode({ type: 'query', id: 99, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name, class: 'IN' }] });
  const script =
    `const q=Buffer.from(process.argv[1],'hex');const t=setTimeout(()=>{console.log('none');process.exit(0)},1000);` +
    `const done=(m)=>{console.log(m.toString('hex'));process.exit(0)};` +
    `if(process.argv[2]==='udp'){const s=require('dgram').createSocket('udp4');s.on('message',done);s.send(q,53,'127.0.0.11');}` +
    `else{const s=require('net').connect(53,'127.0.0.11');let b=Buffer.alloc(0);s.on('error',()=>{});` +
    `s.on('data',(d)=>{b=Buffer.concat([b,d]);if(b.length>=2&&b.length>=2+b.readUInt16BE(0))done(b.subarray(2))});` +
    `const l=Buffer.alloc(2);l.writeUInt16BE(q.length);s.write(Buffer.concat([l,q]));}`;
  const r = spawnSync('ip', ['netns', 'exec', c.name, process.execPath, '-e', script, q.toString('hex'), proto], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  const out = r.stdout.trim();
  return out === 'none' ? undefined : (dnsPacket.decode(Buffer.from(out, 'hex')) as Reply);
}

const addrs = (r: dnsPacket.DecodedPacket | undefined) => (r?.answers ?? []).map((a) => String((a as { data: unknown }).data)).sort();

function tablesIn(ns: string): string[] {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'tables'], { encoding: 'utf8' });
  return (JSON.parse(out).nftables as Array<{ table?: { family: string; name: string } }>).filter((o) => o.table).map((o) => `${o.table!.family} ${o.table!.name}`);
}

/** Listening sockets on 127.0.0.11 in the namespace (/proc/net is the reader's namespace's): UDP unconnected, TCP in LISTEN. */
function listenersIn(ns: string): number {
  let n = 0;
  for (const [proto, state] of [['udp', '07'], ['tcp', '0A']]) {
    const text = execFileSync('ip', ['netns', 'exec', ns, 'cat', `/proc/net/${proto}`], { encoding: 'utf8' });
    // local address 127.0.0.11 (little-endian hex), then the remote address, then the state
    n += text.split('\n').filter((l) => new RegExp(` 0B00007F:[0-9A-F]{4} [0-9A-F]{8}:[0-9A-F]{4} ${state} `).test(l)).length;
  }
  return n;
}

function waitGone(pid: number): void {
  for (let i = 0; i < 500; i++) {
    try {
      if (/ [ZX] /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))) return;
    } catch {
      return;
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
}

interface Attached {
  c: Netns;
  id: string;
  conf: any;
  result: any;
  ip: string;
}

describe('macvlan networks with dns.enabled (127.0.0.11 inside the container)', () => {
  let host: Netns;
  const N1 = conf('mvdns1', '10.78.0.0/24');
  const N2 = conf('mvdns2', '10.79.0.0/24');
  let web: Attached;
  let db: Attached;
  let other: Attached;

  const attach = (net: any, name: string, aliases?: string[]): Attached => {
    const c = netns('mvdc');
    ip('-n', c.name, 'link', 'set', 'lo', 'up'); // the runtime raises the container's loopback
    const id = `${name}-${path.basename(c.path)}`;
    const withAliases = aliases ? { ...net, runtimeConfig: { aliases: { [net.name]: aliases } } } : net;
    const result = ok(macvlan(host.name, 'ADD', c, withAliases, id, `IgnoreUnknown=1;K8S_POD_NAME=${name}`));
    return { c, id, conf: withAliases, result, ip: result.ips[0].address.split('/')[0] };
  };
  const del = (a: Attached) => ok(macvlan(host.name, 'DEL', a.c, { ...a.conf, prevResult: a.result }, a.id));

  beforeAll(() => {
    host = netns('mvdh');
    ip('-n', host.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0');
    ip('-n', host.name, 'link', 'set', 'eth0', 'up');
    ip('-n', host.name, 'link', 'set', 'peer0', 'up');
    web = attach(N1, 'web', ['www']);
    db = attach(N1, 'db');
    other = attach(N2, 'other');
  });

  it('returns result.dns naming 127.0.0.11 and the search domain', () => {
    expect(web.result.dns).toEqual({ nameservers: ['127.0.0.11'], search: ['dns.cni-ts'] });
  });

  it('two containers resolve each other by name and alias through 127.0.0.11, over UDP and TCP', () => {
    expect(addrs(ask(db.c, 'web'))).toEqual([web.ip]);
    expect(addrs(ask(db.c, 'www.dns.cni-ts'))).toEqual([web.ip]);
    expect(addrs(ask(web.c, 'db', 'tcp'))).toEqual([db.ip]);
    expect(addrs(ask(web.c, web.id.slice(0, 12)))).toEqual([web.ip]);
  });

  it('two networks do not see each other\'s names', () => {
    expect(ask(other.c, 'web.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(ask(db.c, 'other.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(addrs(ask(other.c, 'other'))).toEqual([other.ip]);
  });

  it('changes nothing in the container but the redirect table', () => {
    expect(tablesIn(web.c.name)).toEqual(['ip cni_ts_dns']);
    expect(listenersIn(web.c.name)).toBe(2);
  });

  it('CHECK asks 127.0.0.11 inside the container', () => {
    ok(macvlan(host.name, 'CHECK', web.c, { ...web.conf, prevResult: web.result }, web.id));
  });

  it('a killed resolver is started again by the next ADD and answers every container again', () => {
    const before = resolverPid()!;
    expect(before).toBeGreaterThan(1);
    kill(before);
    waitGone(before);
    expect(ask(db.c, 'web')).toBeUndefined();
    const late = attach(N2, 'late');
    expect(resolverPid()).not.toBe(before);
    expect(addrs(ask(db.c, 'web'))).toEqual([web.ip]);
    expect(addrs(ask(other.c, 'late'))).toEqual([late.ip]);
    expect(addrs(ask(late.c, 'other', 'tcp'))).toEqual([other.ip]);
  });

  it('after DEL the name is gone and the container\'s listener and redirect with it', () => {
    del(web);
    expect(ask(db.c, 'web.dns.cni-ts')?.rcode).toBe('NXDOMAIN');
    expect(listenersIn(web.c.name)).toBe(0);
    expect(tablesIn(web.c.name)).toEqual([]);
    // idempotent
    del(web);
  });

  it('GC drops the names of attachments the runtime no longer lists', () => {
    ok(macvlan(host.name, 'GC', undefined, { ...N1, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] }, ''));
    expect(ask(db.c, 'db.dns.cni-ts', 'udp')).toBeUndefined(); // db's own listener is gone too
    expect(listenersIn(db.c.name)).toBe(0);
    expect(tablesIn(db.c.name)).toEqual([]);
    // the other network keeps its names
    expect(addrs(ask(other.c, 'other'))).toEqual([other.ip]);
  });

  it('DEL with no resolver running removes the container\'s redirect itself', () => {
    const pid = resolverPid()!;
    kill(pid);
    waitGone(pid);
    expect(tablesIn(other.c.name)).toEqual(['ip cni_ts_dns']);
    del(other);
    expect(tablesIn(other.c.name)).toEqual([]);
  });

  it('examples/macvlan-dns.conflist as users copy it: two containers resolve each other by name', () => {
    const list = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../examples/macvlan-dns.conflist'), 'utf8'));
    // only where state goes (this test's directories) and the upstream (nothing forwarded leaves the test) differ
    const example = {
      cniVersion: list.cniVersion,
      name: `${list.name}-t`,
      ...list.plugins[0],
      dns: { ...list.plugins[0].dns, dataDir: dnsDir, upstream: ['127.0.0.1:9'] },
      ipam: { ...list.plugins[0].ipam, dataDir: path.join(tmp, 'example') },
    };
    const a = attach(example, 'exa');
    const b = attach(example, 'exb');
    try {
      expect(a.result.dns).toEqual({ nameservers: ['127.0.0.11'], search: ['dns.cni-ts'] });
      expect(addrs(ask(a.c, 'exb'))).toEqual([b.ip]);
      expect(addrs(ask(b.c, 'exa.dns.cni-ts'))).toEqual([a.ip]);
    } finally {
      del(a);
      del(b);
    }
  });
});
