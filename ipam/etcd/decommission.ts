/**
 * One maintenance run of the etcd store (the run behind `cni-ts
 * ipam-maint`, ./maint.ts): what it reads, decides and writes.
 *
 * A run reports every host of the configured network: its blocks, its
 * allocations, and whether its liveness key (P/alive/<node>) is there. It
 * frees nothing on its own. A host without liveness is reported "suspect",
 * never reclaimed on that ground: the key lives on a lease a long-running
 * process of the host keeps (./liveness.ts), and a host whose daemon or
 * agent is stopped, or partitioned from etcd for a TTL, is very likely still
 * running its containers on their addresses. Freeing them (as earlier
 * versions did after two runs) handed the same addresses to other hosts.
 *
 * Decommissioning is the operator's explicit word that NODE is gone for
 * good: it frees all of NODE's allocations in the network, releases its
 * blocks (keeping a block while another host's borrowed address is in it),
 * its GC sightings, the DNS names its containers published in the network
 * (shared/dns/cluster.ts: other hosts' resolvers would answer them for
 * good), and, once NODE holds no block in any network under the
 * key prefix, its node-name registration, so the name can be used again. It
 * is refused while NODE's liveness key exists (stop cni-ts there first, or
 * let its lease run out). Every write compares the liveness key at version
 * 0 and each key it changes at the revision it was read: a host coming back
 * mid-run makes the write fail, never half-apply, and the run reports it
 * incomplete. Writes go in slices etcd accepts (keys.ts batches()).
 *
 * Every record read back is checked against the schema it was written
 * with (./keys.ts): a malformed one is skipped and named on the log.
 */
import { stderrLog, type Logger } from '../../shared/log';
import type { IpamConfig } from '../config';
import { loadEtcdConfig, type EtcdStoreConfig } from './config';
import {
  addressValueSchema,
  aliveKey,
  batches,
  blockDataSchema,
  FREE_BATCH,
  freeTxn,
  goneKey,
  hostKey,
  lastElement,
  networkKey,
  readRecord,
  TXN_BATCH_OPS,
  type BlockRef,
  type HeldAddress,
} from './keys';
import { EtcdKV, type Compare, type KeyValue, type KV, type Op } from '../../shared/etcd/kv';
import { clusterPrefix, clusterRecordSchema } from '../../shared/dns/cluster';

export interface MaintOptions {
  readonly dryRun: boolean;
  /** the node the operator declares gone for good: its addresses, blocks and registration are freed */
  readonly decommission?: string;
}

export interface MaintDeps {
  /** default: etcd3 over the configured endpoints */
  readonly kv?: KV;
  /** skipped malformed records; default stderr */
  readonly log?: Logger;
}

export type HostAction =
  /** liveness key present */
  | 'alive'
  /** no liveness key: reported, nothing freed (decommission it if it is gone for good) */
  | 'suspect'
  /** decommissioned by this run (or would be, in a dry run) */
  | 'decommissioned'
  /** asked to decommission, but its liveness key is there: refused, nothing written */
  | 'refused'
  /** a write lost to a concurrent change (the host came back?): run again */
  | 'conflict';

export interface HostReport {
  readonly node: string;
  action: HostAction;
  /** the host's blocks in this network, as CIDRs */
  readonly blocks: string[];
  /** addresses the host holds in this network (its own and borrowed) */
  readonly allocations: string[];
  /** addresses freed (dry-run: that would be) */
  freed: string[];
  /** blocks released (dry-run: that would be) */
  releasedBlocks: string[];
  /** blocks kept because other hosts' borrowed addresses are in them */
  keptBlocks: string[];
  /** the node-name registration removed (dry-run: would be) */
  registrationRemoved: boolean;
  /** DNS names of the node's containers removed from the network (dry-run: would be), as "containerId/ifname" */
  namesRemoved: string[];
}

export interface MaintReport {
  readonly network: string;
  readonly keyPrefix: string;
  readonly dryRun: boolean;
  readonly hosts: HostReport[];
  /** the node asked to be decommissioned, if any */
  readonly decommission?: string;
  /** some write lost a race, or the decommission was refused: the run did not do all it was asked */
  readonly incomplete: boolean;
}

/** how many prefix reads one transaction carries */
const READ_BATCH = TXN_BATCH_OPS;

interface Snapshot {
  readonly hosts: Map<string, KeyValue>;
  readonly alive: Set<string>;
  /** node -> block state key -> kv */
  readonly blocks: Map<string, Map<string, KeyValue>>;
  readonly ips: HeldAddress[];
}

/**
 * One maintenance run over the network `ipam` configures (the etcd section
 * as the plugin reads it; its nodeName and hostId are not used).
 */
