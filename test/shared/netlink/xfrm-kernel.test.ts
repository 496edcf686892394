/**
 * XfrmHandle against this host's kernel, in throwaway namespaces. xfrm
 * policies work here; ESP states do not (no esp4 / AEAD on this kernel), so
 * states are exercised in the VM (test/vm/guest/xfrm.guest.ts) and here only
 * their error path is checked. What netlink-ts did is read back with
 * `ip xfrm policy` (iproute2's xfrm has no JSON output: -j is ignored).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetlinkError } from '../../../shared/netlink/errors';
import { IPPROTO_UDP, XfrmHandle, XfrmPolicySpec, withXfrmHandle } from '../../../shared/netlink/xfrm';
import { addNetns, delNetns, uniqueName } from '../../../testkit/netns';

const nsA = uniqueName('xfrm');
const nsB = uniqueName('xfrm');
let h: XfrmHandle;

beforeAll(() => {
  h = XfrmHandle.open(addNetns(nsA));
  addNetns(nsB);
});

afterAll(() => {
  try {
    h?.close();
  } finally {
    delNetns(nsA);
    delNetns(nsB);
  }
});

function ipXfrm(ns: string, ...args: string[]): string {
  return execFileSync('ip', ['-n', ns, 'xfrm', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** `ip xfrm policy` text, one block per policy (each block starts at a line without indentation). */
function ipPolicies(ns: string): string[] {
  const blocks: string[] = [];
  for (const line of ipXfrm(ns, 'policy', 'list').split('\n')) {
    if (!line.trim()) continue;
    if (/^\S/.test(line)) blocks.push(line.trim());
    else blocks[blocks.length - 1] += `\n${line.trim()}`;
  }
  return blocks;
}

function vxlanPolicy(src: string, dst: string, reqid: number, extra: Partial<XfrmPolicySpec> = {}): XfrmPolicySpec {
  return {
    dir: 'out',
    selector: { src, dst, proto: IPPROTO_UDP, dport: 4789 },
    tmpls: [{ src, dst, reqid, mode: 'transport' }],
    ...extra,
  };
}

