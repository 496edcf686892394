/**
 * The IPsec side of firewall recovery. An encrypted overlay keeps its SAs
 * and policies in xfrm, which `nft flush ruleset` does not touch, but also
 * an nftables table (shared/ipsec/firewall.ts): the encrypt mark, without
 * which an encrypted VNI's VXLAN matches no policy and leaves in clear,
 * and the cleartext drop. The agent, running with its table watch, must
 * put both back by itself, long before its next periodic pass.
 *
 * The agent runs here with its real nftables in a namespace this file
 * creates, on FakeKV and FakeXfrm (this kernel has no AES-GCM for real SAs;
 * the data path is the VM test's); the peer's address is only written into
 * rules, never sent to.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeKV } from '../../../testkit/fake-kv';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { addNetns, delNetns, netnsPath } from '../../../testkit/netns';
import { uniqueName } from '../../../testkit/exec';
import { eventually } from '../../../testkit/overlay/lab';
import { IPSEC_REQID, IPSEC_TABLE, newRing, serializeRing } from '../../../shared/ipsec';
import { realNft, realTable } from '../../../shared/nft/real';
import type { Nft } from '../../../shared/nft/nft-interface';
import { putIf } from '../../../shared/etcd/kv';
import { ipsecTableIntact, startAgent, type Agent } from '../../../plugins/overlay/agent';
import { ControlPlane } from '../../../plugins/overlay/controlplane';

const PREFIX = '/ovr';
const ME = '192.0.2.1';
const PEER = '192.0.2.2';

describe("an encrypted overlay's nftables table after nft flush ruleset", () => {
  const ns = uniqueName('ovri');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ovri-'));
  const xfrm = new FakeXfrm();
  const lines: string[] = [];
  let agent: Agent | undefined;
  /** when the agent last wrote its table (each pass does) */
  let lastWrite = 0;

  const nft = (...args: string[]): string => execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args], { encoding: 'utf8' });
  const intact = (): boolean => ipsecTableIntact(realTable(IPSEC_TABLE, { netnsPath: netnsPath(ns) }).list());

  beforeAll(async () => {
    addNetns(ns);
    const kv = new FakeKV();
    const cp = new ControlPlane(kv, { prefix: PREFIX, log: () => undefined });
    await cp.ensureNetwork({ name: 'secret', subnet: '10.9.0.0/24', vni: 4096, encrypted: true });
    await kv.txn({ success: [{ put: cp.hostKey('peer'), value: JSON.stringify({ name: 'peer', vtep: PEER }) }] }, Date.now() + 1000);
    const ep = (containerId: string, host: string, last: number) => ({ network: 'secret', containerId, ifname: 'eth0', ip: `10.9.0.${last}`, mac: `02:42:0a:09:00:0${last}`, host });
    await cp.putEndpoint(ep('mine', 'me', 2));
    await cp.putEndpoint(ep('theirs', 'peer', 3));
    await putIf(kv, `${PREFIX}/ipsec/ring`, serializeRing(newRing(Date.now())), 0n, Date.now() + 1000);
    const real = realNft({ netnsPath: netnsPath(ns) });
    const nftSeam: Nft = {
      run: (tx) => {
        real.run(tx);
        lastWrite = Date.now();
      },
      check: (tx) => real.check(tx),
      list: (family, table) => real.list(family, table),
    };
    agent = await startAgent(
      // a periodic pass once a minute: only the watch can repair the table within the bound below
      { node: 'me', hostId: 'c'.repeat(32), vtep: ME, endpoints: [], prefix: PREFIX, stateDir: dir, ttlSeconds: 10, resyncMs: 60_000, requestTimeoutMs: 3000 },
      { kv, log: (l) => lines.push(l), ipsec: { xfrm, nft: nftSeam }, tableWatch: { netnsPath: netnsPath(ns), pollMs: 100 } },
    );
    // The agent's own etcd writes (its ack, the election) set off a few passes as it starts; once
    // they are over, only the watch can rewrite the table before the next periodic pass.
    if (!(await eventually(() => lastWrite > 0 && Date.now() - lastWrite > 1500, 20_000))) throw new Error(`the agent kept writing:\n${lines.join('\n')}`);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    delNetns(ns);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('starts with the peer keyed and the encrypt mark and cleartext drop installed', () => {
    expect(xfrm.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID).length).toBeGreaterThan(0);
    expect(intact()).toBe(true);
    // nft prints the VNI in hex (and secpath as ipsec)
    expect(nft('list', 'chain', 'inet', 'cni_ts_ipsec', 'encrypt_mark')).toMatch(/ip daddr 192\.0\.2\.2 udp dport 4789 @th,96,24 (?:4096|0x1000) meta mark set 0x00d0c4e3/);
  });

  it('the flush leaves the SAs alone and the agent puts the table back by itself', async () => {
    const states = () => xfrm.xfrmStateList().map((s) => `${s.src}>${s.dst} spi ${s.spi}`).sort();
    const sas = states();
    nft('flush', 'ruleset');
    expect(intact()).toBe(false);
    // generous bound (the watch drains every 100 ms here; the periodic pass is a minute away)
    expect(await eventually(intact, 15_000)).toBe(true);
    expect(nft('list', 'chain', 'inet', 'cni_ts_ipsec', 'cleartext_in')).toMatch(/ip saddr 192\.0\.2\.2 udp dport 4789 @th,96,24 (?:4096|0x1000) meta (?:secpath|ipsec) missing drop/);
    expect(states()).toEqual(sas);
    expect(lines.join('\n')).toContain('the IPsec table lost its rules; converging now');
  }, 30_000);

  it('also after only the table is flushed (its chains kept, their rules gone)', async () => {
    nft('flush', 'table', 'inet', 'cni_ts_ipsec');
    expect(await eventually(intact, 15_000)).toBe(true);
  }, 30_000);
});
