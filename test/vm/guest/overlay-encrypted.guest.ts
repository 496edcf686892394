/**
 * Encrypted overlays end to end, in the VM (its kernel has ESP): three
 * simulated hosts on one underlay bridge, etcd on the underlay (started
 * here, data under /tmp), the real overlay agent on each host (a child
 * node process entered into the host's namespace, --rotate-every 6s), and
 * the real plugin for each ADD/DEL (testkit/overlay/lab.ts, the same
 * lab as the multihost tests). Two overlays: "ove" encrypted on all three
 * hosts, "ovp" clear between hosts 0 and 1.
 *
 * Checks: ESP only for the encrypted network on the underlay and plain
 * VXLAN for the other (tcpdump); ping and TCP over both; every SA with a
 * key of its own (per host pair and direction, derived from the ring key),
 * the two ends of each SA agreeing; continuous pings from one host to both
 * others across key rotations made by the elected agent losing nothing; the last
 * encrypted endpoint's DEL removing every SA and policy on both hosts while
 * the clear network keeps working. The agents' logs must not contain key
 * material.
 *
 * Node starts take 1-4 s under TCG: the tests build on each other, and
 * there are 3 agents + 7 plugin runs + a few etcd reads in all.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, test } from '../../../testkit/vm/guest-api';
import { XfrmHandle } from '../../../shared/netlink/xfrm';
import { native } from '../../../shared/sys/native';
import { IPSEC_REQID, parseRing } from '../../../shared/ipsec';
import { Lab, eventually, sleep } from '../../../testkit/overlay/lab';

const SUBNET_E = '10.61.0.0/24';
const SUBNET_P = '10.62.0.0/24';
const tag = randomBytes(2).toString('hex');

let lab: Lab | undefined;
const xfrm: XfrmHandle[] = [];
const c: string[] = []; // c0 h0 enc, c1 h1 enc, c2 h0 plain, c3 h1 plain, c4 h2 enc
const ip = new Map<string, string>();
let vniE = 0;
let vniP = 0;
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

function conf(host: number, network: string) {
  const encrypted = network === 'ove';
  const cf = L().conf(host, network, encrypted ? SUBNET_E : SUBNET_P, { encrypted, gateway: { enabled: false } }) as {
    etcd: { requestTimeoutMs: number };
    ipam: { etcd: { keyPrefix: string; requestTimeoutMs: number } };
  };
  cf.ipam.etcd.keyPrefix += `-${network}`;
  // TCG is slow, and the agents rotate keys every 3 s beside: a bound, not a timing test
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

function pingCounts(stdout: string): { sent: number; received: number } {
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(stdout);
  return m ? { sent: Number(m[1]), received: Number(m[2]) } : { sent: 0, received: 0 };
}

function ping(from: string, to: string, count = 3, interval = '0.3'): { sent: number; received: number } {
  const r = spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', String(count), '-i', interval, '-W', '2', to], { encoding: 'utf8' });
  return pingCounts(r.stdout);
}

/** ping in the background: several at once from one host */
function pingAsync(from: string, to: string, count: number, interval: string): Promise<{ sent: number; received: number }> {
  const child = spawn('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', String(count), '-i', interval, '-W', '2', to], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', () => resolve(pingCounts(out))));
}

/** A TCP round trip: busybox nc listening in `server`, a line sent from `client`, echoed to a file. */
async function tcp(client: string, server: string, serverIp: string): Promise<string> {
  const out = `/tmp/ovenc-${tag}-${randomBytes(2).toString('hex')}.txt`;
  tmpFiles.push(out);
  const fd = fs.openSync(out, 'w');
  const nc = spawn('ip', ['netns', 'exec', server, 'busybox', 'timeout', '20', 'busybox', 'nc', '-l', '-p', '5555'], { stdio: ['ignore', fd, 'ignore'] });
  fs.closeSync(fd);
  const gone = new Promise((r) => nc.once('exit', r));
  const line = `hello-${randomBytes(4).toString('hex')}`;
  let sent = false;
  for (let i = 0; i < 40 && !sent; i++) {
    await sleep(250);
    sent = spawnSync('ip', ['netns', 'exec', client, 'busybox', 'sh', '-c', `echo ${line} | busybox timeout 5 busybox nc ${serverIp} 5555`]).status === 0;
  }
  await Promise.race([gone, sleep(5000)]);
  nc.kill('SIGKILL');
  const got = fs.readFileSync(out, 'utf8').trim();
  return got === line ? 'ok' : `sent ${line}, server read "${got}"`;
}

