/**
 * The desired SA/policy set and converge(), on FakeXfrm (same identities and
 * errors as the kernel's). Kernel runs of the same code are in
 * test/vm/guest/xfrm.guest.ts.
 */
import { describe, expect, it } from 'vitest';
import { NetlinkError } from '../../../shared/netlink/errors';
import { converge, removeAll } from '../../../shared/ipsec/converge';
import { DOCKER_ENCRYPTION_MARK, IPSEC_REQID, desiredXfrm, encryptedPeers, type EncryptedNetwork } from '../../../shared/ipsec/desired';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { KeyRing, newRing, primaryKey, rotate } from '../../../shared/ipsec/keyring';
import { deriveSaKey, deriveSpi } from '../../../shared/ipsec/spi';

const T0 = Date.UTC(2026, 0, 1);
const A = '10.0.0.1';
const B = '10.0.0.2';
const C = '10.0.0.3';

function source() {
  let n = 0;
  return (aes: 16 | 32) => Buffer.alloc(aes + 4, ++n);
}

const nets = (...peers: string[][]): EncryptedNetwork[] => peers.map((p, i) => ({ name: `enc${i}`, vni: 100 + i, peers: p }));

function ours(x: FakeXfrm) {
  return {
    states: x.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID).map((s) => `${s.src}->${s.dst} ${s.spi}`).sort(),
    policies: x.xfrmPolicyList().filter((p) => p.tmpls.some((t) => t.reqid === IPSEC_REQID)).map((p) => `${p.dir} ${p.selector.src}->${p.selector.dst}`).sort(),
  };
}

describe('desiredXfrm', () => {
  it('has, per peer, an inbound SA per key, an outbound SA for the primary and one outbound UDP 4789 policy', () => {
    const ring = newRing(T0, source());
    const d = desiredXfrm({ localVtep: A }, nets([B]), ring);
    const k1 = ring.keys[0]!.material.reveal();
    const k2 = ring.keys[1]!.material.reveal();
    expect(d.states.map((s) => [s.src, s.dst, s.spi])).toEqual([
      [B, A, deriveSpi(k1, 1, B, A)],
      [B, A, deriveSpi(k2, 2, B, A)],
      [A, B, deriveSpi(k1, 1, A, B)],
    ]);
    // each SA's key is its own, derived from the ring key for its pair and direction
    expect(d.states.map((s) => s.aead.key)).toEqual([deriveSaKey(k1, 1, B, A), deriveSaKey(k2, 2, B, A), deriveSaKey(k1, 1, A, B)]);
    expect(d.states.every((s) => s.esn && s.mode === 'transport' && s.aead.name === 'rfc4106(gcm(aes))' && s.aead.icvBits === 128 && s.reqid === IPSEC_REQID)).toBe(true);
    expect(d.policies).toEqual([
      { dir: 'out', selector: { src: A, dst: B, proto: 17, dport: 4789 }, tmpls: [{ src: A, dst: B, reqid: IPSEC_REQID, mode: 'transport' }] },
    ]);
  });

  it('matches the peer\'s view: my outbound SA is exactly its inbound one for the primary key', () => {
    const ring = newRing(T0, source());
    const mine = desiredXfrm({ localVtep: A }, nets([B]), ring);
    const theirs = desiredXfrm({ localVtep: B }, nets([A]), ring);
    const out = mine.states.find((s) => s.src === A)!;
    const match = theirs.states.find((s) => s.src === A && s.spi === out.spi)!;
    expect(match.aead.key.equals(out.aead.key)).toBe(true);
    // never the ring key itself
    expect(match.aead.key.equals(primaryKey(ring).material.reveal())).toBe(false);
  });

  it('covers each peer once across networks, skips this host and address families it cannot reach', () => {
    expect(encryptedPeers(A, nets([B, C], [C, A], []))).toEqual([B, C]);
    const d = desiredXfrm({ localVtep: A }, nets([B, '2001:db8::2']), newRing(T0, source()));
    expect(d.policies.map((p) => p.selector.dst)).toEqual([B]);
  });

  it('uses the mark on policies only when asked', () => {
    const d = desiredXfrm({ localVtep: A, mark: DOCKER_ENCRYPTION_MARK }, nets([B]), newRing(T0, source()));
    expect(d.policies[0]!.mark).toEqual({ value: 0xd0c4e3, mask: 0xffffffff });
    expect(d.states.every((s) => s.mark === undefined)).toBe(true);
  });

  it('is empty without a ring: a policy with no SA would drop the traffic', () => {
    expect(desiredXfrm({ localVtep: A }, nets([B]), undefined)).toMatchObject({ states: [], policies: [] });
  });
});

