/**
 * `cni-ts firewall-reload`: put every nftables rule of this project back
 * from the records on disk (shared/nft/records.ts), as `netavark
 * firewall-reload` does, after `nft flush ruleset` (firewalld restarting,
 * an admin's mistake) removed them. No container is re-added: the records
 * are what each ADD installed, and DEL and GC forget them.
 *
 * One transaction per table, portmap's first (its skeleton by `nft -f`,
 * then its containers' elements as one netlink batch): its skeleton carries the
 * martian guard (plugins/portmap/rules.ts), and route_localnet, which a
 * flush leaves on, is safe only with the guard in place. Then the bridge
 * networks (forward isolation, masquerade, the operator's user chain,
 * created if missing and never flushed), then the overlay's gateway table
 * (its containers' NATed egress, and its own user chain). Each under the
 * lock its plugin uses, so a reload never races an ADD or DEL into a state
 * neither meant. The IPsec table of encrypted overlays is not rebuilt
 * here: its peers and VNIs live in etcd, and the overlay agent, which
 * watches the tables too, rewrites it (plugins/overlay/agent.ts).
 *
 * The daemon runs the same code by itself when its table watch
 * (shared/nft/watch.ts) sees a deletion in one of our tables, rebuilding
 * only the tables whose markers are gone.
 */
import { withFileLock } from '../shared/sys/flock';
import { parseFlags, UsageError } from '../shared/flags';
import { prefixed, stderrLog, type Logger } from '../shared/log';
import { realTable } from '../shared/nft/real';
import type { OwnedTable } from '../shared/nft/table';
import { watchTables } from '../shared/nft/watch';
import { PORTMAP_LOCK_FILE } from '../shared/paths';
import { PORTMAP_SKELETON, PORTMAP_TABLE, recordedPlans, reloadPortmap } from '../plugins/portmap/rules';
import { BRIDGE_TABLE, networkLockFile, networkMarker, recordedNetworks, reloadTx } from '../plugins/bridge/firewall';
import { GATEWAY_TABLE, realGatewayTable, reloadGatewayTable } from '../plugins/overlay/gateway';

export interface FirewallTables {
  portmap: OwnedTable;
  bridge: OwnedTable;
  /** The overlay's gateway table (absent: left alone). */
  overlay?: OwnedTable;
  /** Runs fn holding a bridge network's lock; default flock on its lock file. */
  networkLock?: <T>(bridge: string, fn: () => T) => T;
}

/** The tables of the namespace at netnsPath (this one by default), with their records. */
export function realFirewallTables(opts: { netnsPath?: string; recordsRoot?: string } = {}): FirewallTables {
  return {
    portmap: realTable(PORTMAP_TABLE, { ...opts, lockFile: PORTMAP_LOCK_FILE }),
    bridge: realTable(BRIDGE_TABLE, opts),
    overlay: realGatewayTable(opts),
  };
}

export interface ReloadReport {
  /** containers whose published ports were rebuilt (undefined: table left alone) */
  portmap?: number;
  /** bridge networks whose rules were rebuilt (undefined: table left alone) */
  bridge?: number;
  /** overlay gateway bridges whose NAT was rebuilt (undefined: table left alone) */
  overlay?: number;
}

export interface ReloadOptions {
  /** Rebuild only a table whose markers say it is gone (the daemon's watch); default: every table. */
  onlyGone?: boolean;
  log?: Logger;
}

