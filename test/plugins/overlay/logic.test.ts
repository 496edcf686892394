/**
 * The overlay's logic without a kernel or etcd: the gateway's nft rules on
 * FakeNft, the gateway address pool, configuration defaults, the agent's
 * flags, and the agent's registration/lease handling on FakeKV.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { parseArgs, startAgent, type Agent } from '../../../plugins/overlay/agent';
import { etcdConnection, nodeName, overlaySubnet, schema } from '../../../plugins/overlay/config';
import { ControlPlane } from '../../../plugins/overlay/controlplane';
import { FakeKV } from '../../../testkit/fake-kv';
import { GatewayPool, applyGatewayRules, gatewayPlan, gatewayRulesPresent, gatewayTable } from '../../../plugins/overlay/gateway';
import { gatewayVethName, overlayVethName } from '../../../plugins/overlay/main';
import { macFromIPv4 } from '../../../shared/container-iface';

/** The agent's xfrm and nftables seams, so no test here touches the machine's kernel. */
const fakeIpsec = () => ({ xfrm: new FakeXfrm(), nft: new FakeNft() });

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ovl-'));

describe('the gateway bridge rules', () => {
  it('drop bridge-to-bridge forwarding, admit only replies into the bridge, and masquerade the gateway subnet', () => {
    const nft = new FakeNft();
    expect(gatewayRulesPresent(gatewayTable(nft))).toBe(false);
    applyGatewayRules(gatewayTable(nft), { bridge: 'cni_gwbridge', subnet: '172.18.0.0/16' });
    const script = nft.applied[0];
    expect(script).toContain('iifname "cni_gwbridge" oifname "cni_gwbridge" drop');
    expect(script).toContain('oifname "cni_gwbridge" ct state established,related accept');
    expect(script).toContain('ip saddr 172.18.0.0/16 oifname != "cni_gwbridge" masquerade');
    expect(gatewayRulesPresent(gatewayTable(nft))).toBe(true);
  });

  it('applying them again leaves the same ruleset (flush and rewrite, not append)', () => {
    const nft = new FakeNft();
    applyGatewayRules(gatewayTable(nft), { bridge: 'cni_gwbridge', subnet: '172.18.0.0/16' });
    const once = nft.dump();
    applyGatewayRules(gatewayTable(nft), { bridge: 'cni_gwbridge', subnet: '172.18.0.0/16' });
    expect(nft.dump()).toBe(once);
  });
});

describe('the gateway address pool', () => {
  it('gives the first free host address after the gateway, the same one again to the same owner, and reuses released ones', () => {
    const dir = tmp();
    const pool = new GatewayPool(dir, '172.18.0.0/16');
    expect(pool.allocate('a', 'eth0')).toEqual({ address: '172.18.0.2', gateway: '172.18.0.1', prefix: 16 });
    expect(pool.allocate('b', 'eth0').address).toBe('172.18.0.3');
    expect(pool.allocate('a', 'eth0').address).toBe('172.18.0.2');
    pool.release('a', 'eth0');
    expect(pool.allocate('c', 'eth0').address).toBe('172.18.0.2');
    fs.rmSync(dir, { recursive: true });
  });

  it('fails with code 11 when the subnet is full, and refuses an IPv6 or tiny subnet with code 7', () => {
    const dir = tmp();
    const pool = new GatewayPool(dir, '10.0.0.0/30');
    expect(pool.allocate('a', 'eth0').address).toBe('10.0.0.2');
    expect(() => pool.allocate('b', 'eth0')).toThrow(expect.objectContaining({ code: 11 }));
    expect(() => gatewayPlan('fd00::/64')).toThrow(expect.objectContaining({ code: 7 }));
    expect(() => gatewayPlan('10.0.0.0/31')).toThrow(expect.objectContaining({ code: 7 }));
    fs.rmSync(dir, { recursive: true });
  });
});

describe('naming', () => {
  it('derives 15-character port names from the attachment and Docker-style MACs from the address', () => {
    expect(overlayVethName('c1', 'eth0')).toMatch(/^ve[0-9a-f]{13}$/);
    expect(gatewayVethName('c1', 'eth0')).toMatch(/^gw[0-9a-f]{13}$/);
    expect(overlayVethName('c1', 'eth0')).not.toBe(overlayVethName('c2', 'eth0'));
    expect(macFromIPv4('10.60.0.18')).toBe('02:42:0a:3c:00:12');
  });
});

