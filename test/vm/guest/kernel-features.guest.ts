/**
 * Smoke test of the VM itself: the kernel features this project needs and
 * the host kernel lacks (ipvlan l2/l3, 802.1q VLAN, xfrm ESP with AES-GCM)
 * work inside it, modules autoloading through the initramfs's modprobe shim.
 *
 * Everything is done with `ip` here on purpose: this file checks the VM, not
 * netlink-ts (its guest tests come separately). One fresh namespace, deleted
 * at the end whatever happened.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, test } from '../../../testkit/vm/guest-api';

const ns = `vmk-${randomBytes(3).toString('hex')}`;
const peerA = `${ns}-a`;
const peerB = `${ns}-b`;
let created = false;
const peers: string[] = [];

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The namespace with two dummy parents, made on first use. */
function fixture(): void {
  if (created) return;
  ip('netns', 'add', ns);
  created = true;
  ip('-n', ns, 'link', 'add', 'parent0', 'type', 'dummy');
  ip('-n', ns, 'link', 'add', 'eth0', 'type', 'dummy');
  ip('-n', ns, 'link', 'set', 'parent0', 'up');
  ip('-n', ns, 'link', 'set', 'eth0', 'up');
}

interface JsonLink {
  ifname: string;
  link?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

function showLink(name: string): JsonLink {
  const links = JSON.parse(ip('-n', ns, '-j', '-d', 'link', 'show', 'dev', name)) as JsonLink[];
  assert.equal(links.length, 1);
  return links[0];
}

afterAll(() => {
  for (const peer of peers) ip('netns', 'del', peer);
  if (created) ip('netns', 'del', ns);
});

test('an ipvlan link in l2 mode can be created on a dummy parent', () => {
  fixture();
  ip('-n', ns, 'link', 'add', 'ipvl2', 'link', 'parent0', 'type', 'ipvlan', 'mode', 'l2');
  const l = showLink('ipvl2');
  assert.equal(l.link, 'parent0');
  assert.equal(l.linkinfo?.info_kind, 'ipvlan');
  assert.equal(l.linkinfo?.info_data?.mode, 'l2');
});

test('an ipvlan link in l3 mode can be created on a dummy parent', () => {
  fixture();
  ip('-n', ns, 'link', 'add', 'ipvl3', 'link', 'parent0', 'type', 'ipvlan', 'mode', 'l3');
  const l = showLink('ipvl3');
  assert.equal(l.linkinfo?.info_kind, 'ipvlan');
  assert.equal(l.linkinfo?.info_data?.mode, 'l3');
});

test('two ipvlan l2 links of one parent, each in its own namespace, reach each other', () => {
  fixture();
  // Containers of one ipvlan network: slaves of the same parent, moved out.
  for (const [i, peer] of [[1, peerA], [2, peerB]] as const) {
    ip('netns', 'add', peer);
    peers.push(peer);
    ip('-n', ns, 'link', 'add', `c${i}`, 'link', 'parent0', 'type', 'ipvlan', 'mode', 'l2');
    ip('-n', ns, 'link', 'set', `c${i}`, 'netns', peer);
    ip('-n', peer, 'addr', 'add', `198.51.100.${i}/24`, 'dev', `c${i}`);
    ip('-n', peer, 'link', 'set', `c${i}`, 'up');
  }
  // busybox (host package busybox-static) is the one ping on the shared root.
  const out = execFileSync('ip', ['netns', 'exec', peerA, 'busybox', 'ping', '-c', '1', '-W', '10', '198.51.100.2'], {
    encoding: 'utf8',
  });
  assert.match(out, /1 packets received/);
});

test('an 802.1q VLAN sub-interface eth0.10 can be created on a dummy parent', () => {
  fixture();
  ip('-n', ns, 'link', 'add', 'link', 'eth0', 'name', 'eth0.10', 'type', 'vlan', 'id', '10');
  const l = showLink('eth0.10');
  assert.equal(l.link, 'eth0');
  assert.equal(l.linkinfo?.info_kind, 'vlan');
  assert.equal(l.linkinfo?.info_data?.protocol, '802.1Q');
  assert.equal(l.linkinfo?.info_data?.id, 10);
});

test('an ESP tunnel state with rfc4106(gcm(aes)) can be added through xfrm', () => {
  fixture();
  // 16-byte AES-128 key followed by the 4-byte salt rfc4106 wants.
  const key = '0x' + randomBytes(20).toString('hex');
  ip('-n', ns, 'xfrm', 'state', 'add', 'src', '192.0.2.1', 'dst', '192.0.2.2', 'proto', 'esp', 'spi', '0x00000a01',
    'reqid', '1', 'mode', 'tunnel', 'aead', 'rfc4106(gcm(aes))', key, '128');
  // `ip xfrm` has no JSON output (-j is ignored), so its text is checked.
  const text = ip('-n', ns, 'xfrm', 'state', 'list', 'spi', '0x00000a01');
  assert.match(text, /^src 192\.0\.2\.1 dst 192\.0\.2\.2$/m);
  assert.match(text, /proto esp spi 0x00000a01 reqid 1 mode tunnel/);
  assert.match(text, new RegExp(`aead rfc4106\\(gcm\\(aes\\)\\) ${key} 128`));
});
