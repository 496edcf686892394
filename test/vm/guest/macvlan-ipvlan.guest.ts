/**
 * macvlan and ipvlan on a kernel with ipvlan and 802.1q (this runs in the
 * VM). The plugins run in-process through the protocol core (runPlugin), so
 * the VM starts one node process (and, for the last test, one cni-ts daemon); each simulated host is a namespace, and
 * the runner's thread enters it (setns) for the duration of a plugin call,
 * which makes that namespace the plugin's own, as for a runtime on that host.
 *
 * Fixtures use `ip` to build hosts and containers and to look at state; the
 * plugins change kernel state only through netlink-ts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, test } from '../../../testkit/vm/guest-api';
import { startDaemon } from '../../../testkit/daemon';
import { runPlugin, type Plugin, type SkelIO } from '../../../shared/cni/skel';
import { netnsStatus } from '../../../cmd/plugin-io';
import { linkExistsInNetns } from '../../../shared/netlink';
import { CLONE_NEWNET } from '../../../shared/sys/setns';
import { native } from '../../../shared/sys/native';
import { NetNs } from '../../../shared/netns/netns';
import { plugin as macvlan } from '../../../plugins/macvlan/main';
import { plugin as ipvlan } from '../../../plugins/ipvlan/main';

const tag = randomBytes(2).toString('hex');
const namespaces: string[] = [];
let seq = 0;

afterAll(() => {
  for (const ns of namespaces.reverse()) spawnSync('ip', ['netns', 'del', ns]);
});

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function netns(prefix: string): string {
  const name = `${prefix}${tag}${seq++}`;
  ip('netns', 'add', name);
  namespaces.push(name);
  return name;
}

const nsPath = (name: string) => `/var/run/netns/${name}`;

/** A simulated host: a namespace with an `eth0` (dummy unless it is wired to another host later). */
function dummyHost(...parents: string[]): string {
  const h = netns('gh');
  for (const p of parents) {
    ip('-n', h, 'link', 'add', p, 'type', 'dummy');
    ip('-n', h, 'link', 'set', p, 'up');
  }
  return h;
}

/** Two hosts whose eth0s are the two ends of one veth: the shared underlay. */
function wiredHosts(): [string, string] {
  const h1 = netns('gh');
  const h2 = netns('gh');
  ip('-n', h1, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h2);
  ip('-n', h1, 'link', 'set', 'eth0', 'up');
  ip('-n', h2, 'link', 'set', 'eth0', 'up');
  return [h1, h2];
}

interface Call {
  code: number;
  json: any;
}

/** One plugin call with `host` as the plugin's own namespace. */
async function call<C>(plugin: Plugin<C>, host: string, command: string, container: string | undefined, conf: object, id: string): Promise<Call> {
  let stdout = '';
  const io: SkelIO = {
    env: { CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_IFNAME: 'eth0', CNI_NETNS: container ? nsPath(container) : '', CNI_PATH: '/nonexistent' },
    readStdin: () => Buffer.from(JSON.stringify(conf)),
    writeStdout: (s) => {
      stdout += s;
    },
    interfaceExists: linkExistsInNetns,
    netnsStatus,
  };
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  const target = NetNs.open(nsPath(host));
  native().setns(target.fd, CLONE_NEWNET);
  try {
    const code = await runPlugin(plugin, io);
    return { code, json: stdout.trim() ? JSON.parse(stdout) : undefined };
  } finally {
    native().setns(home, CLONE_NEWNET);
    fs.closeSync(home);
    target.close();
  }
}

async function added<C>(plugin: Plugin<C>, host: string, container: string, conf: object, id: string): Promise<any> {
  const r = await call(plugin, host, 'ADD', container, conf, id);
  assert.equal(r.code, 0, JSON.stringify(r.json));
  return r.json;
}

