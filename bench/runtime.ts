/**
 * Runtime-level benchmark: what a user sees per container, side by side in
 * one run.
 *
 *   podman 4.3 `run --rm -p PORT:80 --rootfs DIR /bin/true` on
 *     (a) ours, default install: the shim with build.sh install's
 *         cni-ts-daemon.conf beside it (the daemon started on demand by the
 *         first call), or, with a shim that cannot do that, a daemon the bench
 *         starts itself;
 *     (b) ours standalone (CNI_TS_NO_DAEMON=1: a Node start per plugin call);
 *     (c) netavark (podman's default backend, DNS off: ours has none);
 *     (d) the reference plugins in podman's default CNI conflist (bridge,
 *         portmap, firewall, tuning from /usr/lib/cni);
 *   containerd 1.6 `ctr run --rm --cni IMAGE ID /bin/true` (ctr has no -p) on
 *     ours (default install) and on the reference (bridge + portmap), with a
 *     local OCI image built here from busybox-static and imported (no
 *     registry), on a containerd the bench starts (temp root/state/socket).
 *
 * ctr takes its CNI configuration only from /etc/cni/net.d and /opt/cni/bin;
 * each containerd side runs ctr in a private mount namespace of its own
 * where those two are bind mounts of the side's own directories, so nothing
 * of the host's is touched. The default install's conf names that namespace
 * as the host's (host-ns=), so its shim starts the daemon there too.
 *
 * Variants are interleaved round by round (the order rotated each round),
 * after one cold run each (reported apart: for the default install it
 * includes starting the daemon). Peak memory comes from one extra, untimed
 * run per variant with every plugin (and netavark) wrapped in GNU time, plus
 * the daemon's VmHWM. Then a burst: BURST containers at once on one network
 * through the default install (bridge then portmap per container, as libcni
 * chains them, calls timed one by one): every call must be answered.
 *
 *   RUNTIME_ROUNDS (12), RUNTIME_BURST (50), RUNTIME_ONLY=a,b,... (variant keys;
 *   RUNTIME_ONLY=burst runs the burst alone, on a default install of its own)
 */
