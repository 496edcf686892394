/**
 * The overlay's control plane in etcd, in place of Docker Swarm's gossip.
 * Keys under the prefix P (default /cni-ts/overlay):
 *
 *   P/networks/<name>                          {name, subnet, subnets?, vni, mtu?, encrypted}
 *   P/vnis/<vni>                               <network name>: who holds the VNI
 *   P/identities/<node>                        {hostId, registeredAt}: which machine holds the node name
 *   P/hosts/<node>                             {name, vtep, hostId}, attached to the agent's lease
 *   P/endpoints/<network>/<container>/<ifname> {network, containerId, ifname, ip, ips?, mac, host, hostId}
 *   P/gc/<node>/<network>/<container>/<ifname> {modRevision, firstSeen}: GC's first sighting of a leak
 *   P/dns/<network>/<container>/<ifname>       {names, v4, v6, host, ...}: the endpoint's names (shared/dns/cluster.ts),
 *                                              written and removed with the endpoint, in its transactions
 *
 * IPv6 and dual stack: a VTEP is an IPv4 or an IPv6 address (the underlay's
 * family); a dual-stack network records both subnets (`subnets`, IPv4
 * first; `subnet` stays the first, what records before dual stack hold),
 * and its endpoints both addresses (`ips`; `ip` stays the first).
 *
 * Every record read back is validated with the schemas below (the shapes
 * this file writes, and the key it sits under): a malformed or misplaced
 * one is logged and skipped, so one bad record never stops a convergence
 * pass or an ADD for anyone else.
 *
 * Identity: a node name belongs to one machine (its random host ID,
 * shared/host-id.ts). The agent claims P/identities/<node> by
 * compare-and-swap (only if absent, or already its own) and writes its host
 * record only while the identity is still its own; a second machine with
 * the same node name (a cloned image, a typo) is refused, agent and plugin
 * alike, instead of overwriting the first one's VTEP. The identity stays
 * when the agent stops; `overlay-agent leave` releases it, `overlay-agent
 * forget --node NAME` removes a dead machine's.
 *
 * Reclaim: a network's record and VNI go when its last endpoint in the
 * whole cluster goes, by one transaction that holds only if the record is
 * the one read and no key exists under its endpoints prefix; an ADD writes
 * its endpoint only if the network record is still the one it joined. So a
 * network in use is never reclaimed, and an ADD racing a reclaim fails with
 * 11 (try again) rather than joining a network that is gone.
 *
 * VNIs are unique cluster-wide because a network and its VNI key are
 * written in one transaction that requires both to be absent; allocation
 * starts at 4096 (Docker's choice: clear of 802.1Q VLAN ids), unless the
 * network names its own.
 *
 * A host is live while its key exists; the key lives on the agent's lease,
 * so a host whose agent stops for longer than the lease TTL (or that
 * leaves explicitly) disappears, and every other agent drops its
 * containers' entries. Endpoints themselves carry no lease: they belong to
 * containers, which outlive agent restarts.
 */
import { z } from 'zod';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { isCidr, isIP, parseIP } from '../../shared/ip';
import type { RemoteEndpoint } from '../../shared/vxlan';
import { VNI_MAX, VNI_MIN } from '../../shared/vxlan';
import { prefixed, stderrLog, type Logger } from '../../shared/log';
import type { Compare, KV, KeyValue, LeaseId, Op } from '../../shared/etcd/kv';
import { type ClusterRecord, clusterKey, decodeRecord } from '../../shared/dns/cluster';

export const DEFAULT_PREFIX = '/cni-ts/overlay';
/** Docker's first automatic VNI. */
export const FIRST_AUTO_VNI = 4096;

const nodeNameRe = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const hostIdSchema = z.string().regex(/^[0-9a-f]{32}$/, 'not a host ID');
const ipAddress = z.string().refine(isIP, 'not an IP address');
const unicastMac = z
  .string()
  .regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'not a lower-case MAC address')
  .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'a multicast MAC');

export const networkRecordSchema = z.object({
  name: z.string().min(1),
  subnet: z.string().refine(isCidr, 'not a CIDR'),
  /** dual stack: every subnet, one per family, IPv4 first (subnet is subnets[0]) */
  subnets: z.array(z.string().refine(isCidr, 'not a CIDR')).min(2).max(2).optional(),
  vni: z.number().int().min(VNI_MIN).max(VNI_MAX),
  mtu: z.number().int().min(576).max(65535).optional(),
  encrypted: z.boolean().default(false),
});
export type NetworkRecord = z.input<typeof networkRecordSchema> & { readonly encrypted: boolean };

