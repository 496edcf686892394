/**
 * The overlay end to end: three simulated hosts (namespaces on one
 * underlay bridge), each with its own agent process, the plugin invoked in
 * each host's namespace, one real etcd on the underlay. See lab.ts.
 *
 * The tests run in order and build on each other (containers added early
 * are used later), as a cluster's life does.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, OUTSIDE_IP, eventually } from '../../../testkit/overlay/lab';

const SUBNET = '10.60.0.0/24';

describe('overlay networks across three simulated hosts', () => {
  const lab = new Lab(3);
  const c: string[] = [];
  const ip = new Map<string, string>();
  const mac = new Map<string, string>();
  let vniA = 0;

  function add(host: number, network: string, container: string) {
    const conf = lab.conf(host, network, SUBNET) as { ipam: { etcd: { keyPrefix: string } } };
    // cluster-ipam refuses two networks with overlapping ranges under one key
    // prefix (their addresses would collide in its index): ovB gets its own
    if (network !== 'ovA') conf.ipam.etcd.keyPrefix += `-${network}`;
    const r = lab.plugin(host, 'ADD', container, conf);
    if (r.status !== 0) throw new Error(`ADD ${container} on h${host} failed: ${r.stdout} ${r.stderr}`);
    ip.set(container, r.json.ips[0].address.split('/')[0]);
    mac.set(container, r.json.interfaces[0].mac);
    return r;
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
  });

  afterAll(async () => {
    await lab.tearDown();
  });

  it('ADD on each host gives the container eth0 on the overlay at MTU 1450 and eth1 on the gateway bridge with the default route', () => {
    for (let i = 0; i < 3; i++) c.push(lab.addContainer());
    for (let i = 0; i < 3; i++) {
      const r = add(i, 'ovA', c[i]);
      expect(r.json.interfaces.map((x: { name: string }) => x.name)).toEqual(['eth0', 'eth1']);
      expect(r.json.routes).toEqual([{ dst: '0.0.0.0/0', gw: '172.18.0.1' }]);
    }
    const links = JSON.parse(lab.in(c[0], 'ip', '-j', 'link', 'show', 'eth0'));
    expect(links[0].mtu).toBe(1450);
    const routes = JSON.parse(lab.in(c[0], 'ip', '-j', 'route', 'show', 'default'));
    expect(routes[0]).toMatchObject({ gateway: '172.18.0.1', dev: 'eth1' });
    const snap = lab.snapshot();
    vniA = snap.networks.find((n) => n.name === 'ovA')!.vni;
    expect(vniA).toBeGreaterThanOrEqual(4096);
    expect(snap.endpoints.filter((e) => e.network === 'ovA').map((e) => e.host).sort()).toEqual(lab.hosts);
  });

  it('containers on different hosts ping each other', async () => {
    // the first container's host learned of the later ones through its agent
    expect(await eventually(() => lab.fdbMacs(0, vniA).length === 2)).toBe(true);
    expect(lab.ping(c[0], ip.get(c[1])!)).toBe(true);
    expect(lab.ping(c[0], ip.get(c[2])!)).toBe(true);
    expect(lab.ping(c[2], ip.get(c[0])!)).toBe(true);
    expect(lab.ping(c[1], ip.get(c[2])!)).toBe(true);
  });

  it('containers on different hosts reach each other over TCP', async () => {
    const { spawn } = await import('node:child_process');
    const server = spawn('ip', ['netns', 'exec', c[1], 'busybox', 'nc', '-l', '-p', '7777'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let got = '';
    server.stdout!.on('data', (d) => (got += d.toString()));
    const { spawnSync } = await import('node:child_process');
    // a loaded machine may take a while to start the listener: wait for it, not for a fixed time
    const listening = () => spawnSync('ip', ['netns', 'exec', c[1], 'busybox', 'netstat', '-tln'], { encoding: 'utf8' }).stdout.includes(':7777 ');
    expect(await eventually(listening, 10000)).toBe(true);
    spawnSync('ip', ['netns', 'exec', c[0], 'busybox', 'sh', '-c', `echo over-the-overlay | busybox nc -w 2 ${ip.get(c[1])} 7777`]);
    await eventually(() => got.includes('over-the-overlay'), 5000);
    server.kill();
    expect(got).toContain('over-the-overlay');
  });

  it('remote hosts program the entries of a container added later (through their agents)', async () => {
    c.push(lab.addContainer()); // c[3] on host 2
    add(2, 'ovA', c[3]);
    expect(await eventually(() => lab.fdbMacs(0, vniA).includes(mac.get(c[3])!) && lab.fdbMacs(1, vniA).includes(mac.get(c[3])!))).toBe(true);
    expect(lab.ping(c[0], ip.get(c[3])!)).toBe(true);
  });

  it('containers reach an address outside the overlay through the gateway bridge NAT', () => {
    expect(lab.ping(c[0], OUTSIDE_IP)).toBe(true);
    expect(lab.ping(c[3], OUTSIDE_IP)).toBe(true);
  });

  it('a second overlay with the same subnet stays isolated from the first', async () => {
    const d0 = lab.addContainer();
    const d1 = lab.addContainer();
    c.push(d0, d1); // c[4] on h0, c[5] on h1
    add(0, 'ovB', d0);
    add(1, 'ovB', d1);
    const snap = lab.snapshot();
    const vniB = snap.networks.find((n) => n.name === 'ovB')!.vni;
    expect(vniB).not.toBe(vniA);
    expect(await eventually(() => lab.fdbMacs(0, vniB).length === 1)).toBe(true);
    expect(lab.ping(d0, ip.get(d1)!)).toBe(true);
    // an ovA address that is not also an ovB address: reachable only across networks
    const ovBIps = new Set([ip.get(d0), ip.get(d1)]);
    const target = [c[1], c[2], c[3]].map((x) => ip.get(x)!).find((a) => !ovBIps.has(a));
    expect(target).toBeDefined();
    expect(lab.ping(d0, target!)).toBe(false);
  });

  it('containers on one host cannot talk to each other across the gateway bridge', () => {
    // c[0] and c[4] are both on host 0, in different overlays: only eth1 connects them
    const eth1Of = (ns: string) => JSON.parse(lab.in(ns, 'ip', '-j', '-4', 'addr', 'show', 'eth1'))[0].addr_info[0].local as string;
    expect(lab.ping(c[0], eth1Of(c[4]))).toBe(false);
    expect(lab.ping(c[0], '172.18.0.1')).toBe(true);
  });

  it('CHECK passes for an attached container, and fails when its endpoint is no longer registered or an interface is gone', () => {
    const conf = lab.conf(0, 'ovA', SUBNET);
    const container = lab.addContainer();
    const added = lab.plugin(0, 'ADD', container, conf);
    expect(added.status).toBe(0);
    const withPrev = { ...conf, prevResult: added.json };
    expect(lab.plugin(0, 'CHECK', container, withPrev).status).toBe(0);
    lab.kvDelete(`${lab.prefix}/endpoints/ovA/${container}/eth0`);
    const unregistered = lab.plugin(0, 'CHECK', container, withPrev);
    expect(unregistered.status, unregistered.stdout + unregistered.stderr).not.toBe(0);
    expect(unregistered.json, unregistered.stdout + unregistered.stderr).toBeDefined();
    expect(unregistered.json.msg).toContain('not registered');
    // ADD again re-registers; then take the gateway interface away
    lab.plugin(0, 'DEL', container, conf);
    const again = lab.plugin(0, 'ADD', container, conf);
    expect(again.status).toBe(0);
    lab.in(container, 'ip', 'link', 'del', 'eth1');
    const noEth1 = lab.plugin(0, 'CHECK', container, { ...conf, prevResult: again.json });
    expect(noEth1.status).not.toBe(0);
    expect(noEth1.json.msg).toContain('eth1');
    expect(lab.plugin(0, 'DEL', container, conf).status).toBe(0);
    expect(lab.snapshot().endpoints.some((e) => e.containerId === container)).toBe(false);
  });

  it('killing and restarting an agent loses no connectivity', async () => {
    const before = lab.fdbMacs(1, vniA);
    await lab.killAgent(1);
    expect(lab.ping(c[1], ip.get(c[0])!, 3)).toBe(true);
    expect(lab.ping(c[0], ip.get(c[1])!, 3)).toBe(true);
    lab.startAgent(1);
    expect(await eventually(() => lab.agentLog(1).split('registered host').length === 3)).toBe(true);
    expect(lab.fdbMacs(1, vniA)).toEqual(before);
    expect(lab.ping(c[1], ip.get(c[0])!, 3)).toBe(true);
    expect(lab.agentLog(1)).toContain('registered host');
  });

  it('ADD with a VNI another network holds fails with code 7 and leaves nothing behind', () => {
    const x = lab.addContainer();
    const r = lab.plugin(0, 'ADD', x, lab.conf(0, 'ovC', '10.61.0.0/24', { vni: vniA }, { subnet: '10.61.0.0/24' }));
    expect(r.json?.code).toBe(7);
    expect(r.json.msg).toContain(`vni ${vniA}`);
    expect(JSON.parse(lab.in(x, 'ip', '-j', 'link', 'show')).map((l: { ifname: string }) => l.ifname)).toEqual(['lo']);
  });

  it('ADD whose IPAM cannot serve the overlay subnet fails with code 7 and leaves nothing behind', () => {
    const x = lab.addContainer();
    const before = lab.snapshot().endpoints.length;
    const r = lab.plugin(0, 'ADD', x, lab.conf(0, 'ovD', '10.62.0.0/24', { subnet: '10.62.0.0/24' }, { subnet: '10.63.0.0/24' }));
    expect(r.json?.code).toBe(7);
    expect(JSON.parse(lab.in(x, 'ip', '-j', 'link', 'show')).map((l: { ifname: string }) => l.ifname)).toEqual(['lo']);
    expect(lab.snapshot().endpoints.length).toBe(before);
  });

  it('an agent given an underlay address this host does not have refuses to start, saying so', () => {
    const r = lab.agentOnce(0, ['--node', 'wrong', '--vtep', '192.168.201.7', '--etcd', '127.0.0.1:1']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('192.168.201.7 is not an address of any interface');
  });

  it('DEL of the last local container removes its endpoint everywhere and the network namespace on its host', async () => {
    const del = lab.plugin(1, 'DEL', c[1], lab.conf(1, 'ovA', SUBNET));
    expect(del.status).toBe(0);
    expect(lab.fdbMacs(1, vniA)).toEqual([]); // the namespace is gone
    expect(await eventually(() => !lab.fdbMacs(0, vniA).includes(mac.get(c[1])!))).toBe(true);
    // DEL again is success (idempotent)
    expect(lab.plugin(1, 'DEL', c[1], lab.conf(1, 'ovA', SUBNET)).status).toBe(0);
  });

  it('GC removes endpoints of containers that are gone, once seen gone by two GCs (IPAM GC\'s grace)', async () => {
    // c[3] on host 2 "disappears" without a DEL
    const valid = [{ containerID: c[2], ifname: 'eth0' }];
    const conf = lab.conf(2, 'ovA', SUBNET) as { etcd: Record<string, unknown> };
    const gcConf = { ...conf, etcd: { ...conf.etcd, gcGracePeriodMs: 0 }, 'cni.dev/valid-attachments': valid };
    const first = lab.plugin(2, 'GC', '', gcConf, '', '');
    expect(first.status, first.stdout + first.stderr).toBe(0);
    expect(lab.snapshot().endpoints.some((e) => e.containerId === c[3])).toBe(true);
    const r = lab.plugin(2, 'GC', '', gcConf, '', '');
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(lab.snapshot().endpoints.some((e) => e.containerId === c[3])).toBe(false);
    expect(await eventually(() => !lab.fdbMacs(0, vniA).includes(mac.get(c[3])!))).toBe(true);
  });

  it('ADD while etcd is down fails with code 11 and makes nothing; the data path keeps working and agents recover', async () => {
    await lab.stopEtcd();
    const x = lab.addContainer();
    const r = lab.plugin(0, 'ADD', x, lab.conf(0, 'ovA', SUBNET));
    expect(r.json?.code).toBe(11);
    expect(JSON.parse(lab.in(x, 'ip', '-j', 'link', 'show')).map((l: { ifname: string }) => l.ifname)).toEqual(['lo']);
    // traffic flows on while etcd is gone
    expect(lab.ping(c[0], ip.get(c[2])!, 3)).toBe(true);
    await lab.startEtcd();
    const y = lab.addContainer();
    add(1, 'ovA', y);
    expect(await eventually(() => lab.fdbMacs(0, vniA).includes(mac.get(y)!))).toBe(true);
    expect(lab.ping(c[0], ip.get(y)!)).toBe(true);
  });

  it('a host that leaves has its entries removed on the other hosts', async () => {
    await lab.killAgent(2);
    const r = lab.agentOnce(2, ['leave', '--node', lab.hosts[2], '--etcd', '192.168.200.254:2379', '--prefix', lab.prefix, '--host-id-file', lab.hostIdFile(2)]);
    expect(r.status, r.stderr).toBe(0);
    expect(await eventually(() => !lab.fdbMacs(0, vniA).includes(mac.get(c[2])!))).toBe(true);
    expect(lab.snapshot().hosts.map((h) => h.name).sort()).toEqual([lab.hosts[0], lab.hosts[1]]);
  });
});
