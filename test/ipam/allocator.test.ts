import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CniError } from '../../shared/cni/errors';
import { allocate, candidates, collectGarbage, release, verify, type AllocationStore } from '../../ipam/allocator';
import { loadIpamConfig, type RangeSet } from '../../ipam/config';
import { IpamErrorCode } from '../../ipam/errors';
import { formatIP, parseIP } from '../../shared/ip';
import { LocalStore } from '../../ipam/local/store';
import { MemoryStore } from '../../testkit/memory-store';

const tmpDirs: string[] = [];
afterEach(() => {
  for (const d of tmpDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** The allocation logic must behave the same over any store. */
const stores: [string, () => AllocationStore][] = [
  ['memory store', () => new MemoryStore()],
  [
    'local store',
    () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-alloc-'));
      tmpDirs.push(dir);
      return LocalStore.open(dir, 'net');
    },
  ],
];

function sets(ranges: unknown[][]): readonly RangeSet[] {
  return loadIpamConfig({ cniVersion: '1.0.0', name: 'net', ipam: { type: 'cluster-ipam', ranges } }).rangeSets;
}

const owner = (id: string, ifname = 'eth0') => ({ containerId: id, ifname });

async function addr(store: AllocationStore, rs: readonly RangeSet[], id: string, requested: string[] = []): Promise<string[]> {
  const got = await allocate(store, rs, owner(id), requested.map((r) => parseIP(r)!));
  return got.map((a) => formatIP(a.ip));
}

async function rejects(p: Promise<unknown>): Promise<CniError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CniError);
  return err as CniError;
}