export interface NetworkRequest {
  readonly name: string;
  readonly subnet: string;
  /** dual stack: both subnets, IPv4 first (subnet is the first) */
  readonly subnets?: readonly string[];
  /** the network's own VNI; allocated from 4096 up when absent */
  readonly vni?: number;
  readonly mtu?: number;
  readonly encrypted?: boolean;
}

export const hostRecordSchema = z.object({
  name: z.string().regex(nodeNameRe),
  /** the underlay address VXLAN packets to this host's containers go to */
  vtep: ipAddress,
  /** the machine that wrote it (absent in records of agents before host IDs) */
  hostId: hostIdSchema.optional(),
});
export type HostRecord = z.infer<typeof hostRecordSchema>;

export const endpointRecordSchema = z.object({
  network: z.string().min(1),
  containerId: z.string().min(1),
  ifname: z.string().min(1),
  /** address without prefix length */
  ip: ipAddress,
  /** dual stack: every address of the endpoint, ip among them */
  ips: z.array(ipAddress).min(1).max(2).optional(),
  mac: unicastMac,
  /** node name of the host the container is on */
  host: z.string().regex(nodeNameRe),
  /** the machine that added it: GC removes only its own machine's endpoints */
  hostId: hostIdSchema.optional(),
})
  // dual stack: ip is one of ips, and ips holds at most one address per family
  .refine((e) => !e.ips || (e.ips.includes(e.ip) && new Set(e.ips.map((a) => a.includes(':'))).size === e.ips.length), 'ip must be one of ips, one per family');
export type EndpointRecord = z.infer<typeof endpointRecordSchema>;

export const identitySchema = z.object({ hostId: hostIdSchema, registeredAt: z.string() });
export type IdentityRecord = z.infer<typeof identitySchema>;

const sightingSchema = z.object({ modRevision: z.string().regex(/^\d+$/), firstSeen: z.number() });

/** A second machine claims a node name another holds: refused (code 7), the agent exits. */
export class IdentityConflictError extends CniError {
  constructor(node: string, holder: string | undefined, mine: string, prefix: string) {
    super(
      ErrorCode.InvalidNetworkConfig,
      holder === undefined
        ? `node name "${node}" has an unreadable identity record in etcd (${prefix}/identities/${node}); this host is ${mine}`
        : `node name "${node}" belongs to another host (host ID ${holder}); this host's ID is ${mine}`,
      `two machines share the node name (a cloned image?): give this one its own node name, or, if the other machine is gone for good, run \`cni-ts overlay-agent forget --node ${node}\``,
    );
    this.name = 'IdentityConflictError';
  }
}

export interface Snapshot {
  readonly revision: bigint;
  readonly networks: readonly NetworkRecord[];
  readonly hosts: readonly HostRecord[];
  readonly endpoints: readonly EndpointRecord[];
}

export interface ControlPlaneOptions {
  readonly prefix?: string;
  /** where skipped records are reported; default stderr */
  readonly log?: (line: string) => void;
  /** bound of each operation; past it the call fails with 11 */
  readonly timeoutMs?: number;
  /** epoch ms for GC's grace and the identity's stamp (request deadlines use the real clock) */
  readonly now?: () => number;
}

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

export class ControlPlane {
  readonly prefix: string;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(
    private readonly kv: KV,
    opts: ControlPlaneOptions = {},
  ) {
    this.prefix = opts.prefix ?? DEFAULT_PREFIX;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.log = opts.log ?? prefixed(stderrLog, 'overlay: ');
  }

  /**
   * A record read back, validated against its schema and against the key it
   * sits under (`belongs`); undefined, logged, when it is not one. The value
   * itself is never logged: it is whatever someone wrote.
   */
  private read<S extends z.ZodTypeAny>(schema: S, kv: KeyValue | undefined, belongs: (r: z.infer<S>) => boolean = () => true): z.infer<S> | undefined {
    if (!kv) return undefined;
    let raw: unknown;
    try {
      raw = JSON.parse(kv.value);
    } catch {
      this.log(`skipping malformed record ${kv.key}: not JSON`);
      return undefined;
    }
    const r = schema.safeParse(raw);
    if (!r.success) {
      const i = r.error.issues[0]!;
      this.log(`skipping malformed record ${kv.key}: ${i.path.join('.') || 'value'}: ${i.message}`);
      return undefined;
    }
    if (!belongs(r.data)) {
      this.log(`skipping record ${kv.key}: its content names another key`);
      return undefined;
    }
    return r.data;
  }

