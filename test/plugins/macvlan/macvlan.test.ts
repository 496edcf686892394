/**
 * The packaged macvlan plugin on this host's kernel. Every "host" is a
 * namespace made here, with a veth as its parent `eth0` (never the real
 * host's eth0); the plugin is run inside it with `ip netns exec`, so that
 * namespace is the plugin's own (host) namespace.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, ipJson } from '../../../testkit/exec';
import { ip, namespaceFactory } from './fixtures';
import { type TestDaemon, startDaemon } from '../../../testkit/daemon';

const netns = namespaceFactory();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-macvlan-'));
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A "host": a namespace whose eth0 is one end of a veth (the other end is returned, still in the host). */
function makeHost(prefix: string, addr?: string): { name: string; path: string } {
  const h = netns(prefix);
  ip('-n', h.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0');
  ip('-n', h.name, 'link', 'set', 'eth0', 'up');
  ip('-n', h.name, 'link', 'set', 'peer0', 'up');
  if (addr) ip('-n', h.name, 'addr', 'add', addr, 'dev', 'eth0');
  return h;
}

interface Run {
  status: number;
  json: any;
  stderr: string;
}

/**
 * With CNI_TS_TEST_DAEMON=1 (macvlan-daemon.test.ts) every call goes through
 * a `cni-ts daemon` started in the calling host's namespace, one per host.
 */
const DAEMON_MODE = process.env.CNI_TS_TEST_DAEMON === '1';
const daemons = new Map<string, TestDaemon>();
afterAll(() => {
  for (const d of daemons.values()) d.stop();
});

/** Run bin/macvlan inside the host namespace `host`, as a runtime on that host would. */
function macvlan(host: string, command: string, container: { path: string } | undefined, conf: object, id = 'c1', ifname = 'eth0'): Run {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: command, CNI_PATH: BIN };
  if (command !== 'GC' && command !== 'STATUS') Object.assign(env, { CNI_CONTAINERID: id, CNI_IFNAME: ifname, CNI_NETNS: container?.path ?? '' });
  let argv = ['ip', 'netns', 'exec', host, path.join(BIN, 'macvlan')];
  if (DAEMON_MODE) {
    let d = daemons.get(host);
    if (!d) {
      d = startDaemon({ binDir: BIN, socket: path.join(tmp, `daemon-${host}.sock`), netns: `/var/run/netns/${host}` });
      daemons.set(host, d);
    }
    env.CNI_TS_DAEMON_SOCKET = d.socket;
    // `ip netns exec` makes a mount namespace of its own, which the daemon would decline
    argv = ['nsenter', `--net=/var/run/netns/${host}`, '--', path.join(BIN, 'macvlan')];
  }
  const r = spawnSync(argv[0], argv.slice(1), { env, input: JSON.stringify(conf), encoding: 'utf8' });
  return { status: r.status ?? -1, json: r.stdout.trim() ? JSON.parse(r.stdout) : undefined, stderr: r.stderr };
}

function conf(name: string, extra: object = {}, ipam: object = {}): any {
  return {
    cniVersion: '1.1.0',
    name,
    type: 'macvlan',
    master: 'eth0',
    mode: 'bridge',
    ipam: { type: 'cluster-ipam', dataDir: path.join(tmp, name), ranges: [[{ subnet: '10.77.0.0/24', rangeStart: '10.77.0.10', rangeEnd: '10.77.0.50' }]], ...ipam },
    ...extra,
  };
}

function pings(from: string, to: string): boolean {
  return spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', '1', '-W', '1', to], { encoding: 'utf8' }).status === 0;
}

function linksIn(ns: string): string[] {
  return ipJson(['-n', ns, 'link', 'show']).map((l) => `${l.ifname}:${l.link_type}`).sort();
}

const addrOf = (r: Run) => r.json.ips[0].address.split('/')[0];

