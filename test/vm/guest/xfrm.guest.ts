/**
 * Encrypted VXLAN between two simulated hosts, in the VM (its Debian kernel
 * has ESP; the host's does not). Each host is a namespace; their eth0s are
 * the two ends of one veth (the underlay). Over it run two VXLAN links made
 * with `ip` as fixtures: vx42 (VNI 42, the encrypted network) and vx43
 * (VNI 43, unencrypted). The encryption is all ours: SAs and policies
 * through netlink-ts (XfrmHandle + converge), the cleartext drop and the
 * VNI mark through one nft transaction each (ipsecFirewall).
 *
 * Checks: ESP with ESN on the wire for VNI 42 and plain VXLAN for VNI 43
 * (tcpdump on the underlay), SA counters, a key rotation during a fast
 * continuous ping losing nothing, a wrong key failing ICV checks, cleartext
 * VXLAN 42 being dropped, and removal leaving nothing of ours behind.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, test } from '../../../testkit/vm/guest-api';
import { XfrmHandle } from '../../../shared/netlink/xfrm';
import { realNft } from '../../../shared/nft';
import {
  DOCKER_ENCRYPTION_MARK,
  EncryptedNetwork,
  IPSEC_REQID,
  IPSEC_TABLE,
  IpsecParams,
  KeyRing,
  converge,
  deriveSaKey,
  deriveSpi,
  desiredXfrm,
  encryptedMtu,
  ipsecFirewall,
  newRing,
  primaryKey,
  rotate,
} from '../../../shared/ipsec';

const tag = randomBytes(2).toString('hex');
const hostA = `xa${tag}`;
const hostB = `xb${tag}`;
const IP_A = '10.77.0.1';
const IP_B = '10.77.0.2';
const handles: XfrmHandle[] = [];
const made: string[] = [];
const tmpFiles: string[] = [];

afterAll(() => {
  for (const h of handles) h.close();
  for (const ns of made) spawnSync('ip', ['netns', 'del', ns]);
  for (const f of tmpFiles) fs.rmSync(f, { force: true });
});

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let built = false;
let xa: XfrmHandle;
let xb: XfrmHandle;
let ring: KeyRing;

const params = (local: string): IpsecParams => ({ localVtep: local, mark: DOCKER_ENCRYPTION_MARK });
const networksOf = (peer: string): EncryptedNetwork[] => [{ name: 'enc', vni: 42, peers: [peer] }];

/** Both hosts, wired, with vx42 and vx43, and no encryption yet. */
function fixture(): void {
  if (built) return;
  built = true;
  for (const h of [hostA, hostB]) {
    ip('netns', 'add', h);
    made.push(h);
  }
  ip('-n', hostA, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', hostB);
  const mtu = encryptedMtu(1500).mtu;
  for (const [h, me, peer, n] of [[hostA, IP_A, IP_B, 1], [hostB, IP_B, IP_A, 2]] as const) {
    ip('-n', h, 'addr', 'add', `${me}/24`, 'dev', 'eth0');
    ip('-n', h, 'link', 'set', 'eth0', 'up');
    ip('-n', h, 'link', 'set', 'lo', 'up');
    for (const vni of [42, 43]) {
      ip('-n', h, 'link', 'add', `vx${vni}`, 'type', 'vxlan', 'id', String(vni), 'local', me, 'remote', peer, 'dstport', '4789', 'dev', 'eth0');
      ip('-n', h, 'link', 'set', `vx${vni}`, 'mtu', String(vni === 42 ? mtu : 1450), 'up');
      ip('-n', h, 'addr', 'add', `172.31.${vni}.${n}/24`, 'dev', `vx${vni}`);
    }
  }
  xa = XfrmHandle.open(`/var/run/netns/${hostA}`);
  xb = XfrmHandle.open(`/var/run/netns/${hostB}`);
  handles.push(xa, xb);
}

/** One host's whole sync for `r`: SAs and policies, then the nft table. */
function syncA(r: KeyRing | undefined, encrypted = true): void {
  const rep = converge(xa, desiredXfrm(params(IP_A), encrypted ? networksOf(IP_B) : [], r));
  assert.deepEqual(rep.failed, []);
  realNft({ netnsPath: `/var/run/netns/${hostA}` }).run(ipsecFirewall(encrypted ? networksOf(IP_B) : [], { mark: DOCKER_ENCRYPTION_MARK }));
}
function syncB(r: KeyRing | undefined, encrypted = true): void {
  const rep = converge(xb, desiredXfrm(params(IP_B), encrypted ? networksOf(IP_A) : [], r));
  assert.deepEqual(rep.failed, []);
  realNft({ netnsPath: `/var/run/netns/${hostB}` }).run(ipsecFirewall(encrypted ? networksOf(IP_A) : [], { mark: DOCKER_ENCRYPTION_MARK }));
}

function ping(from: string, to: string, count = 2, interval = '0.2'): { sent: number; received: number } {
  const r = spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', String(count), '-i', interval, '-W', '2', to], { encoding: 'utf8' });
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(r.stdout);
  return m ? { sent: Number(m[1]), received: Number(m[2]) } : { sent: 0, received: 0 };
}

/** tcpdump on hostB's eth0 while fn runs; returns the decoded lines. */
async function capture(fn: () => Promise<void> | void): Promise<string[]> {
  const file = `/tmp/xfrm-${tag}-${randomBytes(2).toString('hex')}.pcap`;
  tmpFiles.push(file);
  const td = spawn('ip', ['netns', 'exec', hostB, 'tcpdump', '-i', 'eth0', '-n', '-U', '--immediate-mode', '-w', file, 'esp or udp port 4789'], { stdio: ['ignore', 'ignore', 'pipe'] });
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

function ourStates(h: XfrmHandle) {
  return h.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID);
}

test('converge installs ESN ESP states with rfc4106(gcm(aes)) and the outbound VXLAN policy, as `ip xfrm` shows', () => {
  fixture();
  ring = newRing(Date.now());
  syncA(ring);
  syncB(ring);
  // Per host: one inbound SA per key (2 in a new ring) and one outbound.
  assert.equal(ourStates(xa).length, 3);
  assert.equal(ourStates(xb).length, 3);
  const key = primaryKey(ring).material.reveal();
  const spiAB = deriveSpi(key, primaryKey(ring).id, IP_A, IP_B);
  const out = ourStates(xa).find((s) => s.spi === spiAB);
  assert.ok(out, 'outbound SA A->B with the derived SPI');
  assert.equal(out.esn, true);
  assert.equal(out.replayEsn?.replayWindow, 128);
  assert.equal(out.aead?.name, 'rfc4106(gcm(aes))');
  // the pair's own key, derived from the ring key (shared/ipsec/spi.ts), never the ring key itself
  assert.ok(out.aead?.key.equals(deriveSaKey(key, primaryKey(ring).id, IP_A, IP_B)));
  // B holds the same SA (same SPI) as its inbound one.
  assert.ok(ourStates(xb).some((s) => s.spi === spiAB && s.src === IP_A && s.dst === IP_B));
  const text = ip('-n', hostA, 'xfrm', 'state', 'list', 'spi', `0x${spiAB.toString(16).padStart(8, '0')}`);
  assert.match(text, /proto esp spi 0x[0-9a-f]{8} reqid 4410953 mode transport/);
  assert.match(text, /flag esn/);
  assert.match(text, /aead rfc4106\(gcm\(aes\)\) 0x[0-9a-f]{40} 128/);
  const pol = ip('-n', hostA, 'xfrm', 'policy', 'list');
  assert.match(pol, /src 10\.77\.0\.1\/32 dst 10\.77\.0\.2\/32 proto udp dport 4789/);
  assert.match(pol, /mark 0xd0c4e3\/0xffffffff/);
  assert.match(pol, /proto esp reqid 4410953 mode transport/);
});

test('the encrypted VNI crosses the underlay only as ESP, the unencrypted one as plain VXLAN', async () => {
  fixture();
  let enc = { sent: 0, received: 0 };
  let clear = { sent: 0, received: 0 };
  const lines = await capture(() => {
    enc = ping(hostA, '172.31.42.2', 3);
    clear = ping(hostA, '172.31.43.2', 3);
  });
  assert.deepEqual(enc, { sent: 3, received: 3 });
  assert.deepEqual(clear, { sent: 3, received: 3 });
  const esp = lines.filter((l) => /ESP\(spi=/.test(l));
  const vni42 = lines.filter((l) => /VXLAN.*vni 42\b/.test(l));
  const vni43 = lines.filter((l) => /VXLAN.*vni 43\b/.test(l));
  assert.ok(esp.length >= 6, `ESP packets: ${esp.length}\n${lines.join('\n')}`);
  assert.equal(vni42.length, 0, `cleartext VNI 42 on the wire:\n${vni42.join('\n')}`);
  assert.ok(vni43.length >= 6, `plain VNI 43 packets: ${vni43.length}\n${lines.join('\n')}`);
  // The SA counters agree: A's outbound and B's inbound SA carried the pings.
  const spiAB = deriveSpi(primaryKey(ring).material.reveal(), primaryKey(ring).id, IP_A, IP_B);
  const outA = ourStates(xa).find((s) => s.spi === spiAB)!;
  const inB = ourStates(xb).find((s) => s.spi === spiAB)!;
  assert.ok(outA.curlft.packets >= 3n && inB.curlft.packets >= 3n, `${outA.curlft.packets} / ${inB.curlft.packets}`);
  assert.ok((outA.replayEsn?.oseq ?? 0) >= 3, 'the ESN output sequence advanced');
});

test('two key rotations during a continuous ping lose no packet, the hosts applying each one at different times', async () => {
  fixture();
  const count = 40;
  const child = spawn('ip', ['netns', 'exec', hostA, 'busybox', 'ping', '-c', String(count), '-i', '0.1', '-W', '3', '172.31.42.2'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const done = new Promise((r) => child.once('exit', r));
  const first = primaryKey(ring).id;
  await sleep(600);
  // Rotation 1: A applies it first and sends with the new primary while B still sends with the old.
  ring = rotate(ring, Date.now());
  syncA(ring);
  await sleep(700);
  syncB(ring);
  await sleep(600);
  // Rotation 2, B first this time: the first key is now dropped everywhere.
  ring = rotate(ring, Date.now());
  syncB(ring);
  await sleep(700);
  syncA(ring);
  await done;
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(stdout);
  assert.ok(m, stdout);
  assert.equal(Number(m[1]), count);
  assert.equal(Number(m[2]), count, stdout.split('\n').slice(-3).join('\n'));
  assert.equal(ring.keys.length, 3);
  assert.ok(!ring.keys.some((k) => k.id === first), 'the first key left the ring');
  // Every SA now belongs to the current ring: 3 inbound + 1 outbound per host.
  for (const h of [xa, xb]) assert.equal(ourStates(h).length, 4);
  const spiAB = deriveSpi(primaryKey(ring).material.reveal(), primaryKey(ring).id, IP_A, IP_B);
  const states = ourStates(xa).map((s) => `${s.src}>${s.dst} ${s.spi.toString(16)} ${s.curlft.packets}`).join('; ');
  assert.ok(ourStates(xa).find((s) => s.spi === spiAB)!.curlft.packets > 0n, `traffic moved to the newest primary (${spiAB.toString(16)}): ${states}`);
});

test('a host holding the right SPI with a wrong key cannot decrypt: ICV failures, no reply', () => {
  fixture();
  const spiAB = deriveSpi(primaryKey(ring).material.reveal(), primaryKey(ring).id, IP_A, IP_B);
  const good = ourStates(xb).find((s) => s.spi === spiAB)!;
  xb.xfrmStateDel({ dst: IP_B, spi: spiAB });
  const wrong = Buffer.from(good.aead!.key);
  wrong[0] ^= 0xff;
  xb.xfrmStateAdd({ src: IP_A, dst: IP_B, spi: spiAB, reqid: IPSEC_REQID, mode: 'transport', aead: { ...good.aead!, key: wrong }, replayWindow: 128, esn: true });
  const r = ping(hostA, '172.31.42.2', 2);
  assert.equal(r.received, 0);
  const st = xb.xfrmStateGet({ dst: IP_B, spi: spiAB })!;
  assert.ok(st.stats.integrityFailed > 0, `integrity_failed = ${st.stats.integrityFailed}`);
  // converge puts the right key back (same SPI, different key: replaced).
  syncB(ring);
  assert.equal(ping(hostA, '172.31.42.2', 2).received, 2);
});

test('cleartext VXLAN for the encrypted VNI is dropped by the receiver', () => {
  fixture();
  // A stops encrypting (its policy gone) while B still expects ESP.
  const pol = xa.xfrmPolicyList().find((p) => p.tmpls.some((t) => t.reqid === IPSEC_REQID))!;
  xa.xfrmPolicyDel({ dir: pol.dir, selector: pol.selector, ...(pol.mark && { mark: pol.mark }) });
  assert.equal(ping(hostA, '172.31.42.2', 2).received, 0);
  // The unencrypted network is unaffected.
  assert.equal(ping(hostA, '172.31.43.2', 2).received, 2);
  syncA(ring);
  assert.equal(ping(hostA, '172.31.42.2', 2).received, 2);
});

test('when no encrypted network is shared any more, our SAs, policies and nft table are all gone', () => {
  fixture();
  syncA(ring, false);
  syncB(ring, false);
  for (const h of [xa, xb]) {
    assert.deepEqual(ourStates(h), []);
    assert.deepEqual(h.xfrmPolicyList().filter((p) => p.tmpls.some((t) => t.reqid === IPSEC_REQID)), []);
  }
  for (const h of [hostA, hostB]) assert.equal(realNft({ netnsPath: `/var/run/netns/${h}` }).list(IPSEC_TABLE.family, IPSEC_TABLE.table), undefined);
  // Plain VXLAN works again on both VNIs.
  assert.equal(ping(hostA, '172.31.42.2', 2).received, 2);
});
