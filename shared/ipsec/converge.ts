/**
 * converge(): make the kernel's xfrm tables hold exactly the desired SAs and
 * policies among those this project owns (reqid IPSEC_REQID), leaving
 * anyone else's alone. Idempotent: a second call with the same input
 * changes nothing; a call interrupted by an error is completed by the next.
 *
 * The order is what makes a key rotation or a peer change lossless:
 *   1. add inbound SAs      (a peer may already send with a new key)
 *   2. add outbound SAs     (the kernel picks the newest matching SA, so
 *                            from here on we send with the new primary)
 *   3. add/update policies  (only now does traffic to a new peer need an SA,
 *                            and it has one)
 *   4. delete stale policies (a peer we no longer share a network with)
 *   5. delete stale outbound SAs (nothing selects them any more)
 *   6. delete stale inbound SAs  (last: a peer may still be sending with
 *                            the key until it converges itself)
 * An SA whose identity (dst, SPI) is wanted but whose content differs is
 * replaced (deleted, then added) in its step.
 *
 * One SA or policy the kernel refuses (an SPI held by someone else's SA,
 * say) costs only that one: it is reported in `failed`, its peer in
 * `failedPeers` (so the caller sends that peer nothing), and the pass goes
 * on for every other peer. A policy is installed even when its outbound SA
 * failed: a policy without an SA drops the traffic, which is the safe way
 * to fail (never cleartext).
 */
import { isNetlinkError, ENOENT, ESRCH } from '../netlink/errors';
import { canonicalIp, parseIp } from '../netlink/ipaddr';
import { AF_INET } from '../netlink/consts';
import type { XfrmPolicy, XfrmPolicyId, XfrmPolicySpec, XfrmSelector, XfrmState, XfrmStateSpec } from '../netlink/xfrm';
import { IPPROTO_ESP } from '../netlink/xfrm';
import type { DesiredXfrm } from './desired';
import type { XfrmOps } from './xfrm-ops';

