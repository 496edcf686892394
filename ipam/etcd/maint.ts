/**
 * The etcd store's maintenance command, for the operator (the packaged
 * executable's `cni-ts ipam-maint`):
 *
 *   cni-ts ipam-maint [--dry-run] --config FILE.conflist|.conf [--grace DURATION]
 *
 * It reports every host of the configured network and reclaims what hosts
 * that are gone still hold. GC (cni.dev/valid-attachments) cannot: it runs
 * on a host, for that host, and a host that is gone calls nothing.
 *
 * "Gone" is judged by etcd alone. Every store operation keeps the host's
 * liveness key (P/alive/<node>) on a lease it renews (see ./store.ts), so a
 * missing key means the host has made no call for a whole lease TTL, by
 * etcd's clock: no two machines' clocks are compared. Then:
 *  - a gone host that holds no allocation in the network loses its blocks
 *    at once: nothing can be lost, and if it comes back it claims again;
 *  - a gone host that still holds allocations is first only recorded
 *    (P/gone/<node>/<network>, with each allocation's create revision), and
 *    its allocations are freed by a later run at least the grace period
 *    after that, only those it held the first time (Calico's seen-twice rule,
 *    as GC has it). A host that comes back renews its lease and deletes the
 *    record in the same transaction, so it is never freed across a return.
 * Once a gone host holds no block in any registered network, its node-name
 * registration goes too, so the name can be used again.
 *
 * Every write compares the host's liveness key at version 0 and each key it
 * changes at the revision it was read: a host coming back mid-run makes the
 * write fail, never half-apply, and the run reports it incomplete.
 * --dry-run reads the same and prints what it would do; it writes nothing,
 * not even a first sighting.
 *
 * Exit codes: 0 done, 1 failed or incomplete (run it again), 2 usage.
 */
import * as fs from 'node:fs';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { loadIpamConfig, type IpamConfig } from '../config';
import { parseIP } from '../ip';
import { loadEtcdConfig, type EtcdStoreConfig } from './config';
import {
  aliveKey,
  goneKey,
  hostKey,
  lastElement,
  networkKey,
  ownerPrefixKey,
  parseJSON,
  type AddressValue,
  type BlockData,
  type GoneValue,
} from './keys';
import { EtcdKV, type Compare, type KeyValue, type KV, type Op } from './kv';

export interface MaintOptions {
  readonly dryRun: boolean;
  /** a gone host's allocations are freed only when first seen gone this long ago */
  readonly graceMs: number;
}

export interface MaintDeps {
  /** default: etcd3 over the configured endpoints */
  readonly kv?: KV;
  /** epoch ms for sightings and the grace period */
  readonly clock?: () => number;
  /** one line of the report; default stdout */
  readonly out?: (line: string) => void;
}

export type HostAction =
  /** liveness key present: nothing to do */
  | 'alive'
  /** gone, allocations held, first sighting recorded now (or would be) */
  | 'sighted'
  /** gone, first sighting younger than the grace period */
  | 'waiting'
  /** gone and reclaimed (or would be) */
  | 'reclaimed'
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
  /** epoch ms after which a waiting host's allocations can be freed */
  reclaimableAt?: number;
}

export interface MaintReport {
  readonly network: string;
  readonly keyPrefix: string;
  readonly dryRun: boolean;
  readonly hosts: HostReport[];
  /** some write lost a race: the run should be repeated */
  readonly incomplete: boolean;
}

/** how many addresses one freeing transaction carries (3 deletes each; etcd's default limit is 128 ops) */
const FREE_BATCH = 40;
/** how many prefix reads one transaction carries */
const READ_BATCH = 100;

interface Snapshot {
  readonly hosts: Map<string, KeyValue>;
  readonly alive: Set<string>;
  readonly gone: Map<string, KeyValue>;
  /** node -> block state key -> kv */
  readonly blocks: Map<string, Map<string, KeyValue>>;
  readonly ips: { kv: KeyValue; v: AddressValue; ip: string }[];
}

/**
 * One maintenance run over the network `ipam` configures (the etcd section
 * as the plugin reads it; its nodeName and hostId are not used).
 */