describe('xfrm policies on this host', () => {
  it('an outbound VXLAN policy added through netlink is what `ip xfrm policy` shows', () => {
    h.xfrmPolicyAdd(vxlanPolicy('192.0.2.1', '192.0.2.2', 4410953, { mark: { value: 0xd0c4e3, mask: 0xffffffff } }));
    const [text] = ipPolicies(nsA);
    expect(text).toBe(
      [
        'src 192.0.2.1/32 dst 192.0.2.2/32 proto udp dport 4789',
        'dir out priority 0 ptype main',
        'mark 0xd0c4e3/0xffffffff',
        'tmpl src 192.0.2.1 dst 192.0.2.2',
        'proto esp reqid 4410953 mode transport',
      ].join('\n'),
    );
  });

  it('a policy added with `ip xfrm policy add` is listed by netlink-ts field for field', () => {
    execFileSync('ip', ['-n', nsA, 'xfrm', 'policy', 'add', 'src', '198.51.100.1/32', 'dst', '198.51.100.0/24', 'proto', 'udp', 'dport', '4789',
      'dir', 'in', 'priority', '5', 'tmpl', 'src', '198.51.100.7', 'dst', '198.51.100.1', 'proto', 'esp', 'reqid', '9', 'mode', 'transport']);
    const p = h.xfrmPolicyList().find((x) => x.dir === 'in');
    expect(p).toEqual({
      dir: 'in',
      selector: { src: '198.51.100.1', dst: '198.51.100.0', srcPrefixLen: 32, dstPrefixLen: 24, proto: 17, dport: 4789 },
      priority: 5,
      index: expect.any(Number),
      action: 'allow',
      tmpls: [{ src: '198.51.100.7', dst: '198.51.100.1', reqid: 9, mode: 'transport', proto: 50, spi: 0 }],
    });
    const ours = h.xfrmPolicyList().find((x) => x.dir === 'out');
    expect(ours?.mark).toEqual({ value: 0xd0c4e3, mask: 0xffffffff });
    expect(ours?.tmpls[0]?.reqid).toBe(4410953);
  });

  it('adding the same policy twice fails with EEXIST and update replaces it in place', () => {
    const spec = vxlanPolicy('192.0.2.1', '192.0.2.3', 1);
    h.xfrmPolicyAdd(spec);
    let err: unknown;
    try {
      h.xfrmPolicyAdd(spec);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetlinkError);
    expect((err as NetlinkError).code).toBe('EEXIST');
    expect((err as NetlinkError).op).toMatch(/^ip xfrm policy add src 192\.0\.2\.1\/32 dst 192\.0\.2\.3\/32/);
    h.xfrmPolicyUpdate({ ...spec, priority: 100, tmpls: [{ ...spec.tmpls[0]!, reqid: 2 }] });
    const mine = h.xfrmPolicyList().filter((p) => p.selector.dst === '192.0.2.3');
    expect(mine.map((p) => [p.priority, p.tmpls[0]?.reqid])).toEqual([[100, 2]]);
  });

  it('delete removes exactly the named policy, the mark being part of its name', () => {
    const before = ipPolicies(nsA).length;
    // Without the mark the marked policy is another policy: ENOENT.
    expect(() => h.xfrmPolicyDel({ dir: 'out', selector: { src: '192.0.2.1', dst: '192.0.2.2', proto: IPPROTO_UDP, dport: 4789 } })).toThrow(
      expect.objectContaining({ code: 'ENOENT' }),
    );
    h.xfrmPolicyDel({ dir: 'out', selector: { src: '192.0.2.1', dst: '192.0.2.2', proto: IPPROTO_UDP, dport: 4789 }, mark: { value: 0xd0c4e3, mask: 0xffffffff } });
    const after = ipPolicies(nsA);
    expect(after.length).toBe(before - 1);
    expect(after.some((b) => b.includes('dst 192.0.2.2/32'))).toBe(false);
  });

  it('a handle changes only its own namespace', () => {
    withXfrmHandle(`/var/run/netns/${nsB}`, (hb) => {
      expect(hb.xfrmPolicyList()).toEqual([]);
      hb.xfrmPolicyAdd(vxlanPolicy('10.9.0.1', '10.9.0.2', 3));
      expect(hb.xfrmPolicyList()).toHaveLength(1);
    });
    expect(h.xfrmPolicyList().some((p) => p.selector.src === '10.9.0.1')).toBe(false);
    expect(ipPolicies(nsB)).toHaveLength(1);
  });

  it('flush removes every policy of the namespace', () => {
    expect(h.xfrmPolicyList().length).toBeGreaterThan(0);
    h.xfrmPolicyFlush();
    expect(h.xfrmPolicyList()).toEqual([]);
    expect(ipPolicies(nsA)).toEqual([]);
  });
});

describe('xfrm states on this host', () => {
  it('an ESP state either is installed as `ip xfrm state` shows, or fails with a NetlinkError that names the op but not the key', () => {
    const key = randomBytes(20);
    const spec = {
      src: '192.0.2.1', dst: '192.0.2.2', spi: 0x1001, reqid: 7, mode: 'transport' as const,
      aead: { name: 'rfc4106(gcm(aes))', key, icvBits: 128 }, replayWindow: 64, esn: true,
    };
    let err: unknown;
    try {
      h.xfrmStateAdd(spec);
    } catch (e) {
      err = e;
    }
    if (err === undefined) {
      // A kernel with ESP (not this host's today): the state must be there.
      expect(ipXfrm(nsA, 'state', 'list')).toMatch(/proto esp spi 0x00001001 reqid 7 mode transport/);
      expect(h.xfrmStateGet({ dst: '192.0.2.2', spi: 0x1001 })?.aead?.key.equals(key)).toBe(true);
    } else {
      expect(err).toBeInstanceOf(NetlinkError);
      expect((err as NetlinkError).errno).toBeGreaterThan(0);
      expect((err as NetlinkError).message).toMatch(/^ip xfrm state add src 192\.0\.2\.1 dst 192\.0\.2\.2 proto esp spi 0x00001001/);
      expect((err as NetlinkError).message).not.toContain(key.toString('hex'));
      expect(h.xfrmStateList()).toEqual([]);
    }
  });

  it('deleting a state that does not exist fails with ESRCH and get returns undefined', () => {
    expect(() => h.xfrmStateDel({ dst: '192.0.2.9', spi: 0x2002 })).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    expect(h.xfrmStateGet({ dst: '192.0.2.9', spi: 0x2002 })).toBeUndefined();
  });
});