describe('the plugin configuration', () => {
  const base = { cniVersion: '1.1.0', name: 'ov', type: 'overlay' };

  it('takes etcd, node name and subnet from the IPAM section when the overlay names none', () => {
    const conf = schema.parse({
      ...base,
      ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.5.0.0/24' }]], etcd: { endpoints: ['10.0.0.1:2379'], nodeName: 'n1', requestTimeoutMs: 900 } },
    });
    expect(etcdConnection(conf)).toMatchObject({ endpoints: ['10.0.0.1:2379'], requestTimeoutMs: 900, keyPrefix: '/cni-ts/overlay' });
    expect(nodeName(conf)).toBe('n1');
    expect(overlaySubnet(conf)).toBe('10.5.0.0/24');
    expect(conf.gateway).toEqual({ enabled: true, bridge: 'cni_gwbridge', subnet: '172.18.0.0/16', ifname: 'eth1' });
  });

  it('prefers its own settings, and refuses TLS endpoints without a CA (code 7)', () => {
    const conf = schema.parse({ ...base, subnet: '10.6.0.0/24', nodeName: 'own', etcd: { endpoints: ['https://e:2379'] }, ipam: { type: 'cluster-ipam', subnet: '10.5.0.0/24' } });
    expect(overlaySubnet(conf)).toBe('10.6.0.0/24');
    expect(nodeName(conf)).toBe('own');
    expect(() => etcdConnection(conf)).toThrow(expect.objectContaining({ code: 7 }));
  });

  it('refuses a VNI outside 24 bits', () => {
    expect(schema.safeParse({ ...base, vni: 1 << 24 }).success).toBe(false);
  });
});

describe('the agent flags', () => {
  it('need a VTEP address and give defaults for the rest', () => {
    const { leave, opts } = parseArgs(['--node', 'n', '--vtep', '192.0.2.1']);
    expect(leave).toBe(false);
    expect(opts).toMatchObject({ node: 'n', vtep: '192.0.2.1', endpoints: ['127.0.0.1:2379'], ttlSeconds: 10, stateDir: '/run/cni-ts/overlay' });
    expect(() => parseArgs(['--node', 'n'])).toThrow(/--vtep/);
    expect(() => parseArgs(['--vtep', '192.0.2.1', '--bogus', '1'])).toThrow(/unknown flag/);
    expect(parseArgs(['leave', '--node', 'n']).leave).toBe(true);
  });
});

describe('the agent on a fake etcd', () => {
  let agent: Agent | undefined;
  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
  });

  const opts = (stateDir: string) => ({
    node: 'h1',
    hostId: '1'.repeat(32),
    vtep: '192.0.2.1',
    endpoints: [],
    prefix: '/p',
    stateDir,
    ttlSeconds: 10,
    resyncMs: 60_000,
    requestTimeoutMs: 1000,
  });

  it('registers its host on a lease, and registers again when the lease is lost', async () => {
    const kv = new FakeKV();
    const cp = new ControlPlane(kv, { prefix: '/p' });
    const lines: string[] = [];
    agent = await startAgent(opts(tmp()), { kv, log: (l) => lines.push(l), ipsec: fakeIpsec() });
    expect(await cp.getHost('h1')).toEqual({ name: 'h1', vtep: '192.0.2.1', hostId: '1'.repeat(32) });
    kv.expire('100'); // the first lease FakeKV grants
    expect(await cp.getHost('h1')).toBeUndefined();
    expect(await agent.sync()).toBe(true);
    expect(await cp.getHost('h1')).toEqual({ name: 'h1', vtep: '192.0.2.1', hostId: '1'.repeat(32) });
    expect(lines.some((l) => l.includes('lease 100 is gone'))).toBe(true);
  });

  it('keeps going when etcd is unreachable, and a pass succeeds again once it is back', async () => {
    const kv = new FakeKV();
    const lines: string[] = [];
    agent = await startAgent(opts(tmp()), { kv, log: (l) => lines.push(l), ipsec: fakeIpsec() });
    kv.down = true;
    expect(await agent.sync()).toBe(false);
    expect(lines.at(-1)).toContain('keeping current entries');
    kv.down = false;
    expect(await agent.sync()).toBe(true);
  });

  it('leave revokes the lease, so the host is gone at once', async () => {
    const kv = new FakeKV();
    const cp = new ControlPlane(kv, { prefix: '/p' });
    const a = await startAgent(opts(tmp()), { kv, log: () => undefined, ipsec: fakeIpsec() });
    await a.leave();
    expect(await cp.getHost('h1')).toBeUndefined();
  });
});