import { type SpawnSyncReturns, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { alive, median, sweepStale } from './lib';
import { type CallOutcome, runChains } from './spawn-chains';
import { startDaemon as startTestDaemon } from '../testkit/daemon';
import { type Containerd, buildImage, importImage, makeBusyboxRootfs, mountNamespace as testMountNamespace, startContainerd as startTestContainerd } from '../testkit/containerd';
import { plugins } from '../cmd/plugins';

const ROUNDS = Number(process.env.RUNTIME_ROUNDS ?? 12);
const BURST = Number(process.env.RUNTIME_BURST ?? 50);
const root = process.cwd();
const PREFIX = 'bench-rt-';
const tag = `${PREFIX}${process.pid}`;
const work = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-`));
/** short, unique per run: bridge names have 15 characters */
const uid = (process.pid % 100000).toString(36);
const cleanups: (() => void)[] = [];

function run(argv: string[], opts: { env?: NodeJS.ProcessEnv; allowFail?: boolean; timeout?: number } = {}): SpawnSyncReturns<string> {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: opts.env ?? process.env, timeout: opts.timeout ?? 120_000 });
  if (r.status !== 0 && !opts.allowFail) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return r;
}

function timed(argv: string[], env?: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  run(argv, { env });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function writeExecutable(file: string, text: string): void {
  fs.writeFileSync(file, text, { mode: 0o755 });
}

// ---------------------------------------------------------------- installs

const PLUGINS = [...plugins.keys()];
/** The shim can start the daemon itself (cmd/shim.c reads cni-ts-daemon.conf). */
const shimAutostarts = fs.readFileSync(path.join(root, 'bin/cni-ts-shim')).includes('cni-ts-daemon.conf');

/** What `build.sh install DIR` lays down: the executable, the shim, one link per plugin. */
function install(dir: string, daemonConf?: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(path.join(root, 'bin/cni-ts'), path.join(dir, 'cni-ts'));
  fs.copyFileSync(path.join(root, 'bin/cni-ts-shim'), path.join(dir, 'cni-ts-shim'));
  fs.chmodSync(path.join(dir, 'cni-ts'), 0o755);
  fs.chmodSync(path.join(dir, 'cni-ts-shim'), 0o755);
  for (const p of PLUGINS) fs.linkSync(path.join(dir, 'cni-ts-shim'), path.join(dir, p));
  if (daemonConf !== undefined) fs.writeFileSync(path.join(dir, 'cni-ts-daemon.conf'), daemonConf);
}

function linkReference(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const p of ['bridge', 'host-local', 'portmap', 'firewall', 'tuning', 'loopback']) fs.symlinkSync(`/usr/lib/cni/${p}`, path.join(dir, p));
}

/** Daemons of ours this bench caused (by their socket), found through /proc. */
function daemonPids(socket: string): number[] {
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (argv.includes('daemon') && argv.includes(socket)) pids.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function peakKbOf(pid: number): number {
  try {
    return Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * How the default install reaches its daemon: the conf that build.sh install
 * writes (on demand), with a socket of the bench's own; or, for a shim that
 * predates that, a daemon started here and named in the callers' environment.
 */
interface DefaultInstall {
  dir: string;
  env: Record<string, string>;
  socket: string;
  how: string;
  daemonPeakKb(): number;
}

function defaultInstall(dir: string, socket: string, hostNs?: string, mountNsPid?: number): DefaultInstall {
  if (shimAutostarts) {
    install(dir, [`# as build.sh install writes it, with the bench's own socket`, 'idle-exit=600', `socket=${socket}`, ...(hostNs ? [`host-ns=${hostNs}`] : []), ''].join('\n'));
    cleanups.push(() => {
      for (const pid of daemonPids(socket)) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone
        }
      }
    });
    return { dir, env: {}, socket, how: 'started on demand by the shim', daemonPeakKb: () => Math.max(0, ...daemonPids(socket).map(peakKbOf)) };
  }
  install(dir);
  if (mountNsPid !== undefined) {
    // the daemon serves callers in its own mount namespace only
    const child = spawn('nsenter', ['-t', String(mountNsPid), '-m', '--', path.join(dir, 'cni-ts'), 'daemon', '--socket', socket], { stdio: 'ignore', detached: true });
    child.unref();
    for (let i = 0; i < 300 && !fs.existsSync(socket); i++) execFileSync('sleep', ['0.05']);
    cleanups.push(() => child.pid && alive(child.pid) && process.kill(child.pid, 'SIGTERM'));
    return { dir, env: { CNI_TS_DAEMON_SOCKET: socket }, socket, how: 'started by the bench', daemonPeakKb: () => (child.pid ? peakKbOf(child.pid) : 0) };
  }
  const d = startTestDaemon({ binDir: dir, socket, logCalls: false });
  cleanups.push(() => d.stop());
  return { dir, env: { CNI_TS_DAEMON_SOCKET: socket }, socket, how: 'started by the bench', daemonPeakKb: () => peakKbOf(d.pid) };
}

/**
 * A directory of wrappers, one per plugin of `dir`, that run it under GNU
 * time and append "name peak-kB" to `log`: for the untimed memory run.
 */
function wrapped(dir: string, log: string): string {
  const out = `${dir}.mem`;
  fs.mkdirSync(out, { recursive: true });
  for (const name of fs.readdirSync(dir)) {
    const target = path.join(dir, name);
    if (name.endsWith('.conf') || name === 'cni-ts' || name === 'cni-ts-shim') continue;
    writeExecutable(path.join(out, name), `#!/bin/sh\nexec /usr/bin/time -a -o ${log} -f '${name} %M' ${target} "$@"\n`);
  }
  return out;
}

// ------------------------------------------------------------------ podman

