/**
 * XfrmHandle: the typed xfrm verbs on one network namespace, each saying
 * which `ip xfrm` command it equals, as NetlinkHandle (../handle.ts) is for
 * rtnetlink.
 */
import { NETLINK_XFRM } from '../consts';
import { NetlinkError, ESRCH } from '../errors';
import { NetlinkSocket } from '../socket';
import { NetNs } from '../../netns/netns';
import type { XfrmRequest } from './common';
import { XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA } from './consts';
import { XfrmPolicy, XfrmPolicyId, XfrmPolicySpec, parsePolicy, policyAddRequest, policyDelRequest, policyFlushRequest, policyListRequest, policyUpdateRequest } from './policy';
import { XfrmState, XfrmStateId, XfrmStateSpec, parseState, stateAddRequest, stateDelRequest, stateFlushRequest, stateGetRequest, stateListRequest, stateUpdateRequest } from './state';

/**
 * The xfrm verbs on one network namespace (NETLINK_XFRM socket opened in it),
 * as NetlinkHandle is for rtnetlink. Errors are NetlinkError with the errno:
 * EEXIST (add of a present state/policy), ESRCH (state absent), ENOENT
 * (policy absent), EPROTONOSUPPORT/ENOENT-with-message when the kernel
 * lacks ESP or the algorithm.
 */
export class XfrmHandle {
  private constructor(
    private readonly sock: NetlinkSocket,
    readonly netnsPath: string | undefined,
  ) {}

  static open(netnsPath?: string): XfrmHandle {
    if (netnsPath === undefined) return new XfrmHandle(NetlinkSocket.open(NETLINK_XFRM), undefined);
    const ns = NetNs.open(netnsPath);
    try {
      return new XfrmHandle(NetlinkSocket.open(NETLINK_XFRM, ns.fd), netnsPath);
    } finally {
      ns.close();
    }
  }

  close(): void {
    this.sock.close();
  }

  private send(r: XfrmRequest) {
    return this.sock.request(r.type, r.flags, r.header, r.attrs, r.op);
  }

  /** ip xfrm state add src S dst D proto esp spi SPI reqid R mode transport [flag esn] replay-window W aead 'rfc4106(gcm(aes))' KEY 128 [mark M mask K] */
  xfrmStateAdd(s: XfrmStateSpec): void {
    this.send(stateAddRequest(s));
  }

  /** ip xfrm state update ... (same arguments as add; ESRCH when absent) */
  xfrmStateUpdate(s: XfrmStateSpec): void {
    this.send(stateUpdateRequest(s));
  }

  /** ip xfrm state delete [src S] dst D proto esp spi SPI [mark M mask K]; ESRCH when absent */
  xfrmStateDel(id: XfrmStateId): void {
    this.send(stateDelRequest(id));
  }

  /** ip xfrm state get dst D proto esp spi SPI; undefined when absent */
  xfrmStateGet(id: XfrmStateId): XfrmState | undefined {
    try {
      const [m] = this.send(stateGetRequest(id)).filter((x) => x.type === XFRM_MSG_NEWSA);
      return m ? parseState(m.payload) : undefined;
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === ESRCH) return undefined;
      throw e;
    }
  }

  /** ip -s xfrm state list (every protocol; keys included, as ip prints them) */
  xfrmStateList(): XfrmState[] {
    return this.send(stateListRequest())
      .filter((m) => m.type === XFRM_MSG_NEWSA)
      .map((m) => parseState(m.payload));
  }

  /** ip xfrm state flush proto esp */
  xfrmStateFlush(): void {
    this.send(stateFlushRequest());
  }

  /** ip xfrm policy add src S/32 dst D/32 proto udp dport 4789 dir out [mark M mask K] tmpl src S dst D proto esp reqid R mode transport */
  xfrmPolicyAdd(p: XfrmPolicySpec): void {
    this.send(policyAddRequest(p));
  }

  /** ip xfrm policy update ... (creates or replaces) */
  xfrmPolicyUpdate(p: XfrmPolicySpec): void {
    this.send(policyUpdateRequest(p));
  }

  /** ip xfrm policy delete SELECTOR dir DIR [mark M mask K]; ENOENT when absent */
  xfrmPolicyDel(id: XfrmPolicyId): void {
    this.send(policyDelRequest(id));
  }

  /** ip xfrm policy list (main policies; socket policies are not listed by the kernel) */
  xfrmPolicyList(): XfrmPolicy[] {
    return this.send(policyListRequest())
      .filter((m) => m.type === XFRM_MSG_NEWPOLICY)
      .map((m) => {
        const { family: _family, ...p } = parsePolicy(m.payload);
        void _family;
        return p;
      });
  }

  /** ip xfrm policy flush */
  xfrmPolicyFlush(): void {
    this.send(policyFlushRequest());
  }
}

/** Run fn with an xfrm handle on netnsPath and always close it. */
export function withXfrmHandle<T>(netnsPath: string | undefined, fn: (h: XfrmHandle) => T): T {
  const h = XfrmHandle.open(netnsPath);
  try {
    return fn(h);
  } finally {
    h.close();
  }
}
