/**
 * portmap's rule logic against FakeNft, through the real skel: golden nft
 * text for what ADD installs, and what DEL, CHECK and GC do to it.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import type { Family, Listing, Nft } from '../../../shared/nft/nft-interface';
import type { Transaction } from '../../../shared/nft/transaction';
import { call, fakeHost, portmapConf, type FakeHost } from './harness';
import type { ProxyRequest } from '../../../shared/portproxy';

const TABLE = 'cni_ts_portmap';
const C1 = 'cni-ts:net1:c1:eth0';
const C2 = 'cni-ts:net1:c2:eth0';

const web = { hostPort: 8080, containerPort: 80, protocol: 'tcp' };
const dns = { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' };
const dual = ['10.1.0.5/24', 'fd00:1::5/64'];

const SKELETON_CHAINS = `	chain dispatch {
		dnat ip to ip daddr . meta l4proto . th dport map @hostip4
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6
		meta nfproto ipv4 dnat ip to meta l4proto . th dport map @wildcard4
		meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @wildcard6
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 127.0.0.0/8 return comment "loopback ports answer the host only"
		fib daddr type local jump dispatch
	}

	chain output {
		type nat hook output priority -100; policy accept;
		ip6 daddr ::1 return comment "IPv6 cannot forward from loopback"
		fib daddr type local jump dispatch
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip saddr . ip daddr . meta l4proto . th dport @masq_ports4 masquerade
		ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @masq_ports6 masquerade
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat return
		iifname != "lo" ip daddr 127.0.0.0/8 drop comment "127.0.0.0/8 from outside lo, not DNATed: dropped (route_localnet guard)"
	}

	chain skeleton {
		comment "cni-ts portmap skeleton v4"
	}`;

const SETS = (e: Record<string, string> = {}) =>
  [
    ['map', 'wildcard4', 'inet_proto . inet_service : ipv4_addr . inet_service'],
    ['map', 'wildcard6', 'inet_proto . inet_service : ipv6_addr . inet_service'],
    ['map', 'hostip4', 'ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service'],
    ['map', 'hostip6', 'ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service'],
    ['set', 'masq_ports4', 'ipv4_addr . ipv4_addr . inet_proto . inet_service'],
    ['set', 'masq_ports6', 'ipv6_addr . ipv6_addr . inet_proto . inet_service'],
  ]
    .map(([kind, name, type]) => {
      const lines = [`\t${kind} ${name} {`, `\t\ttype ${type}`];
      if (kind === 'set') lines.push('\t\tflags interval');
      if (e[name]) lines.push(`\t\telements = { ${e[name]} }`);
      return [...lines, '\t}'].join('\n');
    })
    .join('\n\n');

const table = (e: Record<string, string> = {}) => `table inet cni_ts_portmap {
	comment "cni-ts portmap: published container ports"
${SETS(e)}

${SKELETON_CHAINS}
}
`;

/** The table with no container in it: what every DEL leaves behind. */
const EMPTY = table();

const c = (tag: string) => `comment "${tag}"`;
const DUAL_STACK_ADD = table({
  wildcard4: `tcp . 8080 ${c(C1)} : 10.1.0.5 . 80`,
  wildcard6: `tcp . 8080 ${c(C1)} : fd00:1::5 . 80`,
  hostip4: `127.0.0.1 . udp . 5353 ${c(C1)} : 10.1.0.5 . 53`,
  masq_ports4: [
    `127.0.0.0/8 . 10.1.0.5 . tcp . 80 ${c(C1)}`,
    `10.1.0.0/24 . 10.1.0.5 . tcp . 80 ${c(C1)}`,
    `127.0.0.0/8 . 10.1.0.5 . udp . 53 ${c(C1)}`,
    `10.1.0.0/24 . 10.1.0.5 . udp . 53 ${c(C1)}`,
  ].join(', '),
  masq_ports6: `fd00:1::/64 . fd00:1::5 . tcp . 80 ${c(C1)}`,
});