export interface ConvergeReport {
  /** "dst spi" of SAs added, replaced and deleted; "dir src->dst" of policies: ids only, never keys */
  statesAdded: string[];
  statesReplaced: string[];
  statesDeleted: string[];
  policiesSet: string[];
  policiesDeleted: string[];
  /** what the kernel refused, with why (ids and errors only) */
  failed: string[];
  /** peers (canonical) with an SA or policy that could not be installed */
  failedPeers: string[];
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

function sid(s: { src: string; dst: string; spi: number }): string {
  return `${canonicalIp(s.src)}->${canonicalIp(s.dst)} spi ${hex(s.spi)}`;
}

function stateKey(s: { dst: string; spi: number }): string {
  return `${canonicalIp(s.dst)} ${s.spi >>> 0}`;
}

function selectorKey(s: XfrmSelector): string {
  const host = parseIp(s.src).family === AF_INET ? 32 : 128;
  return `${canonicalIp(s.src)}/${s.srcPrefixLen ?? host} ${canonicalIp(s.dst)}/${s.dstPrefixLen ?? host} ${s.proto ?? 0} ${s.sport ?? 0} ${s.dport ?? 0}`;
}

function policyKey(p: XfrmPolicyId): string {
  return `${p.dir} ${selectorKey(p.selector)} ${p.mark ? `${p.mark.value & p.mark.mask}/${p.mark.mask}` : '0/0'}`;
}

function pid(p: XfrmPolicyId): string {
  return `${p.dir} ${canonicalIp(p.selector.src)}->${canonicalIp(p.selector.dst)}`;
}

/** Same SA content as far as we set it (the kernel's copy also has counters). */
function sameState(have: XfrmState, want: XfrmStateSpec): boolean {
  return (
    have.src === canonicalIp(want.src) &&
    have.reqid === want.reqid &&
    have.mode === want.mode &&
    have.esn === want.esn &&
    (want.esn ? have.replayEsn?.replayWindow === want.replayWindow : have.replayWindow === want.replayWindow) &&
    have.aead?.name === want.aead.name &&
    have.aead.icvBits === want.aead.icvBits &&
    have.aead.key.equals(want.aead.key) &&
    (have.mark?.value ?? 0) === (want.mark?.value ?? 0) &&
    (have.mark?.mask ?? 0) === (want.mark?.mask ?? 0)
  );
}

function samePolicy(have: XfrmPolicy, want: XfrmPolicySpec): boolean {
  const t = (x: { src: string; dst: string; reqid: number; mode: string; proto?: number; spi?: number }) =>
    `${canonicalIp(x.src)} ${canonicalIp(x.dst)} ${x.reqid} ${x.mode} ${x.proto ?? IPPROTO_ESP} ${x.spi ?? 0}`;
  return (
    have.action === (want.action ?? 'allow') &&
    have.priority === (want.priority ?? 0) &&
    have.tmpls.map(t).join(',') === want.tmpls.map(t).join(',')
  );
}

function ignoring<T>(codes: number[], fn: () => T): void {
  try {
    fn();
  } catch (e) {
    if (!isNetlinkError(e, ...codes)) throw e;
  }
}

export function converge(ops: XfrmOps, desired: DesiredXfrm): ConvergeReport {
  const report: ConvergeReport = { statesAdded: [], statesReplaced: [], statesDeleted: [], policiesSet: [], policiesDeleted: [], failed: [], failedPeers: [] };
  const reqid = desired.reqid;
  const local = canonicalIp(desired.localVtep);
  const haveStates = new Map<string, XfrmState>();
  for (const s of ops.xfrmStateList()) if (s.proto === IPPROTO_ESP && s.reqid === reqid) haveStates.set(stateKey(s), s);
  const havePolicies = new Map<string, XfrmPolicy>();
  for (const p of ops.xfrmPolicyList()) if (p.tmpls.some((t) => t.reqid === reqid)) havePolicies.set(policyKey(p), p);

  const wantStates = new Map(desired.states.map((s) => [stateKey(s), s] as const));
  const wantPolicies = new Map(desired.policies.map((p) => [policyKey(p), p] as const));
  const inbound = (s: { dst: string }) => canonicalIp(s.dst) === local;
  const failedPeers = new Set<string>();
  /** runs one kernel change; a refusal is that SA's or policy's alone */
  const each = (what: string, peer: string | undefined, fn: () => void) => {
    try {
      fn();
    } catch (e) {
      report.failed.push(`${what}: ${(e as Error).message}`);
      if (peer !== undefined) failedPeers.add(canonicalIp(peer));
    }
  };
  const peerOf = (s: { src: string; dst: string }) => (inbound(s) ? s.src : s.dst);

  const ensureState = (want: XfrmStateSpec) => {
    const have = haveStates.get(stateKey(want));
    if (have && sameState(have, want)) return;
    if (have) {
      ignoring([ESRCH], () => ops.xfrmStateDel({ dst: have.dst, spi: have.spi, ...(have.mark && { mark: have.mark }) }));
      ops.xfrmStateAdd(want);
      report.statesReplaced.push(sid(want));
      return;
    }
    ops.xfrmStateAdd(want);
    report.statesAdded.push(sid(want));
  };
  const dropState = (have: XfrmState) => {
    ignoring([ESRCH], () => ops.xfrmStateDel({ dst: have.dst, spi: have.spi, ...(have.mark && { mark: have.mark }) }));
    report.statesDeleted.push(sid(have));
  };

  // 1, 2
  for (const want of desired.states) if (inbound(want)) each(`SA ${sid(want)}`, peerOf(want), () => ensureState(want));
  for (const want of desired.states) if (!inbound(want)) each(`SA ${sid(want)}`, peerOf(want), () => ensureState(want));
  // 3: update creates or replaces, so an existing policy with stale templates is fixed in place
  for (const [k, want] of wantPolicies) {
    const have = havePolicies.get(k);
    if (have && samePolicy(have, want)) continue;
    each(`policy ${pid(want)}`, want.selector.dst, () => {
      ops.xfrmPolicyUpdate(want);
      report.policiesSet.push(pid(want));
    });
  }
  // 4
  for (const [k, have] of havePolicies) {
    if (wantPolicies.has(k)) continue;
    each(`policy ${pid(have)}`, undefined, () => {
      ignoring([ENOENT], () => ops.xfrmPolicyDel({ dir: have.dir, selector: have.selector, ...(have.mark && { mark: have.mark }) }));
      report.policiesDeleted.push(pid(have));
    });
  }
  // 5, 6
  for (const [k, have] of haveStates) if (!wantStates.has(k) && !inbound(have)) each(`SA ${sid(have)}`, undefined, () => dropState(have));
  for (const [k, have] of haveStates) if (!wantStates.has(k) && inbound(have)) each(`SA ${sid(have)}`, undefined, () => dropState(have));
  report.failedPeers = [...failedPeers].sort();
  return report;
}

/** Remove every SA and policy we own (the last encrypted network is gone). */
export function removeAll(ops: XfrmOps, localVtep: string, reqid: number): ConvergeReport {
  return converge(ops, { localVtep, reqid, states: [], policies: [] });
}

