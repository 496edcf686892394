/**
 * The etcd store's maintenance command, for the operator (the packaged
 * executable's `cni-ts ipam-maint`):
 *
 *   cni-ts ipam-maint [--dry-run] --config FILE.conflist|.conf
 *   cni-ts ipam-maint decommission NODE [--dry-run] --config FILE.conflist|.conf
 *
 * The first form reports every host of the configured network: its blocks,
 * its allocations, and whether its liveness key (P/alive/<node>) is there.
 * It frees nothing. A host without liveness is reported "suspect", never
 * reclaimed on that ground: the key lives on a lease a long-running process
 * of the host keeps (./liveness.ts), and a host whose daemon or agent is
 * stopped, or partitioned from etcd for a TTL, is very likely still running
 * its containers on their addresses. Freeing them (as earlier versions did
 * after two runs) handed the same addresses to other hosts.
 *
 * The second form is the operator's explicit word that NODE is gone for
 * good: it frees all of NODE's allocations in the network, releases its
 * blocks (keeping a block while another host's borrowed address is in it),
 * its GC sightings, and, once NODE holds no block in any network under the
 * key prefix, its node-name registration, so the name can be used again. It
 * is refused while NODE's liveness key exists (stop cni-ts there first, or
 * let its lease run out). Every write compares the liveness key at version
 * 0 and each key it changes at the revision it was read: a host coming back
 * mid-run makes the write fail, never half-apply, and the run reports it
 * incomplete. Writes go in slices etcd accepts (keys.ts batches()).
 *
 * --dry-run reads the same and prints what it would do; it writes nothing.
 *
 * Every record read back is checked against the schema it was written
 * with (./keys.ts): a malformed one is skipped and named on stderr.
 *
 * Exit codes: 0 done, 1 failed, refused or incomplete (run it again), 2 usage.
 */
import * as fs from 'node:fs';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { type FlagSpecs, parseFlags, UsageError } from '../../shared/flags';
import { loadIpamConfig, type IpamConfig } from '../config';
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
import { EtcdKV, type Compare, type KeyValue, type KV, type Op } from './kv';

export interface MaintOptions {
  readonly dryRun: boolean;
  /** the node the operator declares gone for good: its addresses, blocks and registration are freed */
  readonly decommission?: string;
}

export interface MaintDeps {
  /** default: etcd3 over the configured endpoints */
  readonly kv?: KV;
  /** one line of the report; default stdout */
  readonly out?: (line: string) => void;
  /** skipped malformed records; default stderr */
  readonly log?: (line: string) => void;
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
  const log = deps.log ?? ((line: string) => process.stderr.write(`${line}\n`));
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
    private readonly log: (line: string) => void,
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
    if (blocksLeft === 0 && snap.hosts.has(node) && (await this.holdsNoBlockElsewhere(node))) {
      const registered = snap.hosts.get(node)!;
      await this.write(node, [{ key: registered.key, target: 'mod', value: registered.modRevision }], [
        { delete: hostKey(this.prefix, node) },
        { delete: goneKey(this.prefix, node), prefix: true },
      ]);
      report.registrationRemoved = true;
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

/** The report as the command prints it: one line per host, one summary. */
export function formatReport(r: MaintReport): string[] {
  const would = r.dryRun ? 'would ' : '';
  const lines = [`network ${r.network} under ${r.keyPrefix}${r.dryRun ? ' (dry run: nothing is changed)' : ''}:`];
  for (const h of r.hosts) {
    const held = `${h.blocks.length} block(s), ${h.allocations.length} allocation(s)`;
    switch (h.action) {
      case 'alive':
        lines.push(`  ${h.node}: alive, ${held}`);
        break;
      case 'suspect':
        lines.push(
          `  ${h.node}: SUSPECT (no liveness key: its daemon/agent is not running, or it cannot reach etcd), ${held}: nothing freed; if it is gone for good: cni-ts ipam-maint decommission ${h.node} --config ...`,
        );
        break;
      case 'refused':
        lines.push(`  ${h.node}: alive (its liveness key is held), ${held}: NOT decommissioned; stop cni-ts on it (daemon, overlay agent) and wait out its liveness TTL first`);
        break;
      case 'decommissioned': {
        const parts = [];
        if (h.freed.length) parts.push(`${would}free ${h.freed.join(', ')}`);
        if (h.releasedBlocks.length) parts.push(`${would}release block(s) ${h.releasedBlocks.join(', ')}`);
        if (h.keptBlocks.length) parts.push(`keep block(s) ${h.keptBlocks.join(', ')} (other hosts' borrowed addresses are in them; run decommission again once they are released)`);
        if (h.registrationRemoved) parts.push(`${would}remove its registration`);
        lines.push(`  ${h.node}: decommissioned, ${held}: ${parts.join('; ') || 'nothing held'}`);
        break;
      }
      case 'conflict':
        lines.push(`  ${h.node}: changed during the run (did it come back?): incomplete, run again`);
        break;
    }
  }
  const suspect = r.hosts.filter((h) => h.action === 'suspect').length;
  lines.push(`${r.hosts.length} host(s), ${suspect} suspect${r.incomplete ? '; INCOMPLETE' : ''}`);
  return lines;
}

/** The network configuration whose IPAM uses the etcd store, from a .conflist or a .conf. */
export function loadMaintConfig(file: string): IpamConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `cannot read ${file}`, (err as Error).message);
  }
  const conf = parsed as { cniVersion?: string; name?: string; plugins?: { ipam?: { store?: string } }[]; ipam?: unknown };
  let netConf: unknown = parsed;
  if (Array.isArray(conf.plugins)) {
    const plugin = conf.plugins.find((p) => p?.ipam?.store === 'etcd');
    if (!plugin) throw new CniError(ErrorCode.InvalidNetworkConfig, `${file}: no plugin of the list uses the etcd IPAM store`);
    netConf = { cniVersion: conf.cniVersion, name: conf.name, ...plugin };
  }
  const ipam = loadIpamConfig(netConf);
  if (ipam.store !== 'etcd') throw new CniError(ErrorCode.InvalidNetworkConfig, `${file}: ipam.store is not "etcd"`);
  return ipam;
}

