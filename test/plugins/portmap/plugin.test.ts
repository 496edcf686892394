/**
 * portmap's rule logic against FakeNft, through the real skel: golden nft
 * text for what ADD installs, and what DEL, CHECK and GC do to it.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import type { Family, Listing, Nft } from '../../../shared/nft/nft-interface';
import type { Transaction } from '../../../shared/nft/transaction';
import { ownerChains } from '../../../plugins/portmap/rules';
import { call, fakeHost, portmapConf, type FakeHost } from './harness';

const TABLE = 'cni_ts_portmap';
const C1 = ownerChains({ network: 'net1', containerID: 'c1', ifname: 'eth0' }).dnat;
const C2 = ownerChains({ network: 'net1', containerID: 'c2', ifname: 'eth0' }).dnat;

const web = { hostPort: 8080, containerPort: 80, protocol: 'tcp' };
const dns = { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '127.0.0.1' };
const dual = ['10.1.0.5/24', 'fd00:1::5/64'];

const SKELETON_CHAINS = `	chain dispatch {
		ip daddr . meta l4proto . th dport vmap @hostip4_ports
		ip6 daddr . meta l4proto . th dport vmap @hostip6_ports
		meta nfproto . meta l4proto . th dport vmap @wildcard_ports
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
		ct status dnat ip daddr . meta l4proto . th dport vmap @masq4
		ct status dnat ip6 daddr . meta l4proto . th dport vmap @masq6
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat return
		iifname != "lo" ip daddr 127.0.0.0/8 drop comment "127.0.0.0/8 from outside lo, not DNATed: dropped (route_localnet guard)"
	}

	chain skeleton {
		comment "cni-ts portmap skeleton v3"
	}`;

/** The table with no container in it: what every DEL leaves behind. */
const EMPTY = `table inet cni_ts_portmap {
	comment "cni-ts portmap: published container ports"
	map wildcard_ports {
		type nf_proto . inet_proto . inet_service : verdict
	}

	map hostip4_ports {
		type ipv4_addr . inet_proto . inet_service : verdict
	}

	map hostip6_ports {
		type ipv6_addr . inet_proto . inet_service : verdict
	}

	map masq4 {
		type ipv4_addr . inet_proto . inet_service : verdict
	}

	map masq6 {
		type ipv6_addr . inet_proto . inet_service : verdict
	}

${SKELETON_CHAINS}
}
`;

const DUAL_STACK_ADD = `table inet cni_ts_portmap {
	comment "cni-ts portmap: published container ports"
	map wildcard_ports {
		type nf_proto . inet_proto . inet_service : verdict
		elements = { ipv4 . tcp . 8080 : jump ${C1}, ipv6 . tcp . 8080 : jump ${C1} }
	}

	map hostip4_ports {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 127.0.0.1 . udp . 5353 : jump ${C1} }
	}

	map hostip6_ports {
		type ipv6_addr . inet_proto . inet_service : verdict
	}

	map masq4 {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.1.0.5 . tcp . 80 : jump ${C1}-masq, 10.1.0.5 . udp . 53 : jump ${C1}-masq }
	}

	map masq6 {
		type ipv6_addr . inet_proto . inet_service : verdict
		elements = { fd00:1::5 . tcp . 80 : jump ${C1}-masq }
	}

${SKELETON_CHAINS}

	chain ${C1} {
		meta nfproto ipv4 tcp dport 8080 dnat ip to 10.1.0.5:80 comment "cni-ts:net1:c1:eth0"
		meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00:1::5]:80 comment "cni-ts:net1:c1:eth0"
		ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.1.0.5:53 comment "cni-ts:net1:c1:eth0"
	}

	chain ${C1}-masq {
		ip saddr { 127.0.0.0/8, 10.1.0.0/24 } masquerade comment "cni-ts:net1:c1:eth0"
		ip6 saddr fd00:1::/64 masquerade comment "cni-ts:net1:c1:eth0"
	}
}
`;

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

/** Every element of the table, as "map key : value". */
function elements(): string[] {
  return (nft.list('inet', TABLE)?.sets ?? []).flatMap((s) => s.elements.map((e) => `${s.name} ${e.key} : ${e.value}`));
}

