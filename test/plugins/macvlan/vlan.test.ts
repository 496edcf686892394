/**
 * shared/vlan.ts: parent resolution and the VLAN reference count, against
 * a fake kernel (this host has no 802.1q; the real links are exercised in
 * the VM by test/vm/guest/macvlan-ipvlan.guest.ts). State files and flock
 * are real, in a temporary directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { AF_INET, NetlinkError, ENODEV, type Link, type LinkSpec, type Route } from '../../../shared/netlink';
import { ParentManager, defaultRouteInterface, vlanOfName, type ParentLinks } from '../../../shared/vlan';

/** Links by name, with the kernel's rules that matter here: unique names, parents must exist, children die with them. */
class FakeLinks implements ParentLinks {
  links = new Map<string, Link>();
  routes: Route[] = [];
  private next = 1;

  add(name: string, extra: Partial<Link> = {}): Link {
    const l: Link = { index: this.next++, name, flags: 1, up: true, mtu: 1500, ...extra };
    this.links.set(name, l);
    return l;
  }
  linkByName(name: string) {
    return this.links.get(name);
  }
  linkByIndex(index: number) {
    return [...this.links.values()].find((l) => l.index === index);
  }
  linkAdd(spec: LinkSpec): void {
    if (this.links.has(spec.name)) throw new NetlinkError(17, `ip link add ${spec.name}`);
    if (spec.kind !== 'vlan') throw new Error(`unexpected kind ${spec.kind}`);
    const base = this.linkByIndex(spec.parentIndex);
    if (!base) throw new NetlinkError(ENODEV, 'ip link add');
    this.add(spec.name, { kind: 'vlan', vlanId: spec.vlanId, parentIndex: spec.parentIndex, mtu: base.mtu, up: spec.up ?? false });
  }
  linkSetUp(name: string): void {
    this.links.get(name)!.up = true;
  }
  linkDelIfExists(name: string): boolean {
    return this.links.delete(name);
  }
  routeList(family?: number): Route[] {
    return this.routes.filter((r) => family === undefined || r.family === family);
  }
}

let dir: string;
let k: FakeLinks;
let pm: ParentManager;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-vlan-'));
  k = new FakeLinks();
  k.add('eth0');
  pm = new ParentManager(k, dir);
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const u = (containerId: string, network = 'n1') => ({ network, containerId, ifname: 'eth0' });

function codeOf(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
  return undefined;
}

describe('vlanOfName', () => {
  it('reads master + vlan and a master written base.id as the same VLAN', () => {
    expect(vlanOfName('eth0', 10)).toEqual({ name: 'eth0.10', base: 'eth0', id: 10 });
    expect(vlanOfName('eth0.10', undefined)).toEqual({ name: 'eth0.10', base: 'eth0', id: 10 });
    expect(vlanOfName('eth0', undefined)).toBeUndefined();
  });

  it('refuses ids outside 1..4094 and names longer than IFNAMSIZ with code 7', () => {
    expect(codeOf(() => vlanOfName('eth0', 0))).toBe(7);
    expect(codeOf(() => vlanOfName('eth0', 4095))).toBe(7);
    expect(codeOf(() => vlanOfName('enp0s31f6abcd', 4000))).toBe(7);
  });
});