function net(type: string, name: string, host: string, subnet: string, start: string, end: string, extra: object = {}): object {
  return {
    cniVersion: '1.1.0',
    name,
    type,
    master: 'eth0',
    // each simulated host has its own disk
    stateDir: `/var/lib/${host}/cni-ts`,
    ipam: { type: 'cluster-ipam', dataDir: `/var/lib/${host}/networks`, ranges: [[{ subnet, rangeStart: start, rangeEnd: end }]] },
    ...extra,
  };
}

/** One echo; `wait` seconds for the reply (short where the answer must be "no", so the TCG VM stays fast). */
function pings(from: string, to: string, wait = 2): boolean {
  return spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', '1', '-W', String(wait), to], { encoding: 'utf8' }).status === 0;
}

const addr = (result: any) => String(result.ips[0].address).split('/')[0];

function linkNames(ns: string): string[] {
  return (JSON.parse(ip('-n', ns, '-j', 'link', 'show')) as Array<{ ifname: string }>).map((l) => l.ifname);
}

test('two ipvlan l2 containers on one parent reach each other, and CHECK and DEL work', async () => {
  const h = dummyHost('eth0');
  const [a, b] = [netns('gc'), netns('gc')];
  const conf = net('ipvlan', 'ipl2', h, '10.90.0.0/24', '10.90.0.10', '10.90.0.20', { mode: 'l2' });
  const ra = await added(ipvlan, h, a, conf, 'a');
  const rb = await added(ipvlan, h, b, conf, 'b');
  const [link] = JSON.parse(ip('-n', a, '-j', '-d', 'link', 'show', 'eth0'));
  assert.equal(link.linkinfo.info_kind, 'ipvlan');
  assert.equal(link.linkinfo.info_data.mode, 'l2');
  assert.ok(pings(a, addr(rb)));
  assert.equal((await call(ipvlan, h, 'CHECK', a, { ...conf, prevResult: ra }, 'a')).code, 0);
  assert.equal((await call(ipvlan, h, 'DEL', a, conf, 'a')).code, 0);
  assert.ok(!linkNames(a).includes('eth0'));
  assert.equal((await call(ipvlan, h, 'DEL', a, conf, 'a')).code, 0);
});

test('ipvlan l3 containers in different subnets reach each other through a default route via the device', async () => {
  const h = dummyHost('eth0');
  const [a, b] = [netns('gc'), netns('gc')];
  const confA = net('ipvlan', 'ipl3a', h, '10.91.1.0/24', '10.91.1.10', '10.91.1.20', { mode: 'l3' });
  const confB = net('ipvlan', 'ipl3b', h, '10.91.2.0/24', '10.91.2.10', '10.91.2.20', { mode: 'l3' });
  const ra = await added(ipvlan, h, a, confA, 'a');
  const rb = await added(ipvlan, h, b, confB, 'b');
  assert.deepEqual(ra.routes, [{ dst: '0.0.0.0/0' }]);
  const routes = JSON.parse(ip('-n', a, '-j', 'route', 'show', 'default')) as Array<{ dev: string; gateway?: string }>;
  assert.equal(routes.length, 1);
  assert.equal(routes[0].dev, 'eth0');
  assert.equal(routes[0].gateway, undefined);
  assert.ok(pings(a, addr(rb)));
  assert.ok(pings(b, addr(ra)));
  assert.equal((await call(ipvlan, h, 'CHECK', a, { ...confA, prevResult: ra }, 'a')).code, 0);
});