/** tcpdump on host 1's underlay port while fn runs; the decoded lines. */
async function capture(fn: () => Promise<void> | void): Promise<string[]> {
  const file = `/tmp/ovenc-${tag}-${randomBytes(2).toString('hex')}.pcap`;
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
    await fn();
    await sleep(800);
  } finally {
    const gone = new Promise((r) => td.once('exit', r));
    td.kill('SIGINT');
    await gone;
  }
  return execFileSync('tcpdump', ['-n', '-r', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').filter(Boolean);
}

function ringGeneration(): number {
  const v = L().kvGet(`${L().prefix}/ipsec/ring`);
  return v === undefined ? 0 : parseRing(v).generation;
}

test(
  'ADD on two hosts puts containers on an encrypted overlay at MTU 1416 and a clear one at 1450, and the agents key the pair',
  async () => {
    lab = new Lab(3, process.cwd());
    await lab.setUp();
    for (let i = 0; i < 3; i++) {
      const ns = lab.nsPath(lab.hosts[i]!);
      try {
        xfrm.push(XfrmHandle.open(ns));
      } catch (e) {
        const fd = fs.openSync(ns, 'r');
        let why: string;
        try {
          why = String(native().nsType(fd));
        } catch (e2) {
          why = (e2 as Error).message;
        } finally {
          fs.closeSync(fd);
        }
        throw new Error(`${(e as Error).message} (nsType: ${why}; ${fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes('netns')).length} netns mounts)`);
      }
    }
    for (let i = 0; i < 3; i++) lab.startAgent(i, ['--rotate-every', '6s', '--leader-ttl', '5', '--ttl', '15', '--timeout-ms', '5000']);
    const up = await eventually(() => {
      try {
        return L().snapshot().hosts.length === 3;
      } catch {
        return false;
      }
    }, 180_000);
    assert.ok(up, `agents did not register:\n${lab.agentLog(0)}\n${lab.agentLog(1)}\n${lab.agentLog(2)}`);
    for (const [host, network] of [[0, 'ove'], [1, 'ove'], [0, 'ovp'], [1, 'ovp'], [2, 'ove']] as const) {
      const name = lab.addContainer();
      c.push(name);
      const r = lab.plugin(host, 'ADD', name, conf(host, network));
      assert.equal(r.status, 0, `ADD ${name} (${network}) on h${host}: ${r.stdout} ${r.stderr}`);
      ip.set(name, r.json.ips[0].address.split('/')[0]);
    }
    const mtu = (ns: string) => JSON.parse(L().in(ns, 'ip', '-j', 'link', 'show', 'eth0'))[0].mtu;
    assert.equal(mtu(c[0]!), 1416);
    assert.equal(mtu(c[2]!), 1450);
    const snap = lab.snapshot();
    vniE = snap.networks.find((n) => n.name === 'ove')!.vni;
    vniP = snap.networks.find((n) => n.name === 'ovp')!.vni;
    // every host, per peer: inbound SAs for every key in the ring, one outbound, one policy; then the FDB entries to both peers
    const keyed = await eventually(
      () => [0, 1, 2].every((i) => ours(i).policies.length === 2 && ours(i).states.length >= 6 && L().fdbMacs(i, vniE).length === 2),
      90_000,
    );
    assert.ok(keyed, `not keyed: ${[0, 1, 2].map((i) => `h${i} ${ours(i).states.length} SAs`).join(', ')}\n${lab.agentLog(0).slice(-1500)}\n${lab.agentLog(1).slice(-1500)}`);
    for (let i = 0; i < 3; i++) {
      const { states, policies } = ours(i);
      for (const s of states) {
        assert.equal(s.aead?.name, 'rfc4106(gcm(aes))');
        assert.equal(s.mode, 'transport');
        assert.equal(s.esn, true);
      }
      assert.equal(policies[0]!.selector.dport, 4789);
      assert.equal(policies[0]!.mark?.value, 0xd0c4e3);
    }
  },
  { timeoutMs: 400_000 },
);

test('ping and TCP work over both overlays', async () => {
  assert.deepEqual(ping(c[0]!, ip.get(c[1]!)!), { sent: 3, received: 3 });
  assert.deepEqual(ping(c[4]!, ip.get(c[0]!)!), { sent: 3, received: 3 });
  assert.deepEqual(ping(c[2]!, ip.get(c[3]!)!), { sent: 3, received: 3 });
  assert.equal(await tcp(c[0]!, c[1]!, ip.get(c[1]!)!), 'ok');
  assert.equal(await tcp(c[2]!, c[3]!, ip.get(c[3]!)!), 'ok');
}, { timeoutMs: 200_000 });

test('the underlay carries only ESP for the encrypted overlay and plain VXLAN for the clear one', async () => {
  const lines = await capture(() => {
    ping(c[0]!, ip.get(c[1]!)!, 3, '0.2');
    ping(c[2]!, ip.get(c[3]!)!, 3, '0.2');
  });
  const esp = lines.filter((l) => /ESP\(spi=/.test(l));
  const vxlanE = lines.filter((l) => new RegExp(`vni ${vniE}\\b`).test(l));
  const vxlanP = lines.filter((l) => new RegExp(`vni ${vniP}\\b`).test(l));
  assert.ok(esp.length >= 6, `expected ESP for 3 echo requests and 3 replies:\n${lines.join('\n')}`);
  assert.equal(vxlanE.length, 0, `cleartext VXLAN of the encrypted network:\n${vxlanE.join('\n')}`);
  assert.ok(vxlanP.length >= 6, `expected plain VXLAN of the clear network:\n${lines.join('\n')}`);
}, { timeoutMs: 120_000 });

test("each SA has a key of its own: two peers' SAs differ, and the two ends of one SA agree", () => {
  const ring = parseRing(L().kvGet(`${L().prefix}/ipsec/ring`)!);
  const ringKeys = new Set(ring.keys.map((k) => k.material.reveal().toString('hex')));
  const [v0, v1, v2] = [0, 1, 2].map((i) => L().vtep(i));
  const sa = (host: number, src: string, dst: string) => ours(host).states.filter((s) => s.src === src && s.dst === dst);
  // host 0's outbound SAs to host 1 and to host 2 (the primary key): different keys
  const to1 = sa(0, v0!, v1!);
  const to2 = sa(0, v0!, v2!);
  assert.equal(to1.length, 1);
  assert.equal(to2.length, 1);
  assert.ok(!to1[0]!.aead!.key.equals(to2[0]!.aead!.key), 'host 0 sends to hosts 1 and 2 with the same key');
  // the receiving end holds the same SA (same SPI, same key), computed alone
  const at1 = sa(1, v0!, v1!).find((s) => s.spi === to1[0]!.spi);
  assert.ok(at1 && at1.aead!.key.equals(to1[0]!.aead!.key), 'host 1 has no inbound SA matching host 0 outbound one');
  // and the reverse direction of the pair has yet another key
  // (host 1 may hold a second one for a newer key while a rotation reaches it: none may share it)
  const back = sa(1, v1!, v0!);
  assert.ok(back.length >= 1, 'host 1 has no SA towards host 0');
  assert.ok(back.every((s) => !s.aead!.key.equals(to1[0]!.aead!.key)), 'both directions of the pair share a key');
  // no SA anywhere carries a ring key itself, and no two SAs share one
  const all = [0, 1, 2].flatMap((i) => ours(i).states.map((s) => `${s.src}>${s.dst}>${s.spi}=${s.aead!.key.toString('hex')}`));
  const keys = new Map<string, string>();
  for (const x of all) {
    const [id, key] = x.split('=') as [string, string];
    assert.ok(!ringKeys.has(key), `SA ${id} uses a ring key as is`);
    const other = keys.get(key);
    assert.ok(other === undefined || other === id, `SAs ${other} and ${id} share a key`);
    keys.set(key, id);
  }
});

test('continuous pings from one host to both others across key rotations by the elected agent lose nothing', async () => {
  const g0 = ringGeneration();
  const spis0 = ours(0).states.map((s) => s.spi).sort();
  // 16 s: more than two rotation periods; to both peers at once
  const [r1, r2] = await Promise.all([pingAsync(c[0]!, ip.get(c[1]!)!, 80, '0.2'), pingAsync(c[0]!, ip.get(c[4]!)!, 80, '0.2')]);
  const g1 = ringGeneration();
  assert.ok(g1 >= g0 + 2, `expected two rotations or more during the ping, ring generation ${g0} -> ${g1}`);
  assert.notDeepEqual(ours(0).states.map((s) => s.spi).sort(), spis0);
  const tail = (i: number) => L().agentLog(i).split('\n').filter((l) => l.includes('ipsec')).slice(-12).join('\n');
  for (const [r, to] of [[r1, 'host 1'], [r2, 'host 2']] as const) {
    assert.equal(r.sent, 80);
    assert.equal(r.received, r.sent, `to ${to}: lost ${r.sent - r.received} of ${r.sent} across rotations ${g0} -> ${g1}\nh0:\n${tail(0)}\nh1:\n${tail(1)}\nh2:\n${tail(2)}`);
  }
}, { timeoutMs: 200_000 });

test('no key material appears in the agents\' logs', () => {
  const ring = parseRing(L().kvGet(`${L().prefix}/ipsec/ring`)!);
  const logs = L().agentLog(0) + L().agentLog(1) + L().agentLog(2);
  for (const k of ring.keys) {
    const m = k.material.reveal();
    assert.ok(!logs.includes(m.toString('hex')) && !logs.includes(m.toString('base64')), `key ${k.id} is in a log`);
  }
});

test('DEL of the last encrypted endpoints removes every SA and policy on every host, and the clear overlay keeps working', async () => {
  for (const [host, name] of [[1, c[1]!], [2, c[4]!]] as const) {
    const r = L().plugin(host, 'DEL', name, conf(host, 'ove'));
    assert.equal(r.status, 0, `DEL: ${r.stdout} ${r.stderr}`);
  }
  const gone = await eventually(() => [0, 1, 2].every((i) => ours(i).states.length === 0 && ours(i).policies.length === 0), 60_000);
  assert.ok(gone, `left: ${[0, 1, 2].map((i) => `h${i} ${ours(i).states.length} SAs ${ours(i).policies.length} policies`).join(', ')}`);
  const table = (i: number) => spawnSync('ip', ['netns', 'exec', L().hosts[i]!, 'nft', 'list', 'table', 'inet', 'cni_ts_ipsec']).status;
  assert.ok(await eventually(() => [0, 1, 2].every((i) => table(i) !== 0), 30_000), 'the ipsec nftables table is still there');
  assert.deepEqual(ping(c[2]!, ip.get(c[3]!)!), { sent: 3, received: 3 });
}, { timeoutMs: 200_000 });