export async function runMaint(ipam: IpamConfig, options: MaintOptions, deps: MaintDeps = {}): Promise<MaintReport> {
  const conf = loadEtcdConfig(maintSection(ipam.etcd), ipam.rangeSets);
  const kv = deps.kv ?? new EtcdKV(conf);
  const log = deps.log ?? stderrLog;
  try {
    return await new Maintenance(conf, ipam.name, kv, options, log).run();
  } finally {
    if (!deps.kv) kv.close();
  }
}

/** The etcd section with a node identity filled in: the command acts for no node (and never creates a host ID). */
function maintSection(raw: unknown): unknown {
  const section = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>) : {};
  return { ...section, nodeName: section.nodeName ?? 'ipam-maint', hostId: section.hostId ?? 'ipam-maint' };
}

class Maintenance {
  private readonly net: string;
  private readonly prefix: string;
  private incomplete = false;

  constructor(
    private readonly conf: EtcdStoreConfig,
    private readonly network: string,
    private readonly kv: KV,
    private readonly options: MaintOptions,
    private readonly log: Logger,
  ) {
    this.prefix = conf.keyPrefix;
    this.net = networkKey(conf.keyPrefix, network);
  }

  private deadline(): number {
    return Date.now() + this.conf.requestTimeoutMs;
  }

  async run(): Promise<MaintReport> {
    const snap = await this.read();
    const target = this.options.decommission;
    const nodes = new Set<string>([...snap.hosts.keys(), ...snap.blocks.keys(), ...snap.ips.map((a) => a.v.node)]);
    if (target !== undefined) nodes.add(target);
    const hosts: HostReport[] = [];
    for (const node of [...nodes].sort()) {
      const blocks = snap.blocks.get(node) ?? new Map<string, KeyValue>();
      const held = snap.ips.filter((a) => a.v.node === node);
      const report: HostReport = {
        node,
        action: snap.alive.has(node) ? 'alive' : 'suspect',
        blocks: [...blocks.values()].map((b) => readRecord(blockDataSchema, b, () => {})?.cidr ?? lastElement(b.key)),
        allocations: held.map((a) => a.ip),
        freed: [],
        releasedBlocks: [],
        keptBlocks: [],
        registrationRemoved: false,
        namesRemoved: [],
      };
      hosts.push(report);
      if (node !== target) continue;
      if (snap.alive.has(node)) {
        report.action = 'refused';
        this.incomplete = true;
        continue;
      }
      try {
        await this.decommission(node, report, snap, blocks, held);
      } catch (err) {
        if (!(err instanceof Conflict)) throw err;
        report.action = 'conflict';
        this.incomplete = true;
      }
    }
    return { network: this.network, keyPrefix: this.prefix, dryRun: this.options.dryRun, hosts, decommission: target, incomplete: this.incomplete };
  }

  /** Everything the run decides on, read in one transaction (one revision). */
  private async read(): Promise<Snapshot> {
    const { results } = await this.kv.txn(
      {
        success: [
          { get: `${this.prefix}/hosts/`, prefix: true },
          { get: `${this.prefix}/alive/`, prefix: true },
          { get: `${this.net}/hostblocks/`, prefix: true },
          { get: `${this.net}/ips/`, prefix: true },
        ],
      },
      this.deadline(),
    );
    const [hosts, alive, blocks, ips] = results as KeyValue[][];
    const snap: Snapshot = {
      hosts: new Map(hosts!.map((kv) => [lastElement(kv.key), kv])),
      // Presence is what counts: the key exists only while its lease lives, whatever its value says.
      alive: new Set(alive!.map((kv) => lastElement(kv.key))),
      blocks: new Map(),
      ips: [],
    };
    const blockPrefix = `${this.net}/hostblocks/`;
    for (const kv of blocks!) {
      const node = kv.key.slice(blockPrefix.length).split('/')[0]!;
      if (!snap.blocks.has(node)) snap.blocks.set(node, new Map());
      snap.blocks.get(node)!.set(kv.key, kv);
    }
    for (const kv of ips!) {
      const v = readRecord(addressValueSchema, kv, this.log);
      if (v) snap.ips.push({ kv, v, ip: lastElement(kv.key) });
    }
    return snap;
  }