  private network(kv: KeyValue | undefined): NetworkRecord | undefined {
    return this.read(networkRecordSchema, kv, (r) => kv!.key === this.networkKey(r.name));
  }
  private host(kv: KeyValue | undefined): HostRecord | undefined {
    return this.read(hostRecordSchema, kv, (r) => kv!.key === this.hostKey(r.name));
  }
  private endpoint(kv: KeyValue | undefined): EndpointRecord | undefined {
    return this.read(endpointRecordSchema, kv, (r) => kv!.key === this.endpointKey(r.network, r.containerId, r.ifname));
  }
  private identity(kv: KeyValue | undefined): IdentityRecord | undefined {
    return this.read(identitySchema, kv);
  }

  private deadline(): number {
    // request deadlines always by the real clock; `now` is GC's and the records' (it may be a test's)
    return Date.now() + this.timeoutMs;
  }

  networkKey(name: string): string {
    return `${this.prefix}/networks/${name}`;
  }
  vniKey(vni: number): string {
    return `${this.prefix}/vnis/${vni}`;
  }
  hostKey(name: string): string {
    return `${this.prefix}/hosts/${name}`;
  }
  endpointKey(network: string, containerId: string, ifname: string): string {
    return `${this.prefix}/endpoints/${network}/${containerId}/${ifname}`;
  }
  identityKey(node: string): string {
    return `${this.prefix}/identities/${node}`;
  }
  /** the endpoint's DNS record (shared/dns/cluster.ts), a sibling of its endpoint key */
  dnsKey(network: string, containerId: string, ifname: string): string {
    return clusterKey(this.prefix, network, containerId, ifname);
  }
  private endpointsPrefix(network: string): string {
    return `${this.prefix}/endpoints/${network}/`;
  }
  private sightingPrefix(node: string, network: string): string {
    return `${this.prefix}/gc/${node}/${network}/`;
  }

  // ---- networks ---------------------------------------------------------------