let nft: FakeNft;
let host: FakeHost;

beforeEach(() => {
  nft = new FakeNft();
  host = fakeHost(nft);
});

const add = (o: Parameters<typeof portmapConf>[0], containerId = 'c1') => call(host, { command: 'ADD', containerId, conf: portmapConf(o) });
const del = (o: Parameters<typeof portmapConf>[0], containerId = 'c1') => call(host, { command: 'DEL', containerId, conf: portmapConf(o) });
const check = (o: Parameters<typeof portmapConf>[0], containerId = 'c1') => call(host, { command: 'CHECK', containerId, conf: portmapConf(o) });
const gc = (valid: Array<{ containerID: string; ifname: string }>, name = 'net1') =>
  call(host, { command: 'GC', conf: { ...portmapConf({ name }), 'cni.dev/valid-attachments': valid } });

/** Every element of the table, as "set key [: value] @owner". */
function elements(): string[] {
  return (nft.list('inet', TABLE)?.sets ?? []).flatMap((s) => s.elements.map((e) => `${s.name} ${e.key}${e.value !== undefined ? ` : ${e.value}` : ''} @${e.comment}`));
}

describe('portmap ADD', () => {
  it('installs DNAT for every family the container has, hostIP claims, and masquerading, in one transaction', async () => {
    const r = await add({ ips: dual, mappings: [web, dns] });
    expect(r.code).toBe(0);
    expect(nft.dump('inet', TABLE)).toBe(DUAL_STACK_ADD);
    // the skeleton by nft (first ADD), the elements in one batch; no listing (the records say who holds what)
    expect(nft.execs).toBe(1);
    expect(nft.applied).toHaveLength(1);
    expect(nft.batches).toBe(1);
    expect(host.locks).toBe(1);
    expect(host.localnet).toEqual(['10.1.0.5']);
  });

  it('passes prevResult through in the config version', async () => {
    const r = await add({ cniVersion: '0.4.0', ips: ['10.1.0.5/24'], mappings: [web] });
    expect(r.out).toEqual({
      cniVersion: '0.4.0',
      interfaces: [
        { name: 'cni0', mac: '0a:58:0a:01:00:01' },
        { name: 'veth0123', mac: '0a:58:0a:01:00:02' },
        { name: 'eth0', mac: '02:42:0a:01:00:05', sandbox: '/var/run/netns/portmap-test' },
      ],
      ips: [{ version: '4', interface: 2, address: '10.1.0.5/24' }],
    });
  });

  it('without port mappings passes the result through and never runs nft', async () => {
    const r = await add({ ips: dual });
    expect(r.code).toBe(0);
    expect((r.out?.ips as unknown[]).length).toBe(2);
    expect(nft.execs).toBe(0);
  });

  it('refuses to run unchained (no prevResult) with code 7', async () => {
    const r = await add({ mappings: [web] });
    expect(r.code).toBe(1);
    expect(r.out).toMatchObject({ code: 7, msg: expect.stringMatching(/chained plugin/) });
  });

  it('with snat false installs no masquerading and leaves route_localnet alone', async () => {
    await add({ ips: dual, mappings: [web], extra: { snat: false } });
    expect(elements()).toEqual([`wildcard4 tcp . 8080 : 10.1.0.5 . 80 @${C1}`, `wildcard6 tcp . 8080 : fd00:1::5 . 80 @${C1}`]);
    expect(host.localnet).toEqual([]);
  });

  it('with masqAll masquerades every source of forwarded connections', async () => {
    await add({ ips: dual, mappings: [web], extra: { masqAll: true } });
    expect(elements().filter((e) => e.startsWith('masq'))).toEqual([`masq_ports4 0.0.0.0/0 . 10.1.0.5 . tcp . 80 @${C1}`, `masq_ports6 ::/0 . fd00:1::5 . tcp . 80 @${C1}`]);
  });

  it('does not enable route_localnet for an IPv6-only container', async () => {
    await add({ ips: ['fd00:1::5/64'], mappings: [web] });
    expect(host.localnet).toEqual([]);
    expect(elements()).toEqual([`wildcard6 tcp . 8080 : fd00:1::5 . 80 @${C1}`, `masq_ports6 fd00:1::/64 . fd00:1::5 . tcp . 80 @${C1}`]);
  });

  it('is idempotent for the same container, and drops what a repeated ADD no longer asks for', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    await add({ ips: dual, mappings: [web, dns] });
    expect(nft.dump('inet', TABLE)).toBe(DUAL_STACK_ADD);
    await add({ ips: dual, mappings: [dns] });
    expect(elements().sort()).toEqual(
      [`hostip4 127.0.0.1 . udp . 5353 : 10.1.0.5 . 53 @${C1}`, `masq_ports4 127.0.0.0/8 . 10.1.0.5 . udp . 53 @${C1}`, `masq_ports4 10.1.0.0/24 . 10.1.0.5 . udp . 53 @${C1}`].sort(),
    );
  });

  it('takes over a stale masquerade element of an address that is now its own', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] }, 'old');
    // "old" leaked without DEL; IPAM gave its address to c1, which publishes another host port to the same container port
    const r = await add({ ips: ['10.1.0.5/24'], mappings: [{ ...web, hostPort: 9090 }] });
    expect(r.code).toBe(0);
    expect(elements().filter((e) => e.startsWith('masq'))).toEqual([`masq_ports4 127.0.0.0/8 . 10.1.0.5 . tcp . 80 @${C1}`, `masq_ports4 10.1.0.0/24 . 10.1.0.5 . tcp . 80 @${C1}`]);
  });
});