  /** Frees what `node` holds in the network, then its registration when it holds nothing anywhere. */
  private async decommission(
    node: string,
    report: HostReport,
    snap: Snapshot,
    blocks: Map<string, KeyValue>,
    held: HeldAddress[],
  ): Promise<void> {
    report.action = 'decommissioned';
    // Each block's state as last read or written; data null: the record is
    // malformed (logged), so its addresses go and the block is left as it is.
    const states = new Map<string, BlockRef>();
    const refOf = (kv: KeyValue): BlockRef => ({ key: kv.key, rev: kv.modRevision, data: readRecord(blockDataSchema, kv, this.log) ?? null });
    for (const kv of blocks.values()) states.set(kv.key, refOf(kv));
    const stateOf = async (blockKey: string): Promise<BlockRef> => {
      if (!states.has(blockKey)) {
        const { results } = await this.kv.txn({ success: [{ get: blockKey }] }, this.deadline());
        const kv = results[0]![0];
        states.set(blockKey, kv ? refOf(kv) : { key: blockKey, data: undefined });
      }
      return states.get(blockKey)!;
    };

    // The allocations, block by block, each batch with its block's state.
    const byBlock = new Map<string, HeldAddress[]>();
    for (const a of held) {
      if (!byBlock.has(a.v.blockKey)) byBlock.set(a.v.blockKey, []);
      byBlock.get(a.v.blockKey)!.push(a);
    }
    for (const [blockKey, list] of byBlock) {
      for (const batch of batches(list, FREE_BATCH)) {
        const { compare, ops, data } = freeTxn(this.net, node, batch, await stateOf(blockKey));
        const rev = await this.write(node, compare, ops);
        if (data) states.set(blockKey, { key: blockKey, rev, data });
        report.freed.push(...batch.map((a) => a.ip));
      }
    }

    // The blocks: released when empty (or malformed: then nobody can tell what
    // is in it but its owner, who is gone), kept while another host's borrow is in one.
    let blocksLeft = 0;
    for (const kv of blocks.values()) {
      const st = states.get(kv.key);
      const cidr = st?.data?.cidr ?? lastElement(kv.key);
      if (st?.data && Object.keys(st.data.used).length > 0) {
        report.keptBlocks.push(cidr);
        blocksLeft++;
        continue;
      }
      const claimKey = `${this.net}/blocks/${lastElement(kv.key)}`;
      await this.write(
        node,
        [
          { key: kv.key, target: 'mod', value: st?.data !== undefined ? st.rev : kv.modRevision },
          { key: claimKey, target: 'value', value: node },
        ],
        [{ delete: kv.key }, { delete: claimKey }],
      );
      report.releasedBlocks.push(cidr);
    }

    await this.write(node, [], [
      { delete: goneKey(this.prefix, node, this.network) },
      { delete: `${this.net}/leaks/${node}/`, prefix: true },
    ]);
    await this.removeNames(node, report);
    if (blocksLeft === 0 && snap.hosts.has(node) && (await this.holdsNoBlockElsewhere(node))) {
      const registered = snap.hosts.get(node)!;
      await this.write(node, [{ key: registered.key, target: 'mod', value: registered.modRevision }], [
        { delete: hostKey(this.prefix, node) },
        { delete: goneKey(this.prefix, node), prefix: true },
      ]);
      report.registrationRemoved = true;
    }
  }

  /**
   * The DNS records the node's containers published in the network (the
   * records say which host wrote them; one that is malformed or another
   * host's is left alone), each deleted at the revision it was read.
   */
  private async removeNames(node: string, report: HostReport): Promise<void> {
    const { results } = await this.kv.txn({ success: [{ get: clusterPrefix(this.prefix, this.network), prefix: true }] }, this.deadline());
    const mine: KeyValue[] = [];
    for (const kv of results[0]!) {
      const r = readRecord(clusterRecordSchema, kv, this.log);
      if (r?.host === node) mine.push(kv);
    }
    for (const batch of batches(mine, TXN_BATCH_OPS)) {
      await this.write(
        node,
        batch.map((kv) => ({ key: kv.key, target: 'mod' as const, value: kv.modRevision })),
        batch.map((kv) => ({ delete: kv.key })),
      );
      report.namesRemoved.push(...batch.map((kv) => kv.key.slice(clusterPrefix(this.prefix, this.network).length)));
    }
  }

  /** Whether the node holds no block in any other network registered under the prefix. */
  private async holdsNoBlockElsewhere(node: string): Promise<boolean> {
    const { results } = await this.kv.txn({ success: [{ get: `${this.prefix}/ranges/`, prefix: true }] }, this.deadline());
    const others = results[0]!.map((kv) => lastElement(kv.key)).filter((n) => n !== this.network);
    for (let i = 0; i < others.length; i += READ_BATCH) {
      const ops: Op[] = others.slice(i, i + READ_BATCH).map((n) => ({ get: `${networkKey(this.prefix, n)}/hostblocks/${node}/`, prefix: true }));
      const r = await this.kv.txn({ success: ops }, this.deadline());
      if (r.results.some((kvs) => kvs.length > 0)) return false;
    }
    return true;
  }

  /**
   * One guarded write: applied only while the node still has no liveness
   * key and every compare holds; a dry run only pretends. Returns the
   * revision written (0 in a dry run).
   */
  private async write(node: string, compare: Compare[], ops: Op[]): Promise<bigint> {
    if (this.options.dryRun) return 0n;
    const r = await this.kv.txn({ compare: [{ key: aliveKey(this.prefix, node), target: 'version', value: 0n }, ...compare], success: ops }, this.deadline());
    if (!r.succeeded) throw new Conflict();
    return r.revision;
  }
}

/** A guarded write lost: the host came back or something changed under the run. */
class Conflict extends Error {}
