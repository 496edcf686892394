/**
 * One host's side, in one call: fetch the ring, make the xfrm tables match
 * the encrypted networks this host shares with its peers, then the
 * nftables rules. The overlay calls it after an endpoint is added or
 * removed and whenever the ring changes; it is idempotent.
 *
 * Order: SAs and policies first, then the cleartext drop, so a new peer's
 * encrypted packets are accepted before its cleartext ones are refused.
 * With no ring at all (etcd unreachable on a host that never had one),
 * nothing is installed and `problem` says why; SAs already installed from
 * an earlier ring are left in place rather than torn down.
 */
import type { Nft } from '../nft/nft-interface';
import { converge, type ConvergeReport } from './converge';
import { desiredXfrm, type EncryptedNetwork, type IpsecParams } from './desired';
import { ipsecFirewall } from './firewall';
import { describeRing } from './keyring';
import type { RingStore } from './ring-store';
import type { XfrmOps } from './xfrm-ops';

export interface HostSyncResult {
  /** where the ring came from */
  source: 'etcd' | 'cache' | 'none';
  /** safe to log: ids and times only */
  ring?: string;
  /** the generation of the ring installed */
  generation?: number;
  report?: ConvergeReport;
  problem?: Error;
}

export async function syncHost(
  deps: { store: RingStore; xfrm: XfrmOps; nft: Nft },
  params: IpsecParams,
  networks: readonly EncryptedNetwork[],
  /** each peer's own peers, for the SPIs into it (desiredXfrm) */
  sourcesOf?: (peer: string) => readonly string[],
): Promise<HostSyncResult> {
  const { ring, source, problem } = await deps.store.fetch();
  const encrypted = networks.filter((n) => n.peers.length > 0);
  if (!ring && encrypted.length > 0) return { source, ...(problem && { problem }) };
  const report = converge(deps.xfrm, desiredXfrm(params, encrypted, ring, sourcesOf));
  deps.nft.run(ipsecFirewall(encrypted, { ...(params.port && { port: params.port }), ...(params.mark && { mark: params.mark }) }));
  return { source, ...(ring && { ring: describeRing(ring), generation: ring.generation }), report, ...(problem && { problem }) };
}