describe('portmap and the ::1 relay', () => {
  // what portmap asks the relay (shared/portproxy) to serve, recorded
  function recordingProxy(): ProxyRequest[] {
    const asked: ProxyRequest[] = [];
    host.deps.proxy = { add: (req) => void asked.push(req), del: () => {}, check: () => {}, gc: () => {} };
    return asked;
  }

  it('asks it for explicit ::1 mappings only, unless ipv6Localhost also puts wildcard ones there', async () => {
    const asked = recordingProxy();
    const lo6 = { hostPort: 8443, containerPort: 443, protocol: 'tcp', hostIP: '::1' };
    expect((await add({ ips: dual, mappings: [web, lo6] })).code).toBe(0);
    expect(asked.at(-1)!.mappings).toEqual([lo6]);
    // another container, other ports
    const web2 = { ...web, hostPort: 9080 };
    const lo62 = { ...lo6, hostPort: 9443 };
    const r = await add({ ips: ['10.1.0.6/24', 'fd00:1::6/64'], mappings: [web2, lo62], extra: { ipv6Localhost: true } }, 'c2');
    expect(r.code, JSON.stringify(r.out)).toBe(0);
    expect(asked.at(-1)!.mappings).toEqual([web2, lo62]);
  });
});

describe('portmap conflicts', () => {
  it('refuses a port another container publishes with code 110 naming the owner, and applies nothing', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    const before = nft.dump();
    const r = await add({ ips: ['10.1.0.6/24'], mappings: [{ ...web, containerPort: 81 }] }, 'c2');
    expect(r.code).toBe(1);
    expect(r.out).toMatchObject({
      code: 110,
      msg: 'host port tcp 0.0.0.0:8080 is already published by container c1 (network net1, eth0)',
      details: 'tcp 0.0.0.0:8080 overlaps tcp 0.0.0.0:8080 of container c1 (network net1, eth0); nothing was applied',
    });
    expect(nft.dump()).toBe(before);
    expect(host.localnet).toEqual(['10.1.0.5']);
  });

  it('treats a wildcard and a specific address of one family as overlapping, both ways', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [dns] });
    expect((await add({ ips: ['10.1.0.6/24'], mappings: [{ ...dns, hostIP: undefined }] }, 'c2')).out?.code).toBe(110);
    await add({ ips: ['10.1.0.5/24'], mappings: [web] }, 'c3');
    expect((await add({ ips: ['10.1.0.6/24'], mappings: [{ ...web, hostIP: '10.0.0.1' }] }, 'c2')).out?.code).toBe(110);
  });

  it('lets others publish the same port on another address, family or protocol', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web, dns] });
    expect((await add({ ips: ['fd00:1::6/64'], mappings: [web] }, 'c2')).code).toBe(0);
    expect((await add({ ips: ['10.1.0.7/24'], mappings: [{ ...web, protocol: 'sctp' }, { ...dns, hostIP: '10.0.0.1' }] }, 'c3')).code).toBe(0);
  });

  it('turns the kernel refusing an element another owner added after our listing into code 110', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] });
    // a listing that is out of date: what a writer ignoring the lock would see
    const stale: Nft = {
      run: (tx: Transaction) => nft.run(tx),
      check: (tx: Transaction) => nft.check(tx),
      list: (_f: Family, _t: string): Listing | undefined => undefined,
    };
    const before = nft.dump();
    const r = await call(fakeHost(stale), { command: 'ADD', containerId: 'c2', conf: portmapConf({ ips: ['10.1.0.6/24'], mappings: [web] }) });
    expect(r.out).toMatchObject({ code: 110 });
    expect(nft.dump()).toBe(before);
  });
});