  async getNetwork(name: string): Promise<NetworkRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.networkKey(name) }] }, this.deadline());
    return this.network(results[0]?.[0]);
  }

  /**
   * The network as recorded, creating it on first use. A request that
   * contradicts the record (another subnet, another VNI) or asks for a VNI
   * another network holds is refused with code 7.
   */
  async ensureNetwork(req: NetworkRequest): Promise<NetworkRecord> {
    return (await this.joinNetwork(req)).network;
  }

  /**
   * ensureNetwork, with the record's create revision: what putEndpoint is
   * conditioned on, so an ADD never writes an endpoint into a network that
   * was reclaimed (and maybe recreated with another VNI) while it ran.
   */
  async joinNetwork(req: NetworkRequest): Promise<{ network: NetworkRecord; createRevision: bigint }> {
    if (req.vni !== undefined && (!Number.isInteger(req.vni) || req.vni < VNI_MIN || req.vni > VNI_MAX)) {
      throw invalid(`vni ${req.vni} is out of range`, `a VXLAN network identifier is ${VNI_MIN}..${VNI_MAX}`);
    }
    const deadline = this.deadline();
    for (let attempt = 0; attempt < 20; attempt++) {
      const { results } = await this.kv.txn({ success: [{ get: this.networkKey(req.name) }, { get: `${this.prefix}/vnis/`, prefix: true }] }, deadline);
      const found = results[0]?.[0];
      if (found) {
        const existing = this.network(found);
        if (!existing) throw invalid(`overlay network "${req.name}" has a malformed record in etcd (${found.key})`, 'remove the record; its VNI key may need removing too');
        return { network: this.matches(existing, req), createRevision: found.createRevision };
      }
      const taken = new Map<number, string>();
      for (const kv of results[1] ?? []) taken.set(Number(kv.key.slice(`${this.prefix}/vnis/`.length)), kv.value);
      let vni: number;
      if (req.vni !== undefined) {
        const holder = taken.get(req.vni);
        if (holder !== undefined && holder !== req.name) {
          throw invalid(`vni ${req.vni} is already used by overlay network "${holder}"`, 'two overlay networks cannot share a VXLAN network identifier');
        }
        vni = req.vni;
      } else {
        vni = FIRST_AUTO_VNI;
        while (taken.has(vni)) vni++;
        if (vni > VNI_MAX) throw new CniError(ErrorCode.TryAgainLater, 'no free VNI left');
      }
      const record: NetworkRecord = {
        name: req.name,
        subnet: req.subnet,
        ...(req.subnets && req.subnets.length > 1 && { subnets: [...req.subnets] }),
        vni,
        mtu: req.mtu,
        encrypted: req.encrypted ?? false,
      };
      const res = await this.kv.txn(
        {
          compare: [
            { key: this.networkKey(req.name), target: 'version', value: 0n },
            { key: this.vniKey(vni), target: 'version', value: 0n },
          ],
          success: [
            { put: this.networkKey(req.name), value: JSON.stringify(record) },
            { put: this.vniKey(vni), value: req.name },
          ],
        },
        deadline,
      );
      if (res.succeeded) return { network: record, createRevision: res.revision };
      // Someone else created this network or took the VNI meanwhile: look again.
    }
    throw new CniError(ErrorCode.TryAgainLater, `could not record overlay network ${req.name}: too much contention`);
  }

  private matches(existing: NetworkRecord, req: NetworkRequest): NetworkRecord {
    const have = subnetsOf(existing).join(', ');
    const want = subnetsOf(req).join(', ');
    if (have !== want) {
      throw invalid(`overlay network "${req.name}" exists with subnet ${have}, not ${want}`);
    }
    if (req.vni !== undefined && existing.vni !== req.vni) {
      throw invalid(`overlay network "${req.name}" exists with vni ${existing.vni}, not ${req.vni}`);
    }
    // A host that thinks the network is clear must not join an encrypted one (its traffic would leak), nor the reverse.
    if (req.encrypted !== undefined && (existing.encrypted ?? false) !== req.encrypted) {
      throw invalid(`overlay network "${req.name}" exists ${existing.encrypted ? 'encrypted' : 'unencrypted'}, but this config says "encrypted": ${req.encrypted}`);
    }
    return existing;
  }

  /** Removes a network record and frees its VNI; refused (7) while it has endpoints. */
  async deleteNetwork(name: string): Promise<boolean> {
    const r = await this.reclaimNetwork(name);
    if (r === 'in-use') throw invalid(`overlay network "${name}" still has endpoints`);
    return r === 'reclaimed';
  }

  /**
   * Removes the network's record and frees its VNI if, and only if, no
   * endpoint of it exists anywhere in the cluster, as one transaction:
   * the record must be the one read (mod revision) and the endpoints
   * prefix empty (a range compare: every key under it would have to have
   * create revision 0, which holds only when there is none). An ADD that
   * put its endpoint first wins; one that comes after finds the record gone
   * (putEndpoint's compare) and fails with 11.
   */
  async reclaimNetwork(name: string): Promise<'reclaimed' | 'in-use' | 'absent'> {
    const deadline = this.deadline();
    for (let attempt = 0; attempt < 5; attempt++) {
      const { results } = await this.kv.txn({ success: [{ get: this.networkKey(name) }, { get: this.endpointsPrefix(name), prefix: true }] }, deadline);
      const kv = results[0]?.[0];
      if (!kv) return 'absent';
      if ((results[1] ?? []).length > 0) return 'in-use';
      const rec = this.network(kv);
      const compare: Compare[] = [
        { key: this.networkKey(name), target: 'mod', value: kv.modRevision },
        { key: this.endpointsPrefix(name), prefix: true, target: 'create', value: 0n },
      ];
      const success: Op[] = [{ delete: this.networkKey(name) }];
      if (rec) {
        // the VNI key goes only if it is this network's
        compare.push({ key: this.vniKey(rec.vni), target: 'value', value: name });
        success.push({ delete: this.vniKey(rec.vni) });
      }
      const res = await this.kv.txn({ compare, success }, deadline);
      if (res.succeeded) {
        this.log(`reclaimed overlay network ${name}${rec ? ` (VNI ${rec.vni})` : ''}: no endpoint left in the cluster`);
        return 'reclaimed';
      }
      // an endpoint appeared, the record changed, or the VNI key is not this network's: look again
      if (rec) {
        const { results: vr } = await this.kv.txn({ success: [{ get: this.vniKey(rec.vni) }] }, deadline);
        if (vr[0]?.[0]?.value !== name) {
          const r2 = await this.kv.txn(
            {
              compare: [compare[0]!, compare[1]!],
              success: [{ delete: this.networkKey(name) }],
            },
            deadline,
          );
          if (r2.succeeded) return 'reclaimed';
        }
      }
    }
    return 'in-use';
  }

  // ---- hosts ------------------------------------------------------------------

  /**
   * Claims `node` for the machine `hostId`: creates its identity record if
   * there is none, accepts it if it is already this machine's. Returns the
   * record's value as stored (registerHost's compare). Throws
   * IdentityConflictError when another machine holds the name.
   */
  async claimIdentity(node: string, hostId: string): Promise<string> {
    const key = this.identityKey(node);
    const value = JSON.stringify({ hostId, registeredAt: new Date(this.now()).toISOString() } satisfies IdentityRecord);
    const res = await this.kv.txn(
      { compare: [{ key, target: 'version', value: 0n }], success: [{ put: key, value }], failure: [{ get: key }] },
      this.deadline(),
    );
    if (res.succeeded) {
      this.log(`node name ${node} registered to host ${hostId}`);
      return value;
    }
    const kv = res.results[0]?.[0];
    const holder = this.identity(kv);
    if (!kv) return this.claimIdentity(node, hostId); // removed between compare and get: claim again
    if (holder?.hostId !== hostId) throw new IdentityConflictError(node, holder?.hostId, hostId, this.prefix);
    return kv.value;
  }

  /** Refuses (IdentityConflictError) unless `node` is held by `hostId`; undefined when nobody holds it yet. */
  async checkIdentity(node: string, hostId: string): Promise<IdentityRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.identityKey(node) }] }, this.deadline());
    const kv = results[0]?.[0];
    if (!kv) return undefined;
    const holder = this.identity(kv);
    if (holder?.hostId !== hostId) throw new IdentityConflictError(node, holder?.hostId, hostId, this.prefix);
    return holder;
  }

  /**
   * Writes the host's record on `lease` (its liveness), only while the
   * identity record still holds `identity` (claimIdentity's value).
   * IdentityConflictError when it does not.
   */
  async registerHost(host: HostRecord, lease: LeaseId, identity?: string): Promise<void> {
    const put: Op = { put: this.hostKey(host.name), value: JSON.stringify(host), lease };
    if (identity === undefined) {
      await this.kv.txn({ success: [put] }, this.deadline());
      return;
    }
    const res = await this.kv.txn(
      { compare: [{ key: this.identityKey(host.name), target: 'value', value: identity }], success: [put], failure: [{ get: this.identityKey(host.name) }] },
      this.deadline(),
    );
    if (!res.succeeded) throw new IdentityConflictError(host.name, this.identity(res.results[0]?.[0])?.hostId, host.hostId ?? '?', this.prefix);
  }

  async getHost(name: string): Promise<HostRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.hostKey(name) }] }, this.deadline());
    return this.host(results[0]?.[0]);
  }

  /**
   * The host record of `node`, for a plugin call on the machine `hostId`:
   * refused (IdentityConflictError, code 7) when the name is another
   * machine's or the record was written by another machine.
   */
  async getOwnHost(node: string, hostId: string): Promise<HostRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.identityKey(node) }, { get: this.hostKey(node) }] }, this.deadline());
    const idKv = results[0]?.[0];
    const host = this.host(results[1]?.[0]);
    if (idKv) {
      const holder = this.identity(idKv);
      if (holder?.hostId !== hostId) throw new IdentityConflictError(node, holder?.hostId, hostId, this.prefix);
    }
    if (host?.hostId !== undefined && host.hostId !== hostId) throw new IdentityConflictError(node, host.hostId, hostId, this.prefix);
    return host;
  }

  async deregisterHost(name: string): Promise<void> {
    await this.kv.txn({ success: [{ delete: this.hostKey(name) }] }, this.deadline());
  }

  /** This machine leaves for good: its host record, and its identity if it is still its own. */
  async releaseIdentity(node: string, hostId: string): Promise<void> {
    const { results } = await this.kv.txn({ success: [{ get: this.identityKey(node) }] }, this.deadline());
    const kv = results[0]?.[0];
    if (!kv || this.identity(kv)?.hostId !== hostId) return;
    await this.kv.txn({ compare: [{ key: kv.key, target: 'mod', value: kv.modRevision }], success: [{ delete: kv.key }] }, this.deadline());
  }

  /** An operator's removal of a dead machine's node name: identity and host record, whoever holds them. */
  async forget(node: string): Promise<void> {
    await this.kv.txn({ success: [{ delete: this.identityKey(node) }, { delete: this.hostKey(node) }] }, this.deadline());
  }

  // ---- endpoints ----------------------------------------------------------------

  /**
   * Writes the endpoint; given the network's create revision (joinNetwork),
   * only while that network record still exists: otherwise it was reclaimed
   * meanwhile, and the ADD fails with 11 to be tried again. `also`: puts
   * that belong with the endpoint, in the same transaction (its DNS record:
   * shared/dns/cluster.ts putOp), so the names exist exactly when it does.
   */
  async putEndpoint(ep: EndpointRecord, networkRevision?: bigint, also: readonly Op[] = []): Promise<void> {
    const put: Op = { put: this.endpointKey(ep.network, ep.containerId, ep.ifname), value: JSON.stringify(ep) };
    const compare: Compare[] = networkRevision === undefined ? [] : [{ key: this.networkKey(ep.network), target: 'create', value: networkRevision }];
    const res = await this.kv.txn({ compare, success: [put, ...also] }, this.deadline());
    if (!res.succeeded) {
      throw new CniError(ErrorCode.TryAgainLater, `overlay network "${ep.network}" was removed while this container joined it`, 'its last endpoint left the cluster at the same moment; try again');
    }
  }

  async getEndpoint(network: string, containerId: string, ifname: string): Promise<EndpointRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.endpointKey(network, containerId, ifname) }] }, this.deadline());
    return this.endpoint(results[0]?.[0]);
  }

  /** The endpoint and its DNS record, in one transaction (either may be absent: DEL is idempotent). */
  async deleteEndpoint(network: string, containerId: string, ifname: string): Promise<void> {
    await this.kv.txn({ success: [{ delete: this.endpointKey(network, containerId, ifname) }, { delete: this.dnsKey(network, containerId, ifname) }] }, this.deadline());
  }

  /** The endpoint's DNS record, validated (cluster.ts decodeRecord against the network's subnets); undefined when absent or ignored. */
  async getDnsRecord(network: string, subnets: readonly string[], containerId: string, ifname: string): Promise<ClusterRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.dnsKey(network, containerId, ifname) }] }, this.deadline());
    const kv = results[0]?.[0];
    if (!kv) return undefined;
    const d = decodeRecord(kv, this.prefix, network, subnets);
    if ('ignored' in d) {
      this.log(`skipping DNS record ${d.ignored}`);
      return undefined;
    }
    return d.record;
  }

  /** Every endpoint, or a network's. */
  async listEndpoints(network?: string): Promise<EndpointRecord[]> {
    const prefix = network === undefined ? `${this.prefix}/endpoints/` : `${this.prefix}/endpoints/${network}/`;
    const { results } = await this.kv.txn({ success: [{ get: prefix, prefix: true }] }, this.deadline());
    return (results[0] ?? []).map((kv) => this.endpoint(kv)).filter((e): e is EndpointRecord => e !== undefined);
  }

  /**
   * GC of this machine's endpoints on `network` that the runtime no longer
   * lists (`keep`: "containerId/ifname"), with IPAM GC's grace: an endpoint
   * goes only once seen unkept twice, at least `graceMs` apart, with the
   * same mod revision (a container that was re-added meanwhile is a new
   * record). Sightings live in etcd (P/gc/<node>/...), so they hold across
   * GC calls, which are separate processes. Endpoints of another machine
   * that claims the same node name (a record with another hostId) are never
   * touched. Returns the endpoints deleted.
   */
  async gcEndpoints(network: string, node: string, hostId: string, keep: ReadonlySet<string>, graceMs: number): Promise<EndpointRecord[]> {
    const deadline = this.deadline();
    const sPrefix = this.sightingPrefix(node, network);
    const { results } = await this.kv.txn({ success: [{ get: this.endpointsPrefix(network), prefix: true }, { get: sPrefix, prefix: true }] }, deadline);
    const sightings = new Map((results[1] ?? []).map((kv) => [kv.key.slice(sPrefix.length), this.read(sightingSchema, kv)] as const));
    const now = this.now();
    const deleted: EndpointRecord[] = [];
    const notes: Op[] = [];
    const stale = new Set<string>();
    for (const kv of results[0] ?? []) {
      const ep = this.endpoint(kv);
      if (!ep || ep.host !== node || (ep.hostId !== undefined && ep.hostId !== hostId)) continue;
      const id = `${ep.containerId}/${ep.ifname}`;
      if (keep.has(id)) continue;
      stale.add(id);
      const seen = sightings.get(id);
      const same = seen !== undefined && seen.modRevision === kv.modRevision.toString();
      if (same && now - seen.firstSeen >= graceMs) {
        const res = await this.kv.txn(
          {
            compare: [{ key: kv.key, target: 'mod', value: kv.modRevision }],
            success: [{ delete: kv.key }, { delete: sPrefix + id }, { delete: this.dnsKey(network, ep.containerId, ep.ifname) }],
          },
          deadline,
        );
        if (res.succeeded) deleted.push(ep);
      } else if (!same) {
        notes.push({ put: sPrefix + id, value: JSON.stringify({ modRevision: kv.modRevision.toString(), firstSeen: now }) });
      }
    }
    // sightings of endpoints that are gone or kept again are void
    for (const id of sightings.keys()) if (!stale.has(id)) notes.push({ delete: sPrefix + id });
    // etcd takes at most 128 operations per transaction
    for (let i = 0; i < notes.length; i += 100) await this.kv.txn({ success: notes.slice(i, i + 100) }, deadline);
    return deleted;
  }

  /** Networks, live hosts and endpoints, read at one revision (one transaction). */
  async snapshot(): Promise<Snapshot> {
    const { results, revision } = await this.kv.txn(
      {
        success: [
          { get: `${this.prefix}/networks/`, prefix: true },
          { get: `${this.prefix}/hosts/`, prefix: true },
          { get: `${this.prefix}/endpoints/`, prefix: true },
        ],
      },
      this.deadline(),
    );
    const all = <T>(i: number, read: (kv: KeyValue) => T | undefined) => (results[i] ?? []).map(read).filter((x): x is T => x !== undefined);
    return {
      revision,
      networks: all(0, (kv) => this.network(kv)),
      hosts: all(1, (kv) => this.host(kv)),
      endpoints: all(2, (kv) => this.endpoint(kv)),
    };
  }

  watch(onChange: () => void) {
    return this.kv.watchPrefix(`${this.prefix}/`, onChange);
  }
}

