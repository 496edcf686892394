/**
 * The agent's half of encrypted overlays (`"encrypted": true`): which hosts
 * this one must hold IPsec tunnels with, keeping them keyed from the ring in
 * etcd (shared/ipsec syncHost), and the leader's key rotation.
 *
 * Tunnels exist only between hosts that both have endpoints on an encrypted
 * network, as Docker's: for every encrypted network with at least one
 * endpoint on this host, its peers are the live hosts (registered, so their
 * agent runs) with an endpoint on it. When a pair no longer shares one, the
 * next pass removes its SAs and policies (converge deletes what is not
 * desired); when this host has no encrypted endpoint left, all of ours go
 * and so does the nftables table.
 *
 * No cleartext, ever, for an encrypted network: `keyedPeers()` names the
 * peers whose SAs and policies are installed, and the agent gives a VXLAN
 * device of an encrypted network forwarding entries only for endpoints on
 * those peers. A peer without keys (no ring yet, etcd down on first start)
 * is unreachable rather than reached in the clear.
 *
 * Keys: the ring is one etcd key under the overlay prefix
 * (`<prefix>/ipsec/ring`, so the agent's watch of the prefix sees every
 * rotation), read over the agent's own etcd connection, with
 * a 0600 local copy for restarts while etcd is down (RingStore). Every
 * agent campaigns (`<prefix>/ipsec/leader`) while any encrypted network
 * exists; the leader ticks the KeyRotator, which writes rotations by
 * compare-and-set.
 *
 * Rotation never outruns a slow host: each host acknowledges the ring
 * generation it has installed (`<prefix>/ipsec/applied/<node>`), and the
 * leader rotates only once every live host with an encrypted endpoint has
 * acknowledged the current ring: the ring's pipeline (a key receivable a
 * whole period before anyone sends with it) then holds however late a
 * host applies a ring. A host that never acknowledges (stuck agent, lease
 * still alive) delays rotation by at most one more period; then the leader
 * rotates anyway, since keys that never rotate are the worse failure.
 * Nothing here logs key material: the ring is described by
 * ids and times only (describeRing).
 */
import * as path from 'node:path';
import type { Nft } from '../../shared/nft/nft-interface';
import {
  DOCKER_ENCRYPTION_MARK,
  IPSEC_REQID,
  IPSEC_TABLE,
  KeyRotator,
  LeaderElection,
  RingStore,
  encryptedPeers,
  syncHost,
  type Clock,
  type EncryptedNetwork,
  type HostSyncResult,
  type KeyRing,
  type KeyMaterialSource,
  type TickResult,
  type XfrmOps,
} from '../../shared/ipsec';
import { canonicalIp } from '../../shared/netlink/ipaddr';
import type { Snapshot } from './controlplane';
import type { KV } from '../../shared/etcd/kv';

export const DEFAULT_ROTATE_EVERY_MS = 12 * 60 * 60 * 1000;

/** The etcd prefix of the ring and the election, under the overlay's. */
export function ipsecPrefix(overlayPrefix: string): string {
  return `${overlayPrefix}/ipsec`;
}

/** Where the local copy of the ring lives: beside the agent's other state. */
export function ringCacheDir(stateDir: string): string {
  return path.join(stateDir, 'ipsec');
}

/**
 * The encrypted networks this host takes part in, each with the VTEPs of
 * the live peers that have endpoints on it. Networks without a local
 * endpoint are left out: no tunnel for a network this host does not use.
 */
export function encryptedNetworksOf(snap: Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'>, node: string): EncryptedNetwork[] {
  const vtep = new Map(snap.hosts.map((h) => [h.name, h.vtep]));
  const mine = vtep.get(node);
  const out: EncryptedNetwork[] = [];
  for (const n of snap.networks) {
    if (!n.encrypted) continue;
    const eps = snap.endpoints.filter((e) => e.network === n.name);
    if (!eps.some((e) => e.host === node)) continue;
    const peers = new Set<string>();
    for (const e of eps) {
      const v = e.host === node ? undefined : vtep.get(e.host);
      // a host sharing our VTEP would be ourselves under another name: no SA to oneself
      if (v !== undefined && (mine === undefined || canonicalIp(v) !== canonicalIp(mine))) peers.add(canonicalIp(v));
    }
    out.push({ name: n.name, vni: n.vni, peers: [...peers].sort() });
  }
  return out.sort((a, b) => a.vni - b.vni);
}

