/**
 * The overlay's control plane in etcd, in place of Docker Swarm's gossip.
 * Keys under the prefix P (default /cni-ts/overlay):
 *
 *   P/networks/<name>                          {name, subnet, vni, mtu?, encrypted}
 *   P/vnis/<vni>                               <network name>: who holds the VNI
 *   P/hosts/<node>                             {name, vtep}, attached to the agent's lease
 *   P/endpoints/<network>/<container>/<ifname> {network, containerId, ifname, ip, mac, host}
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
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { RemoteEndpoint } from '../../shared/vxlan';
import { VNI_MAX, VNI_MIN } from '../../shared/vxlan';
import type { KV, KeyValue } from './kv';

export const DEFAULT_PREFIX = '/cni-ts/overlay';
/** Docker's first automatic VNI. */
export const FIRST_AUTO_VNI = 4096;

export interface NetworkRecord {
  readonly name: string;
  readonly subnet: string;
  readonly vni: number;
  readonly mtu?: number;
  readonly encrypted: boolean;
}

export interface NetworkRequest {
  readonly name: string;
  readonly subnet: string;
  /** the network's own VNI; allocated from 4096 up when absent */
  readonly vni?: number;
  readonly mtu?: number;
  readonly encrypted?: boolean;
}

export interface HostRecord {
  readonly name: string;
  /** the underlay address VXLAN packets to this host's containers go to */
  readonly vtep: string;
}

export interface EndpointRecord {
  readonly network: string;
  readonly containerId: string;
  readonly ifname: string;
  /** address without prefix length */
  readonly ip: string;
  readonly mac: string;
  /** node name of the host the container is on */
  readonly host: string;
}

export interface Snapshot {
  readonly revision: bigint;
  readonly networks: readonly NetworkRecord[];
  readonly hosts: readonly HostRecord[];
  readonly endpoints: readonly EndpointRecord[];
}

export interface ControlPlaneOptions {
  readonly prefix?: string;
  /** bound of each operation; past it the call fails with 11 */
  readonly timeoutMs?: number;
  readonly now?: () => number;
}

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

function parse<T>(kv: KeyValue | undefined): T | undefined {
  if (!kv) return undefined;
  try {
    return JSON.parse(kv.value) as T;
  } catch {
    return undefined;
  }
}

export class ControlPlane {
  readonly prefix: string;
  private readonly timeoutMs: number;
  private readonly now: () => number;

  constructor(
    private readonly kv: KV,
    opts: ControlPlaneOptions = {},
  ) {
    this.prefix = opts.prefix ?? DEFAULT_PREFIX;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.now = opts.now ?? Date.now;
  }

  private deadline(): number {
    return this.now() + this.timeoutMs;
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

  // ---- networks ---------------------------------------------------------------

  async getNetwork(name: string): Promise<NetworkRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.networkKey(name) }] }, this.deadline());
    return parse<NetworkRecord>(results[0]?.[0]);
  }

  /**
   * The network as recorded, creating it on first use. A request that
   * contradicts the record (another subnet, another VNI) or asks for a VNI
   * another network holds is refused with code 7.
   */
  async ensureNetwork(req: NetworkRequest): Promise<NetworkRecord> {
    if (req.vni !== undefined && (!Number.isInteger(req.vni) || req.vni < VNI_MIN || req.vni > VNI_MAX)) {
      throw invalid(`vni ${req.vni} is out of range`, `a VXLAN network identifier is ${VNI_MIN}..${VNI_MAX}`);
    }
    const deadline = this.deadline();
    for (let attempt = 0; attempt < 20; attempt++) {
      const { results } = await this.kv.txn({ success: [{ get: this.networkKey(req.name) }, { get: `${this.prefix}/vnis/`, prefix: true }] }, deadline);
      const existing = parse<NetworkRecord>(results[0]?.[0]);
      if (existing) return this.matches(existing, req);
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
      const record: NetworkRecord = { name: req.name, subnet: req.subnet, vni, mtu: req.mtu, encrypted: req.encrypted ?? false };
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
      if (res.succeeded) return record;
      // Someone else created this network or took the VNI meanwhile: look again.
    }
    throw new CniError(ErrorCode.TryAgainLater, `could not record overlay network ${req.name}: too much contention`);
  }

  private matches(existing: NetworkRecord, req: NetworkRequest): NetworkRecord {
    if (existing.subnet !== req.subnet) {
      throw invalid(`overlay network "${req.name}" exists with subnet ${existing.subnet}, not ${req.subnet}`);
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
    const deadline = this.deadline();
    const { results } = await this.kv.txn(
      { success: [{ get: this.networkKey(name) }, { get: `${this.prefix}/endpoints/${name}/`, prefix: true }] },
      deadline,
    );
    const rec = parse<NetworkRecord>(results[0]?.[0]);
    if (!rec) return false;
    if ((results[1] ?? []).length) throw invalid(`overlay network "${name}" still has ${results[1]!.length} endpoint(s)`);
    await this.kv.txn({ success: [{ delete: this.networkKey(name) }, { delete: this.vniKey(rec.vni) }] }, deadline);
    return true;
  }

  // ---- hosts ------------------------------------------------------------------

  /** Writes the host's record on `lease` (its liveness). */
  async registerHost(host: HostRecord, lease: string): Promise<void> {
    await this.kv.txn({ success: [{ put: this.hostKey(host.name), value: JSON.stringify(host), lease }] }, this.deadline());
  }

  async getHost(name: string): Promise<HostRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.hostKey(name) }] }, this.deadline());
    return parse<HostRecord>(results[0]?.[0]);
  }

  async deregisterHost(name: string): Promise<void> {
    await this.kv.txn({ success: [{ delete: this.hostKey(name) }] }, this.deadline());
  }

  // ---- endpoints ----------------------------------------------------------------

  async putEndpoint(ep: EndpointRecord): Promise<void> {
    await this.kv.txn({ success: [{ put: this.endpointKey(ep.network, ep.containerId, ep.ifname), value: JSON.stringify(ep) }] }, this.deadline());
  }

  async getEndpoint(network: string, containerId: string, ifname: string): Promise<EndpointRecord | undefined> {
    const { results } = await this.kv.txn({ success: [{ get: this.endpointKey(network, containerId, ifname) }] }, this.deadline());
    return parse<EndpointRecord>(results[0]?.[0]);
  }

  async deleteEndpoint(network: string, containerId: string, ifname: string): Promise<void> {
    await this.kv.txn({ success: [{ delete: this.endpointKey(network, containerId, ifname) }] }, this.deadline());
  }

  /** Every endpoint, or a network's. */
  async listEndpoints(network?: string): Promise<EndpointRecord[]> {
    const prefix = network === undefined ? `${this.prefix}/endpoints/` : `${this.prefix}/endpoints/${network}/`;
    const { results } = await this.kv.txn({ success: [{ get: prefix, prefix: true }] }, this.deadline());
    return (results[0] ?? []).map((kv) => parse<EndpointRecord>(kv)).filter((e): e is EndpointRecord => e !== undefined);
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
    const all = <T>(i: number) => (results[i] ?? []).map((kv) => parse<T>(kv)).filter((x): x is T => x !== undefined);
    return { revision, networks: all<NetworkRecord>(0), hosts: all<HostRecord>(1), endpoints: all<EndpointRecord>(2) };
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
  const out: RemoteEndpoint[] = [];
  for (const ep of snap.endpoints) {
    if (ep.network !== network || ep.host === localHost) continue;
    const v = vtep.get(ep.host);
    if (v !== undefined) out.push({ ip: ep.ip, mac: ep.mac, vtep: v });
  }
  return out;
}