test('VLAN 10 and VLAN 20 networks on the same parent are isolated across two hosts', async () => {
  const [h1, h2] = wiredHosts();
  const subnet = '10.92.0.0/24';
  // one subnet everywhere, so only the VLAN tag can keep them apart
  const v10h1 = net('macvlan', 'v10', h1, subnet, '10.92.0.10', '10.92.0.19', { master: 'eth0.10' });
  const v10h2 = net('macvlan', 'v10', h2, subnet, '10.92.0.20', '10.92.0.29', { master: 'eth0.10' });
  const v20h1 = net('macvlan', 'v20', h1, subnet, '10.92.0.30', '10.92.0.39', { master: 'eth0', vlan: 20 });
  const v20h2 = net('macvlan', 'v20', h2, subnet, '10.92.0.40', '10.92.0.49', { master: 'eth0', vlan: 20 });
  const [a, b, c, d] = [netns('gc'), netns('gc'), netns('gc'), netns('gc')];
  const ra = await added(macvlan, h1, a, v10h1, 'a');
  const rb = await added(macvlan, h2, b, v10h2, 'b');
  const rc = await added(macvlan, h1, c, v20h1, 'c');
  const rd = await added(macvlan, h2, d, v20h2, 'd');
  for (const [h, id] of [[h1, 10], [h1, 20], [h2, 10], [h2, 20]] as const) {
    const [l] = JSON.parse(ip('-n', h, '-j', '-d', 'link', 'show', `eth0.${id}`));
    assert.equal(l.linkinfo.info_kind, 'vlan');
    assert.equal(l.linkinfo.info_data.id, id);
  }
  assert.ok(pings(a, addr(rb)), 'VLAN 10 reaches VLAN 10 on the other host');
  assert.ok(pings(c, addr(rd)), 'VLAN 20 reaches VLAN 20 on the other host');
  assert.ok(!pings(a, addr(rd), 1), 'VLAN 10 must not reach VLAN 20');
  assert.ok(!pings(c, addr(rb), 1), 'VLAN 20 must not reach VLAN 10');
  assert.equal((await call(macvlan, h1, 'CHECK', a, { ...v10h1, prevResult: ra }, 'a')).code, 0);
  assert.equal((await call(macvlan, h1, 'CHECK', c, { ...v20h1, prevResult: rc }, 'c')).code, 0);
});

test('the VLAN sub-interface is shared by two networks and disappears with its last container', async () => {
  const h = dummyHost('eth0');
  const [a, b] = [netns('gc'), netns('gc')];
  const n1 = net('macvlan', 'share1', h, '10.93.0.0/24', '10.93.0.10', '10.93.0.20', { master: 'eth0.30' });
  const n2 = net('macvlan', 'share2', h, '10.94.0.0/24', '10.94.0.10', '10.94.0.20', { master: 'eth0', vlan: 30 });
  await added(macvlan, h, a, n1, 'a');
  await added(macvlan, h, b, n2, 'b');
  assert.ok(linkNames(h).includes('eth0.30'));
  assert.equal(fs.readdirSync(`/var/lib/${h}/cni-ts/vlan/eth0.30`).filter((f) => f.endsWith('.ref')).length, 2);
  assert.equal((await call(macvlan, h, 'DEL', a, n1, 'a')).code, 0);
  assert.ok(linkNames(h).includes('eth0.30'), 'still used by the second network');
  // DEL again must not count the remaining user out
  assert.equal((await call(macvlan, h, 'DEL', a, n1, 'a')).code, 0);
  assert.ok(linkNames(h).includes('eth0.30'));
  assert.equal((await call(macvlan, h, 'DEL', b, n2, 'b')).code, 0);
  assert.ok(!linkNames(h).includes('eth0.30'), 'gone with its last container');
  assert.ok(!fs.existsSync(`/var/lib/${h}/cni-ts/vlan/eth0.30`));
});

test('an ipvlan network on a VLAN creates the sub-interface and GC removes it once no attachment is valid', async () => {
  const h = dummyHost('eth0');
  const a = netns('gc');
  const conf = net('ipvlan', 'ipv40', h, '10.95.0.0/24', '10.95.0.10', '10.95.0.20', { mode: 'l2', vlan: 40 });
  await added(ipvlan, h, a, conf, 'a');
  const [l] = JSON.parse(ip('-n', a, '-j', '-d', 'link', 'show', 'eth0'));
  assert.equal(l.linkinfo.info_kind, 'ipvlan');
  assert.ok(linkNames(h).includes('eth0.40'));
  // the container vanished without a DEL: its namespace (and ipvlan) are gone
  ip('netns', 'del', a);
  namespaces.splice(namespaces.indexOf(a), 1);
  assert.equal((await call(ipvlan, h, 'GC', undefined, { ...conf, 'cni.dev/valid-attachments': [] }, '')).code, 0);
  assert.ok(!linkNames(h).includes('eth0.40'));
});