const rootfs = path.join(work, 'rootfs');

function makeRootfs(): void {
  makeBusyboxRootfs(rootfs, ['sh', 'true', 'sleep', 'ip']);
}

interface Variant {
  key: string;
  label: string;
  /** one container: its wall time in ms */
  once(i: number): number;
  /** the same, untimed, with the plugins wrapped: peak kB per plugin process */
  memory(): { plugins: number; daemon: number };
  cleanup(): void;
}

let nextPort = 20000 + (process.pid % 20000);

function podmanVariant(key: string, label: string, opts: { backend: 'cni' | 'netavark'; pluginDir?: string; env?: Record<string, string>; conflist?: (name: string, bridge: string, subnet: string, dataDir: string) => object; daemonPeakKb?: () => number }, index: number): Variant {
  const dir = path.join(work, `podman-${key}`);
  const dirs = { networks: path.join(dir, 'networks'), root: path.join(dir, 'storage'), runroot: path.join(dir, 'run'), data: path.join(dir, 'data') };
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
  const net = `${tag}-${key}`;
  let bridge = `brt${key}${uid}`;
  const subnet = `10.236.${index}.0/24`;
  const conf = (pluginDir: string | undefined, helperDir?: string) => {
    const file = path.join(dir, `containers${helperDir ? '-mem' : ''}.conf`);
    fs.writeFileSync(
      file,
      [
        '[network]',
        `network_backend = "${opts.backend}"`,
        ...(pluginDir ? [`cni_plugin_dirs = ["${pluginDir}"]`] : []),
        `network_config_dir = "${dirs.networks}"`,
        '[engine]',
        ...(helperDir ? [`helper_binaries_dir = ["${helperDir}", "/usr/lib/podman"]`] : []),
        '',
      ].join('\n'),
    );
    return file;
  };
  const mainConf = conf(opts.pluginDir);
  const podman = (confFile: string, env: Record<string, string>, ...args: string[]) => [
    ['podman', '--root', dirs.root, '--runroot', dirs.runroot, '--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--network-backend', opts.backend, ...args],
    { ...process.env, CONTAINERS_CONF: confFile, ...env },
  ] as const;
  if (opts.conflist) {
    fs.writeFileSync(path.join(dirs.networks, `${net}.conflist`), JSON.stringify(opts.conflist(net, bridge, subnet, dirs.data)));
  } else {
    // podman 4.3 names the bridge itself (podmanN)
    const [argv, env] = podman(mainConf, {}, 'network', 'create', '--disable-dns', '--subnet', subnet, net);
    run([...argv], { env });
    const [inspect, env2] = podman(mainConf, {}, 'network', 'inspect', net);
    bridge = (JSON.parse(run([...inspect], { env: env2 }).stdout) as { network_interface: string }[])[0].network_interface;
  }
  const container = (confFile: string, env: Record<string, string>) =>
    podman(confFile, { ...opts.env, ...env }, 'run', '--rm', '--network', net, '-p', `${nextPort++}:80`, '--ulimit', 'nofile=10000:10000', '--ulimit', 'nproc=1000:1000', '--rootfs', rootfs, '/bin/true');
  return {
    key,
    label,
    once: () => {
      const [argv, env] = container(mainConf, {});
      return timed([...argv], env);
    },
    memory: () => {
      const log = path.join(dir, 'mem.log');
      let confFile: string;
      if (opts.backend === 'cni') {
        confFile = conf(wrapped(opts.pluginDir!, log));
      } else {
        const helpers = path.join(dir, 'helpers');
        fs.mkdirSync(helpers, { recursive: true });
        writeExecutable(path.join(helpers, 'netavark'), `#!/bin/sh\nexec /usr/bin/time -a -o ${log} -f 'netavark %M' /usr/lib/podman/netavark "$@"\n`);
        confFile = conf(undefined, helpers);
      }
      const [argv, env] = container(confFile, {});
      run([...argv], { env });
      const kb = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => Number(l.split(' ').pop()) || 0);
      return { plugins: Math.max(0, ...kb), daemon: opts.daemonPeakKb?.() ?? 0 };
    },
    cleanup: () => {
      const [argv, env] = podman(mainConf, {}, 'network', 'rm', '--force', net);
      run([...argv], { env, allowFail: true });
      run(['ip', 'link', 'del', bridge], { allowFail: true });
    },
  };
}

