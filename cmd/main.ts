/**
 * The one executable. It is installed once and hard-linked under every plugin
 * name (/opt/cni/bin/bridge, /opt/cni/bin/none, ...); the name it was started
 * under picks the plugin, as busybox does. Started under its own name it
 * takes the plugin or tool as its first argument: `cni-ts bridge`,
 * `cni-ts version`.
 *
 * Runtimes normally reach it through cni-ts-shim (cmd/shim.c), which hands
 * the call to a resident `cni-ts daemon` when one runs and otherwise execs
 * this executable under the plugin's name. The daemon's worker threads run
 * this same bundle; in them it serves calls (cmd/daemon-worker.ts).
 */
import * as path from 'node:path';
import { isMainThread, workerData } from 'node:worker_threads';

import { stderrLog } from '../shared/log';
import { pluginMain } from './plugin-io';
import { findPlugin, plugins } from './plugins';

/* eslint-disable @typescript-eslint/no-require-imports */
const tools: ReadonlyMap<string, (args: string[]) => void> = new Map<string, (args: string[]) => void>([
  ['overlay-agent', (args) => { require('../plugins/overlay/agent').agentMain(args).then((c: number) => { process.exitCode = c; }); }],
  ['daemon', (args) => { require('./daemon').daemonMain(args).then((c: number) => process.exit(c)); }],
  ['dns', (args) => { require('./dns').dnsMain(args).then((c: number) => process.exit(c)); }],
  ['firewall-reload', (args) => { require('./firewall-reload').firewallReloadMain(args).then((c: number) => { process.exitCode = c; }); }],
  ['port-proxy', (args) => { require('./port-proxy').portProxyMain(args).then((c: number) => process.exit(c)); }],
  ['ipam-maint', (args) => { require('../ipam/etcd/maint').maintMain(args).then((c: number) => { process.exitCode = c; }); }],
  ['version', () => {
    process.stdout.write(`cni-ts ${process.env.CNI_TS_VERSION ?? '0.1.0'}\nplugins: ${[...plugins.keys()].join(' ')}\n`);
  }],
]);
/* eslint-enable @typescript-eslint/no-require-imports */

function programName(): string {
  // For a hard link /proc/self/exe (execPath) names the link that was run;
  // for a symlink it names the target, so argv0 is the fallback.
  for (const candidate of [process.execPath, process.argv0]) {
    const base = path.basename(candidate);
    if (plugins.has(base)) return base;
  }
  return '';
}

function run(): void {
  if (!isMainThread && (workerData as { role?: unknown } | null)?.role === 'cni-ts-daemon-worker') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('./daemon-worker').workerMain();
  }
  const name = programName();
  if (name) return pluginMain(findPlugin(name)!().plugin);
  // `node dist/cni-ts.js none` (development) or `cni-ts none` (the executable):
  // in both, argv[1] is the script or the executable itself.
  const [first, ...rest] = process.argv.slice(2);
  const plugin = first === undefined ? undefined : findPlugin(first);
  if (plugin) return pluginMain(plugin().plugin);
  const tool = first === undefined ? undefined : tools.get(first);
  if (tool) return tool(rest);
  stderrLog(`usage: cni-ts <${[...plugins.keys(), ...tools.keys()].join('|')}> (or run it under a plugin's name)`);
  process.exitCode = 2;
}

run();
