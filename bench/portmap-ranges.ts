/**
 * portmap port ranges: what publishing a 1000-port range costs against a
 * 10-port one (issue 17 item 2: at most 2x). A range is one DNAT rule and
 * one element per port in the ADD's single transaction, so the difference
 * is element parsing in nft and the kernel, not a rule per port.
 *
 * Each round ADDs one container publishing the range and DELs it again,
 * through the plugin's own code (makePlugin) on the real nft and the real
 * table lookups over netlink, inside a private network namespace standing
 * in for the host (its tables, its records; the machine's are untouched).
 * route_localnet is not switched (enableLocalnet is a no-op): it is one
 * sysctl write either way. Then the same through the packaged executable
 * (bin/portmap: the shim and a daemon, and standalone), the time a runtime
 * waits for. Prints medians and the ratios; never pass/fail.
 *
 *   BENCHES=portmap-ranges bash bench/run.sh     (or: npx tsx bench/portmap-ranges.ts)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runPlugin } from '../shared/cni/skel';
import { realTable } from '../shared/nft/real';
import { makePlugin } from '../plugins/portmap/main';
import { PORTMAP_TABLE } from '../plugins/portmap/rules';
import { callIn, median, standalone, startDaemon, type Mode } from './lib';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 20);
const root = process.cwd();
process.env.NETLINK_TS_NATIVE ??= fs.existsSync(path.join(root, 'dist/netlink_native.node'))
  ? path.join(root, 'dist/netlink_native.node')
  : path.join(root, 'shared/netlink/native/build/Release/netlink_native.node');

const ns = `bench-pmr-${process.pid}`;
const netnsPath = `/var/run/netns/${ns}`;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-pmr-'));

const plugin = makePlugin({
  table: () => realTable(PORTMAP_TABLE, { netnsPath, lockFile: path.join(tmp, 'portmap.lock'), recordsRoot: path.join(tmp, 'records') }),
  enableLocalnet: () => {},
});

async function call(command: 'ADD' | 'DEL', n: number): Promise<number> {
  const conf = {
    cniVersion: '1.1.0',
    name: 'bench',
    type: 'portmap',
    capabilities: { portMappings: true },
    runtimeConfig: { portMappings: [{ hostPort: 20000, containerPort: 30000, protocol: 'tcp', range: n }] },
    prevResult: {
      cniVersion: '1.1.0',
      interfaces: [{ name: 'eth0', sandbox: netnsPath }],
      ips: [{ address: '10.1.0.5/24', interface: 0 }],
    },
  };
  let out = '';
  const t0 = process.hrtime.bigint();
  const code = await runPlugin(plugin, {
    env: { CNI_COMMAND: command, CNI_CONTAINERID: `bench-${n}`, CNI_NETNS: netnsPath, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' },
    readStdin: () => Buffer.from(JSON.stringify(conf)),
    writeStdout: (s) => {
      out += s;
    },
    interfaceExists: () => false,
    netnsStatus: () => 'netns',
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (code !== 0) throw new Error(`${command} of a ${n}-port range failed: ${out}`);
  return ms;
}

/** The same ADD/DEL through bin/portmap, called from the bench's namespace as a runtime would. */
function packaged(mode: Mode, sizes: number[]): void {
  const side = (n: number) => ({
    binary: path.join(root, 'bin/portmap'),
    env: mode.env,
    cniPath: path.join(root, 'bin'),
    netns: `${ns}-c`,
    conf: JSON.stringify({
      cniVersion: '1.1.0',
      name: 'bench-e2e',
      type: 'portmap',
      capabilities: { portMappings: true },
      runtimeConfig: { portMappings: [{ hostPort: 20000, containerPort: 30000, protocol: 'tcp', range: n }] },
      prevResult: { cniVersion: '1.1.0', interfaces: [{ name: 'eth0', sandbox: `${netnsPath}-c` }], ips: [{ address: '10.1.0.5/24', interface: 0 }] },
    }),
  });
  const rounds = Math.max(5, Math.floor(ROUNDS / 2));
  const add: Record<number, number[]> = { 10: [], 1000: [] };
  const del: Record<number, number[]> = { 10: [], 1000: [] };
  for (const n of sizes) {
    callIn(ns, side(n), 'ADD', n);
    callIn(ns, side(n), 'DEL', n);
  }
  for (let i = 0; i < rounds; i++) {
    for (const n of i % 2 ? sizes : [...sizes].reverse()) {
      add[n].push(callIn(ns, side(n), 'ADD', n).ms);
      del[n].push(callIn(ns, side(n), 'DEL', n).ms);
    }
  }
  console.log(`through bin/portmap (${mode.label}), ${rounds} rounds, medians (ms):`);
  for (const n of sizes) console.log(`  ${String(n).padStart(4)} ports   ADD ${median(add[n]).toFixed(1)}   DEL ${median(del[n]).toFixed(1)}`);
  console.log(`  ratio 1000/10: ADD ${(median(add[1000]) / median(add[10])).toFixed(2)}x   DEL ${(median(del[1000]) / median(del[10])).toFixed(2)}x   (goal: at most 2x)`);
}

async function main(): Promise<void> {
  execFileSync('ip', ['netns', 'add', ns]);
  // the container's, for the packaged calls (a plugin refuses its own namespace as CNI_NETNS)
  execFileSync('ip', ['netns', 'add', `${ns}-c`]);
  try {
    const sizes = [10, 1000];
    const add: Record<number, number[]> = { 10: [], 1000: [] };
    const del: Record<number, number[]> = { 10: [], 1000: [] };
    // one unmeasured round each: the table's skeleton is written once
    for (const n of sizes) {
      await call('ADD', n);
      await call('DEL', n);
    }
    for (let i = 0; i < ROUNDS; i++) {
      for (const n of i % 2 ? sizes : [...sizes].reverse()) {
        add[n].push(await call('ADD', n));
        del[n].push(await call('DEL', n));
      }
    }
    console.log(`portmap port range, ${ROUNDS} rounds, medians (ms):`);
    for (const n of sizes) console.log(`  ${String(n).padStart(4)} ports   ADD ${median(add[n]).toFixed(1)}   DEL ${median(del[n]).toFixed(1)}`);
    console.log(`  ratio 1000/10: ADD ${(median(add[1000]) / median(add[10])).toFixed(2)}x   DEL ${(median(del[1000]) / median(del[10])).toFixed(2)}x   (goal: at most 2x)`);
    const daemon = startDaemon(root, ns, path.join(tmp, 'daemon.sock'));
    try {
      for (const mode of [daemon, standalone]) packaged(mode, sizes);
    } finally {
      daemon.stop();
    }
  } finally {
    execFileSync('ip', ['netns', 'del', `${ns}-c`]);
    execFileSync('ip', ['netns', 'del', ns]);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

void main().catch((e: unknown) => {
  console.error((e as Error).message);
  process.exitCode = 1;
});