/** Our chain on a podman or ctr network: bridge (cluster-ipam, local store) then portmap. */
function oursConflist(name: string, bridge: string, subnet: string, dataDir: string): object {
  return {
    cniVersion: '1.0.0',
    name,
    plugins: [
      { type: 'bridge', bridge, isGateway: true, ipMasq: true, hairpinMode: true, ipam: { type: 'cluster-ipam', dataDir, ranges: [[{ subnet }]] } },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
}

/** What podman 4.3 writes for `podman network create` on the CNI backend, at cniVersion 1.0.0. */
function podmanDefaultConflist(name: string, bridge: string, subnet: string, dataDir: string): object {
  return {
    cniVersion: '1.0.0',
    name,
    plugins: [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq: true,
        hairpinMode: true,
        ipam: { type: 'host-local', dataDir, routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet, gateway: subnet.replace(/0\/24$/, '1') }]] },
      },
      { type: 'portmap', capabilities: { portMappings: true } },
      { type: 'firewall', backend: '' },
      { type: 'tuning' },
    ],
  };
}

// --------------------------------------------------------------- containerd

const IMAGE = 'cni-ts-bench/busybox:1';

/** containerd with a temp config, root, state and socket (testkit/containerd.ts); stopped at the end. */
function startContainerd(): Containerd {
  const cd = startTestContainerd(path.join(work, 'containerd'), tag);
  cleanups.push(() => cd.stop());
  return cd;
}

/** A private mount namespace, held by a sleeping process, where /etc/cni/net.d and /opt are the side's own. */
function mountNamespace(netd: string, opt: string): number {
  const holder = testMountNamespace(netd, opt);
  cleanups.push(() => holder.stop());
  return holder.pid;
}

function ctrVariant(key: string, label: string, cd: Containerd, opts: { ours: boolean }, index: number): Variant & { install?: DefaultInstall } {
  const dir = path.join(work, `ctr-${key}`);
  const netd = path.join(dir, 'net.d');
  const opt = path.join(dir, 'opt');
  const bin = path.join(opt, 'cni/bin');
  fs.mkdirSync(netd, { recursive: true });
  const name = `${tag}-${key}`;
  const bridge = `brt${key}${uid}`;
  const subnet = `10.236.${index}.0/24`;
  const conflist = (opts.ours ? oursConflist : podmanDefaultConflist)(name, bridge, subnet, path.join(dir, 'data')) as { plugins: object[] };
  // ctr has no port mappings: bridge + portmap, as the podman sides minus firewall/tuning
  fs.writeFileSync(path.join(netd, '10-bench.conflist'), JSON.stringify({ ...conflist, plugins: conflist.plugins.slice(0, 2) }));
  fs.mkdirSync(opt, { recursive: true });
  const ns = mountNamespace(netd, opt);
  let inst: DefaultInstall | undefined;
  // /opt/cni/bin holds symlinks to the plugins, so the memory run can swap
  // in wrappers there while the daemon's executable stays where it is
  const plugins = path.join(dir, 'plugins');
  if (opts.ours) inst = defaultInstall(plugins, path.join(dir, 'daemon.sock'), `/proc/${ns}/ns`, ns);
  else linkReference(plugins);
  fs.mkdirSync(bin, { recursive: true });
  for (const p of fs.readdirSync(plugins)) if (!p.endsWith('.conf')) fs.symlinkSync(path.join(plugins, p), path.join(bin, p));
  let n = 0;
  const container = (env: Record<string, string>) => [['nsenter', '-t', String(ns), '-m', '--', ...cd.ctr('run', '--rm', '--cni', IMAGE, `${key}-${uid}-${n++}`, '/bin/true')], { ...process.env, ...inst?.env, ...env }] as const;
  return {
    key,
    label,
    install: inst,
    once: () => {
      const [argv, env] = container({});
      return timed([...argv], env);
    },
    memory: () => {
      // the wrappers go where ctr looks (/opt/cni/bin of this namespace), the plugins move aside
      const log = path.join(dir, 'mem.log');
      const links = path.join(opt, 'cni/links');
      fs.renameSync(bin, links);
      try {
        fs.renameSync(wrapped(plugins, log), bin);
        const [argv, env] = container({});
        run([...argv], { env });
      } finally {
        fs.rmSync(bin, { recursive: true, force: true });
        fs.renameSync(links, bin);
      }
      const kb = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => Number(l.split(' ').pop()) || 0);
      return { plugins: Math.max(0, ...kb), daemon: inst?.daemonPeakKb() ?? 0 };
    },
    cleanup: () => run(['ip', 'link', 'del', bridge], { allowFail: true }),
  };
}