describe('macvlan plugin (packaged executable, this kernel)', () => {
  let host: { name: string; path: string };
  beforeAll(() => {
    host = makeHost('mvh', '10.77.0.1/24');
  });

  it('two containers on one network reach each other but not the parent\'s own address (the macvlan limit)', () => {
    const c1 = netns('mvc');
    const c2 = netns('mvc');
    const net = conf('mvnet1');
    const a = macvlan(host.name, 'ADD', c1, net, 'a');
    expect(a.status, JSON.stringify(a.json)).toBe(0);
    const b = macvlan(host.name, 'ADD', c2, net, 'b');
    expect(b.status, JSON.stringify(b.json)).toBe(0);
    expect(addrOf(a)).not.toBe(addrOf(b));
    expect(pings(c1.name, addrOf(b))).toBe(true);
    expect(pings(c2.name, addrOf(a))).toBe(true);
    // The parent's address is on the host, behind the lower device that a
    // macvlan's frames never climb back up: unreachable by design.
    expect(pings(c1.name, '10.77.0.1')).toBe(false);
    expect(macvlan(host.name, 'DEL', c1, net, 'a').status).toBe(0);
    expect(macvlan(host.name, 'DEL', c2, net, 'b').status).toBe(0);
  });

  it('ADD reports a macvlan of the parent in the asked mode, with the capability MAC, and CHECK passes', () => {
    const c = netns('mvc');
    const net = conf('mvnet2', { mode: 'private', mtu: 1400, runtimeConfig: { mac: '02:00:00:aa:bb:cc' } });
    const r = macvlan(host.name, 'ADD', c, net);
    expect(r.status, JSON.stringify(r.json)).toBe(0);
    expect(r.json.interfaces).toEqual([{ name: 'eth0', mac: '02:00:00:aa:bb:cc', sandbox: c.path }]);
    const [link] = ipJson(['-n', c.name, '-d', 'link', 'show', 'eth0']);
    expect(link.linkinfo.info_kind).toBe('macvlan');
    expect(link.linkinfo.info_data.mode).toBe('private');
    expect(link.mtu).toBe(1400);
    const parent = ipJson(['-n', host.name, 'link', 'show', 'eth0'])[0];
    expect(link.link_index).toBe(parent.ifindex);
    expect(macvlan(host.name, 'CHECK', c, { ...net, prevResult: r.json }).status).toBe(0);
    // CHECK notices what was taken away
    ip('-n', c.name, 'addr', 'flush', 'dev', 'eth0');
    const bad = macvlan(host.name, 'CHECK', c, { ...net, prevResult: r.json });
    expect(bad.status).toBe(1);
    expect(bad.json.msg).toMatch(/address .* is missing/);
    expect(macvlan(host.name, 'DEL', c, net).status).toBe(0);
  });

  it('without a master the host\'s default-route interface is the parent', () => {
    const h = makeHost('mvh', '10.79.0.1/24');
    ip('-n', h.name, 'route', 'add', 'default', 'via', '10.79.0.254', 'dev', 'eth0');
    const c = netns('mvc');
    const { master: _m, ...net } = conf('mvnet3', {}, { ranges: [[{ subnet: '10.79.0.0/24', rangeStart: '10.79.0.10', rangeEnd: '10.79.0.20' }]] });
    const r = macvlan(h.name, 'ADD', c, net);
    expect(r.status, JSON.stringify(r.json)).toBe(0);
    const [link] = ipJson(['-n', c.name, 'link', 'show', 'eth0']);
    expect(link.link_index).toBe(ipJson(['-n', h.name, 'link', 'show', 'eth0'])[0].ifindex);
    expect(macvlan(h.name, 'DEL', c, net).status).toBe(0);
  });

  it('DEL removes the link and frees the address, and succeeds again when repeated and after the namespace is gone', () => {
    const c = netns('mvc');
    const net = conf('mvnet4');
    const r = macvlan(host.name, 'ADD', c, net);
    expect(r.status).toBe(0);
    const allocated = addrOf(r);
    expect(fs.existsSync(path.join(tmp, 'mvnet4', 'mvnet4', allocated))).toBe(true);
    expect(macvlan(host.name, 'DEL', c, net).status).toBe(0);
    expect(linksIn(c.name).some((l) => l.startsWith('eth0:'))).toBe(false);
    expect(fs.existsSync(path.join(tmp, 'mvnet4', 'mvnet4', allocated))).toBe(false);
    expect(macvlan(host.name, 'DEL', c, net).status).toBe(0);
    expect(macvlan(host.name, 'DEL', undefined, net).status).toBe(0);
  });

  it('a failure after IPAM rolls back: no link in the container and the address is released', () => {
    const c = netns('mvc');
    // 10.200.0.1 is on no link of the container: the kernel refuses the route (ENETUNREACH)
    const net = conf('mvnet5', {}, { routes: [{ dst: '10.99.0.0/16', gw: '10.200.0.1' }] });
    const r = macvlan(host.name, 'ADD', c, net);
    expect(r.status).toBe(1);
    expect(r.json.code).toBe(999);
    expect(linksIn(c.name).some((l) => l.startsWith('eth0:'))).toBe(false);
    const dir = path.join(tmp, 'mvnet5', 'mvnet5');
    const left = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
    expect(left).toEqual([]);
  });
});

describe('macvlan across two hosts sharing an underlay', () => {
  it('containers on different hosts, each allocating from its host\'s range of one subnet, reach each other', () => {
    const h1 = makeHost('mvh');
    const h2 = netns('mvh');
    // the underlay: h1's eth0 peer moves to h2 and becomes its eth0
    ip('-n', h1.name, 'link', 'set', 'peer0', 'netns', h2.name);
    ip('-n', h2.name, 'link', 'set', 'peer0', 'name', 'eth0');
    ip('-n', h2.name, 'link', 'set', 'eth0', 'up');
    const subnet = '10.78.0.0/24';
    const net1 = conf('mvx', {}, { dataDir: path.join(tmp, 'h1'), ranges: [[{ subnet, rangeStart: '10.78.0.10', rangeEnd: '10.78.0.19' }]] });
    const net2 = conf('mvx', {}, { dataDir: path.join(tmp, 'h2'), ranges: [[{ subnet, rangeStart: '10.78.0.20', rangeEnd: '10.78.0.29' }]] });
    const a = netns('mvc');
    const b = netns('mvc');
    const ra = macvlan(h1.name, 'ADD', a, net1, 'a');
    const rb = macvlan(h2.name, 'ADD', b, net2, 'b');
    expect(ra.status, JSON.stringify(ra.json)).toBe(0);
    expect(rb.status, JSON.stringify(rb.json)).toBe(0);
    expect(addrOf(ra)).toBe('10.78.0.10');
    expect(addrOf(rb)).toBe('10.78.0.20');
    expect(pings(a.name, addrOf(rb))).toBe(true);
    expect(pings(b.name, addrOf(ra))).toBe(true);
  });
});