describe.each(stores)('allocation over the %s', (_name, makeStore) => {
  it('hands out addresses in order from rangeStart, skipping the gateway', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }]]);
    expect(await addr(store, rs, 'a')).toEqual(['10.1.0.2']);
    expect(await addr(store, rs, 'b')).toEqual(['10.1.0.3']);
    const a = await allocate(store, rs, owner('c'));
    expect(a[0]).toMatchObject({ prefix: 24, rangeSet: 0 });
    expect(formatIP(a[0]!.gateway)).toBe('10.1.0.1');
    await store.close();
  });

  it('goes round-robin: a released address is not handed out again until the range has wrapped', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/29' }]]); // .2 to .6 allocatable
    for (const id of ['a', 'b', 'c']) await addr(store, rs, id); // .2 .3 .4
    await release(store, owner('b')); // frees .3
    expect(await addr(store, rs, 'd')).toEqual(['10.1.0.5']);
    expect(await addr(store, rs, 'e')).toEqual(['10.1.0.6']);
    // end of the range: wrap to the start and take the first free one
    expect(await addr(store, rs, 'f')).toEqual(['10.1.0.3']);
    await store.close();
  });

  it('skips a gateway in the middle of the range', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.10', rangeEnd: '10.1.0.12', gateway: '10.1.0.11' }]]);
    expect(await addr(store, rs, 'a')).toEqual(['10.1.0.10']);
    expect(await addr(store, rs, 'b')).toEqual(['10.1.0.12']);
    expect((await rejects(addr(store, rs, 'c'))).code).toBe(IpamErrorCode.NoFreeAddress);
    await store.close();
  });

  it('never hands out the network or broadcast address even when the range covers them', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/29', rangeStart: '10.1.0.0', rangeEnd: '10.1.0.7' }]]);
    const got: string[] = [];
    for (let i = 0; i < 5; i++) got.push(...(await addr(store, rs, `c${i}`)));
    expect(got).toEqual(['10.1.0.2', '10.1.0.3', '10.1.0.4', '10.1.0.5', '10.1.0.6']);
    const err = await rejects(addr(store, rs, 'one-too-many'));
    expect(err.code).toBe(IpamErrorCode.NoFreeAddress);
    expect(err.msg).toMatch(/no free IP address in range set 0/);
    expect(err.details).toMatch(/10\.1\.0\.0\/29/);
    await store.close();
  });

  it('moves on to the next range of a set when one is full, and wraps back to the first', async () => {
    const store = makeStore();
    const rs = sets([
      [
        { subnet: '10.1.0.0/24', rangeStart: '10.1.0.10', rangeEnd: '10.1.0.11' },
        { subnet: '10.2.0.0/24', rangeStart: '10.2.0.10', rangeEnd: '10.2.0.11' },
      ],
    ]);
    const got: string[] = [];
    for (const id of ['a', 'b', 'c', 'd']) got.push(...(await addr(store, rs, id)));
    expect(got).toEqual(['10.1.0.10', '10.1.0.11', '10.2.0.10', '10.2.0.11']);
    await release(store, owner('a'));
    expect(await addr(store, rs, 'e')).toEqual(['10.1.0.10']);
    const e = await allocate(store, rs, owner('e'));
    expect(formatIP(e[0]!.gateway)).toBe('10.1.0.1');
    await store.close();
  });

  it('gives one IPv4 and one IPv6 address for a dual-stack configuration', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }]]);
    expect(await addr(store, rs, 'a')).toEqual(['10.1.0.2', 'fd00:1::2']);
    expect(await addr(store, rs, 'b')).toEqual(['10.1.0.3', 'fd00:1::3']);
    const b = await allocate(store, rs, owner('b'));
    expect(b.map((x) => [x.prefix, formatIP(x.gateway), x.rangeSet])).toEqual([
      [24, '10.1.0.1', 0],
      [64, 'fd00:1::1', 1],
    ]);
    await store.close();
  });

  it('returns the same addresses on a repeated ADD for the same container and interface', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }]]);
    const first = await addr(store, rs, 'a');
    await addr(store, rs, 'b');
    expect(await addr(store, rs, 'a')).toEqual(first);
    expect(await store.listAll()).toHaveLength(4);
    await store.close();
  });

  it('keys allocations by container ID and interface name together', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }]]);
    const eth0 = await allocate(store, rs, owner('a', 'eth0'));
    const eth1 = await allocate(store, rs, owner('a', 'eth1'));
    expect(formatIP(eth0[0]!.ip)).not.toBe(formatIP(eth1[0]!.ip));
    await release(store, owner('a', 'eth0'));
    expect((await store.getByOwner('a', 'eth1')).map(formatIP)).toEqual([formatIP(eth1[0]!.ip)]);
    expect(await store.getByOwner('a', 'eth0')).toEqual([]);
    await store.close();
  });

  it('gives a requested static address exactly, and takes the dynamic path for the other family', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }]]);
    expect(await addr(store, rs, 'a', ['10.1.0.77'])).toEqual(['10.1.0.77', 'fd00:1::2']);
    // the static address became the last reserved: round-robin continues after it
    expect(await addr(store, rs, 'b')).toEqual(['10.1.0.78', 'fd00:1::3']);
    expect(await addr(store, rs, 'c', ['fd00:1::99'])).toEqual(['10.1.0.79', 'fd00:1::99']);
    await store.close();
  });

  it('refuses a requested address that is taken, the gateway, outside every range, or a second one in a set (code 101)', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.10', rangeEnd: '10.1.0.100' }]]);
    await addr(store, rs, 'a', ['10.1.0.50']);
    const cases: [string[], RegExp][] = [
      [['10.1.0.50'], /10\.1\.0\.50 is already in use/],
      [['10.1.0.1'], /not in any configured range/], // gateway, and before rangeStart
      [['10.1.0.200'], /not in any configured range/],
      [['10.3.0.5'], /not in any configured range/],
      [['10.1.0.20', '10.1.0.21'], /10\.1\.0\.21 is a second request for range set 0/],
    ];
    for (const [req, msg] of cases) {
      const err = await rejects(addr(store, rs, 'b', req));
      expect(err.code, req.join()).toBe(IpamErrorCode.AddressUnavailable);
      expect(err.msg).toMatch(msg);
    }
    // nothing of the failed attempts is left behind
    expect((await store.listAll()).map((a) => a.containerId)).toEqual(['a']);
    await store.close();
  });

  it('refuses the gateway as a requested address when it lies inside the range', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }]]);
    const err = await rejects(addr(store, rs, 'a', ['10.1.0.1']));
    expect(err.code).toBe(IpamErrorCode.AddressUnavailable);
    expect(err.msg).toMatch(/is the subnet's gateway/);
    await store.close();
  });

  it('refuses a requested address different from the one the attachment already holds', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }]]);
    await addr(store, rs, 'a');
    const err = await rejects(addr(store, rs, 'a', ['10.1.0.9']));
    expect(err.code).toBe(IpamErrorCode.AddressUnavailable);
    expect(err.msg).toMatch(/already holds 10\.1\.0\.2/);
    expect(await addr(store, rs, 'a', ['10.1.0.2'])).toEqual(['10.1.0.2']);
    await store.close();
  });

  it('releases what it took in other range sets when one set is exhausted', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: 'fd00:1::/64' }], [{ subnet: '10.1.0.0/30' }]]); // one IPv4 address: .2
    expect(await addr(store, rs, 'a')).toEqual(['fd00:1::2', '10.1.0.2']);
    const err = await rejects(addr(store, rs, 'b'));
    expect(err.code).toBe(IpamErrorCode.NoFreeAddress);
    expect(err.msg).toMatch(/range set 1/);
    expect(await store.getByOwner('b', 'eth0')).toEqual([]);
    expect(await store.listAll()).toHaveLength(2);
    await store.close();
  });

  it('starts at rangeStart when the last reserved address is not in the set any more', async () => {
    const store = makeStore();
    const before = sets([[{ subnet: '10.9.0.0/24' }]]);
    await addr(store, before, 'a'); // last reserved 10.9.0.2 in set 0
    const after = sets([[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.40' }]]);
    expect(await addr(store, after, 'b')).toEqual(['10.1.0.40']);
    await store.close();
  });

  it('releases nothing, without error, for an attachment that holds nothing', async () => {
    const store = makeStore();
    expect(await release(store, owner('nobody'))).toEqual([]);
    await store.close();
  });

  it('collects every allocation whose attachment is not valid any more, and keeps the valid ones', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }]]);
    for (const id of ['a', 'b', 'c']) await addr(store, rs, id);
    const freed = await collectGarbage(store, [owner('b'), owner('c', 'eth9')]);
    expect(freed.map((f) => `${f.containerId}/${f.ifname} ${formatIP(f.ip)}`).sort()).toEqual([
      'a/eth0 10.1.0.2',
      'a/eth0 fd00:1::2',
      'c/eth0 10.1.0.4',
      'c/eth0 fd00:1::4',
    ]);
    expect((await store.listAll()).map((x) => x.containerId)).toEqual(['b', 'b']);
    await store.close();
  });

  it('verifies that an attachment holds an address in every range set (CHECK)', async () => {
    const store = makeStore();
    const rs = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }]]);
    await addr(store, rs, 'a');
    expect((await verify(store, rs, owner('a'))).map(formatIP)).toEqual(expect.arrayContaining(['10.1.0.2', 'fd00:1::2']));
    const err = await rejects(verify(store, rs, owner('b')));
    expect(err.code).toBe(IpamErrorCode.AllocationMissing);
    const wider = sets([[{ subnet: '10.1.0.0/24' }], [{ subnet: 'fd00:1::/64' }], [{ subnet: '10.7.0.0/24' }]]);
    expect((await rejects(verify(store, wider, owner('a')))).msg).toMatch(/no address in range set 2/);
    await store.close();
  });
});

