/**
 * The xfrm state this host should hold: for every peer that shares at
 * least one encrypted network with it, and for the current key ring,
 *
 *   inbound  SAs  peer -> local, one per key in the ring (all three are
 *                 accepted, so a peer sending with any of them is heard);
 *   outbound SA   local -> peer, the primary key only;
 *   one policy    dir out, local/32 -> peer/32, UDP to the VXLAN port,
 *                 template ESP transport with our reqid.
 *
 * As Docker: only outbound traffic has a policy. Inbound needs none for
 * decryption (the kernel decrypts any ESP it has an SA for); what it needs
 * is the nftables rule that drops cleartext VXLAN from those peers for the
 * encrypted VNIs (firewall.ts), since without an inbound policy the kernel
 * would also accept plaintext.
 *
 * Each SA's key, salt and SPI are derived from the ring key for its own
 * (source, destination, key id) (spi.ts), so the peer computes the same SA
 * for the other side and no two host pairs share a key. SPIs into one
 * destination are assigned over that destination's sources (`sourcesOf`),
 * which both ends know from etcd. ESN is always on (see XfrmStateSpec).
 */
import { canonicalIp, parseIp } from '../netlink/ipaddr';
import { IPPROTO_UDP, XfrmMark, XfrmPolicySpec, XfrmStateSpec } from '../netlink/xfrm';
import { AEAD_ALGORITHM, ICV_BITS, KeyRing, RingKey, primaryKey } from './keyring';
import { deriveSaKey, spisInto } from './spi';

export const VXLAN_PORT = 4789;
/** "CNI" in ASCII: the reqid that marks the SAs and policies this project owns. */
export const IPSEC_REQID = 0x434e49;
/** Docker's encrypted-traffic mark, 0xD0C4E3, to select only encrypted VNIs when a mark is used. */
export const DOCKER_ENCRYPTION_MARK: XfrmMark = { value: 0xd0c4e3, mask: 0xffffffff };
export const DEFAULT_REPLAY_WINDOW = 128;

export interface EncryptedNetwork {
  /** the CNI network name */
  name: string;
  vni: number;
  /** underlay addresses (VTEPs) of the other hosts with an endpoint on this network */
  peers: readonly string[];
}

export interface IpsecParams {
  /** this host's underlay address (its VTEP) */
  localVtep: string;
  /** default VXLAN_PORT */
  port?: number;
  /** default IPSEC_REQID */
  reqid?: number;
  /**
   * When set, the outbound policies match only packets with this mark
   * (which firewall.ts puts on the encrypted VNIs' VXLAN packets), so an
   * unencrypted overlay between the same hosts stays in clear, as Docker's.
   * Without it, all VXLAN between two hosts of an encrypted network is
   * encrypted, which is safe but costs the unencrypted networks ESP.
   */
  mark?: XfrmMark;
  /** default DEFAULT_REPLAY_WINDOW */
  replayWindow?: number;
}

export interface DesiredXfrm {
  localVtep: string;
  reqid: number;
  states: XfrmStateSpec[];
  policies: XfrmPolicySpec[];
}

/** Peers sharing an encrypted network with this host, canonical and sorted, without the host itself. */
export function encryptedPeers(localVtep: string, networks: readonly EncryptedNetwork[]): string[] {
  const local = canonicalIp(localVtep);
  const peers = new Set<string>();
  for (const n of networks) for (const p of n.peers) peers.add(canonicalIp(p));
  peers.delete(local);
  return [...peers].sort();
}

/**
 * `sourcesOf(peer)`: the hosts that send to `peer` (its own peers), for the
 * SPI assignment into it; this host is counted whatever it says. Without
 * it, SPIs into a peer are assigned as if this host were its only source,
 * which agrees with the peer except in the rare case of a collision.
 */
export function desiredXfrm(
  params: IpsecParams,
  networks: readonly EncryptedNetwork[],
  ring: KeyRing | undefined,
  sourcesOf: (peer: string) => readonly string[] = () => [],
): DesiredXfrm {
  const local = canonicalIp(params.localVtep);
  const reqid = params.reqid ?? IPSEC_REQID;
  const out: DesiredXfrm = { localVtep: local, reqid, states: [], policies: [] };
  // No ring yet (a host that has not fetched one): nothing can be keyed,
  // and a policy without an SA would drop the traffic, so install nothing.
  if (!ring) return out;
  const primary = primaryKey(ring);
  const localFamily = parseIp(local).family;
  const peers = encryptedPeers(local, networks).filter((p) => parseIp(p).family === localFamily); // no SA joins IPv4 and IPv6
  const sa = (src: string, dst: string, k: RingKey, spi: number): XfrmStateSpec => ({
    src,
    dst,
    spi,
    reqid,
    mode: 'transport',
    aead: { name: AEAD_ALGORITHM, key: deriveSaKey(k.material.reveal(), k.id, src, dst), icvBits: ICV_BITS },
    replayWindow: params.replayWindow ?? DEFAULT_REPLAY_WINDOW,
    esn: true,
  });
  // SPIs into this host: over all its peers, per key
  const inbound = new Map(ring.keys.map((k) => [k.id, spisInto(k.material.reveal(), k.id, local, peers)] as const));
  for (const peer of peers) {
    for (const k of ring.keys) out.states.push(sa(peer, local, k, inbound.get(k.id)!.get(peer)!));
    const into = spisInto(primary.material.reveal(), primary.id, peer, [...sourcesOf(peer), local]);
    out.states.push(sa(local, peer, primary, into.get(local)!));
    out.policies.push({
      dir: 'out',
      selector: { src: local, dst: peer, proto: IPPROTO_UDP, dport: params.port ?? VXLAN_PORT },
      ...(params.mark && { mark: params.mark }),
      tmpls: [{ src: local, dst: peer, reqid, mode: 'transport' }],
    });
  }
  return out;
}

