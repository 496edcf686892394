/**
 * bin/bridge on a real kernel, driven the way a runtime drives it (env +
 * stdin, one process per call), with cluster-ipam's local store in a temp
 * dataDir. Everything happens inside a Lab (lab.ts): a private namespace
 * playing the host, container namespaces, and "outside" namespaces routed
 * through the host. Each behaviour is checked for every spec version where
 * the version matters to it; the faults (concurrency, kill -9) run once.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { hostVethName } from '../../../plugins/bridge/main';
import { macFromIPv4 } from '../../../shared/container-iface';
import { BRIDGE_BIN, type Container, type Network, type Outcome, Lab, ROOT, VERSIONS, eventually, sleep } from './lab';

let lab: Lab;
beforeAll(() => {
  if (!fs.existsSync(BRIDGE_BIN)) throw new Error(`${BRIDGE_BIN} missing: run ./build.sh first`);
  lab = new Lab();
});
afterAll(() => lab?.cleanup());
// The tests block on spawnSync (plugin calls, pings). Back to back, with
// only promise ticks between them, they would starve the worker's event
// loop of I/O for minutes and vitest's RPC to its parent times out; one
// turn of the loop per test keeps it answering.
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

function ok(o: Outcome): any {
  expect(o.status, `exit ${o.status} ${o.signal ?? ''}\n${o.stdout}\n${o.stderr}`).toBe(0);
  return o.json;
}

function failed(o: Outcome, code: number): any {
  expect(o.status, o.stdout).toBe(1);
  expect(o.json?.code, o.stdout).toBe(code);
  expect(typeof o.json?.msg).toBe('string');
  return o.json;
}

const atLeast = (v: string, min: string) => v.localeCompare(min, undefined, { numeric: true }) >= 0;

/** What a runtime sends on DEL/CHECK: the configuration plus, from 0.4.0 on, the cached result. */
function withPrev(conf: Record<string, unknown>, v: string, prev: unknown): Record<string, unknown> {
  return atLeast(v, '0.4.0') && prev !== undefined ? { ...conf, prevResult: prev } : conf;
}

/** A container attached to a network, with what ADD said. */
interface Attached {
  c: Container;
  result: any;
  conf: Record<string, unknown>;
  veth: string;
  ip: string;
}

function attach(net: Network, v: string, extra: Record<string, unknown> = {}): Attached {
  const c = lab.container();
  const conf = net.conf(v, extra);
  const result = ok(lab.run({ command: 'ADD', conf, container: c }));
  return { c, result, conf, veth: hostVethName(c.id, 'eth0'), ip: result.ips[0].address.split('/')[0] };
}

function detach(a: Attached, v: string): void {
  ok(lab.run({ command: 'DEL', conf: withPrev(a.conf, v, a.result), container: a.c }));
}

/**
 * Everything a failed or rejected call must leave as it was: the host's
 * links and their addresses (not their operstate: other tests' bridges go
 * down on their own when their last port leaves), the container's links,
 * the nft table and the network's store.
 */
function snapshot(net: Network, c?: Container): string {
  return JSON.stringify({
    host: lab.ipj(lab.host, 'addr', 'show').map((l) => [l.ifname, (l.addr_info ?? []).map((a: any) => a.local)]),
    container: c ? lab.linkNames(c.ns) : [],
    nft: lab.nftTable() ?? null,
    store: lab.storeFiles(net.name).filter((f) => f !== 'lock'),
  });
}