// -------------------------------------------------------------------- burst

/**
 * BURST containers at once on one network of the default install: per
 * container bridge ADD then portmap ADD (with the bridge's result and a
 * published port), as libcni runs a list; then the DELs in reverse. Called
 * from the host's namespaces, like a runtime, and started the way a Go
 * runtime starts plugins (bench/spawn-chains.c: vfork, no copy of the
 * benchmark's own process), each call timed from its spawn to its exit.
 */
function burst(inst: DefaultInstall): { add: CallOutcome[]; del: CallOutcome[]; addWall: number; delWall: number } {
  const netnses = Array.from({ length: BURST }, (_, i) => `${tag}-b${i}`);
  for (const ns of netnses) {
    execFileSync('ip', ['netns', 'add', ns]);
    cleanups.push(() => run(['ip', 'netns', 'del', ns], { allowFail: true }));
  }
  const bridge = `brtb${uid}`;
  cleanups.push(() => run(['ip', 'link', 'del', bridge], { allowFail: true }));
  const list = oursConflist(`${tag}-burst`, bridge, '10.237.0.0/24', path.join(work, 'burst-data')) as { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
  const basePort = nextPort;
  nextPort += BURST;
  const conf = (prevResult?: unknown) => JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0], ...(prevResult ? { prevResult } : {}) });
  // what libcni hands portmap: its config, the published port, the bridge's
  // result (@PREV@: the launcher puts the bridge call's stdout there)
  const portConf = (i: number, prevResult: string) =>
    JSON.stringify({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[1], runtimeConfig: { portMappings: [{ hostPort: basePort + i, containerPort: 80, protocol: 'tcp' }] }, prevResult: '@@' }).replace('"@@"', prevResult);
  const env = (cmd: string, i: number) => ({ PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: cmd, CNI_CONTAINERID: `${tag}-b${i}`, CNI_NETNS: `/var/run/netns/${netnses[i]}`, CNI_IFNAME: 'eth0', CNI_PATH: inst.dir, ...inst.env });
  const bridgeBin = path.join(inst.dir, 'bridge');
  const portmapBin = path.join(inst.dir, 'portmap');
  // The daemon up and warm first (the shim starts it on a first call, and
  // calls made before it listens run standalone): a burst measures a running
  // node, not a cold start. STATUS is forwarded to the daemon, changes nothing.
  for (let i = 0; i < 50; i++) {
    const [s] = runChains([[{ binary: bridgeBin, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: 'STATUS', CNI_PATH: inst.dir, ...inst.env }, stdin: conf() }]]);
    if (s.status === 0 && servedByDaemon(s)) break;
    execFileSync('sleep', ['0.2']);
  }
  const t0 = process.hrtime.bigint();
  const add = runChains(netnses.map((_, i) => [
    { binary: bridgeBin, env: env('ADD', i), stdin: conf() },
    { binary: portmapBin, env: env('ADD', i), stdin: portConf(i, '@PREV@') },
  ]));
  const t1 = process.hrtime.bigint();
  const results: string[] = [];
  for (const c of add) if (c.step === 0 && c.status === 0) results[c.chain] = c.stdout.trim();
  const del = runChains(netnses.map((_, i) => [
    ...(results[i] ? [{ binary: portmapBin, env: env('DEL', i), stdin: portConf(i, results[i]) }] : []),
    { binary: bridgeBin, env: env('DEL', i), stdin: conf(results[i] ? JSON.parse(results[i]) : undefined) },
  ]));
  const t2 = process.hrtime.bigint();
  return { add, del, addWall: Number(t1 - t0) / 1e6, delWall: Number(t2 - t1) / 1e6 };
}