describe('portmap DEL', () => {
  it('removes exactly its container in one batch without nft or a listing, leaving the empty skeleton', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    const execs = nft.execs;
    const batches = nft.batches;
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    expect(nft.execs - execs).toBe(0);
    expect(nft.batches - batches).toBe(1);
    expect(nft.dump()).toBe(EMPTY);
    expect(host.locks).toBe(2);
  });

  it('leaves other containers alone', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] });
    await add({ ips: ['10.1.0.6/24'], mappings: [dns] }, 'c2');
    await del({ ips: ['10.1.0.5/24'], mappings: [web] });
    expect(elements()).toEqual([`hostip4 127.0.0.1 . udp . 5353 : 10.1.0.6 . 53 @${C2}`, `masq_ports4 127.0.0.0/8 . 10.1.0.6 . udp . 53 @${C2}`, `masq_ports4 10.1.0.0/24 . 10.1.0.6 . udp . 53 @${C2}`]);
  });

  it('succeeds twice, without prevResult, without mappings and after the table is gone', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    expect((await del({ mappings: [web] })).code).toBe(0);
    expect((await del({})).code).toBe(0);
    expect(nft.dump()).toBe(EMPTY);
    nft.reset();
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    expect((await del({})).code).toBe(0);
    // DEL never creates the table
    expect(nft.dump()).toBe('');
  });

  it('without prevResult or mappings removes its container from its record, without a listing', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    const execs = nft.execs;
    expect((await del({})).code).toBe(0);
    expect(nft.execs - execs).toBe(0);
    expect(nft.dump()).toBe(EMPTY);
  });

  it('without a record finds its container by listing once (its elements carry its tag)', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    host.records!.remove('cni-ts:net1:c1:eth0');
    const execs = nft.execs;
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    // one listing, one batch
    expect(nft.execs - execs).toBe(1);
    expect(nft.dump()).toBe(EMPTY);
  });

  it('with mappings that differ from the ADD still removes everything', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    expect((await del({ ips: ['10.1.0.5/24'], mappings: [{ ...web, hostPort: 1 }] })).code).toBe(0);
    expect(nft.dump()).toBe(EMPTY);
  });

  it('succeeds for a config ADD refused as unsupported (code 2), so the runtime can clean up', async () => {
    const conf = { ips: dual, mappings: [web], extra: { conditionsV4: ['-s', '10.0.0.0/8'] } };
    expect((await add(conf)).out).toMatchObject({ code: 2 });
    expect(nft.execs).toBe(0);
    expect((await del(conf)).code).toBe(0);
  });

  it("never deletes another container's claim, even when handed its keys", async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] });
    const before = nft.dump();
    // c2's ADD of the same port failed with 110; the runtime now DELs c2 with the same request
    expect((await del({ ips: ['10.1.0.6/24'], mappings: [web] }, 'c2')).code).toBe(0);
    expect(nft.dump()).toBe(before);
  });
});

