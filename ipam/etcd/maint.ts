/**
 * The etcd store's maintenance command, for the operator (the packaged
 * executable's `cni-ts ipam-maint`):
 *
 *   cni-ts ipam-maint [--dry-run] --config FILE.conflist|.conf
 *   cni-ts ipam-maint decommission NODE [--dry-run] --config FILE.conflist|.conf
 *
 * The first form reports every host of the configured network and frees
 * nothing; the second frees what NODE, declared gone for good, holds. What a
 * run reads, decides and writes is ./decommission.ts; this file is the
 * command around it: the configuration file, the flags, the printed report.
 *
 * --dry-run reads the same and prints what it would do; it writes nothing.
 *
 * Exit codes: 0 done, 1 failed, refused or incomplete (run it again), 2 usage.
 */
import * as fs from 'node:fs';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { type FlagSpecs, parseFlags, UsageError } from '../../shared/flags';
import { stderrLog } from '../../shared/log';
import { loadIpamConfig, type IpamConfig } from '../config';
import { runMaint, type MaintReport } from './decommission';
import type { KV } from '../../shared/etcd/kv';

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
        if (h.namesRemoved.length) parts.push(`${would}remove the DNS names of ${h.namesRemoved.join(', ')}`);
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
    err: stderrLog,
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