test('a VLAN parent whose base is missing fails with code 7 and creates nothing', async () => {
  const h = dummyHost('eth1');
  const a = netns('gc');
  const before = linkNames(h);
  const r = await call(macvlan, h, 'ADD', a, net('macvlan', 'nobase', h, '10.96.0.0/24', '10.96.0.10', '10.96.0.20', { master: 'eth0.10' }), 'a');
  assert.equal(r.code, 1);
  assert.equal(r.json.code, 7);
  assert.match(r.json.msg, /VLAN parent eth0 of eth0\.10 does not exist/);
  assert.deepEqual(linkNames(h), before);
});

test('the ipvlan and VLAN examples attach a container on a host whose parent is eth0', async () => {
  for (const [file, plugin, kind] of [
    ['ipvlan-l2', ipvlan, 'ipvlan'],
    ['ipvlan-l3', ipvlan, 'ipvlan'],
    ['macvlan-vlan', macvlan, 'macvlan'],
  ] as const) {
    const h = dummyHost('eth0');
    const c = netns('gc');
    const list = JSON.parse(fs.readFileSync(`examples/${file}.conflist`, 'utf8'));
    const p = list.plugins[0];
    const conf = { cniVersion: list.cniVersion, name: list.name, ...p, stateDir: `/var/lib/${h}/cni-ts`, ipam: { ...p.ipam, dataDir: `/var/lib/${h}/networks` } };
    await added(plugin as Plugin<unknown>, h, c, conf, 'x');
    const [l] = JSON.parse(ip('-n', c, '-j', '-d', 'link', 'show', 'eth0'));
    assert.equal(l.linkinfo.info_kind, kind, file);
    assert.equal((await call(plugin as Plugin<unknown>, h, 'DEL', c, conf, 'x')).code, 0, file);
  }
});

test('the packaged bin/ipvlan through the shim and a cni-ts daemon in the VM: ADD, CHECK, DEL served by the daemon', async () => {
  // The one test here that execs the packaged plugins (bin/, through the VM's
  // root share), as a runtime on a node running the daemon does.
  const h = dummyHost('eth0');
  const [a, b] = [netns('gc'), netns('gc')];
  fs.mkdirSync(`/var/lib/${h}`, { recursive: true });
  const daemon = startDaemon({ binDir: path.resolve('bin'), socket: `/var/lib/${h}/daemon.sock`, netns: nsPath(h) });
  try {
    const conf = net('ipvlan', 'ipd', h, '10.94.0.0/24', '10.94.0.10', '10.94.0.20', { mode: 'l2' });
    const exec = (command: string, container: string, id: string, stdin: object) => {
      const r = spawnSync('nsenter', [`--net=${nsPath(h)}`, '--', path.resolve('bin/ipvlan')], {
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_IFNAME: 'eth0', CNI_NETNS: nsPath(container), CNI_PATH: path.resolve('bin'), CNI_TS_DAEMON_SOCKET: daemon.socket },
        input: JSON.stringify(stdin),
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, `${command}: ${r.stdout}${r.stderr}`);
      return r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
    };
    const ra = exec('ADD', a, 'a', conf);
    const rb = exec('ADD', b, 'b', conf);
    assert.ok(pings(a, addr(rb)));
    exec('CHECK', a, 'a', { ...conf, prevResult: ra });
    exec('DEL', a, 'a', conf);
    exec('DEL', b, 'b', conf);
    assert.ok(!linkNames(a).includes('eth0'));
    assert.equal(daemon.served(), 5, daemon.log());
    assert.ok(!daemon.log().includes('declined'), daemon.log());
  } finally {
    daemon.stop();
  }
});