describe('candidates', () => {
  const rs = sets([
    [
      { subnet: '10.1.0.0/24', rangeStart: '10.1.0.1', rangeEnd: '10.1.0.3' },
      { subnet: '10.2.0.0/24', rangeStart: '10.2.0.5', rangeEnd: '10.2.0.6' },
    ],
  ])[0]!;
  const list = (last?: string) => [...candidates(rs, last ? parseIP(last) : undefined)].map((c) => formatIP(c.ip));

  it('lists every allocatable address once, from the first range start, without the gateway', () => {
    expect(list()).toEqual(['10.1.0.2', '10.1.0.3', '10.2.0.5', '10.2.0.6']);
  });

  it('starts after the last reserved address and ends with it', () => {
    expect(list('10.1.0.3')).toEqual(['10.2.0.5', '10.2.0.6', '10.1.0.2', '10.1.0.3']);
    expect(list('10.2.0.5')).toEqual(['10.2.0.6', '10.1.0.2', '10.1.0.3', '10.2.0.5']);
    expect(list('10.2.0.6')).toEqual(['10.1.0.2', '10.1.0.3', '10.2.0.5', '10.2.0.6']);
  });

  it('ignores a last reserved address outside the set', () => {
    expect(list('10.3.0.1')).toEqual(list());
  });

  it('treats a gateway outside every range as nothing to skip', () => {
    const r = sets([[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.100', rangeEnd: '10.1.0.101' }]])[0]!;
    expect([...candidates(r)].map((c) => formatIP(c.ip))).toEqual(['10.1.0.100', '10.1.0.101']);
  });
});
