/**
 * nftables for encrypted overlays, in the project table `inet cni_ts_ipsec`,
 * written whole in one transaction (knftables' reconcile-by-flush: the
 * chains are flushed and all their rules written again, atomically).
 *
 * cleartext_in (filter, input): for each encrypted network,
 *     ip saddr { PEERS } udp dport 4789 @th,96,24 VNI meta secpath missing drop
 *   VXLAN from a peer for an encrypted VNI that did not arrive through an
 *   SA (no secpath) is dropped. Without this an attacker on the underlay
 *   could inject plaintext frames into the encrypted network, since the
 *   kernel, with no inbound policy (as Docker), accepts plaintext too.
 *   @th,96,24 is the VNI: the UDP header is 64 bits, then VXLAN's 8 bits
 *   of flags and 24 reserved, then the 24-bit VNI.
 *
 * encrypt_mark (route, output), only with a mark:
 *     ip daddr { PEERS } udp dport 4789 @th,96,24 VNI meta mark set MARK
 *   marks the encrypted VNIs' outgoing VXLAN so that the marked xfrm
 *   policies select them and only them; a `route` chain, because the
 *   kernel must look the route (and so the xfrm policy) up again after the
 *   mark changes, as Docker's iptables mangle rule does.
 *
 * No encrypted network left: the table is deleted.
 */
import { TableTx, networkTag, projectTable, type ChainSpec, type RuleSpec } from '../nft/table';
import type { TableRef } from '../nft/types';
import { AF_INET } from '../netlink/consts';
import { canonicalIp, parseIp } from '../netlink/ipaddr';
import type { XfrmMark } from '../netlink/xfrm';
import { VXLAN_PORT, type EncryptedNetwork } from './desired';

export const IPSEC_TABLE: TableRef = projectTable('inet', 'ipsec');

export const CLEARTEXT_CHAIN: ChainSpec = { name: 'cleartext_in', type: 'filter', hook: 'input', priority: 'filter', policy: 'accept' };
export const MARK_CHAIN: ChainSpec = { name: 'encrypt_mark', type: 'route', hook: 'output', priority: 'mangle', policy: 'accept' };

export interface FirewallOptions {
  port?: number;
  /** set to mark the encrypted VNIs' VXLAN on the way out (see desired.ts IpsecParams.mark) */
  mark?: XfrmMark;
}

function hostSets(peers: readonly string[]): Array<{ family: 'ip' | 'ip6'; set: string }> {
  const v4 = peers.filter((p) => parseIp(p).family === AF_INET).map(canonicalIp).sort();
  const v6 = peers.filter((p) => parseIp(p).family !== AF_INET).map(canonicalIp).sort();
  const out: Array<{ family: 'ip' | 'ip6'; set: string }> = [];
  if (v4.length) out.push({ family: 'ip', set: `{ ${v4.join(', ')} }` });
  if (v6.length) out.push({ family: 'ip6', set: `{ ${v6.join(', ')} }` });
  return out;
}

function checkVni(vni: number): void {
  if (!Number.isInteger(vni) || vni < 1 || vni > 0xffffff) throw new RangeError(`VNI ${vni} outside 1..16777215`);
}

/** The transaction that makes the ipsec table match `networks` (the encrypted ones with their peers). */
export function ipsecFirewall(networks: readonly EncryptedNetwork[], opts: FirewallOptions = {}): TableTx {
  const tx = new TableTx(IPSEC_TABLE);
  const port = opts.port ?? VXLAN_PORT;
  const withPeers = networks.filter((n) => n.peers.length > 0);
  if (withPeers.length === 0) {
    tx.destroy({ kind: 'table' });
    return tx;
  }
  const drop: RuleSpec[] = [];
  const mark: RuleSpec[] = [];
  for (const n of [...withPeers].sort((a, b) => a.vni - b.vni || a.name.localeCompare(b.name))) {
    checkVni(n.vni);
    const comment = networkTag(n.name);
    for (const { family, set } of hostSets(n.peers)) {
      drop.push({ rule: `${family} saddr ${set} udp dport ${port} @th,96,24 ${n.vni} meta secpath missing drop`, comment });
      if (opts.mark) {
        mark.push({ rule: `${family} daddr ${set} udp dport ${port} @th,96,24 ${n.vni} meta mark set 0x${(opts.mark.value >>> 0).toString(16)}`, comment });
      }
    }
  }
  // The whole table is desired state, written every time (nothing to skip
  // with a marker): the skeleton is the table and its base chains.
  tx.add({ kind: 'table', comment: 'cni-ts encrypted overlays' });
  tx.syncChain(CLEARTEXT_CHAIN, drop);
  if (opts.mark) tx.syncChain(MARK_CHAIN, mark);
  else tx.destroy({ kind: 'chain', name: MARK_CHAIN.name });
  return tx;
}