describe.each(VERSIONS)('bridge plugin, cniVersion %s', (v) => {
  // Traffic does not depend on the result's version: the tests that only
  // send packets run once, under the newest version (the result's shape is
  // checked under every version above and below).
  const trafficIt = (name: string, fn: () => void | Promise<void>) => (v === VERSIONS[VERSIONS.length - 1] ? it(name, fn) : undefined);
  it('ADD returns the bridge, the host veth and the container interface, with its address, gateway and default route', () => {
    const net = lab.network();
    const a = attach(net, v);
    const r = a.result;
    expect(r.cniVersion).toBe(v);
    const ip: Record<string, unknown> = { interface: 2, address: `${net.prefix}.2/24`, gateway: net.gateway };
    if (!atLeast(v, '1.0.0')) ip.version = '4';
    expect(r.ips).toEqual([ip]);
    expect(r.routes).toEqual([{ dst: '0.0.0.0/0', gw: net.gateway }]);
    expect(r.interfaces).toEqual([
      { name: net.bridge, mac: lab.link(lab.host, net.bridge).address },
      { name: a.veth, mac: lab.link(lab.host, a.veth).address },
      { name: 'eth0', mac: lab.link(a.c.ns, 'eth0').address, sandbox: a.c.path },
    ]);

    // and the kernel holds what the result says
    expect(lab.link(lab.host, net.bridge).linkinfo.info_kind).toBe('bridge');
    expect(lab.link(lab.host, a.veth).master).toBe(net.bridge);
    expect(lab.addrs(lab.host, net.bridge)).toEqual([`${net.gateway}/24`]);
    expect(lab.addrs(a.c.ns, 'eth0')).toEqual([`${net.prefix}.2/24`]);
    expect(lab.link(a.c.ns, 'eth0').operstate).not.toBe('DOWN');
    expect(lab.routes(a.c.ns)).toContainEqual(expect.objectContaining({ dst: 'default', gateway: net.gateway, dev: 'eth0' }));
    expect(lab.sysctl(lab.host, 'net.ipv4.ip_forward')).toBe('1');
    expect(lab.allocations(net.name)).toEqual([`${net.prefix}.2`]);
    detach(a, v);
  });

  trafficIt('two containers ping each other and the gateway', () => {
    const net = lab.network();
    const a = attach(net, v);
    const b = attach(net, v);
    expect(a.ip).not.toBe(b.ip);
    expect(lab.reachable(a.c.ns, b.ip)).toBe(true);
    expect(lab.reachable(b.c.ns, a.ip)).toBe(true);
    expect(lab.reachable(a.c.ns, net.gateway)).toBe(true);
    expect(lab.reachable(b.c.ns, net.gateway)).toBe(true);
    detach(a, v);
    detach(b, v);
  });

  it('isGateway without isDefaultGateway puts the gateway on the bridge but routes nothing through it', () => {
    const net = lab.network({ isDefaultGateway: false, isGateway: true });
    const a = attach(net, v);
    expect(a.result.ips[0].gateway).toBe(net.gateway);
    expect(a.result.routes ?? []).toEqual([]);
    expect(lab.addrs(lab.host, net.bridge)).toEqual([`${net.gateway}/24`]);
    expect(lab.routes(a.c.ns).filter((r) => r.dst === 'default')).toEqual([]);
    expect(lab.reachable(a.c.ns, net.gateway)).toBe(true);
    detach(a, v);
  });

  trafficIt('ipMasq installs the masquerade rule and lets containers reach a network that has no route back', () => {
    const out = lab.outside(false);
    const masq = lab.network({ ipMasq: true });
    const plain = lab.network({ ipMasq: false });
    const a = attach(masq, v);
    const b = attach(plain, v);

    const rules = lab.networkRules(masq.bridge);
    expect(rules.chains.sort()).toEqual([`net-${masq.bridge}-in`, `net-${masq.bridge}-masq`, `net-${masq.bridge}-out`]);
    expect(rules.elements.sort()).toEqual(['bridges', 'fwd_in', 'fwd_out', 'masq']);
    const masqRules = rules.rules.filter((r) => r.chain === `net-${masq.bridge}-masq`);
    expect(masqRules).toHaveLength(1);
    expect(JSON.stringify(masqRules[0].expr)).toContain('"masquerade"');
    expect(JSON.stringify(masqRules[0].expr)).toContain(`{"prefix":{"addr":"${masq.prefix}.0","len":24}}`);
    expect(lab.networkRules(plain.bridge).rules.filter((r) => r.chain === `net-${plain.bridge}-masq`)).toEqual([]);

    // the outside namespace only knows its own /24: an answer arrives only when NATed to the host's address
    expect(lab.reachable(a.c.ns, out.ip)).toBe(true);
    expect(lab.pingOnce(b.c.ns, out.ip)).toBe(false);
    detach(a, v);
    detach(b, v);
  });

  trafficIt('an internal network has no default route, no gateway, and nothing it sends through the host gets out', () => {
    const out = lab.outside(true);
    const other = lab.network();
    const internal = lab.network({ internal: true });
    const o = attach(other, v);
    const a = attach(internal, v);
    const b = attach(internal, v);
    expect(a.result.ips[0].gateway).toBeUndefined();
    expect(a.result.routes ?? []).toEqual([]);
    expect(lab.routes(a.c.ns).filter((r) => r.dst === 'default')).toEqual([]);
    expect(lab.addrs(lab.host, internal.bridge)).toEqual([]);
    // its containers still talk to each other
    expect(lab.reachable(a.c.ns, b.ip)).toBe(true);

    // Route it anyway (what a container that changes its own routes could
    // do): the gateway address on the bridge, a default route to it.
    lab.ip(lab.host, 'addr', 'add', `${internal.gateway}/24`, 'dev', internal.bridge);
    lab.ip(a.c.ns, 'route', 'add', 'default', 'via', internal.gateway);
    expect(lab.reachable(a.c.ns, internal.gateway)).toBe(true);
    expect(lab.sysctl(lab.host, 'net.ipv4.ip_forward')).toBe('1');
    // the same path works for a normal network, so what stops this one is the firewall
    expect(lab.reachable(o.c.ns, out.ip)).toBe(true);
    expect(lab.pingOnce(a.c.ns, out.ip)).toBe(false);
    expect(lab.pingOnce(a.c.ns, o.ip)).toBe(false);
    lab.ip(lab.host, 'addr', 'del', `${internal.gateway}/24`, 'dev', internal.bridge);
    for (const x of [o, a, b]) detach(x, v);
  });

  trafficIt('icc=false isolates the containers of one bridge from each other but not from the gateway', () => {
    const net = lab.network({ icc: false });
    const a = attach(net, v);
    const b = attach(net, v);
    expect(lab.bridgePort(a.veth).isolated).toBe(true);
    expect(lab.reachable(a.c.ns, net.gateway)).toBe(true);
    expect(lab.reachable(b.c.ns, net.gateway)).toBe(true);
    expect(lab.pingOnce(a.c.ns, b.ip)).toBe(false);
    expect(lab.pingOnce(b.c.ns, a.ip)).toBe(false);
    detach(a, v);
    detach(b, v);
  });

  trafficIt('two bridge networks cannot reach each other even with gateways and ip_forward on, while the host routes them elsewhere', () => {
    const out = lab.outside(true);
    const n1 = lab.network();
    const n2 = lab.network();
    const a = attach(n1, v);
    const b = attach(n2, v);
    expect(lab.sysctl(lab.host, 'net.ipv4.ip_forward')).toBe('1');
    expect(lab.reachable(a.c.ns, out.ip)).toBe(true);
    expect(lab.reachable(b.c.ns, out.ip)).toBe(true);
    expect(lab.pingOnce(a.c.ns, b.ip)).toBe(false);
    expect(lab.pingOnce(b.c.ns, a.ip)).toBe(false);
    detach(a, v);
    detach(b, v);
  });

  it('mtu is applied to both veth ends and the bridge', () => {
    const net = lab.network({ mtu: 1400 });
    const a = attach(net, v);
    expect(lab.link(a.c.ns, 'eth0').mtu).toBe(1400);
    expect(lab.link(lab.host, a.veth).mtu).toBe(1400);
    expect(lab.link(lab.host, net.bridge).mtu).toBe(1400);
    detach(a, v);
  });

  it('hairpinMode turns hairpin on for the container\'s bridge port, and only then', () => {
    const hp = lab.network({ hairpinMode: true });
    const plain = lab.network();
    const a = attach(hp, v);
    const b = attach(plain, v);
    expect(lab.bridgePort(a.veth).hairpin).toBe(true);
    expect(lab.bridgePort(b.veth).hairpin).toBe(false);
    detach(a, v);
    detach(b, v);
  });

  it('promiscMode puts the bridge in promiscuous mode, and only then', () => {
    const pm = lab.network({ promiscMode: true });
    const plain = lab.network();
    const a = attach(pm, v);
    const b = attach(plain, v);
    expect(lab.link(lab.host, pm.bridge).flags).toContain('PROMISC');
    expect(lab.link(lab.host, plain.bridge).flags).not.toContain('PROMISC');
    detach(a, v);
    detach(b, v);
  });

  it('the container MAC is 02:42 and the IPv4 address, unless the mac capability asks for another', () => {
    const net = lab.network();
    const a = attach(net, v);
    const [x, y, z, w] = a.ip.split('.').map((n) => Number(n).toString(16).padStart(2, '0'));
    expect(lab.link(a.c.ns, 'eth0').address).toBe(`02:42:${x}:${y}:${z}:${w}`);
    expect(macFromIPv4(a.ip)).toBe(`02:42:${x}:${y}:${z}:${w}`);
    const b = attach(net, v, { capabilities: { mac: true }, runtimeConfig: { mac: '0E:58:0A:00:00:07' } });
    expect(lab.link(b.c.ns, 'eth0').address).toBe('0e:58:0a:00:00:07');
    expect(b.result.interfaces[2].mac).toBe('0e:58:0a:00:00:07');
    expect(lab.reachable(a.c.ns, b.ip)).toBe(true);
    detach(a, v);
    detach(b, v);
  });

  it('dual stack: an IPv4 and an IPv6 address, both gateways and default routes, masquerade and ping over both, and CHECK passes', () => {
    const probe = lab.network();
    const net = lab.network({
      ipMasq: true,
      ipam: { type: 'cluster-ipam', ranges: [[{ subnet: probe.subnet }], [{ subnet: probe.subnet6 }]], dataDir: lab.dataDir },
    });
    const a = attach(net, v);
    const b = attach(net, v);
    const six = b.result.ips[1].address.split('/')[0];
    const v4 = { interface: 2, address: `${probe.prefix}.2/24`, gateway: probe.gateway };
    const v6 = { interface: 2, address: probe.subnet6.replace('::/64', '::2/64'), gateway: probe.gateway6 };
    expect(a.result.ips).toEqual(atLeast(v, '1.0.0') ? [v4, v6] : [{ version: '4', ...v4 }, { version: '6', ...v6 }]);
    expect(a.result.routes).toEqual([
      { dst: '0.0.0.0/0', gw: probe.gateway },
      { dst: '::/0', gw: probe.gateway6 },
    ]);
    expect(lab.addrs(a.c.ns, 'eth0').sort()).toEqual([`${probe.prefix}.2/24`, probe.subnet6.replace('::/64', '::2/64')].sort());
    expect(lab.addrs(lab.host, net.bridge).sort()).toEqual([`${probe.gateway}/24`, `${probe.gateway6}/64`].sort());
    expect(lab.routes(a.c.ns)).toContainEqual(expect.objectContaining({ dst: 'default', gateway: probe.gateway6, dev: 'eth0' }));
    const masq = lab.networkRules(net.bridge).rules.filter((r) => r.chain === `net-${net.bridge}-masq`);
    expect(masq.map((r) => JSON.stringify(r.expr).match(/"protocol":"(ip6?)"/)?.[1]).sort()).toEqual(['ip', 'ip6']);
    expect(lab.reachable(a.c.ns, six)).toBe(true);
    expect(lab.reachable(a.c.ns, probe.gateway6)).toBe(true);
    expect(lab.reachable(a.c.ns, b.ip)).toBe(true);
    if (atLeast(v, '0.4.0')) ok(lab.run({ command: 'CHECK', conf: withPrev(a.conf, v, a.result), container: a.c }));
    detach(a, v);
    detach(b, v);
    expect(lab.allocations(net.name)).toEqual([]);
  });

  if (atLeast(v, '0.4.0')) {
    it('CHECK passes on a healthy attachment', () => {
      const net = lab.network({ ipMasq: true });
      const a = attach(net, v);
      const r = lab.run({ command: 'CHECK', conf: withPrev(a.conf, v, a.result), container: a.c });
      ok(r);
      expect(r.stdout).toBe('');
      detach(a, v);
    });

    it('CHECK fails once the container\'s address is removed behind its back', () => {
      const net = lab.network();
      const a = attach(net, v);
      lab.ip(a.c.ns, 'addr', 'del', a.result.ips[0].address, 'dev', 'eth0');
      const err = failed(lab.run({ command: 'CHECK', conf: withPrev(a.conf, v, a.result), container: a.c }), 999);
      expect(err.msg).toContain(a.result.ips[0].address);
      detach(a, v);
    });

    it('CHECK fails once the host veth is removed behind its back', () => {
      const net = lab.network();
      const a = attach(net, v);
      lab.ip(lab.host, 'link', 'del', a.veth);
      const err = failed(lab.run({ command: 'CHECK', conf: withPrev(a.conf, v, a.result), container: a.c }), 999);
      expect(err.msg).toMatch(/veth/);
      detach(a, v);
    });

    it('CHECK fails once the network\'s nft chains are deleted', () => {
      const net = lab.network();
      const a = attach(net, v);
      const br = net.bridge;
      lab.nftScript(
        [
          `delete element inet cni_ts_bridge fwd_in { "${br}" }`,
          `delete element inet cni_ts_bridge fwd_out { "${br}" }`,
          `delete element inet cni_ts_bridge masq { "${br}" }`,
          `delete chain inet cni_ts_bridge net-${br}-in`,
          `delete chain inet cni_ts_bridge net-${br}-out`,
          `delete chain inet cni_ts_bridge net-${br}-masq`,
          '',
        ].join('\n'),
      );
      const err = failed(lab.run({ command: 'CHECK', conf: withPrev(a.conf, v, a.result), container: a.c }), 999);
      expect(err.msg).toMatch(/nftables/);
      detach(a, v);
      expect(lab.networkRules(br)).toEqual({ chains: [], elements: [], rules: [] });
    });
  }

  it('DEL removes the container\'s veth and address, and the network\'s rules only when its last container leaves', () => {
    const net = lab.network({ ipMasq: true });
    const a = attach(net, v);
    const b = attach(net, v);
    expect(lab.allocations(net.name)).toEqual([a.ip, b.ip].sort());

    detach(a, v);
    expect(lab.hostVeths([a.c])).toEqual([]);
    expect(lab.linkNames(a.c.ns)).toEqual(['lo']);
    expect(lab.allocations(net.name)).toEqual([b.ip]);
    const kept = lab.networkRules(net.bridge);
    expect(kept.chains).toHaveLength(3);
    expect(kept.elements).toHaveLength(4);
    expect(lab.reachable(b.c.ns, net.gateway)).toBe(true);

    detach(b, v);
    expect(lab.hostVeths([b.c])).toEqual([]);
    expect(lab.ports(net.bridge)).toEqual([]);
    expect(lab.allocations(net.name)).toEqual([]);
    expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
  });

  it('DEL is idempotent: twice, after the namespace is deleted, and without a prevResult', async () => {
    const net = lab.network();
    const a = attach(net, v);
    detach(a, v);
    detach(a, v);

    const b = attach(net, v);
    expect(lab.link(lab.host, b.veth)).toBeDefined();
    // the runtime tore the sandbox down first: the veth pair died with it
    lab.deleteNamespace(b.c.ns);
    // the kernel dismantles a namespace in the background
    expect(await eventually(() => lab.link(lab.host, b.veth) === undefined)).toBe(true);
    ok(lab.run({ command: 'DEL', conf: withPrev(b.conf, v, b.result), container: b.c }));
    ok(lab.run({ command: 'DEL', conf: b.conf, container: b.c, netns: '' }));
    expect(lab.allocations(net.name)).toEqual([]);

    const c = attach(net, v);
    ok(lab.run({ command: 'DEL', conf: c.conf, container: c.c }));
    ok(lab.run({ command: 'DEL', conf: c.conf, container: c.c }));
    expect(lab.hostVeths([a.c, b.c, c.c])).toEqual([]);
    expect(lab.ports(net.bridge)).toEqual([]);
    expect(lab.allocations(net.name)).toEqual([]);
    expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
  });

  it('an ADD that fails on an existing non-bridge link with the bridge\'s name leaves no veth and no allocation', () => {
    const net = lab.network();
    // this kernel has no dummy links: a veth will do as "not a bridge"
    lab.ip(lab.host, 'link', 'add', net.bridge, 'type', 'veth', 'peer', 'name', `${net.bridge}p`);
    const c = lab.container();
    const before = snapshot(net, c);
    const err = failed(lab.run({ command: 'ADD', conf: net.conf(v), container: c }), 7);
    expect(err.msg).toContain(net.bridge);
    expect(snapshot(net, c)).toBe(before);
    expect(lab.hostVeths([c])).toEqual([]);
    expect(lab.allocations(net.name)).toEqual([]);
    lab.ip(lab.host, 'link', 'del', net.bridge);
  });

  it('an ADD that fails at IPAM on an exhausted range rolls its veth back and leaves the others alone', () => {
    const probe = lab.network();
    const only = `${probe.prefix}.10`;
    const net = lab.network({ ipam: { type: 'cluster-ipam', ranges: [[{ subnet: probe.subnet, rangeStart: only, rangeEnd: only }]], dataDir: lab.dataDir } });
    const a = attach(net, v);
    expect(a.ip).toBe(only);
    const c = lab.container();
    const before = snapshot(net, c);
    failed(lab.run({ command: 'ADD', conf: net.conf(v), container: c }), 100);
    expect(snapshot(net, c)).toBe(before);
    expect(lab.link(lab.host, hostVethName(c.id, 'eth0'))).toBeUndefined();
    expect(lab.ports(net.bridge)).toEqual([a.veth]);
    expect(lab.allocations(net.name)).toEqual([only]);
    expect(lab.reachable(a.c.ns, probe.gateway)).toBe(true);
    detach(a, v);
  });

  it('a first ADD that fails at IPAM removes the bridge it created', () => {
    const probe = lab.network();
    const net = lab.network({
      ipam: { type: 'cluster-ipam', ranges: [[{ subnet: probe.subnet, rangeStart: `${probe.prefix}.10`, rangeEnd: `${probe.prefix}.20` }]], dataDir: lab.dataDir },
    });
    const c = lab.container();
    const before = snapshot(net, c);
    // a static address outside the range: refused after the veth exists
    failed(lab.run({ command: 'ADD', conf: net.conf(v, { runtimeConfig: { ips: [`${probe.prefix}.99/24`] } }), container: c }), 101);
    expect(lab.link(lab.host, net.bridge)).toBeUndefined();
    expect(snapshot(net, c)).toBe(before);
    expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
  });

  it('ADD into a namespace where CNI_IFNAME already exists fails with code 4 and creates nothing', () => {
    const net = lab.network();
    const c = lab.container();
    lab.ip(c.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p');
    const before = snapshot(net, c);
    const err = failed(lab.run({ command: 'ADD', conf: net.conf(v), container: c }), 4);
    expect(err.msg).toContain('eth0');
    expect(snapshot(net, c)).toBe(before);
    expect(lab.link(lab.host, net.bridge)).toBeUndefined();
  });

  const badConfigs: Array<[string, Record<string, unknown>]> = [
    ['mtu as a string', { mtu: '1500' }],
    ['mtu below 68', { mtu: 67 }],
    ['mtu above 65535', { mtu: 65536 }],
    ['ipMasq as a string', { ipMasq: 'yes' }],
    ['bridge as a number', { bridge: 5 }],
    ['a bridge name longer than 15 characters', { bridge: 'bridge-name-too-long' }],
    ['a bridge name nft cannot use in a chain name', { bridge: 'br.0' }],
    ['icc as a string', { icc: 'no' }],
    ['hairpinMode as a number', { hairpinMode: 1 }],
    ['internal together with ipMasq', { internal: true, ipMasq: true }],
    ['a mac capability that is not a MAC', { runtimeConfig: { mac: 'not-a-mac' } }],
    ['a multicast mac capability', { runtimeConfig: { mac: '01:00:5e:00:00:01' } }],
  ];
  it.each(badConfigs)('a config with %s gets code 7 and changes nothing', (_what, extra) => {
    const net = lab.network();
    const c = lab.container();
    const before = snapshot(net, c);
    failed(lab.run({ command: 'ADD', conf: net.conf(v, extra), container: c }), 7);
    expect(snapshot(net, c)).toBe(before);
    expect(lab.link(lab.host, net.bridge)).toBeUndefined();
    expect(lab.storeFiles(net.name)).toEqual([]);
  });

  if (v === '1.1.0') {
    it('GC frees the allocations and stray host veths of invalid attachments, and keeps the valid ones and foreign ports', () => {
      const net = lab.network({ ipMasq: true });
      const keep = attach(net, v);
      const gone = attach(net, v);
      // a port someone else put on the bridge: not named like ours
      const foreign = `tf${lab.id}`;
      lab.ip(lab.host, 'link', 'add', foreign, 'type', 'veth', 'peer', 'name', `${foreign}p`);
      lab.ip(lab.host, 'link', 'set', foreign, 'master', net.bridge);

      const gc = (valid: Array<{ containerID: string; ifname: string }>) =>
        ok(lab.run({ command: 'GC', conf: { ...net.conf(v), 'cni.dev/valid-attachments': valid } }));
      gc([{ containerID: keep.c.id, ifname: 'eth0' }]);
      expect(lab.allocations(net.name)).toEqual([keep.ip]);
      expect(lab.link(lab.host, gone.veth)).toBeUndefined();
      expect(lab.linkNames(gone.c.ns)).toEqual(['lo']);
      expect(lab.ports(net.bridge).sort()).toEqual([foreign, keep.veth].sort());
      expect(lab.reachable(keep.c.ns, net.gateway)).toBe(true);
      expect(lab.networkRules(net.bridge).chains).toHaveLength(3);

      gc([]);
      expect(lab.allocations(net.name)).toEqual([]);
      expect(lab.ports(net.bridge)).toEqual([foreign]);
      // a port remains, so the network's rules do too; without it GC drops them
      expect(lab.networkRules(net.bridge).chains).toHaveLength(3);
      lab.ip(lab.host, 'link', 'del', foreign);
      gc([]);
      expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
    });
  }
});

describe('bridge plugin under concurrency and kill -9 (cniVersion 1.1.0)', () => {
  const v = '1.1.0';

  it('50 parallel ADDs into one network all succeed with distinct addresses, and 50 parallel DELs leave nothing', async () => {
    const net = lab.network({ ipMasq: true });
    const conf = net.conf(v);
    const containers = Array.from({ length: 50 }, () => lab.container());
    const adds = await Promise.all(containers.map((c) => lab.start({ command: 'ADD', conf, container: c }).done));
    const results = adds.map(ok);
    const ips = results.map((r) => r.ips[0].address);
    expect(new Set(ips).size).toBe(50);
    expect(lab.allocations(net.name)).toHaveLength(50);
    expect(lab.ports(net.bridge)).toHaveLength(50);
    expect(lab.networkRules(net.bridge).chains).toHaveLength(3);

    const dels = await Promise.all(containers.map((c, i) => lab.start({ command: 'DEL', conf: withPrev(conf, v, results[i]), container: c }).done));
    dels.forEach(ok);
    expect(lab.hostVeths(containers)).toEqual([]);
    expect(lab.ports(net.bridge)).toEqual([]);
    expect(lab.storeFiles(net.name)).toEqual(['last_reserved_ip.0', 'lock']);
    expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
    for (const c of containers) expect(lab.linkNames(c.ns)).toEqual(['lo']);
  });

  it('the last containers of a network leaving at the same time all DEL successfully', async () => {
    const net = lab.network({ ipMasq: true });
    const conf = net.conf(v);
    const containers = Array.from({ length: 6 }, () => lab.container());
    for (let round = 0; round < 8; round++) {
      (await Promise.all(containers.map((c) => lab.start({ command: 'ADD', conf, container: c }).done))).forEach(ok);
      (await Promise.all(containers.map((c) => lab.start({ command: 'DEL', conf, container: c }).done))).forEach(ok);
      expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
    }
    expect(lab.allocations(net.name)).toEqual([]);
  });

  it('a container joining while the last one leaves keeps the network\'s rules', async () => {
    const net = lab.network({ ipMasq: true });
    const conf = net.conf(v);
    let current = attach(net, v);
    for (let round = 0; round < 8; round++) {
      const next = lab.container();
      const [added, removed] = await Promise.all([
        lab.start({ command: 'ADD', conf, container: next }).done,
        lab.start({ command: 'DEL', conf: withPrev(conf, v, current.result), container: current.c }).done,
      ]);
      ok(removed);
      const result = ok(added);
      ok(lab.run({ command: 'CHECK', conf: { ...conf, prevResult: result }, container: next }));
      expect(lab.networkRules(net.bridge).chains).toHaveLength(3);
      current = { c: next, result, conf, veth: hostVethName(next.id, 'eth0'), ip: result.ips[0].address.split('/')[0] };
    }
    detach(current, v);
    expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
  });

  it('a plugin killed with SIGKILL at any point of ADD leaves nothing behind once DEL and GC have run', async () => {
    const net = lab.network({ ipMasq: true });
    const conf = net.conf(v);
    // How long a whole ADD takes here, to spread the kills across it. The
    // outcome is asserted the same whichever step each kill interrupts.
    const probe = lab.container();
    const t0 = Date.now();
    ok(lab.run({ command: 'ADD', conf, container: probe }));
    const span = Date.now() - t0;
    ok(lab.run({ command: 'DEL', conf, container: probe }));

    const outcomes: string[] = [];
    for (let i = 0; i <= 10; i++) {
      const c = lab.container();
      const { child, done } = lab.start({ command: 'ADD', conf, container: c });
      await sleep(Math.round((span * i) / 10));
      child.kill('SIGKILL');
      const o = await done;
      outcomes.push(o.signal ?? `exit ${o.status}`);
      // an nft it started runs on to its end; a runtime's DEL comes later than that anyway
      expect(await eventually(() => lab.processesInHost().length === 0)).toBe(true);

      ok(lab.run({ command: 'DEL', conf, container: c }));
      ok(lab.run({ command: 'GC', conf: { ...conf, 'cni.dev/valid-attachments': [] } }));
      expect(lab.hostVeths([c]), `after kill at ${i}/10`).toEqual([]);
      expect(lab.ports(net.bridge)).toEqual([]);
      expect(lab.linkNames(c.ns)).toEqual(['lo']);
      expect(lab.storeFiles(net.name).filter((f) => f !== 'lock' && f !== 'last_reserved_ip.0')).toEqual([]);
      expect(lab.networkRules(net.bridge)).toEqual({ chains: [], elements: [], rules: [] });
    }
    // at least the early kills must have landed before the ADD finished
    expect(outcomes).toContain('SIGKILL');
  });
});

describe('examples/bridge.conflist', () => {
  it('is a bridge with cluster-ipam on its local store, ipMasq and a default gateway, and ADDs a working container', () => {
    const list = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples/bridge.conflist'), 'utf8'));
    expect(list.plugins).toHaveLength(1);
    const [plugin] = list.plugins;
    expect(plugin).toMatchObject({ type: 'bridge', ipMasq: true, isDefaultGateway: true, ipam: { type: 'cluster-ipam' } });
    expect(plugin.ipam.store ?? 'local').toBe('local');

    // what libcni sends the plugin: its object with the list's name and
    // version; only the store's directory is moved to the lab's
    const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion, ipam: { ...plugin.ipam, dataDir: lab.dataDir } };
    const c = lab.container();
    const r = ok(lab.run({ command: 'ADD', conf, container: c }));
    const gw = r.ips[0].gateway;
    expect(r.routes.map((x: any) => x.dst)).toContain('0.0.0.0/0');
    expect(lab.routes(c.ns)).toContainEqual(expect.objectContaining({ dst: 'default', gateway: gw, dev: 'eth0' }));
    expect(lab.link(lab.host, plugin.bridge).linkinfo.info_kind).toBe('bridge');
    expect(lab.reachable(c.ns, gw)).toBe(true);
    expect(lab.networkRules(plugin.bridge).rules.some((x) => JSON.stringify(x.expr).includes('"masquerade"'))).toBe(true);
    ok(lab.run({ command: 'CHECK', conf: { ...conf, prevResult: r }, container: c }));
    ok(lab.run({ command: 'DEL', conf: { ...conf, prevResult: r }, container: c }));
    expect(lab.allocations(list.name)).toEqual([]);
    expect(lab.networkRules(plugin.bridge)).toEqual({ chains: [], elements: [], rules: [] });
  });
});

/** The lab (bridge-daemon.test.ts looks at its daemon after the suite). */
export function currentLab(): Lab {
  return lab;
}
