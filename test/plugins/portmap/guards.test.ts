/**
 * portmap's loopback guards and input bounds against FakeNft, through the
 * real skel: the martian guard is in place before route_localnet is turned
 * on (and a failure there leaves nothing), an older skeleton is upgraded,
 * CHECK notices a missing guard, and an oversized portMappings list is
 * refused with code 7 before anything is read or written. The same
 * behaviour against real traffic is in loopback.test.ts; a list at the bound
 * on the real nft in nft.test.ts (FakeNft is too slow for thousands of rules).
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { Transaction } from '../../../shared/nft/transaction';
import { MAX_PORT_MAPPINGS, claimsFor } from '../../../plugins/portmap/config';
import { GUARD_COMMENTS, T, findConflicts, heldOfListing } from '../../../plugins/portmap/rules';
import { call, fakeHost, portmapConf, type FakeHost } from './harness';

const TABLE = 'cni_ts_portmap';
const web = { hostPort: 8080, containerPort: 80, protocol: 'tcp' };
const ips = ['10.1.0.5/24'];

let nft: FakeNft;
let host: FakeHost;

beforeEach(() => {
  nft = new FakeNft();
  host = fakeHost(nft);
});

const add = (o: Parameters<typeof portmapConf>[0], containerId = 'c1') => call(host, { command: 'ADD', containerId, conf: portmapConf(o) });
const check = (o: Parameters<typeof portmapConf>[0], containerId = 'c1') => call(host, { command: 'CHECK', containerId, conf: portmapConf(o) });

describe('portmap loopback guards', () => {
  it('turns route_localnet on only once the martian guard is installed', async () => {
    const seen: string[] = [];
    host.deps.enableLocalnet = () => {
      seen.push(nft.dump('inet', TABLE));
    };
    expect((await add({ ips, mappings: [{ ...web, hostIP: '127.0.0.1' }] })).code).toBe(0);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toContain('iifname != "lo" ip daddr 127.0.0.0/8 drop');
    expect(seen[0]).toContain('ip daddr 127.0.0.0/8 return');
  });

  it('leaves nothing of the container behind when route_localnet cannot be turned on', async () => {
    await add({ ips: ['10.1.0.9/24'], mappings: [{ ...web, hostPort: 9090 }] }, 'other');
    const before = nft.dump('inet', TABLE);
    host.deps.enableLocalnet = () => {
      throw new Error('no such interface');
    };
    const r = await add({ ips, mappings: [web] });
    expect(r.code).toBe(1);
    expect(r.out).toMatchObject({ code: 999 });
    expect(nft.dump('inet', TABLE)).toBe(before);
  });

  it('rewrites a table of the previous skeleton version and drops its marker', async () => {
    const old = new Transaction();
    old.add({ kind: 'table', ...T });
    old.add({ kind: 'chain', ...T, name: 'dispatch' });
    old.add({ kind: 'chain', ...T, name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' });
    old.add({ kind: 'rule', ...T, chain: 'prerouting', rule: 'fib daddr type local jump dispatch' });
    old.add({ kind: 'chain', ...T, name: 'skeleton-v1' });
    nft.run(old);
    // what netlink reports for an old table: this version's marker is absent
    host.markers = (name) => nft.chainInfo('inet', TABLE, name);
    expect((await add({ ips, mappings: [web] })).code).toBe(0);
    const text = nft.dump('inet', TABLE);
    expect(text).not.toContain('skeleton-v1');
    expect(text).toContain('chain skeleton {\n\t\tcomment "cni-ts portmap skeleton v4"\n\t}');
    expect(text).toContain(`chain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr 127.0.0.0/8 return`);
    expect(text).toContain('chain input {');
  });

  it('CHECK fails with code 111 when a guard rule is gone', async () => {
    await add({ ips, mappings: [web] });
    expect((await check({ ips, mappings: [web] })).code).toBe(0);
    const flush = new Transaction();
    flush.flush({ kind: 'chain', ...T, name: 'input' });
    flush.add({ kind: 'rule', ...T, chain: 'input', rule: 'ip daddr 127.0.0.0/8 counter' });
    nft.run(flush);
    expect((await check({ ips, mappings: [web] })).out).toMatchObject({ code: 111, details: expect.stringContaining(GUARD_COMMENTS.input) });
  });
});

describe('portmap input bounds', () => {
  const many = (n: number) => Array.from({ length: n }, (_, i) => ({ hostPort: 1 + i, containerPort: 80, protocol: 'tcp' }));

  it(`refuses more than ${MAX_PORT_MAPPINGS} port mappings with code 7, reading and changing nothing`, async () => {
    await add({ ips: ['10.1.0.9/24'], mappings: [web] }, 'other');
    const before = nft.dump();
    const [execs, locks] = [nft.execs, host.locks];
    for (const command of ['ADD', 'CHECK'] as const) {
      const r = await call(host, { command, conf: portmapConf({ ips, mappings: many(MAX_PORT_MAPPINGS + 1) }) });
      expect(r.code).toBe(1);
      expect(r.out).toMatchObject({ code: 7, msg: expect.stringContaining(`at most ${MAX_PORT_MAPPINGS} port mappings`) });
    }
    expect(nft.execs).toBe(execs);
    expect(host.locks).toBe(locks);
    expect(host.localnet).toEqual(['10.1.0.9']);
    expect(nft.dump()).toBe(before);
  });

  it('finds every conflict and every competing mapping the slow way would', () => {
    // claimsFor and findConflicts index claims by family, protocol and port;
    // this holds them to the pairwise definition on a mixed request.
    const addrs = [
      { family: 'ipv4' as const, ip: '10.1.0.5', subnet: '10.1.0.0/24' },
      { family: 'ipv6' as const, ip: 'fd00::5', subnet: 'fd00::/64' },
    ];
    const mappings = [
      { hostPort: 80, containerPort: 80, protocol: 'tcp' as const },
      { hostPort: 80, containerPort: 80, protocol: 'tcp' as const },
      { hostPort: 81, containerPort: 80, protocol: 'tcp' as const, hostIP: '127.0.0.1' },
      { hostPort: 81, containerPort: 80, protocol: 'tcp' as const, hostIP: '127.0.0.2' },
      { hostPort: 82, containerPort: 80, protocol: 'udp' as const, hostIP: '::' },
    ];
    const claims = claimsFor(mappings, addrs);
    expect(claims).toHaveLength(5);
    expect(() => claimsFor([...mappings, { hostPort: 81, containerPort: 80, protocol: 'tcp' as const }], addrs)).toThrow(/portMappings\[5\] competes with portMappings\[2\]/);
    expect(() => claimsFor([...mappings, { hostPort: 80, containerPort: 81, protocol: 'tcp' as const, hostIP: '10.0.0.1' }], addrs)).toThrow(
      /portMappings\[5\] competes with portMappings\[0\]/,
    );

    const theirs = 'cni-ts:n:x:eth0';
    const to = 'fd00::9 . 80';
    const listing = {
      family: 'inet' as const,
      table: TABLE,
      chains: [],
      sets: [
        { kind: 'map' as const, name: 'wildcard6', handle: 0, type: '', valueType: '', flags: [], elements: [{ key: 'udp . 82', value: to, comment: theirs }] },
        {
          kind: 'map' as const,
          name: 'hostip4',
          handle: 0,
          type: '',
          valueType: '',
          flags: [],
          elements: [
            { key: '127.0.0.2 . tcp . 81', value: '10.9.0.9 . 80', comment: theirs },
            { key: '10.9.9.9 . tcp . 80', value: '10.9.0.9 . 80', comment: theirs },
            { key: '10.9.9.9 . tcp . 81', value: '10.9.0.9 . 80', comment: theirs },
          ],
        },
      ],
    };
    const found = findConflicts(heldOfListing(listing), { network: 'n', containerID: 'me', ifname: 'eth0' }, claims).map((c) => `${c.held} <- ${c.claim.family} ${c.claim.hostIP ?? '*'}:${c.claim.hostPort}`);
    expect(found.sort()).toEqual(['tcp 10.9.9.9:80 <- ipv4 *:80', 'tcp 127.0.0.2:81 <- ipv4 127.0.0.2:81', 'udp [::]:82 <- ipv6 *:82'].sort());
  });
});
