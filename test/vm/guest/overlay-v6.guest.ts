/**
 * An encrypted dual-stack overlay over an IPv6 underlay, in the VM (its
 * kernel has ESP; the development kernel does not): two simulated hosts
 * whose VTEPs are fd00:200::1 and ::2 on the lab's underlay bridge
 * (testkit/overlay/lab.ts with `underlay6`), etcd on the lab's IPv4, the
 * real agents and plugin.
 *
 * Checks: MTU 1396 (IPv6 outer header + ESP, main.ts networkMtu); xfrm
 * states and policies with IPv6 endpoints and selectors, the two ends of
 * each SA agreeing; ping and ping6 between the containers; only ESP on the
 * underlay, never cleartext VXLAN of the network (tcpdump); the cleartext
 * drop rule written for IPv6 peers (ip6 saddr); DEL of the last endpoints
 * removing every SA and policy.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, test } from '../../../testkit/vm/guest-api';
import { XfrmHandle } from '../../../shared/netlink/xfrm';
import { IPSEC_REQID } from '../../../shared/ipsec';
import { Lab, eventually, sleep } from '../../../testkit/overlay/lab';

const SUBNETS = ['10.66.0.0/24', 'fd66::/64'];
const tag = randomBytes(2).toString('hex');

let lab: Lab | undefined;
const xfrm: XfrmHandle[] = [];
const c: string[] = [];
const addrs = new Map<string, string[]>();
let vni = 0;
const tmpFiles: string[] = [];

afterAll(async () => {
  for (const h of xfrm) h.close();
  for (const f of tmpFiles) fs.rmSync(f, { force: true });
  await lab?.tearDown();
});

function L(): Lab {
  if (!lab) throw new Error('the lab was not set up (first test failed)');
  return lab;
}

function conf(host: number) {
  const cf = L().conf(host, 'ov6e', SUBNETS[0]!, { encrypted: true, gateway: { enabled: false } }, { subnet: undefined, ranges: SUBNETS.map((s) => [{ subnet: s }]) }) as {
    etcd: { requestTimeoutMs: number };
    ipam: { etcd: { requestTimeoutMs: number } };
  };
  // TCG is slow: a bound, not a timing test
  cf.etcd.requestTimeoutMs = 10_000;
  cf.ipam.etcd.requestTimeoutMs = 10_000;
  return cf;
}

function ours(host: number) {
  const h = xfrm[host]!;
  return {
    states: h.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID),
    policies: h.xfrmPolicyList().filter((p) => p.tmpls.some((t) => t.reqid === IPSEC_REQID)),
  };
}

function ping(from: string, to: string, count = 3): { sent: number; received: number } {
  const r = spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', String(count), '-i', '0.3', '-W', '2', to], { encoding: 'utf8' });
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(r.stdout);
  return m ? { sent: Number(m[1]), received: Number(m[2]) } : { sent: 0, received: 0 };
}

/** tcpdump on host 1's underlay port while fn runs; the decoded lines. */
async function capture(fn: () => void): Promise<string[]> {
  const file = `/tmp/ov6-${tag}-${randomBytes(2).toString('hex')}.pcap`;
  tmpFiles.push(file);
  const td = spawn('ip', ['netns', 'exec', L().hosts[1]!, 'tcpdump', '-i', 'u0', '-n', '-U', '--immediate-mode', '-w', file, 'esp or udp port 4789'], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let err = '';
    td.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('listening on')) resolve();
    });
    td.once('exit', (code) => reject(new Error(`tcpdump exited (${code}): ${err}`)));
  });
  try {
    fn();
    await sleep(800);
  } finally {
    const gone = new Promise((r) => td.once('exit', r));
    td.kill('SIGINT');
    await gone;
  }
  return execFileSync('tcpdump', ['-n', '-r', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').filter(Boolean);
}

const v4 = (c: string) => addrs.get(c)!.find((a) => !a.includes(':'))!;
const v6 = (c: string) => addrs.get(c)!.find((a) => a.includes(':'))!;

test(
  'ADD on two hosts of an IPv6 underlay gives dual-stack containers at MTU 1396, and the agents key the pair with IPv6 SAs',
  async () => {
    lab = new Lab(2, process.cwd(), { underlay6: true });
    await lab.setUp();
    for (let i = 0; i < 2; i++) xfrm.push(XfrmHandle.open(lab.nsPath(lab.hosts[i]!)));
    // a loaded TCG guest can take seconds per etcd call: generous bounds, not timing tests
    for (let i = 0; i < 2; i++) lab.startAgent(i, ['--leader-ttl', '10', '--ttl', '30', '--timeout-ms', '10000']);
    const up = await eventually(() => {
      try {
        return L().snapshot().hosts.length === 2;
      } catch {
        return false;
      }
    }, 240_000);
    assert.ok(up, `agents did not register:\n${lab.agentLog(0)}\n${lab.agentLog(1)}`);
    assert.deepEqual(lab.snapshot().hosts.map((h) => h.vtep).sort(), [lab.vtep(0), lab.vtep(1)]);
    for (const host of [0, 1]) {
      const name = lab.addContainer();
      c.push(name);
      const r = lab.plugin(host, 'ADD', name, conf(host));
      assert.equal(r.status, 0, `ADD ${name} on h${host}: ${r.stdout} ${r.stderr}`);
      addrs.set(name, (r.json.ips as Array<{ address: string }>).map((x) => x.address.split('/')[0]!));
    }
    assert.equal(addrs.get(c[0]!)!.length, 2);
    assert.equal(JSON.parse(L().in(c[0]!, 'ip', '-j', 'link', 'show', 'eth0'))[0].mtu, 1396);
    vni = lab.snapshot().networks.find((n) => n.name === 'ov6e')!.vni;
    const keyed = await eventually(() => [0, 1].every((i) => ours(i).policies.length === 1 && ours(i).states.length >= 2 && L().fdbMacs(i, vni).length === 1), 90_000);
    assert.ok(keyed, `not keyed: ${[0, 1].map((i) => `h${i} ${ours(i).states.length} SAs`).join(', ')}\n${lab.agentLog(0).slice(-1500)}\n${lab.agentLog(1).slice(-1500)}`);
    const [v0, v1] = [lab.vtep(0), lab.vtep(1)];
    for (const [i, me, peer] of [[0, v0, v1], [1, v1, v0]] as const) {
      const { states, policies } = ours(i);
      for (const s of states) {
        assert.ok((s.src === me && s.dst === peer) || (s.src === peer && s.dst === me), `SA ${s.src} -> ${s.dst} on h${i}`);
        assert.equal(s.aead?.name, 'rfc4106(gcm(aes))');
        assert.equal(s.mode, 'transport');
      }
      assert.equal(policies[0]!.selector.src, me);
      assert.equal(policies[0]!.selector.dst, peer);
      assert.equal(policies[0]!.selector.dport, 4789);
      assert.deepEqual(policies[0]!.tmpls.map((t) => [t.src, t.dst]), [[me, peer]]);
    }
    // the two ends of host 0's outbound SA agree (same SPI, same key)
    const out0 = ours(0).states.find((s) => s.src === v0)!;
    const at1 = ours(1).states.find((s) => s.src === v0 && s.spi === out0.spi);
    assert.ok(at1 && at1.aead!.key.equals(out0.aead!.key), 'host 1 has no inbound SA matching host 0 outbound one');
  },
  { timeoutMs: 500_000 },
);

test('ping and ping6 between the containers, and the underlay carries only ESP', async () => {
  assert.deepEqual(ping(c[0]!, v6(c[1]!)), { sent: 3, received: 3 });
  assert.deepEqual(ping(c[0]!, v4(c[1]!)), { sent: 3, received: 3 });
  assert.deepEqual(ping(c[1]!, v6(c[0]!)), { sent: 3, received: 3 });
  const lines = await capture(() => {
    ping(c[0]!, v6(c[1]!));
    ping(c[0]!, v4(c[1]!));
  });
  const esp = lines.filter((l) => /ESP\(spi=/.test(l));
  const clear = lines.filter((l) => new RegExp(`vni ${vni}\\b`).test(l));
  assert.ok(esp.length >= 12, `expected ESP for 6 echo requests and 6 replies:\n${lines.join('\n')}`);
  assert.ok(esp.every((l) => l.includes('fd00:200::')), `ESP not between the IPv6 VTEPs:\n${esp.join('\n')}`);
  assert.equal(clear.length, 0, `cleartext VXLAN of the encrypted network:\n${clear.join('\n')}`);
}, { timeoutMs: 200_000 });

test('cleartext VXLAN from the IPv6 peer is dropped by an ip6 rule', () => {
  const table = execFileSync('ip', ['netns', 'exec', L().hosts[0]!, 'nft', 'list', 'table', 'inet', 'cni_ts_ipsec'], { encoding: 'utf8' });
  // nft may print a one-element anonymous set as the bare address, the VNI in hex, and secpath as ipsec
  const vniText = `(${vni}|0x${vni.toString(16).padStart(6, '0')}|0x${vni.toString(16)})`;
  assert.match(table, new RegExp(`ip6 saddr (\\{ )?${L().vtep(1)}( \\})? udp dport 4789 @th,96,24 ${vniText} meta (secpath|ipsec) missing drop`), table);
});

test('DEL of both endpoints removes every SA and policy on both hosts', async () => {
  for (const host of [0, 1]) {
    const r = L().plugin(host, 'DEL', c[host]!, conf(host));
    assert.equal(r.status, 0, `DEL: ${r.stdout} ${r.stderr}`);
  }
  const gone = await eventually(() => [0, 1].every((i) => ours(i).states.length === 0 && ours(i).policies.length === 0), 60_000);
  assert.ok(gone, `left: ${[0, 1].map((i) => `h${i} ${ours(i).states.length} SAs ${ours(i).policies.length} policies`).join(', ')}`);
}, { timeoutMs: 200_000 });