describe('macvlan bad input: a clear error code, and nothing created', () => {
  let host: { name: string; path: string };
  let c: { name: string; path: string };
  beforeAll(() => {
    host = makeHost('mvh', '10.77.0.1/24');
    ip('-n', host.name, 'link', 'add', 'down0', 'type', 'veth', 'peer', 'name', 'down0p');
    c = netns('mvc');
  });

  const cases: Array<[string, object, number, RegExp]> = [
    ['a missing parent', { master: 'nope0' }, 7, /nope0 does not exist/],
    ['a parent that is down', { master: 'down0' }, 11, /down0 is down/],
    ['VLAN id 0', { vlan: 0 }, 7, /VLAN id 0 is outside 1\.\.4094/],
    ['VLAN id 4095', { vlan: 4095 }, 7, /VLAN id 4095 is outside 1\.\.4094/],
    ['VLAN id 4095 written in the parent name', { master: 'eth0.4095' }, 7, /VLAN id 4095 is outside 1\.\.4094/],
    ['an MTU above the parent\'s', { mtu: 9000 }, 7, /mtu 9000 is above the MTU 1500 of master eth0/],
    ['an unknown mode', { mode: 'l2' }, 7, /unknown macvlan mode "l2"/],
  ];
  for (const [what, extra, code, msg] of cases) {
    it(`${what} fails with code ${code}`, () => {
      const before = [linksIn(host.name), linksIn(c.name)];
      const r = macvlan(host.name, 'ADD', c, conf('mvbad', extra));
      expect(r.status).toBe(1);
      expect(r.json.code).toBe(code);
      expect(r.json.msg).toMatch(msg);
      expect([linksIn(host.name), linksIn(c.name)]).toEqual(before);
      expect(fs.existsSync(path.join(tmp, 'mvbad', 'mvbad'))).toBe(false);
    });
  }

  it('a second passthru container on the same parent fails with code 7 and the first keeps working', () => {
    const p1 = netns('mvc');
    const p2 = netns('mvc');
    const net = conf('mvpass', { mode: 'passthru' });
    const first = macvlan(host.name, 'ADD', p1, net, 'p1');
    expect(first.status, JSON.stringify(first.json)).toBe(0);
    const before = linksIn(p2.name);
    const second = macvlan(host.name, 'ADD', p2, net, 'p2');
    expect(second.status).toBe(1);
    expect(second.json.code).toBe(7);
    expect(second.json.msg).toMatch(/passthru/);
    expect(linksIn(p2.name)).toEqual(before);
    // the second's address went back: only the first's allocation remains
    const files = fs.readdirSync(path.join(tmp, 'mvpass', 'mvpass')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
    expect(files).toEqual([addrOf(first)]);
    const chk = macvlan(host.name, 'CHECK', p1, { ...net, prevResult: first.json }, 'p1');
    expect(chk.status, JSON.stringify(chk.json)).toBe(0);
    expect(macvlan(host.name, 'DEL', p1, net, 'p1').status).toBe(0);
  });
});

describe('examples', () => {
  it('examples/macvlan.conflist attaches a container on a host whose parent is eth0', () => {
    const h = makeHost('mvh', '192.168.10.1/24');
    const c = netns('mvc');
    const list = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../examples/macvlan.conflist'), 'utf8'));
    const plugin = list.plugins[0];
    const net = { cniVersion: list.cniVersion, name: list.name, ...plugin, ipam: { ...plugin.ipam, dataDir: path.join(tmp, 'example') } };
    const r = macvlan(h.name, 'ADD', c, net);
    expect(r.status, JSON.stringify(r.json)).toBe(0);
    expect(r.json.ips[0].address).toBe('192.168.10.100/24');
    const routes = ipJson(['-n', c.name, 'route', 'show', 'default']);
    expect(routes[0].gateway).toBe('192.168.10.1');
    expect(macvlan(h.name, 'DEL', c, net).status).toBe(0);
  });
});

/** The daemons' logs (macvlan-daemon.test.ts checks them after the suite). */
export function daemonLogs(): { log: string; served: number } {
  const all = [...daemons.values()];
  return { log: all.map((d) => d.log()).join(''), served: all.reduce((n, d) => n + d.served(), 0) };
}