/** Rebuild the tables from their records (see the header). */
export function reloadFirewall(t: FirewallTables, opts: ReloadOptions = {}): ReloadReport {
  const log = opts.log ?? (() => {});
  const report: ReloadReport = {};
  // Current tables need no lock (see the bridge networks below): the watch
  // runs on the daemon's main thread, which must never wait for a call.
  // The marker first: one netlink request, while the records are a directory read.
  if (!(opts.onlyGone && t.portmap.isCurrent(PORTMAP_SKELETON.marker))) t.portmap.withLock(() => {
    const plans = recordedPlans(t.portmap, log);
    if (plans.length === 0) return;
    reloadPortmap(t.portmap, plans);
    report.portmap = plans.length;
  });
  const names = recordedNetworks(t.bridge).map((n) => n.bridge).sort();
  // The daemon's watch runs this on its main thread after every deletion in
  // our tables (each network's first ADD flushes its chains, every portmap
  // DEL deletes): networks whose rules are all there need no lock, which a
  // container's ADD holds shared for its whole run (a blocked main thread
  // stalls every call). Anything gone is checked again under the locks.
  if (opts.onlyGone && recordedNetworks(t.bridge).every((n) => t.bridge.isCurrent(networkMarker(n)))) {
    reloadOverlay(t, opts, report);
    return report;
  }
  const lock = t.networkLock ?? (<T>(bridge: string, fn: () => T): T => withFileLock(networkLockFile(bridge), fn));
  // Every recorded network's lock, always in name order (ADD and DEL hold
  // one at a time, so this order cannot deadlock with them); the records
  // are read again inside, where no DEL can forget one under us.
  const underLocks = (i: number): void => {
    if (i < names.length) return lock(names[i], () => underLocks(i + 1));
    const networks = recordedNetworks(t.bridge, log);
    if (networks.length === 0) return;
    if (opts.onlyGone && networks.every((n) => t.bridge.isCurrent(networkMarker(n)))) return;
    t.bridge.run(reloadTx(networks));
    report.bridge = networks.length;
  };
  underLocks(0);
  reloadOverlay(t, opts, report);
  return report;
}

/** The overlay's gateway table from its record, under its own lock (plugins/overlay/gateway.ts). */
function reloadOverlay(t: FirewallTables, opts: ReloadOptions, report: ReloadReport): void {
  if (!t.overlay) return;
  if (reloadGatewayTable(t.overlay, { onlyGone: opts.onlyGone, log: opts.log })) report.overlay = 1;
}

/** The tables the daemon rebuilds (the IPsec table is the overlay agent's). */
const REBUILT = [PORTMAP_TABLE.table, BRIDGE_TABLE.table, GATEWAY_TABLE.table];

/**
 * The daemon's half: rebuild whatever is gone now (the daemon may start
 * after a flush), then whenever the watch sees our tables lose something.
 * Returns the function that stops the watch.
 */
export function startFirewallWatch(log: Logger, tables: FirewallTables = realFirewallTables(), watch: { netnsPath?: string; pollMs?: number } = {}): () => void {
  const reload = (touched?: ReadonlySet<string>): void => {
    // the overlay agent rewrites the IPsec table every pass: nothing of ours to look at then
    if (touched && !REBUILT.some((t) => touched.has(t))) return;
    const r = reloadFirewall(tables, { onlyGone: true, log });
    if (r.portmap !== undefined || r.bridge !== undefined || r.overlay !== undefined) log(`firewall rebuilt from records: ${describe(r)}`);
  };
  try {
    reload();
  } catch (e) {
    log(`firewall reload failed: ${(e as Error).message}`);
  }
  try {
    return watchTables({ ...watch, onGone: reload, log }).stop;
  } catch (e) {
    log(`cannot watch nf_tables (${(e as Error).message}); run \`cni-ts firewall-reload\` after a flush`);
    return () => {};
  }
}

function describe(r: ReloadReport): string {
  const parts: string[] = [];
  if (r.portmap !== undefined) parts.push(`portmap: ${r.portmap} container(s)`);
  if (r.bridge !== undefined) parts.push(`bridge: ${r.bridge} network(s)`);
  if (r.overlay !== undefined) parts.push(`overlay: ${r.overlay} gateway bridge(s)`);
  return parts.length ? parts.join(', ') : 'nothing recorded';
}

const USAGE = `usage: cni-ts firewall-reload
  rebuild every nftables table of cni-ts from the records on disk (after \`nft flush ruleset\`)`;

export async function firewallReloadMain(args: string[]): Promise<number> {
  const log = prefixed(stderrLog, 'cni-ts firewall-reload: ');
  try {
    parseFlags(args, {});
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    log(`${e.message}\n${USAGE}`);
    return 2;
  }
  try {
    log(describe(reloadFirewall(realFirewallTables(), { log })));
    return 0;
  } catch (e) {
    log((e as Error).message);
    return 1;
  }
}