describe('converge', () => {
  it('installs the desired set and a second run changes nothing', () => {
    const x = new FakeXfrm();
    const d = desiredXfrm({ localVtep: A }, nets([B, C]), newRing(T0, source()));
    const first = converge(x, d);
    expect(first.statesAdded).toHaveLength(6);
    expect(first.policiesSet).toEqual(['out 10.0.0.1->10.0.0.2', 'out 10.0.0.1->10.0.0.3']);
    const n = x.log.length;
    expect(converge(x, d)).toEqual({ statesAdded: [], statesReplaced: [], statesDeleted: [], policiesSet: [], policiesDeleted: [], failed: [], failedPeers: [] });
    expect(x.log.length).toBe(n);
  });

  it('on rotation adds the new inbound SA, then the new outbound one, and only then removes the old ones', () => {
    const src = source();
    const x = new FakeXfrm();
    let ring: KeyRing = newRing(T0, src);
    converge(x, desiredXfrm({ localVtep: A }, nets([B]), ring));
    ring = rotate(rotate(ring, T0 + 1, src), T0 + 2, src); // keys [2, 3*, 4]: key 1 retired
    x.log.length = 0;
    const r = converge(x, desiredXfrm({ localVtep: A }, nets([B]), ring));
    const k = (id: number) => ring.keys.find((y) => y.id === id)?.material.reveal();
    const spiIn4 = deriveSpi(k(4)!, 4, B, A).toString(16).padStart(8, '0');
    const spiOut3 = deriveSpi(k(3)!, 3, A, B).toString(16).padStart(8, '0');
    const verbs = x.log.map((l) => l.replace(/ proto esp.*?spi (0x[0-9a-f]+).*/, ' $1'));
    // inbound adds (keys 3 and 4), the outbound add (key 3), then deletes: outbound (key 1) before inbound (key 1).
    expect(verbs).toEqual([
      `ip xfrm state add src ${B} dst ${A} 0x${deriveSpi(k(3)!, 3, B, A).toString(16).padStart(8, '0')}`,
      `ip xfrm state add src ${B} dst ${A} 0x${spiIn4}`,
      `ip xfrm state add src ${A} dst ${B} 0x${spiOut3}`,
      expect.stringMatching(new RegExp(`^ip xfrm state delete dst ${B} `)),
      expect.stringMatching(new RegExp(`^ip xfrm state delete dst ${A} `)),
    ]);
    expect(r.statesAdded).toHaveLength(3);
    expect(r.statesDeleted).toHaveLength(2);
    expect(ours(x).states).toHaveLength(4);
  });

  it('removes a peer that no longer shares an encrypted network: policy first, then outbound, then inbound SAs', () => {
    const x = new FakeXfrm();
    const ring = newRing(T0, source());
    converge(x, desiredXfrm({ localVtep: A }, nets([B, C]), ring));
    x.log.length = 0;
    const r = converge(x, desiredXfrm({ localVtep: A }, nets([B]), ring));
    expect(r.policiesDeleted).toEqual(['out 10.0.0.1->10.0.0.3']);
    expect(x.log.map((l) => l.split(' ').slice(0, 4).join(' '))).toEqual([
      'ip xfrm policy delete',
      'ip xfrm state delete', // outbound, dst C
      'ip xfrm state delete',
      'ip xfrm state delete',
    ]);
    expect(x.log[1]).toContain(`dst ${C} `);
    expect(ours(x).policies).toEqual(['out 10.0.0.1->10.0.0.2']);
  });

  it('leaves SAs and policies it does not own alone, and removeAll takes only its own', () => {
    const x = new FakeXfrm();
    const key = Buffer.alloc(20, 9);
    x.xfrmStateAdd({ src: A, dst: B, spi: 0x5000, reqid: 1, mode: 'tunnel', aead: { name: 'rfc4106(gcm(aes))', key, icvBits: 128 }, replayWindow: 32, esn: false });
    x.xfrmPolicyAdd({ dir: 'out', selector: { src: A, dst: '10.9.0.0', dstPrefixLen: 16 }, tmpls: [{ src: A, dst: B, reqid: 1, mode: 'tunnel' }] });
    converge(x, desiredXfrm({ localVtep: A }, nets([B]), newRing(T0, source())));
    removeAll(x, A, IPSEC_REQID);
    expect(x.xfrmStateList().map((s) => s.spi)).toEqual([0x5000]);
    expect(x.xfrmPolicyList().map((p) => p.tmpls[0]!.reqid)).toEqual([1]);
  });

  it('replaces an SA that has the wanted SPI but another key (a tampered or stale SA)', () => {
    const x = new FakeXfrm();
    const ring = newRing(T0, source());
    const d = desiredXfrm({ localVtep: A }, nets([B]), ring);
    const target = d.states[0]!;
    x.xfrmStateAdd({ ...target, aead: { ...target.aead, key: Buffer.alloc(20, 0xee) } });
    const r = converge(x, d);
    expect(r.statesReplaced).toEqual([`${B}->${A} spi 0x${target.spi.toString(16).padStart(8, '0')}`]);
    expect(x.xfrmStateList().find((s) => s.spi === target.spi)!.aead!.key.equals(target.aead.key)).toBe(true);
  });

  it('fixes a policy whose template drifted, in place', () => {
    const x = new FakeXfrm();
    const d = desiredXfrm({ localVtep: A }, nets([B]), newRing(T0, source()));
    x.xfrmPolicyAdd({ ...d.policies[0]!, tmpls: [{ ...d.policies[0]!.tmpls[0]!, mode: 'tunnel' }] });
    expect(converge(x, d).policiesSet).toEqual(['out 10.0.0.1->10.0.0.2']);
    expect(x.xfrmPolicyList()[0]!.tmpls[0]!.mode).toBe('transport');
  });

  it('one SA the kernel refuses costs that peer only: the pass goes on for the others, and the next run completes the work', () => {
    const x = new FakeXfrm();
    const d = desiredXfrm({ localVtep: A }, nets([B, C]), newRing(T0, source()));
    const realAdd = x.xfrmStateAdd.bind(x);
    x.xfrmStateAdd = (s) => {
      if (s.src === B && s.spi === d.states[1]!.spi) throw new NetlinkError(105, 'ip xfrm state add ...'); // ENOBUFS
      realAdd(s);
    };
    const first = converge(x, d);
    expect(first.failed).toEqual([expect.stringContaining(`SA ${B}->${A}`)]);
    expect(first.failedPeers).toEqual([B]);
    // C got everything; B its other SAs and its policy (fail closed: a policy without an SA drops, never sends in clear)
    expect(ours(x).states).toHaveLength(5);
    expect(ours(x).policies).toEqual(['out 10.0.0.1->10.0.0.2', 'out 10.0.0.1->10.0.0.3']);
    x.xfrmStateAdd = realAdd;
    const r = converge(x, d);
    expect(r.statesAdded).toHaveLength(1);
    expect(r.failedPeers).toEqual([]);
    expect(ours(x).states).toHaveLength(6);
  });

  it("an SPI already held by another owner's SA fails that SA alone (EEXIST), never the pass", () => {
    const x = new FakeXfrm();
    const d = desiredXfrm({ localVtep: A }, nets([B, C]), newRing(T0, source()));
    const taken = d.states.find((s) => s.src === C && s.dst === A)!;
    x.xfrmStateAdd({ ...taken, reqid: 7 }); // someone else's SA on (A, spi)
    const r = converge(x, d);
    expect(r.failedPeers).toEqual([C]);
    expect(r.failed).toEqual([expect.stringMatching(/EEXIST|exists/i)]);
    expect(ours(x).states.filter((s) => s.startsWith(`${B}->`) || s.startsWith(`${A}->${B}`))).toHaveLength(3);
  });
});

describe('FakeXfrm', () => {
  it('raises the kernel\'s errors: EEXIST on a duplicate add, ESRCH on a missing state, ENOENT on a missing policy', () => {
    const x = new FakeXfrm();
    const s = desiredXfrm({ localVtep: A }, nets([B]), newRing(T0, source())).states[0]!;
    x.xfrmStateAdd(s);
    expect(() => x.xfrmStateAdd(s)).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    expect(() => x.xfrmStateDel({ dst: A, spi: 0x999 })).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    expect(() => x.xfrmPolicyDel({ dir: 'out', selector: { src: A, dst: B } })).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    expect(() => x.xfrmStateAdd({ ...s, spi: 12 })).toThrow(/SPI 12/);
  });
});