/**
 * Who sends to each peer (its own encrypted peers, by the snapshot): the
 * SPIs into a host are assigned over all its sources, the same way on
 * every host (shared/ipsec/spi.ts).
 */
export function sourcesOf(snap: Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'>): (peer: string) => readonly string[] {
  const byVtep = new Map<string, string[]>();
  for (const h of snap.hosts) byVtep.set(canonicalIp(h.vtep), [...(byVtep.get(canonicalIp(h.vtep)) ?? []), h.name]);
  const memo = new Map<string, readonly string[]>();
  return (peer) => {
    const key = canonicalIp(peer);
    let out = memo.get(key);
    if (!out) {
      const srcs = new Set<string>();
      for (const name of byVtep.get(key) ?? []) for (const n of encryptedNetworksOf(snap, name)) for (const p of n.peers) srcs.add(p);
      out = [...srcs];
      memo.set(key, out);
    }
    return out;
  };
}

/** Which ring generation each host has installed. */
export interface RingAcks {
  put(node: string, generation: number): Promise<void>;
  list(): Promise<Map<string, number>>;
}

/** RingAcks in etcd, under the overlay prefix. */
export function acksOver(kv: KV, overlayPrefix: string, timeoutMs: number, now: Clock = Date.now): RingAcks {
  const dir = `${ipsecPrefix(overlayPrefix)}/applied/`;
  return {
    async put(node, generation) {
      await kv.txn({ success: [{ put: `${dir}${node}`, value: String(generation) }] }, now() + timeoutMs);
    },
    async list() {
      const { results } = await kv.txn({ success: [{ get: dir, prefix: true }] }, now() + timeoutMs);
      // a malformed acknowledgement counts as none (that host is waited for), never as a number it is not
      return new Map(
        (results[0] ?? []).filter((x) => /^\d{1,15}$/.test(x.value)).map((x) => [x.key.slice(dir.length), Number(x.value)] as const),
      );
    },
  };
}

/** RingAcks in memory, for tests. */
export class MemoryAcks implements RingAcks {
  readonly map = new Map<string, number>();
  async put(node: string, generation: number): Promise<void> {
    this.map.set(node, generation);
  }
  async list(): Promise<Map<string, number>> {
    return new Map(this.map);
  }
}

export interface EncryptionOptions {
  readonly node: string;
  readonly vtep: string;
  /** the overlay's etcd prefix */
  readonly prefix: string;
  /** local copy of the ring (0600 file in a 0700 directory); omitted: none */
  readonly cacheDir?: string;
  /** key rotation period; default 12 h */
  readonly rotateEveryMs?: number;
  /** leader lease TTL, seconds; default 15 */
  readonly leaderTtlSeconds?: number;
  readonly aesBytes?: 16 | 32;
  /** how long one etcd call may take; default 5000 ms */
  readonly requestTimeoutMs?: number;
}

export interface EncryptionDeps {
  /** the agent's etcd connection: the ring and the election share it (one connection per agent, not two) */
  readonly ringKv: KV;
  readonly acks: RingAcks;
  readonly xfrm: XfrmOps;
  readonly nft: Nft;
  readonly clock: Clock;
  readonly log: (line: string) => void;
  readonly keySource?: KeyMaterialSource;
}

export interface EncryptionPass {
  readonly networks: readonly EncryptedNetwork[];
  /** undefined when nothing had to be done (no encrypted network, nothing installed) */
  readonly result?: HostSyncResult;
}