const USAGE = `usage: cni-ts ipam-maint [--dry-run] --config FILE.conflist|.conf
       cni-ts ipam-maint decommission NODE [--dry-run] --config FILE.conflist|.conf

Reports the hosts of the network whose IPAM is the etcd store (cluster-ipam,
"store": "etcd") named by --config. It frees nothing on its own.

Liveness: each host keeps a key (<keyPrefix>/alive/<node>) on an etcd lease
(ipam.etcd.livenessTtlMs, default 1h). The resident daemon (cni-ts daemon)
and the overlay agent keep it alive for every etcd IPAM store the host used;
CNI calls also create it. A host without the key is reported SUSPECT: its
daemon/agent is stopped, or it cannot reach etcd. Its addresses are NOT
freed: it may still be running its containers on them.

decommission NODE: you declare NODE gone for good. Frees all its addresses
in the network, releases its blocks (a block with another host's borrowed
address in it is kept until that is released), and, once NODE holds no block
in any network under the key prefix, its node-name registration. Refused
while NODE's liveness key exists: stop cni-ts on NODE first and let its lease
run out. Run it once per network (one --config each).

Host ID: a node name is registered to one host, identified by a random ID
kept in /var/lib/cni-ts/host-id (made on first use; not /etc/machine-id,
which cloned images share). A second host using the same node name is
refused (CNI error 7). To reuse the name of a dead host, decommission it; a
host cloned from an image that already held host-id must delete that file
before its first CNI call.

  --config FILE   the network configuration (.conflist or .conf)
  --dry-run       read and print what would be done; write nothing
  -h, --help      this text

Exit codes: 0 done, 1 failed, refused or incomplete (run again), 2 usage.`;

/** The command's flags (shared/flags.ts). */
const FLAGS = {
  config: { type: 'string' },
  'dry-run': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies FlagSpecs;

/** The command; returns the exit code. */
export async function maintMain(
  args: string[],
  io: { out: (line: string) => void; err: (line: string) => void; kv?: KV } = {
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
  },
): Promise<number> {
  const usage = USAGE.split('\n').slice(0, 2).join('\n');
  let parsed;
  try {
    parsed = parseFlags(args, FLAGS, { positionals: true });
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    io.err(`ipam-maint: ${e.message}\n${usage}`);
    return 2;
  }
  const { values: flags, positionals } = parsed;
  if (flags.help) {
    io.out(USAGE);
    return 0;
  }
  let decommission: string | undefined;
  if (positionals[0] === 'decommission') {
    decommission = positionals[1];
    if (decommission === undefined || positionals.length > 2 || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(decommission)) {
      io.err(`ipam-maint: decommission needs a node name\n${usage}`);
      return 2;
    }
  } else if (positionals.length > 0) {
    io.err(`ipam-maint: unknown argument "${positionals[0]}"\n${usage}`);
    return 2;
  }
  const file = flags.config;
  const dryRun = flags['dry-run'];
  if (!file) {
    io.err(`ipam-maint: --config is required\n${usage}`);
    return 2;
  }
  try {
    const ipam = loadMaintConfig(file);
    const report = await runMaint(ipam, { dryRun, decommission }, { kv: io.kv, log: io.err });
    for (const line of formatReport(report)) io.out(line);
    return report.incomplete ? 1 : 0;
  } catch (err) {
    io.err(`ipam-maint: ${err instanceof CniError ? `error ${err.code}: ${err.message}` : (err as Error).message}`);
    return 1;
  }
}