describe('ParentManager', () => {
  it('creates the VLAN link for its first user, shares it, and deletes it when the last user leaves', () => {
    const p = pm.resolve({ master: 'eth0.10' });
    expect(p).toEqual({ name: 'eth0.10', vlan: { base: 'eth0', id: 10 }, mtu: 1500 });
    expect(k.linkByName('eth0.10')).toBeUndefined(); // resolve changes nothing
    const link = pm.acquire(p, u('a'));
    expect(link).toMatchObject({ name: 'eth0.10', kind: 'vlan', vlanId: 10, parentIndex: k.linkByName('eth0')!.index, up: true });
    // another network on the same VLAN, written the other way
    const p2 = pm.resolve({ master: 'eth0', vlan: 10 });
    expect(pm.acquire(p2, u('b', 'n2')).index).toBe(link.index);
    expect(pm.users('eth0.10')).toHaveLength(2);
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeDefined();
    pm.release('eth0.10', u('a')); // a repeated DEL does not count anyone else out
    expect(k.linkByName('eth0.10')).toBeDefined();
    pm.release('eth0.10', u('b', 'n2'));
    expect(k.linkByName('eth0.10')).toBeUndefined();
    expect(fs.existsSync(path.join(dir, 'vlan', 'eth0.10'))).toBe(false);
  });

  it('counts the same user once however often it acquires', () => {
    const p = pm.resolve({ master: 'eth0.10' });
    pm.acquire(p, u('a'));
    pm.acquire(p, u('a'));
    expect(pm.users('eth0.10')).toEqual([u('a')]);
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeUndefined();
  });

  it('uses an operator-made link of the same name as is and never deletes it', () => {
    k.add('eth0.10', { kind: 'vlan', vlanId: 10, parentIndex: k.linkByName('eth0')!.index });
    const p = pm.resolve({ master: 'eth0.10' });
    expect(p.vlan).toBeUndefined();
    pm.acquire(p, u('a'));
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeDefined();
  });

  it('starts the count over when the link it made is gone (reboot): stale users do not keep a new link alive', () => {
    const p = pm.resolve({ master: 'eth0.10' });
    pm.acquire(p, u('old1'));
    pm.acquire(p, u('old2'));
    k.linkDelIfExists('eth0.10'); // the machine rebooted
    pm.acquire(pm.resolve({ master: 'eth0.10' }), u('new'));
    expect(pm.users('eth0.10')).toEqual([u('new')]);
    pm.release('eth0.10', u('new'));
    expect(k.linkByName('eth0.10')).toBeUndefined();
  });

  it('treats a link that replaced the one it made (another ifindex) as the operator\'s', () => {
    pm.acquire(pm.resolve({ master: 'eth0.10' }), u('a'));
    k.linkDelIfExists('eth0.10');
    k.add('eth0.10', { kind: 'vlan', vlanId: 10, parentIndex: k.linkByName('eth0')!.index });
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeDefined();
  });

  it('GC counts out this network\'s users that are not valid and leaves other networks\' alone', () => {
    const p = pm.resolve({ master: 'eth0.10' });
    pm.acquire(p, u('keep'));
    pm.acquire(p, u('leaked'));
    pm.acquire(p, u('other', 'n2'));
    pm.gc('eth0.10', 'n1', [{ containerID: 'keep', ifname: 'eth0' }]);
    expect(pm.users('eth0.10').map((x) => x.containerId).sort()).toEqual(['keep', 'other']);
    pm.gc('eth0.10', 'n1', []);
    pm.gc('eth0.10', 'n2', []);
    expect(k.linkByName('eth0.10')).toBeUndefined();
  });

  it('GC drops a torn ref file left by a crash', () => {
    const p = pm.resolve({ master: 'eth0.10' });
    pm.acquire(p, u('a'));
    fs.writeFileSync(path.join(dir, 'vlan', 'eth0.10', 'deadbeef.ref'), '{"netw');
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeDefined(); // the torn file still counts...
    pm.gc('eth0.10', 'n1', []);
    expect(k.linkByName('eth0.10')).toBeUndefined(); // ...until GC
  });

  it('a crash between writing its intent and creating the link leaves nothing that blocks the next ADD', () => {
    fs.mkdirSync(path.join(dir, 'vlan', 'eth0.10'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'vlan', 'eth0.10', 'owner.json'), JSON.stringify({ base: 'eth0', id: 10 }));
    const link = pm.acquire(pm.resolve({ master: 'eth0.10' }), u('a'));
    expect(link.kind).toBe('vlan');
    pm.release('eth0.10', u('a'));
    expect(k.linkByName('eth0.10')).toBeUndefined();
  });

  it('reports a missing parent or base with code 7 and a down one with code 11', () => {
    expect(codeOf(() => pm.resolve({ master: 'nope0' }))).toBe(7);
    expect(codeOf(() => pm.resolve({ master: 'nope0.10' }))).toBe(7);
    k.add('down0', { up: false });
    expect(codeOf(() => pm.resolve({ master: 'down0' }))).toBe(11);
    expect(codeOf(() => pm.resolve({ master: 'down0', vlan: 5 }))).toBe(11);
    k.add('eth0.7', { kind: 'macvlan' });
    expect(codeOf(() => pm.resolve({ master: 'eth0', vlan: 7 }))).toBe(7);
  });

  it('defaults to the default-route interface, IPv4 first and lowest metric first', () => {
    k.add('wan1');
    k.add('wan2');
    k.routes = [
      { family: AF_INET, dst: 'default', oifIndex: k.linkByName('wan1')!.index, priority: 200, table: 254, protocol: 0, scope: 0, type: 1 },
      { family: AF_INET, dst: 'default', oifIndex: k.linkByName('wan2')!.index, priority: 100, table: 254, protocol: 0, scope: 0, type: 1 },
    ];
    expect(defaultRouteInterface(k)).toBe('wan2');
    expect(pm.resolve({}).name).toBe('wan2');
    k.routes = [];
    expect(codeOf(() => pm.resolve({}))).toBe(7);
  });
});