export class HostEncryption {
  readonly store: RingStore;
  readonly election: LeaderElection;
  readonly rotator: KeyRotator;
  /** peers with SAs and policies installed, as of the last pass */
  private keyed = new Set<string>();
  /** true once a pass has left the kernel with nothing of ours (the first pass always looks) */
  private clean = false;
  private lastRing: string | undefined;
  private acked: number | undefined;
  private tickSnap: Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'> | undefined;
  private waitingFor = '';
  private lastProblem: string | undefined;

  constructor(
    private readonly opts: EncryptionOptions,
    private readonly deps: EncryptionDeps,
  ) {
    const prefix = ipsecPrefix(opts.prefix);
    const timeoutMs = opts.requestTimeoutMs;
    this.store = new RingStore(deps.ringKv, { prefix, ...(opts.cacheDir !== undefined && { cacheDir: opts.cacheDir }), ...(timeoutMs !== undefined && { timeoutMs }) });
    this.election = new LeaderElection(deps.ringKv, { prefix, candidate: opts.node, ttlSeconds: opts.leaderTtlSeconds ?? 15, ...(timeoutMs !== undefined && { timeoutMs }) });
    this.rotator = new KeyRotator({
      store: this.store,
      election: this.election,
      clock: deps.clock,
      periodMs: opts.rotateEveryMs ?? DEFAULT_ROTATE_EVERY_MS,
      ...(deps.keySource && { keySource: deps.keySource }),
      ...(opts.aesBytes && { aesBytes: opts.aesBytes }),
      ready: (ring, now) => this.allApplied(ring, now),
    });
  }

  /** Has every live host with an encrypted endpoint installed `ring`? (Or is it a period overdue?) */
  private async allApplied(ring: KeyRing, now: number): Promise<boolean> {
    const snap = this.tickSnap;
    if (!snap) return true;
    const need = snap.hosts.filter((h) => encryptedNetworksOf(snap, h.name).some((n) => n.peers.length > 0)).map((h) => h.name);
    if (need.length === 0) return true;
    const acks = await this.deps.acks.list();
    const lagging = need.filter((h) => (acks.get(h) ?? 0) < ring.generation).sort();
    const period = this.opts.rotateEveryMs ?? DEFAULT_ROTATE_EVERY_MS;
    if (lagging.length === 0 || now - ring.rotatedAt >= 2 * period) {
      if (lagging.length) this.deps.log(`ipsec: rotating although ${lagging.join(', ')} never applied generation ${ring.generation}`);
      this.waitingFor = '';
      return true;
    }
    const who = lagging.join(', ');
    if (who !== this.waitingFor) this.deps.log(`ipsec: rotation due; waiting for ${who} to apply generation ${ring.generation}`);
    this.waitingFor = who;
    return false;
  }

  /**
   * The first pass of a host with no encrypted endpoint: is anything of
   * ours (from an earlier run) in the kernel? Looking is three reads; a
   * sync would be an nft transaction every pass. A kernel without xfrm
   * (the module absent) holds nothing of ours either.
   */
  private hasLeftovers(): boolean {
    try {
      const ours = (reqid: number) => reqid === IPSEC_REQID;
      if (this.deps.xfrm.xfrmStateList().some((s) => ours(s.reqid))) return true;
      if (this.deps.xfrm.xfrmPolicyList().some((p) => p.tmpls.some((t) => ours(t.reqid)))) return true;
      return this.deps.nft.list(IPSEC_TABLE.family, IPSEC_TABLE.table) !== undefined;
    } catch (e) {
      this.deps.log(`ipsec: no encrypted network here; could not look for leftover SAs: ${(e as Error).message}`);
      return false;
    }
  }

  /** Peers this host may send an encrypted network's VXLAN to (their SAs exist). */
  keyedPeers(): ReadonlySet<string> {
    return this.keyed;
  }