export async function runMaint(ipam: IpamConfig, options: MaintOptions, deps: MaintDeps = {}): Promise<MaintReport> {
  const conf = loadEtcdConfig(maintSection(ipam.etcd), ipam.rangeSets);
  const kv = deps.kv ?? new EtcdKV(conf);
  try {
    return await new Maintenance(conf, ipam.name, kv, options, deps.clock ?? Date.now).run();
  } finally {
    if (!deps.kv) kv.close();
  }
}

/** The etcd section with a node identity filled in: the command acts for no node. */
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
    private readonly clock: () => number,
  ) {
    this.prefix = conf.keyPrefix;
    this.net = networkKey(conf.keyPrefix, network);
  }

  private deadline(): number {
    return Date.now() + this.conf.requestTimeoutMs;
  }

  async run(): Promise<MaintReport> {
    const snap = await this.read();
    const nodes = new Set<string>([...snap.hosts.keys(), ...snap.blocks.keys(), ...snap.ips.map((a) => a.v.node)]);
    const hosts: HostReport[] = [];
    for (const node of [...nodes].sort()) {
      const blocks = snap.blocks.get(node) ?? new Map<string, KeyValue>();
      const held = snap.ips.filter((a) => a.v.node === node);
      const report: HostReport = {
        node,
        action: 'alive',
        blocks: [...blocks.values()].map((b) => parseJSON<BlockData>(b.value)?.cidr ?? lastElement(b.key)),
        allocations: held.map((a) => a.ip),
        freed: [],
        releasedBlocks: [],
        keptBlocks: [],
        registrationRemoved: false,
      };
      hosts.push(report);
      if (snap.alive.has(node)) continue;
      try {
        await this.goneHost(node, report, snap, blocks, held);
      } catch (err) {
        if (!(err instanceof Conflict)) throw err;
        report.action = 'conflict';
        this.incomplete = true;
      }
    }
    return { network: this.network, keyPrefix: this.prefix, dryRun: this.options.dryRun, hosts, incomplete: this.incomplete };
  }

  /** Everything the run decides on, read in one transaction (one revision). */
  private async read(): Promise<Snapshot> {
    const { results } = await this.kv.txn(
      {
        success: [
          { get: `${this.prefix}/hosts/`, prefix: true },
          { get: `${this.prefix}/alive/`, prefix: true },
          { get: `${this.prefix}/gone/`, prefix: true },
          { get: `${this.net}/hostblocks/`, prefix: true },
          { get: `${this.net}/ips/`, prefix: true },
        ],
      },
      this.deadline(),
    );
    const [hosts, alive, gone, blocks, ips] = results as KeyValue[][];
    const snap: Snapshot = {
      hosts: new Map(hosts!.map((kv) => [lastElement(kv.key), kv])),
      alive: new Set(alive!.map((kv) => lastElement(kv.key))),
      gone: new Map(gone!.filter((kv) => lastElement(kv.key) === this.network).map((kv) => [kv.key.split('/').at(-2)!, kv])),
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
      const v = parseJSON<AddressValue>(kv.value);
      if (v) snap.ips.push({ kv, v, ip: lastElement(kv.key) });
    }
    return snap;
  }

  private async goneHost(
    node: string,
    report: HostReport,
    snap: Snapshot,
    blocks: Map<string, KeyValue>,
    held: Snapshot['ips'],
  ): Promise<void> {
    let free = held;
    if (held.length > 0) {
      const sightingKv = snap.gone.get(node);
      const sighting = sightingKv && parseJSON<GoneValue>(sightingKv.value);
      const now = this.clock();
      if (!sighting) {
        report.action = 'sighted';
        report.reclaimableAt = now + this.options.graceMs;
        if (this.options.dryRun) return;
        const value: GoneValue = { firstSeen: now, allocations: Object.fromEntries(held.map((a) => [a.ip, a.kv.createRevision.toString()])) };
        await this.write(node, [{ key: goneKey(this.prefix, node, this.network), target: 'version', value: 0n }], [
          { put: goneKey(this.prefix, node, this.network), value: JSON.stringify(value) },
        ]);
        return;
      }
      if (now - sighting.firstSeen < this.options.graceMs) {
        report.action = 'waiting';
        report.reclaimableAt = sighting.firstSeen + this.options.graceMs;
        return;
      }
      // Only what the host held when first seen gone: the same allocation,
      // not a later one at the same address.
      free = held.filter((a) => sighting.allocations[a.ip] === a.kv.createRevision.toString());
    }
    report.action = 'reclaimed';
    const states = new Map<string, { rev: bigint; data: BlockData }>();
    const stateOf = async (blockKey: string): Promise<{ rev: bigint; data: BlockData } | undefined> => {
      if (!states.has(blockKey)) {
        const { results } = await this.kv.txn({ success: [{ get: blockKey }] }, this.deadline());
        const kv = results[0]![0];
        const data = kv && parseJSON<BlockData>(kv.value);
        if (kv && data) states.set(blockKey, { rev: kv.modRevision, data });
      }
      return states.get(blockKey);
    };
    for (const kv of blocks.values()) {
      const data = parseJSON<BlockData>(kv.value);
      if (data) states.set(kv.key, { rev: kv.modRevision, data });
    }

    // The allocations, block by block, each batch with its block's state.
    const byBlock = new Map<string, Snapshot['ips']>();
    for (const a of free) {
      if (!byBlock.has(a.v.blockKey)) byBlock.set(a.v.blockKey, []);
      byBlock.get(a.v.blockKey)!.push(a);
    }
    for (const [blockKey, list] of byBlock) {
      for (let i = 0; i < list.length; i += FREE_BATCH) {
        const batch = list.slice(i, i + FREE_BATCH);
        const st = await stateOf(blockKey);
        const compare: Compare[] = batch.map((a) => ({ key: a.kv.key, target: 'mod', value: a.kv.modRevision }));
        const ops: Op[] = batch.flatMap((a): Op[] => [
          { delete: a.kv.key },
          { delete: ownerPrefixKey(this.net, a.v.containerId, a.v.ifname) + a.ip },
          { delete: `${this.net}/leaks/${node}/${a.ip}` },
        ]);
        let data: BlockData | undefined;
        if (st) {
          const used = { ...st.data.used };
          for (const a of batch) delete used[offsetIn(st.data.cidr, a.ip)];
          data = { ...st.data, seq: st.data.seq + 1, used };
          compare.push({ key: blockKey, target: 'mod', value: st.rev });
          ops.push({ put: blockKey, value: JSON.stringify(data) });
        } else {
          compare.push({ key: blockKey, target: 'version', value: 0n });
        }
        const rev = await this.write(node, compare, ops);
        if (st && data) states.set(blockKey, { rev, data });
        report.freed.push(...batch.map((a) => a.ip));
      }
    }

    // The blocks: released when empty, kept while another host's borrow is in one.
    let blocksLeft = 0;
    for (const kv of blocks.values()) {
      const st = states.get(kv.key);
      const cidr = st?.data.cidr ?? lastElement(kv.key);
      if (st && Object.keys(st.data.used).length > 0) {
        report.keptBlocks.push(cidr);
        blocksLeft++;
        continue;
      }
      const claimKey = `${this.net}/blocks/${lastElement(kv.key)}`;
      await this.write(
        node,
        [
          { key: kv.key, target: 'mod', value: st?.rev ?? kv.modRevision },
          { key: claimKey, target: 'value', value: node },
        ],
        [{ delete: kv.key }, { delete: claimKey }],
      );
      report.releasedBlocks.push(cidr);
    }
    if (free.length < held.length) {
      // Allocations the first sighting did not include: they get a grace
      // period of their own, from a new sighting.
      const rest = held.filter((a) => !free.includes(a));
      const now = this.clock();
      const value: GoneValue = { firstSeen: now, allocations: Object.fromEntries(rest.map((a) => [a.ip, a.kv.createRevision.toString()])) };
      await this.write(node, [], [{ put: goneKey(this.prefix, node, this.network), value: JSON.stringify(value) }]);
      report.reclaimableAt = now + this.options.graceMs;
      return;
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

/** The address's offset in its block, as BlockData.used keys it. */
function offsetIn(cidr: string, ip: string): string {
  const net = parseIP(cidr.slice(0, cidr.lastIndexOf('/')));
  const addr = parseIP(ip);
  return net && addr ? (addr.value - net.value).toString() : '';
}

/** The report as the command prints it: one line per host, one summary. */
export function formatReport(r: MaintReport, now: number): string[] {
  const would = r.dryRun ? 'would ' : '';
  const lines = [`network ${r.network} under ${r.keyPrefix}${r.dryRun ? ' (dry run: nothing is changed)' : ''}:`];
  for (const h of r.hosts) {
    const held = `${h.blocks.length} block(s), ${h.allocations.length} allocation(s)`;
    const at = h.reclaimableAt !== undefined ? new Date(h.reclaimableAt).toISOString() : '';
    switch (h.action) {
      case 'alive':
        lines.push(`  ${h.node}: alive, ${held}`);
        break;
      case 'sighted':
        lines.push(`  ${h.node}: gone (no liveness), ${held}: ${would}record the first sighting; its allocations can be freed from ${at}`);
        break;
      case 'waiting':
        lines.push(`  ${h.node}: gone (no liveness), ${held}: waiting out the grace period, until ${at} (${Math.max(0, Math.ceil(((h.reclaimableAt ?? now) - now) / 1000))} s)`);
        break;
      case 'reclaimed': {
        const parts = [];
        if (h.freed.length) parts.push(`${would}free ${h.freed.join(', ')}`);
        if (h.releasedBlocks.length) parts.push(`${would}release block(s) ${h.releasedBlocks.join(', ')}`);
        if (h.keptBlocks.length) parts.push(`keep block(s) ${h.keptBlocks.join(', ')} (other hosts' borrowed addresses are in them)`);
        if (h.registrationRemoved) parts.push(`${would}remove its registration`);
        const newer = h.allocations.length - h.freed.length;
        if (newer > 0) parts.push(`${newer} allocation(s) newer than the first sighting: freed from ${at || 'a later run'}`);
        lines.push(`  ${h.node}: gone (no liveness), ${held}: ${parts.join('; ') || 'nothing held'}`);
        break;
      }
      case 'conflict':
        lines.push(`  ${h.node}: changed during the run (did it come back?): incomplete, run again`);
        break;
    }
  }
  const gone = r.hosts.filter((h) => h.action !== 'alive').length;
  lines.push(`${r.hosts.length} host(s), ${gone} gone${r.incomplete ? '; INCOMPLETE' : ''}`);
  return lines;
}

/** "90s", "15m", "1h30m", "500ms", "2d"; a bare number is seconds. */
export function parseDuration(text: string): number | undefined {
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * unit[m[2]!]!;
    end = re.lastIndex;
  }
  return text.length > 0 && end === text.length ? Math.round(total) : undefined;
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

const USAGE = 'usage: cni-ts ipam-maint [--dry-run] --config FILE.conflist|.conf [--grace DURATION]';

/** The command; returns the exit code. */
export async function maintMain(
  args: string[],
  io: { out: (line: string) => void; err: (line: string) => void; kv?: KV; clock?: () => number } = {
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
  },
): Promise<number> {
  let file: string | undefined;
  let grace: number | undefined;
  let dryRun = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string | undefined => (a.includes('=') ? a.slice(a.indexOf('=') + 1) : args[++i]);
    if (a === '--dry-run') dryRun = true;
    else if (a === '--config' || a.startsWith('--config=')) file = value();
    else if (a === '--grace' || a.startsWith('--grace=')) {
      const text = value() ?? '';
      grace = parseDuration(text);
      if (grace === undefined) {
        io.err(`ipam-maint: --grace: "${text}" is not a duration (e.g. 90s, 15m, 1h)\n${USAGE}`);
        return 2;
      }
    } else if (a === '-h' || a === '--help') {
      io.out(USAGE);
      return 0;
    } else {
      io.err(`ipam-maint: unknown argument "${a}"\n${USAGE}`);
      return 2;
    }
  }
  if (!file) {
    io.err(`ipam-maint: --config is required\n${USAGE}`);
    return 2;
  }
  try {
    const ipam = loadMaintConfig(file);
    const graceMs = grace ?? loadEtcdConfig(maintSection(ipam.etcd), ipam.rangeSets).gcGracePeriodMs;
    const clock = io.clock ?? Date.now;
    const report = await runMaint(ipam, { dryRun, graceMs }, { kv: io.kv, clock });
    for (const line of formatReport(report, clock())) io.out(line);
    return report.incomplete ? 1 : 0;
  } catch (err) {
    io.err(`ipam-maint: ${err instanceof CniError ? `error ${err.code}: ${err.message}` : (err as Error).message}`);
    return 1;
  }
}