/** The shim's own peak (under 8 MB) when the daemon answered; a standalone call is a Node process of 40 MB and more. */
const servedByDaemon = (c: CallOutcome) => c.peakKb > 0 && c.peakKb < 8 * 1024;

function printBurst(b: ReturnType<typeof burst>): void {
  const ok = (xs: CallOutcome[]) => xs.filter((x) => x.status === 0).length;
  const slowest = (xs: CallOutcome[]) => Math.max(...xs.map((x) => x.ms));
  const pluginOf = (x: CallOutcome) => path.basename(x.binary);
  const byPlugin = (xs: CallOutcome[], p: string) => xs.filter((x) => pluginOf(x) === p).map((x) => x.ms);
  const phase = (xs: CallOutcome[]) =>
    ['bridge', 'portmap'].map((p) => `${p} median ${median(byPlugin(xs, p)).toFixed(0)} ms / slowest ${Math.max(...byPlugin(xs, p)).toFixed(0)} ms`).join(', ');
  console.log('');
  console.log(`${BURST} containers at once on one network, default install (bridge then portmap each, ${2 * BURST} calls per phase;`);
  console.log('  each call timed from its spawn to its exit, spawned as a Go runtime spawns plugins):');
  for (const [name, xs, wall] of [['ADD', b.add, b.addWall], ['DEL', b.del, b.delWall]] as const) {
    console.log(`  ${name}: ${ok(xs)}/${xs.length} answered ok, slowest call ${slowest(xs).toFixed(0)} ms, median ${median(xs.map((x) => x.ms)).toFixed(0)} ms, all done in ${wall.toFixed(0)} ms; ${xs.filter(servedByDaemon).length} served by the daemon`);
    console.log(`       ${phase(xs)}`);
    const failed = xs.find((x) => x.status !== 0);
    if (failed) console.log(`       first failure (${pluginOf(failed)}, status ${failed.status}): ${(failed.stdout + failed.stderr).trim().slice(0, 400)}`);
  }
  if (ok(b.add) !== b.add.length || ok(b.del) !== b.del.length) process.exitCode = 1;
}

// --------------------------------------------------------------------- main