describe('portmap ADD', () => {
  it('installs DNAT for every family the container has, hostIP claims, and masquerading, in one transaction', async () => {
    const r = await add({ ips: dual, mappings: [web, dns] });
    expect(r.code).toBe(0);
    expect(nft.dump('inet', TABLE)).toBe(DUAL_STACK_ADD);
    // one listing (conflicts) and one transaction
    expect(nft.execs).toBe(2);
    expect(nft.applied).toHaveLength(1);
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
    expect(elements()).toEqual([`wildcard_ports ipv4 . tcp . 8080 : jump ${C1}`, `wildcard_ports ipv6 . tcp . 8080 : jump ${C1}`]);
    expect(nft.dump('inet', TABLE)).toContain(`chain ${C1}-masq {\n\t}`);
    expect(host.localnet).toEqual([]);
  });

  it('with masqAll masquerades every source of forwarded connections', async () => {
    await add({ ips: dual, mappings: [web], extra: { masqAll: true } });
    expect(nft.dump('inet', TABLE)).toContain(
      `chain ${C1}-masq {\n\t\tmeta nfproto ipv4 masquerade comment "cni-ts:net1:c1:eth0"\n\t\tmeta nfproto ipv6 masquerade comment "cni-ts:net1:c1:eth0"\n\t}`,
    );
  });

  it('does not enable route_localnet for an IPv6-only container', async () => {
    await add({ ips: ['fd00:1::5/64'], mappings: [web] });
    expect(host.localnet).toEqual([]);
    expect(elements()).toEqual([`wildcard_ports ipv6 . tcp . 8080 : jump ${C1}`, `masq6 fd00:1::5 . tcp . 80 : jump ${C1}-masq`]);
  });

  it('is idempotent for the same container, and drops what a repeated ADD no longer asks for', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    await add({ ips: dual, mappings: [web, dns] });
    expect(nft.dump('inet', TABLE)).toBe(DUAL_STACK_ADD);
    await add({ ips: dual, mappings: [dns] });
    expect(elements().sort()).toEqual([`hostip4_ports 127.0.0.1 . udp . 5353 : jump ${C1}`, `masq4 10.1.0.5 . udp . 53 : jump ${C1}-masq`]);
  });

  it('takes over a stale masquerade element of an address that is now its own', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] }, 'old');
    // "old" leaked without DEL; IPAM gave its address to c1, which publishes another host port to the same container port
    const r = await add({ ips: ['10.1.0.5/24'], mappings: [{ ...web, hostPort: 9090 }] });
    expect(r.code).toBe(0);
    expect(elements()).toContain(`masq4 10.1.0.5 . tcp . 80 : jump ${C1}-masq`);
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
  it('removes exactly its container in one transaction without listing, leaving the empty skeleton', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    const execs = nft.execs;
    expect((await del({ ips: dual, mappings: [web, dns] })).code).toBe(0);
    expect(nft.execs - execs).toBe(1);
    expect(nft.dump()).toBe(EMPTY);
    expect(host.locks).toBe(1);
  });

  it('leaves other containers alone', async () => {
    await add({ ips: ['10.1.0.5/24'], mappings: [web] });
    await add({ ips: ['10.1.0.6/24'], mappings: [dns] }, 'c2');
    await del({ ips: ['10.1.0.5/24'], mappings: [web] });
    expect(elements()).toEqual([`hostip4_ports 127.0.0.1 . udp . 5353 : jump ${C2}`, `masq4 10.1.0.6 . udp . 53 : jump ${C2}-masq`]);
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

  it('without prevResult or mappings finds its container by listing once', async () => {
    await add({ ips: dual, mappings: [web, dns] });
    const execs = nft.execs;
    expect((await del({})).code).toBe(0);
    // the keyless transaction fails (elements still jump to our chain), one listing, one removal
    expect(nft.execs - execs).toBe(3);
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
      details: expect.stringContaining('element 127.0.0.1 . udp . 5353 is missing from map hostip4_ports'),
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
    const keep = ownerChains({ network: 'net1', containerID: 'keep', ifname: 'eth0' }).dnat;
    const other = ownerChains({ network: 'net2', containerID: 'other', ifname: 'eth0' }).dnat;
    expect(elements().sort()).toEqual(
      [
        `wildcard_ports ipv4 . tcp . 8080 : jump ${keep}`,
        `masq4 10.1.0.5 . tcp . 80 : jump ${keep}-masq`,
        `wildcard_ports ipv4 . tcp . 9090 : jump ${other}`,
        `masq4 10.2.0.5 . tcp . 80 : jump ${other}-masq`,
      ].sort(),
    );
    const chains = nft.list('inet', TABLE)!.chains.map((c) => c.name);
    expect(chains.filter((c) => c.startsWith('pm-')).sort()).toEqual([keep, `${keep}-masq`, other, `${other}-masq`].sort());
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
    expect(nft.applied.length).toBe(runs + 1);
    expect(nft.applied[nft.applied.length - 1]).not.toMatch(/flush chain inet cni_ts_portmap (dispatch|prerouting|output|postrouting)/);
    expect(nft.dump()).toContain('chain postrouting {');
  });
});