/**
 * What one host's VXLAN device for `network` must know: the network's
 * endpoints on other hosts that are live (registered). Endpoints of a host
 * without a record are left out: its agent is gone, so are its entries.
 */
export function remoteEndpoints(snap: Pick<Snapshot, 'hosts' | 'endpoints'>, network: string, localHost: string): RemoteEndpoint[] {
  const vtep = new Map(snap.hosts.map((h) => [h.name, h.vtep]));
  const mine = vtep.get(localHost);
  const family = mine === undefined ? undefined : parseIP(mine)?.family;
  const out: RemoteEndpoint[] = [];
  for (const ep of snap.endpoints) {
    if (ep.network !== network || ep.host === localHost) continue;
    const v = vtep.get(ep.host);
    if (v === undefined) continue;
    // A VXLAN device sends from one VTEP of one family: a host on the
    // underlay's other family is unreachable from here (the kernel would
    // refuse the FDB entry), so it gets none.
    if (family !== undefined && parseIP(v)?.family !== family) continue;
    // dual stack: a neighbour entry per address, all to the same MAC
    for (const ip of endpointIps(ep)) out.push({ ip, mac: ep.mac, vtep: v });
  }
  return out;
}

/** Every address of an endpoint (records before dual stack hold only `ip`). */
export function endpointIps(ep: Pick<EndpointRecord, 'ip' | 'ips'>): readonly string[] {
  return ep.ips && ep.ips.length > 0 ? ep.ips : [ep.ip];
}

/** Every subnet of a network, IPv4 first (records before dual stack hold only `subnet`). */
export function subnetsOf(n: { subnet: string; subnets?: readonly string[] }): readonly string[] {
  return n.subnets && n.subnets.length > 0 ? n.subnets : [n.subnet];
}
