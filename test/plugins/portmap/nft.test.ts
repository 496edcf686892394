/**
 * portmap's transactions on the real nft (1.0.6 here) and kernel, in a
 * scratch namespace: the text we render is accepted, the keys we look for
 * are the ones nft lists, and the kernel refuses what FakeNft refuses.
 * No traffic here (traffic.test.ts has it).
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Family, Listing, Nft } from '../../../shared/nft/nft-interface';
import { realNft } from '../../../shared/nft/real';
import type { Transaction } from '../../../shared/nft/transaction';
import { call, fakeHost, portmapConf, type FakeHost } from './harness';
import { nftGetChain, nftListTable } from '../../../shared/netlink/nftables';
import { MAX_PORT_MAPPINGS } from '../../../plugins/portmap/config';
import { randomId, sh, trySh } from './kernel';

const ns = `pmnft-${randomId()}`;
const nsPath = `/var/run/netns/${ns}`;
let nft: Nft;
let host: FakeHost;

const web = { hostPort: 8080, containerPort: 80, protocol: 'tcp' };
const dns = { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' };
const v6only = { hostPort: 9000, containerPort: 9, protocol: 'sctp', hostIP: 'fd00::1' };
const dual = ['10.1.0.5/24', 'fd00:1::5/64'];

beforeAll(() => {
  sh(['ip', 'netns', 'add', ns]);
  nft = realNft({ netnsPath: nsPath });
});

afterAll(() => {
  trySh(['ip', 'netns', 'del', ns]);
});

beforeEach(() => {
  spawnSync('ip', ['netns', 'exec', ns, 'nft', 'flush', 'ruleset']);
  host = fakeHost(nft);
  // markers read over netlink, as realTable does
  host.markers = (name) => nftGetChain('inet', 'cni_ts_portmap', name, nsPath);
});

const conf = (o: Parameters<typeof portmapConf>[0]) => portmapConf(o);
const ruleset = () => sh(['ip', 'netns', 'exec', ns, 'nft', 'list', 'ruleset']);

describe('portmap on the real nft', () => {
  it('ADD is accepted, lists back the keys CHECK expects, and a repeated ADD changes nothing', async () => {
    expect((await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) })).code).toBe(0);
    const first = ruleset();
    expect(first).toContain('tcp . 8080 comment "cni-ts:net1:c1:eth0" : 10.1.0.5 . 80');
    expect(first).toContain('fd00::1 . sctp . 9000 comment "cni-ts:net1:c1:eth0" : fd00:1::5 . 9');
    expect(first).toContain('fd00:1::/64 . fd00:1::5 . sctp . 9 comment "cni-ts:net1:c1:eth0"');
    expect((await call(host, { command: 'CHECK', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) })).code).toBe(0);
    expect((await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) })).code).toBe(0);
    expect(ruleset()).toBe(first);
  });

  it('ADD upgrades a table of the previous skeleton (no loopback guards) in place, keeping its containers', async () => {
    // the skeleton as the previous version wrote it, holding one container
    sh(
      ['ip', 'netns', 'exec', ns, 'nft', '-f', '-'],
      `table inet cni_ts_portmap {
  map wildcard_ports { type nf_proto . inet_proto . inet_service : verdict; }
  map hostip4_ports { type ipv4_addr . inet_proto . inet_service : verdict; }
  map hostip6_ports { type ipv6_addr . inet_proto . inet_service : verdict; }
  map masq4 { type ipv4_addr . inet_proto . inet_service : verdict; }
  map masq6 { type ipv6_addr . inet_proto . inet_service : verdict; }
  chain dispatch {
    ip daddr . meta l4proto . th dport vmap @hostip4_ports
    ip6 daddr . meta l4proto . th dport vmap @hostip6_ports
    meta nfproto . meta l4proto . th dport vmap @wildcard_ports
  }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; fib daddr type local jump dispatch; }
  chain output { type nat hook output priority -100; policy accept; fib daddr type local jump dispatch; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
  chain skeleton-v1 { }
  chain old-owner { ip daddr 127.0.0.1 tcp dport 7000 dnat ip to 10.1.0.9:80 comment "cni-ts:net1:old:eth0"; }
}
add element inet cni_ts_portmap hostip4_ports { 127.0.0.1 . tcp . 7000 : jump old-owner }
`,
    );
    // the old container's record, as the previous version wrote it
    host.records!.put('cni-ts:net1:old:eth0', {
      owner: { network: 'net1', containerID: 'old', ifname: 'eth0' },
      claims: [{ family: 'ipv4', protocol: 'tcp', hostPort: 7000, hostIP: '127.0.0.1', containerIP: '10.1.0.9', containerPort: 80 }],
      addrs: [{ family: 'ipv4', ip: '10.1.0.9', subnet: '10.1.0.0/24' }],
      masq: { snat: true, masqAll: false },
    });
    expect((await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web] }) })).code).toBe(0);
    const out = ruleset();
    expect(out).not.toContain('skeleton-v1');
    expect(out).not.toContain('hostip4_ports');
    expect(out).toContain('chain skeleton {\n\t\tcomment "cni-ts portmap skeleton v4"\n\t}');
    expect(out).toMatch(/chain prerouting \{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr 127\.0\.0\.0\/8 return/);
    expect(out).toContain('iifname != "lo" ip daddr 127.0.0.0/8 drop');
    // the old container is published again, from its record
    expect(out).toContain('127.0.0.1 . tcp . 7000 comment "cni-ts:net1:old:eth0" : 10.1.0.9 . 80');
    expect((await call(host, { command: 'CHECK', conf: conf({ ips: dual, mappings: [web] }) })).code).toBe(0);
  });

  it('finds conflicts in what nft lists, for IPv4 and IPv6 host addresses', async () => {
    await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) });
    const before = ruleset();
    for (const mappings of [[web], [{ ...dns, hostIP: undefined }], [{ ...v6only, hostIP: 'FD00:0::1' }], [{ ...web, hostIP: '10.0.0.1' }]]) {
      const r = await call(host, { command: 'ADD', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24', 'fd00:1::6/64'], mappings }) });
      expect(r.out).toMatchObject({ code: 110 });
    }
    expect(ruleset()).toBe(before);
  });

  it('the kernel itself refuses a claim held by another owner (code 110 when the listing was stale)', async () => {
    await call(host, { command: 'ADD', conf: conf({ ips: ['10.1.0.5/24'], mappings: [web] }) });
    const blind: Nft = { run: (tx: Transaction) => nft.run(tx), check: (tx: Transaction) => nft.check(tx), list: (_f: Family, _t: string): Listing | undefined => undefined };
    const before = ruleset();
    const r = await call(fakeHost(blind), { command: 'ADD', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24'], mappings: [web] }) });
    expect(r.out).toMatchObject({ code: 110 });
    expect(ruleset()).toBe(before);
  });

  it('DEL with keys, without them, and after the table is gone all leave no container state', async () => {
    const empty = () => {
      const out = ruleset();
      expect(out).not.toMatch(/elements/);
    };
    await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) });
    expect((await call(host, { command: 'DEL', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) })).code).toBe(0);
    empty();
    await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) });
    expect((await call(host, { command: 'DEL', conf: conf({}) })).code).toBe(0);
    empty();
    expect((await call(host, { command: 'DEL', conf: conf({}) })).code).toBe(0);
    sh(['ip', 'netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'cni_ts_portmap']);
    expect((await call(host, { command: 'DEL', conf: conf({ ips: dual, mappings: [web] }) })).code).toBe(0);
    expect(ruleset()).toBe('');
  });

  it("DEL handed another container's keys deletes nothing of it", async () => {
    await call(host, { command: 'ADD', conf: conf({ ips: ['10.1.0.5/24'], mappings: [web] }) });
    const before = ruleset();
    expect((await call(host, { command: 'DEL', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24'], mappings: [web] }) })).code).toBe(0);
    expect(ruleset()).toBe(before);
  });

  it('GC removes invalid attachments of its network only', async () => {
    await call(host, { command: 'ADD', containerId: 'keep', conf: conf({ ips: ['10.1.0.5/24'], mappings: [web] }) });
    await call(host, { command: 'ADD', containerId: 'gone', conf: conf({ ips: ['10.1.0.6/24'], mappings: [dns] }) });
    await call(host, { command: 'ADD', containerId: 'other', conf: conf({ name: 'net2', ips: ['10.2.0.5/24'], mappings: [{ ...dns, hostIP: '10.0.0.1' }] }) });
    const r = await call(host, { command: 'GC', conf: { ...conf({}), 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] } });
    expect(r.code).toBe(0);
    const out = ruleset();
    expect(out).toContain('tcp . 8080 comment "cni-ts:net1:keep:eth0"');
    expect(out).toContain('10.0.0.1 . udp . 5353');
    expect(out).not.toContain('127.0.0.1 . udp . 5353');
    expect(out).not.toContain('10.1.0.6');
  });
});

describe('portmap at the portMappings bound, on the real nft', () => {
  const many = (n: number) => Array.from({ length: n }, (_, i) => ({ hostPort: 1 + i, containerPort: 80, protocol: i % 2 ? 'udp' : 'tcp' }));

  it(`publishes ${MAX_PORT_MAPPINGS} mappings in one transaction, checks and removes them; one more is refused with code 7 and changes nothing`, async () => {
    const mappings = many(MAX_PORT_MAPPINGS);
    const ips = ['10.1.0.5/24'];
    expect((await call(host, { command: 'ADD', conf: conf({ ips, mappings }) })).code).toBe(0);
    const claims = nftListTable('inet', 'cni_ts_portmap', nsPath)?.sets.find((m) => m.name === 'wildcard4')?.elements ?? [];
    expect(claims).toHaveLength(MAX_PORT_MAPPINGS);
    expect((await call(host, { command: 'CHECK', conf: conf({ ips, mappings }) })).code).toBe(0);
    const before = ruleset();
    const r = await call(host, { command: 'ADD', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24'], mappings: many(MAX_PORT_MAPPINGS + 1) }) });
    expect(r.out).toMatchObject({ code: 7 });
    expect(ruleset()).toBe(before);
    expect((await call(host, { command: 'DEL', conf: conf({ ips, mappings }) })).code).toBe(0);
    expect(ruleset()).not.toMatch(/elements/);
  });
});

describe('the table read over netlink (nftListTable)', () => {
  const elementsOf = (l: Listing | undefined) =>
    (l?.sets ?? [])
      .map((s) => ({ name: s.name, elements: s.elements.map((e) => `${e.key} : ${e.value}`).sort() }))
      .sort((a, b) => a.name.localeCompare(b.name));

  it('are exactly what nft -j lists, for every map and key type', async () => {
    expect(nftListTable('inet', 'cni_ts_portmap', nsPath)).toBeUndefined();
    await call(host, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) });
    await call(host, { command: 'ADD', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24'], mappings: [{ ...web, hostPort: 8081, protocol: 'udp' }] }) });
    const viaNetlink = elementsOf(nftListTable('inet', 'cni_ts_portmap', nsPath));
    expect(viaNetlink).toEqual(elementsOf(nft.list('inet', 'cni_ts_portmap')));
    expect(viaNetlink.flatMap((s) => s.elements).length).toBeGreaterThan(5);
  });

  it('name the container that holds a port when another asks for it (code 110), as the plugin reads the table on a host', async () => {
    // the listing a real host's ADD reads: netlink, chains and rule comments included
    const netlinkHost = fakeHost(nft);
    netlinkHost.list = () => nftListTable('inet', 'cni_ts_portmap', nsPath);
    const holder = 'container-a-0123456789';
    expect((await call(netlinkHost, { command: 'ADD', containerId: holder, conf: conf({ ips: ['10.1.0.5/24'], mappings: [web] }) })).code).toBe(0);
    const before = ruleset();
    const r = await call(netlinkHost, { command: 'ADD', containerId: 'container-b', conf: conf({ ips: ['10.1.0.6/24'], mappings: [web] }) });
    expect(r.out).toMatchObject({ code: 110, msg: expect.stringContaining(`container ${holder} (network`) });
    expect(JSON.stringify(r.out)).not.toContain('another container');
    expect(ruleset()).toBe(before);
  });

  it('give ADD the same conflict answers (code 110, nothing applied)', async () => {
    const netlinkHost = fakeHost(nft);
    netlinkHost.list = () => nftListTable('inet', 'cni_ts_portmap', nsPath);
    await call(netlinkHost, { command: 'ADD', conf: conf({ ips: dual, mappings: [web, dns, v6only] }) });
    const before = ruleset();
    for (const mappings of [[web], [{ ...dns, hostIP: undefined }], [{ ...v6only, hostIP: 'FD00:0::1' }], [{ ...web, hostIP: '10.0.0.1' }]]) {
      const r = await call(netlinkHost, { command: 'ADD', containerId: 'c2', conf: conf({ ips: ['10.1.0.6/24', 'fd00:1::6/64'], mappings }) });
      expect(r.out).toMatchObject({ code: 110 });
    }
    expect(ruleset()).toBe(before);
  });
});
