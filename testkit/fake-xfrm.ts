/**
 * An in-memory xfrm: the kernel's SAD and SPD as far as converge() sees
 * them, with the kernel's identities and errors:
 *   a state is (dst, spi, esp): add of a present one is EEXIST, delete of
 *     an absent one ESRCH;
 *   a policy is (dir, selector, mark): add of a present one is EEXIST,
 *     delete of an absent one ENOENT, update creates or replaces.
 * Requests are built with the real encoders first, so a spec the kernel
 * would refuse before sending (bad SPI, window) fails here the same way.
 */
import { AF_INET } from '../shared/netlink/consts';
import { EEXIST, ENOENT, ESRCH, NetlinkError } from '../shared/netlink/errors';
import { canonicalIp, parseIp } from '../shared/netlink/ipaddr';
import {
  IPPROTO_ESP,
  XfrmPolicy,
  XfrmPolicyId,
  XfrmPolicySpec,
  XfrmSelector,
  XfrmState,
  XfrmStateId,
  XfrmStateSpec,
  policyAddRequest,
  policyDelRequest,
  policyUpdateRequest,
  stateAddRequest,
  stateDelRequest,
} from '../shared/netlink/xfrm';
import type { XfrmOps } from '../shared/ipsec/xfrm-ops';

function stateKey(dst: string, spi: number): string {
  return `${canonicalIp(dst)} ${spi >>> 0}`;
}

function selectorKey(s: XfrmSelector): string {
  const host = parseIp(s.src).family === AF_INET ? 32 : 128;
  return `${canonicalIp(s.src)}/${s.srcPrefixLen ?? host} ${canonicalIp(s.dst)}/${s.dstPrefixLen ?? host} ${s.proto ?? 0} ${s.sport ?? 0} ${s.dport ?? 0}`;
}

function policyKey(p: XfrmPolicyId): string {
  return `${p.dir} ${selectorKey(p.selector)} ${p.mark ? `${p.mark.value & p.mark.mask}/${p.mark.mask}` : '0/0'}`;
}

export class FakeXfrm implements XfrmOps {
  private readonly states = new Map<string, XfrmState>();
  private readonly policies = new Map<string, XfrmPolicy>();
  private nextIndex = 8;
  /** Every successful change, in order, as `ip xfrm` text (without keys): for tests on ordering. */
  readonly log: string[] = [];

  xfrmStateAdd(s: XfrmStateSpec): void {
    const req = stateAddRequest(s);
    const k = stateKey(s.dst, s.spi);
    if (this.states.has(k)) throw new NetlinkError(EEXIST, req.op);
    const family = parseIp(s.dst).family;
    this.states.set(k, {
      src: canonicalIp(s.src),
      dst: canonicalIp(s.dst),
      spi: s.spi >>> 0,
      proto: IPPROTO_ESP,
      reqid: s.reqid,
      mode: s.mode,
      family,
      flags: s.esn ? 128 : 0,
      replayWindow: s.esn ? 0 : s.replayWindow,
      esn: s.esn,
      ...(s.esn && { replayEsn: { bmpLen: Math.ceil(s.replayWindow / 32), oseq: 0, seq: 0, oseqHi: 0, seqHi: 0, replayWindow: s.replayWindow } }),
      aead: { ...s.aead, key: Buffer.from(s.aead.key) },
      ...(s.mark && { mark: { ...s.mark } }),
      selector: s.selector ? { family, ...s.selector } : { family: 0, src: '0.0.0.0', dst: '0.0.0.0', srcPrefixLen: 0, dstPrefixLen: 0, proto: 0 },
      curlft: { bytes: 0n, packets: 0n, addTime: 0n, useTime: 0n },
      stats: { replayWindow: 0, replay: 0, integrityFailed: 0 },
    });
    this.log.push(req.op);
  }

  xfrmStateDel(id: XfrmStateId): void {
    const req = stateDelRequest(id);
    const k = stateKey(id.dst, id.spi);
    const s = this.states.get(k);
    if (!s || (id.src !== undefined && canonicalIp(id.src) !== s.src)) throw new NetlinkError(ESRCH, req.op);
    this.states.delete(k);
    this.log.push(req.op);
  }

  xfrmStateList(): XfrmState[] {
    return [...this.states.values()].map((s) => ({ ...s, ...(s.aead && { aead: { ...s.aead, key: Buffer.from(s.aead.key) } }) }));
  }

  xfrmPolicyAdd(p: XfrmPolicySpec): void {
    const req = policyAddRequest(p);
    if (this.policies.has(policyKey(p))) throw new NetlinkError(EEXIST, req.op);
    this.put(p);
    this.log.push(req.op);
  }

  xfrmPolicyUpdate(p: XfrmPolicySpec): void {
    const req = policyUpdateRequest(p);
    this.put(p);
    this.log.push(req.op);
  }

  xfrmPolicyDel(id: XfrmPolicyId): void {
    const req = policyDelRequest(id);
    if (!this.policies.delete(policyKey(id))) throw new NetlinkError(ENOENT, req.op);
    this.log.push(req.op);
  }

  xfrmPolicyList(): XfrmPolicy[] {
    return [...this.policies.values()].map((p) => structuredClone(p));
  }

  private put(p: XfrmPolicySpec): void {
    const k = policyKey(p);
    const host = parseIp(p.selector.src).family === AF_INET ? 32 : 128;
    const old = this.policies.get(k);
    this.policies.set(k, {
      dir: p.dir,
      selector: {
        src: canonicalIp(p.selector.src),
        dst: canonicalIp(p.selector.dst),
        srcPrefixLen: p.selector.srcPrefixLen ?? host,
        dstPrefixLen: p.selector.dstPrefixLen ?? host,
        proto: p.selector.proto ?? 0,
        ...(p.selector.sport && { sport: p.selector.sport }),
        ...(p.selector.dport && { dport: p.selector.dport }),
      },
      priority: p.priority ?? 0,
      index: old?.index ?? (this.nextIndex += 8),
      action: p.action ?? 'allow',
      ...(p.mark && { mark: { ...p.mark } }),
      tmpls: p.tmpls.map((t) => ({ proto: IPPROTO_ESP, spi: 0, ...t, src: canonicalIp(t.src), dst: canonicalIp(t.dst) })),
    });
  }
}