  /**
   * One pass: make SAs, policies and the cleartext drop match `snap`.
   * Throws what syncHost throws (netlink, nft, etcd other than "try again");
   * the keyed set then keeps only peers that were keyed and are still wanted.
   */
  async sync(snap: Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'>): Promise<EncryptionPass> {
    const networks = encryptedNetworksOf(snap, this.opts.node);
    const wanted = new Set(encryptedPeers(this.opts.vtep, networks));
    if (wanted.size === 0 && this.clean) return { networks };
    if (wanted.size === 0 && this.keyed.size === 0 && !this.hasLeftovers()) {
      this.clean = true;
      return { networks };
    }
    let result: HostSyncResult;
    try {
      // The mark makes the policies select only the encrypted VNIs' VXLAN,
      // so an unencrypted overlay between the same hosts stays in clear.
      result = await syncHost(
        { store: this.store, xfrm: this.deps.xfrm, nft: this.deps.nft },
        { localVtep: this.opts.vtep, mark: DOCKER_ENCRYPTION_MARK },
        networks,
        sourcesOf(snap),
      );
    } catch (e) {
      this.keyed = new Set([...this.keyed].filter((p) => wanted.has(p)));
      this.clean = false;
      throw e;
    }
    if (result.report) {
      const r = result.report;
      // a peer whose SA or policy the kernel refused is not keyed: nothing is sent to it (never in clear)
      this.keyed = new Set([...wanted].filter((p) => !r.failedPeers.includes(p)));
      this.clean = wanted.size === 0;
      for (const f of r.failed) this.deps.log(`ipsec: ${f}`);
      // a refused rollback (or etcd's ring unreadable): said once, not every pass
      const problem = result.problem?.message;
      if (problem !== this.lastProblem && problem !== undefined) this.deps.log(`ipsec: ${problem}`);
      this.lastProblem = problem;
      const changes = r.statesAdded.length + r.statesReplaced.length + r.statesDeleted.length + r.policiesSet.length + r.policiesDeleted.length;
      if (changes > 0 || result.ring !== this.lastRing) {
        // ids and counts only: the report and describeRing never hold key material
        this.deps.log(
          `ipsec: ${wanted.size} peer(s), ring ${result.ring ?? 'none'} (${result.source}); SAs +${r.statesAdded.length} ~${r.statesReplaced.length} -${r.statesDeleted.length}, policies set ${r.policiesSet.length} -${r.policiesDeleted.length}`,
        );
      }
      this.lastRing = result.ring;
      if (result.generation !== undefined && wanted.size > 0 && result.generation !== this.acked) {
        try {
          await this.deps.acks.put(this.opts.node, result.generation);
          this.acked = result.generation;
        } catch (e) {
          this.deps.log(`ipsec: could not acknowledge generation ${result.generation}: ${(e as Error).message}; retrying next pass`);
        }
      }
    } else {
      // No ring anywhere (etcd unreachable and no local copy, or none made
      // yet): nothing was touched; new peers stay unkeyed, so unreachable.
      this.keyed = new Set([...this.keyed].filter((p) => wanted.has(p)));
      this.deps.log(`ipsec: no key ring yet for ${wanted.size} peer(s)${result.problem ? `: ${result.problem.message}` : ''}; not keying new peers`);
    }
    return { networks, result };
  }

  /**
   * The leader's round: campaign, and rotate if due. Only while some
   * encrypted network exists in the cluster (a cluster without one needs no
   * ring); an agent that stops needing it resigns so another can lead.
   */
  async tick(snap: Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'>): Promise<TickResult | undefined> {
    if (!snap.networks.some((n) => n.encrypted)) {
      await this.election.resign();
      return undefined;
    }
    this.tickSnap = snap; // who must have applied the ring before the next rotation (allApplied)
    const r = await this.rotator.tick();
    if (r.action === 'created' || r.action === 'rotated' || r.action === 'restored') this.deps.log(`ipsec: leader ${this.opts.node} ${r.action} the key ring`);
    if (r.action === 'clamped') this.deps.log(`ipsec: leader ${this.opts.node} clamped the key ring's rotation stamp, which was far ahead of its clock`);
    return r;
  }

  async stop(): Promise<void> {
    await this.election.resign().catch(() => undefined);
  }
}
