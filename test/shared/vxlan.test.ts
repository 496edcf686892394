/**
 * shared/vxlan.ts: MTU arithmetic (pure), and on a real kernel two
 * simulated hosts (namespaces joined by a veth underlay), each with one
 * overlay network namespace and one container, talking over VXLAN once the
 * static entries are converged.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withHandle } from '../../shared/netlink';
import { NetNs, sysctlGet, sysctlSet } from '../../shared/netns/netns';
import {
  BRIDGE_NF_SYSCTLS,
  VXLAN_OVERHEAD_V4,
  converge,
  ensureVxlanNetwork,
  localPorts,
  overlayMtu,
  overlayNames,
  removeVxlanNetwork,
  type OverlayNames,
  type RemoteEndpoint,
} from '../../shared/vxlan';
import { addNetns, delNetns, uniqueName } from '../../testkit/exec';

describe('VXLAN MTU arithmetic', () => {
  it('gives 1450 on a 1500 underlay, 50 bytes of outer IPv4, UDP, VXLAN and inner Ethernet headers', () => {
    expect(VXLAN_OVERHEAD_V4).toBe(50);
    expect(overlayMtu(1500)).toBe(1450);
    expect(overlayMtu(9000)).toBe(8950);
  });
});

function sh(ns: string, ...args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', ns, ...args], { encoding: 'utf8' });
}

function pingOk(ns: string, ip: string): boolean {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '1', '-W', '2', ip], { encoding: 'utf8' });
  if (process.env.DEBUG_PING) console.log(r.stdout, r.stderr);
  return r.status === 0;
}

describe('an overlay network between two simulated hosts', () => {
  const id = uniqueName('vx');
  const hosts = [`${id}h0`, `${id}h1`];
  const conts = [`${id}c0`, `${id}c1`];
  const vtep = ['192.168.77.1', '192.168.77.2'];
  const contIp = ['10.77.0.2', '10.77.0.3'];
  const contMac = ['02:42:0a:4d:00:02', '02:42:0a:4d:00:03'];
  const vni = 4242;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-vxlan-'));
  const names: OverlayNames[] = [overlayNames(vni, path.join(dir, 'h0')), overlayNames(vni, path.join(dir, 'h1'))];

  beforeAll(() => {
    for (const n of [...hosts, ...conts]) addNetns(n);
    execFileSync('ip', ['link', 'add', 'u0', 'netns', hosts[0], 'type', 'veth', 'peer', 'name', 'u1', 'netns', hosts[1]]);
    for (let i = 0; i < 2; i++) {
      sh(hosts[i], 'ip', 'addr', 'add', `${vtep[i]}/24`, 'dev', `u${i}`);
      sh(hosts[i], 'ip', 'link', 'set', `u${i}`, 'up');
      withHandle(`/var/run/netns/${hosts[i]}`, (host) =>
        ensureVxlanNetwork(host, names[i], { vni, mtu: overlayMtu(1500), localVtep: vtep[i] }),
      );
      // the container's veth: one end in the overlay namespace on the bridge
      const cns = NetNs.open(`/var/run/netns/${conts[i]}`);
      withHandle(names[i].netns, (ov) => {
        ov.linkAdd({ kind: 'veth', name: 've0', peerName: 'eth0', peerNetnsFd: cns.fd, mtu: overlayMtu(1500) });
        ov.linkSetMaster('ve0', names[i].bridge);
        ov.linkSetUp('ve0');
      });
      cns.close();
      withHandle(`/var/run/netns/${conts[i]}`, (c) => {
        c.linkSetMac('eth0', contMac[i]);
        c.addrAdd('eth0', `${contIp[i]}/24`);
        c.linkSetUp('eth0');
      });
    }
  });

  afterAll(() => {
    for (const n of names) removeVxlanNetwork(n);
    for (const n of [...hosts, ...conts]) delNetns(n);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const remote = (i: number): RemoteEndpoint => ({ ip: contIp[i], mac: contMac[i], vtep: vtep[i] });

  it('creates the bridge and a VXLAN device with learning off, ARP proxy on, port 4789 and the overlay MTU', () => {
    const [vx] = JSON.parse(execFileSync('nsenter', [`--net=${names[0].netns}`, 'ip', '-j', '-d', 'link', 'show', names[0].vxlan], { encoding: 'utf8' }));
    expect(vx.linkinfo.info_data.proxy).toBe(true);
    expect(vx.linkinfo.info_data.learning).toBe(false);
    const link = withHandle(names[0].netns, (ov) => ov.link(names[0].vxlan));
    expect(link.vxlan?.vni).toBe(vni);
    expect(link.vxlan?.port).toBe(4789);
    expect(link.vxlan?.learning).toBe(false);
    expect(link.mtu).toBe(1450);
    const bridge = withHandle(names[0].netns, (ov) => ov.link(names[0].bridge));
    expect(link.masterIndex).toBe(bridge.index);
    expect(withHandle(names[0].netns, (ov) => localPorts(ov, names[0]))).toBe(1);
  });

  it('creating the network again changes nothing and says it was not created', () => {
    const created = withHandle(`/var/run/netns/${hosts[0]}`, (host) =>
      ensureVxlanNetwork(host, names[0], { vni, mtu: 1450, localVtep: vtep[0] }),
    );
    expect(created).toBe(false);
  });

  // br_netfilter is built in or loaded on this test machine; where it is not, the sysctls do not exist
  it.skipIf(!fs.existsSync('/proc/sys/net/bridge'))('turns the bridge netfilter hooks off in the overlay namespace, again after someone turned them on', () => {
    for (const key of BRIDGE_NF_SYSCTLS) expect(sysctlGet(key, names[0].netns)).toBe('0');
    sysctlSet(BRIDGE_NF_SYSCTLS[0], '1', names[0].netns);
    withHandle(`/var/run/netns/${hosts[0]}`, (host) => ensureVxlanNetwork(host, names[0], { vni, mtu: 1450, localVtep: vtep[0] }));
    for (const key of BRIDGE_NF_SYSCTLS) expect(sysctlGet(key, names[0].netns)).toBe('0');
    // the host's own namespace is left as it was
    expect(sysctlGet(BRIDGE_NF_SYSCTLS[0], `/var/run/netns/${hosts[0]}`)).toBe('1');
  });

  it('containers on the two hosts ping each other once each side has the other in its static entries', () => {
    expect(withHandle(names[0].netns, (ov) => converge(ov, names[0], [remote(1)]))).toEqual({ added: 2, removed: 0, failed: [] });
    expect(withHandle(names[1].netns, (ov) => converge(ov, names[1], [remote(0)]))).toEqual({ added: 2, removed: 0, failed: [] });
    expect(pingOk(conts[0], contIp[1])).toBe(true);
    expect(pingOk(conts[1], contIp[0])).toBe(true);
  });

  it('a second converge with the same endpoints changes nothing', () => {
    expect(withHandle(names[0].netns, (ov) => converge(ov, names[0], [remote(1)]))).toEqual({ added: 0, removed: 0, failed: [] });
    const fdb = withHandle(names[0].netns, (ov) => ov.fdbList(names[0].vxlan).filter((f) => f.ip));
    expect(fdb.map((f) => [f.mac, f.ip])).toEqual([[contMac[1], vtep[1]]]);
    const neigh = withHandle(names[0].netns, (ov) => ov.neighList(names[0].vxlan).filter((n) => n.state & 0x80));
    expect(neigh.map((n) => [n.ip, n.mac])).toEqual([[contIp[1], contMac[1]]]);
  });

  it('a moved endpoint (new VTEP) is corrected in place and a stale one is removed', () => {
    const moved: RemoteEndpoint = { ...remote(1), vtep: '192.168.77.9' };
    const extra: RemoteEndpoint = { ip: '10.77.0.9', mac: '02:42:0a:4d:00:09', vtep: vtep[1] };
    withHandle(names[0].netns, (ov) => converge(ov, names[0], [moved, extra]));
    let fdb = withHandle(names[0].netns, (ov) => ov.fdbList(names[0].vxlan).filter((f) => f.ip));
    expect(fdb.map((f) => `${f.mac}>${f.ip}`).sort()).toEqual([`${contMac[1]}>192.168.77.9`, `${extra.mac}>${vtep[1]}`].sort());
    const r = withHandle(names[0].netns, (ov) => converge(ov, names[0], [remote(1)]));
    expect(r.removed).toBe(2);
    fdb = withHandle(names[0].netns, (ov) => ov.fdbList(names[0].vxlan).filter((f) => f.ip));
    expect(fdb.map((f) => `${f.mac}>${f.ip}`)).toEqual([`${contMac[1]}>${vtep[1]}`]);
    expect(pingOk(conts[0], contIp[1])).toBe(true);
  });

  it('converging to nothing removes every static entry, and the remote container is unreachable', () => {
    expect(withHandle(names[0].netns, (ov) => converge(ov, names[0], []))).toEqual({ added: 0, removed: 2, failed: [] });
    expect(withHandle(names[0].netns, (ov) => ov.fdbList(names[0].vxlan).filter((f) => f.ip))).toEqual([]);
    // the container's own ARP cache may still hold the peer; flush it so the test sees the overlay's state
    sh(conts[0], 'ip', 'neigh', 'flush', 'all');
    expect(pingOk(conts[0], contIp[1])).toBe(false);
  });

  it('removing the network takes its namespace, bridge and VXLAN device away', () => {
    removeVxlanNetwork(names[1]);
    expect(fs.existsSync(names[1].netns)).toBe(false);
  });

  it('the same network can be made again right after it was removed (the VNI is free at once)', () => {
    // The VXLAN device's socket lives in the host namespace; left to the
    // kernel's asynchronous netns cleanup, the VNI would still be taken
    // here (EEXIST) for a while after the namespace is gone.
    for (let round = 0; round < 5; round++) {
      const created = withHandle(`/var/run/netns/${hosts[1]}`, (host) => ensureVxlanNetwork(host, names[1], { vni, mtu: 1450, localVtep: vtep[1] }));
      expect(created).toBe(true);
      removeVxlanNetwork(names[1]);
    }
    expect(fs.existsSync(names[1].netns)).toBe(false);
  });
});