async function main(): Promise<void> {
  sweepStale(PREFIX);
  const only = process.env.RUNTIME_ONLY?.split(',');
  const want = (k: string) => !only || only.includes(k);
  makeRootfs();
  const variants: Variant[] = [];
  // host-ns: where the shim sees the host's namespaces (default /proc/1/ns).
  // A sandbox may refuse to show PID 1's (EACCES here); this process is in
  // the machine's own, so the shim starts the daemon only for callers there.
  const oursDefault = defaultInstall(path.join(work, 'ours-default'), path.join(work, 'daemon.sock'), `/proc/${process.pid}/ns`);
  const oursAlone = path.join(work, 'ours-alone');
  install(oursAlone);
  const refDir = path.join(work, 'reference');
  linkReference(refDir);
  if (want('a')) variants.push(podmanVariant('a', 'podman, ours (default install)', { backend: 'cni', pluginDir: oursDefault.dir, env: oursDefault.env, conflist: oursConflist, daemonPeakKb: oursDefault.daemonPeakKb }, 0));
  if (want('b')) variants.push(podmanVariant('b', 'podman, ours standalone', { backend: 'cni', pluginDir: oursAlone, env: { CNI_TS_NO_DAEMON: '1' }, conflist: oursConflist }, 1));
  if (want('c')) variants.push(podmanVariant('c', 'podman, netavark', { backend: 'netavark' }, 2));
  if (want('d')) variants.push(podmanVariant('d', 'podman, reference plugins', { backend: 'cni', pluginDir: refDir, conflist: podmanDefaultConflist }, 3));
  let ctrOurs: (Variant & { install?: DefaultInstall }) | undefined;
  if (want('e') || want('f')) {
    const cd = startContainerd();
    importImage(cd, buildImage(work, rootfs, IMAGE), 'cni-ts-bench/busybox');
    if (want('e')) variants.push((ctrOurs = ctrVariant('e', 'containerd, ours (default install)', cd, { ours: true }, 4)));
    if (want('f')) variants.push(ctrVariant('f', 'containerd, reference plugins', cd, { ours: false }, 5));
  }
  cleanups.push(() => variants.forEach((v) => v.cleanup()));
  if (only?.length === 1 && only[0] === 'burst') {
    printBurst(burst(oursDefault));
    return;
  }

  const cold: Record<string, number> = {};
  const times: Record<string, number[]> = {};
  for (const v of variants) {
    cold[v.key] = v.once(-1);
    times[v.key] = [];
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(k + r) % variants.length];
      times[v.key].push(v.once(r));
    }
  }
  const memory: Record<string, { plugins: number; daemon: number }> = {};
  for (const v of variants) memory[v.key] = v.memory();

  const med = (k: string) => median(times[k]);
  const ratio = (a: string, b: string) => (times[a] && times[b] ? `${(med(a) / med(b)).toFixed(2)}x` : '-');
  const mb = (kb: number) => (kb ? (kb / 1024).toFixed(1) : '-');
  console.log(`Per container, wall of \`run --rm\` with a published port (podman) / with --cni (ctr), median of ${ROUNDS} interleaved rounds (cold: the first run):`);
  console.log(`ours' daemon: ${oursDefault.how}`);
  const head = ['runtime, network stack', 'median ms', 'cold ms', 'plugin peak MB', 'daemon peak MB'];
  const rows = variants.map((v) => [v.label, med(v.key).toFixed(0), cold[v.key].toFixed(0), mb(memory[v.key].plugins), mb(memory[v.key].daemon)]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (cols: string[]) => cols.map((c, i) => c.padEnd(widths[i])).join('  ');
  console.log([fmt(head), fmt(widths.map((w) => '-'.repeat(w))), ...rows.map(fmt)].join('\n'));
  console.log('');
  console.log(`podman: ours default / netavark ${ratio('a', 'c')} (target <= 0.8x), ours default / reference ${ratio('a', 'd')} (target <= 0.7x)`);
  console.log(`podman: ours standalone / netavark ${ratio('b', 'c')}, ours standalone / reference ${ratio('b', 'd')}`);
  console.log(`containerd: ours default / reference ${ratio('e', 'f')}`);

  if (BURST > 0 && want('a')) printBurst(burst(oursDefault));
  if (ctrOurs?.install) console.log(`\n(containerd, ours: daemon ${ctrOurs.install.how}, peak ${mb(ctrOurs.install.daemonPeakKb())} MB)`);
}

main()
  .catch((e: unknown) => {
    console.error(e instanceof Error ? e.stack : e);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const c of cleanups.reverse()) {
      try {
        c();
      } catch (e) {
        console.error(`cleanup: ${e instanceof Error ? e.message : e}`);
      }
    }
    fs.rmSync(work, { recursive: true, force: true });
  });