describe('portmap DEL and element values', () => {
  it("never deletes another container's claim, even when handed its exact mappings and address", async () => {
    // element data is the container's address and port, which a prevResult
    // can name: only DEL's own record or its owner tag may pick elements
    await add({ ips: ['10.1.0.5/24'], mappings: [web] });
    const before = nft.dump();
    expect((await del({ ips: ['10.1.0.5/24'], mappings: [web] }, 'c2')).code).toBe(0);
    expect(nft.dump()).toBe(before);
  });
});

describe('portmap CHECK', () => {
  it('passes while the mappings are installed', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    expect((await check({ ips: dual, mappings: [web, dns] })).code).toBe(0);
  });

  it('fails with code 111 naming what is missing', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    await del({ ips: dual, mappings: [web, dns] });
    await add({ ips: dual, mappings: [web] });
    const r = await check({ ips: dual, mappings: [web, dns] });
    expect(r.out).toMatchObject({
      code: 111,
      msg: 'port mappings of container c1 are not installed',
      details: expect.stringContaining('element 127.0.0.1 . udp . 5353 is missing from hostip4'),
    });
    nft.reset();
    expect((await check({ ips: dual, mappings: [web] })).out).toMatchObject({ code: 111, details: 'table inet cni_ts_portmap does not exist' });
  });

  it('needs prevResult (code 7)', async () => {
    expect((await check({ mappings: [web] })).out).toMatchObject({ code: 7 });
  });
});

describe('portmap GC', () => {
  it('removes the attachments of its network that are not valid, and nothing of other networks', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] }, 'keep');
    await add({ ips: ['10.1.0.6/24'], mappings: [dns] }, 'gone');
    await add({ name: 'net2', ips: ['10.2.0.5/24'], mappings: [{ ...web, hostPort: 9090 }] }, 'other');
    expect((await gc([{ containerID: 'keep', ifname: 'eth0' }])).code).toBe(0);
    const keep = 'cni-ts:net1:keep:eth0';
    const other = 'cni-ts:net2:other:eth0';
    expect(elements().sort()).toEqual(
      [
        `wildcard4 tcp . 8080 : 10.1.0.5 . 80 @${keep}`,
        `masq_ports4 127.0.0.0/8 . 10.1.0.5 . tcp . 80 @${keep}`,
        `masq_ports4 10.1.0.0/24 . 10.1.0.5 . tcp . 80 @${keep}`,
        `wildcard4 tcp . 9090 : 10.2.0.5 . 80 @${other}`,
        `masq_ports4 127.0.0.0/8 . 10.2.0.5 . tcp . 80 @${other}`,
        `masq_ports4 10.2.0.0/24 . 10.2.0.5 . tcp . 80 @${other}`,
      ].sort(),
    );
    expect(host.records!.all().map((r) => r.key)).toEqual([keep, other]);
    expect(host.locks).toBe(4);
  });

  it('succeeds when the table does not exist', async () => {
    expect((await gc([])).code).toBe(0);
    expect(nft.dump()).toBe('');
  });
});

describe('portmap ADD with the skeleton in place (netlink says so)', () => {
  it('does not rewrite the base chains, and ends in the same state', async () => {
    host.markers = (name) => nft.chainInfo('inet', TABLE, name);
    await add({ ips: dual, mappings: [web, dns] });
    const runs = nft.applied.length;
    await add({ ips: ['10.1.0.6/24'], mappings: [{ ...web, hostPort: 8081 }] }, 'c2');
    // no nft at all: one element batch
    expect(nft.applied.length).toBe(runs);
    expect(nft.appliedBatches[nft.appliedBatches.length - 1]).not.toMatch(/chain/);
    expect(nft.dump()).toContain('chain postrouting {');
  });
});
