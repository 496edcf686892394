/**
 * The kernel test bench for bin/bridge (not a test file itself).
 *
 * A private network namespace plays the runtime's host: the plugin runs in
 * it through `nsenter --net=`, so its bridges, host veth ends, nftables
 * table and sysctls (ip_forward) never touch the machine's real host
 * namespace, and nothing the tests route can leave it. Around it: container
 * namespaces, "outside" namespaces routed through the host, and the local
 * IPAM store in a temp dataDir. Names carry a random suffix; cleanup()
 * removes every namespace (and with them every link and nft table), the
 * dataDir and the plugin's lock files.
 *
 * Tests change state only through the plugin; `ip`, `bridge`, `nft` and
 * busybox ping here build fixtures and look.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { hostVethName } from '../../../plugins/bridge/main';
import { type TestDaemon, startDaemon } from '../../../testkit/daemon';

export const ROOT = path.resolve(__dirname, '../../..');
/** what the lab installs and runs: bin/bridge from build.sh, or another build named by CNI_TS_TEST_BRIDGE */
export const BRIDGE_BIN = process.env.CNI_TS_TEST_BRIDGE ?? path.join(ROOT, 'bin/bridge');
export const VERSIONS = ['0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const TABLE = 'cni_ts_bridge';
const LOCK_DIR = '/run/cni-ts';

export type Command = 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS';

export interface Outcome {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed, undefined when empty */
  json: any;
}

export interface Container {
  /** netns name */
  ns: string;
  /** netns path, the runtime's CNI_NETNS */
  path: string;
  /** CNI_CONTAINERID */
  id: string;
}

export interface Network {
  name: string;
  bridge: string;
  /** "10.X.Y.0/24" */
  subnet: string;
  /** "10.X.Y" */
  prefix: string;
  gateway: string;
  /** a unique IPv6 /64 for dual-stack networks */
  subnet6: string;
  gateway6: string;
  /** the plugin configuration for one spec version; `extra` is merged over it */
  conf(version: string, extra?: Record<string, unknown>): Record<string, any>;
}

export interface Call {
  command: Command;
  conf: object;
  container?: Container;
  ifname?: string;
  /** replaces the container's path as CNI_NETNS ('' = none) */
  netns?: string;
  env?: Record<string, string>;
}

export interface Outside {
  ns: string;
  /** the host's address on the link to it */
  hostIp: string;
  /** its own address */
  ip: string;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function parse(stdout: string): any {
  const t = stdout.trim();
  if (!t) return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return { unparsable: t };
  }
}

export class Lab {
  readonly id = randomBytes(3).toString('hex');
  readonly host = `tbr-${this.id}-h`;
  readonly hostPath = `/var/run/netns/${this.host}`;
  /** the lab's temp directory: the installed plugin (bin/) and the IPAM store (ipam/) */
  readonly dir: string;
  readonly dataDir: string;
  /** the plugin as the lab runs it: a copy of bin/bridge, like a runtime's /opt/cni/bin/bridge */
  readonly binary: string;
  /** first of the second octets this lab's subnets use: 10.<octet + n / 256>.<n % 256>.0/24 */
  private readonly octet = 100 + randomInt(100);
  private seq = 0;
  private subnets = 0;
  private readonly namespaces: string[] = [];
  private readonly bridges: string[] = [];
  /** the lab's `cni-ts daemon`, when calls go through one (CNI_TS_TEST_DAEMON=1) */
  private daemon?: TestDaemon;

  constructor(opts: { daemon?: boolean } = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-bridge-test-'));
    this.dataDir = path.join(this.dir, 'ipam');
    this.binary = path.join(this.dir, 'bin', 'bridge');
    this.install();
    this.addNs(this.host);
    this.ip(this.host, 'link', 'set', 'lo', 'up');
    if (opts.daemon ?? process.env.CNI_TS_TEST_DAEMON === '1') this.startLabDaemon();
  }

  /**
   * Starts the lab's own `cni-ts daemon` in the lab's host namespace (it
   * serves only callers in its namespace); every call then goes shim →
   * daemon, and the log has a line per call served.
   */
  private startLabDaemon(): void {
    this.daemon = startDaemon({ binDir: path.dirname(this.binary), socket: path.join(this.dir, 'daemon.sock'), netns: this.hostPath });
  }

  /** The daemon's log (empty without a daemon). */
  daemonLog(): string {
    return this.daemon?.log() ?? '';
  }

  get usesDaemon(): boolean {
    return this.daemon !== undefined;
  }

  /**
   * Copies bin/bridge (the shim) and the cni-ts executable it runs into the
   * lab, as a runtime's /opt/cni/bin holds them. Other work in the same tree
   * rebuilds bin/ at any time; a running test must not exec a half-written
   * file, so the copy is checked (VERSION answers in JSON) and taken again
   * if it caught a rebuild.
   */
  private install(): void {
    fs.mkdirSync(path.dirname(this.binary), { recursive: true });
    const executable = path.join(path.dirname(BRIDGE_BIN), 'cni-ts');
    for (let attempt = 0; ; attempt++) {
      fs.copyFileSync(BRIDGE_BIN, this.binary);
      if (fs.existsSync(executable)) fs.copyFileSync(executable, path.join(path.dirname(this.binary), 'cni-ts'));
      const r = spawnSync(this.binary, [], { env: { CNI_COMMAND: 'VERSION', CNI_TS_NO_DAEMON: '1' }, input: '', encoding: 'utf8' });
      try {
        if (r.status === 0 && Array.isArray(JSON.parse(r.stdout).supportedVersions)) return;
      } catch {
        // not JSON: a partial copy
      }
      if (attempt >= 20) throw new Error(`${BRIDGE_BIN} does not answer VERSION: ${r.stdout}${r.stderr}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
    }
  }

  private addNs(name: string): string {
    sh('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    return `/var/run/netns/${name}`;
  }

  /** A fresh container namespace. */
  container(): Container {
    const n = ++this.seq;
    const ns = `tbr-${this.id}-c${n}`;
    return { ns, path: this.addNs(ns), id: `ctr-${this.id}-${n}` };
  }

  /** ip netns del NAME: the runtime tearing a sandbox down (its veth pair dies with it) */
  deleteNamespace(ns: string): void {
    sh('ip', ['netns', 'del', ns]);
  }

  /** The next unused "10.X.Y" of this lab. */
  private nextPrefix(): string {
    const n = ++this.subnets;
    return `10.${this.octet + (n >> 8)}.${n & 255}`;
  }

  /** A network no other test uses: its own name, bridge and /24 (and /64). */
  network(defaults: Record<string, unknown> = {}): Network {
    const n = ++this.seq;
    const name = `tbr-${this.id}-n${n}`;
    const bridge = `tb${this.id}n${n}`;
    this.bridges.push(bridge);
    const prefix = this.nextPrefix();
    // The hextet is written without leading zeros, as results print it (fd03:332::, not fd03:0332::).
    const subnet6 = `fd${this.id.slice(0, 2)}:${parseInt(this.id.slice(2), 16).toString(16)}:${n.toString(16)}::/64`;
    const gateway6 = subnet6.replace('::/64', '::1');
    const dataDir = this.dataDir;
    return {
      name,
      bridge,
      subnet: `${prefix}.0/24`,
      prefix,
      gateway: `${prefix}.1`,
      subnet6,
      gateway6,
      conf(version: string, extra: Record<string, unknown> = {}) {
        return {
          cniVersion: version,
          name,
          type: 'bridge',
          bridge,
          isDefaultGateway: true,
          ipam: { type: 'cluster-ipam', ranges: [[{ subnet: `${prefix}.0/24` }]], dataDir },
          ...defaults,
          ...extra,
        };
      },
    };
  }

  /** Remember a bridge name made outside network() so cleanup removes its lock file. */
  track(bridge: string): void {
    this.bridges.push(bridge);
  }

  /**
   * A namespace on a routed link from the host (H: 10.X.Y.1/24, it:
   * .2/24). `routeBack`: give it a route to 10.0.0.0/8 through the host,
   * so container traffic can be answered without NAT.
   */
  outside(routeBack: boolean): Outside {
    const n = ++this.seq;
    const ns = `tbr-${this.id}-o${n}`;
    this.addNs(ns);
    const hostSide = `to${this.id}x${n}`;
    const prefix = this.nextPrefix();
    const hostIp = `${prefix}.1`;
    const ip = `${prefix}.2`;
    this.ip(this.host, 'link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    this.ip(this.host, 'addr', 'add', `${hostIp}/24`, 'dev', hostSide);
    this.ip(this.host, 'link', 'set', hostSide, 'up');
    this.ip(ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
    this.ip(ns, 'link', 'set', 'eth0', 'up');
    this.ip(ns, 'link', 'set', 'lo', 'up');
    if (routeBack) this.ip(ns, 'route', 'add', '10.0.0.0/8', 'via', hostIp);
    return { ns, hostIp, ip };
  }

  // ---- running the plugin ---------------------------------------------------

  /** The environment a runtime gives the plugin (libcni sets every variable, empty when unused). */
  env(call: Call): Record<string, string> {
    const base: Record<string, string> = {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
      CNI_COMMAND: call.command,
      CNI_PATH: path.dirname(this.binary),
    };
    if (call.command !== 'GC' && call.command !== 'STATUS') {
      base.CNI_CONTAINERID = call.container?.id ?? '';
      base.CNI_NETNS = call.netns ?? call.container?.path ?? '';
      base.CNI_IFNAME = call.ifname ?? 'eth0';
      base.CNI_ARGS = '';
    }
    if (this.daemon) base.CNI_TS_DAEMON_SOCKET = this.daemon.socket;
    return { ...base, ...call.env };
  }

  private argv(): string[] {
    return [`--net=${this.hostPath}`, '--', this.binary];
  }

  /** One plugin call, run to completion inside the lab's host namespace. */
  run(call: Call): Outcome {
    const r = spawnSync('nsenter', this.argv(), { env: this.env(call), input: JSON.stringify(call.conf), encoding: 'utf8' });
    return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', json: parse(r.stdout ?? '') };
  }

  /** One plugin call as a child process, for concurrency and kill -9 (nsenter execs the plugin: same pid). */
  start(call: Call): { child: ChildProcess; done: Promise<Outcome> } {
    const child = spawn('nsenter', this.argv(), { env: this.env(call), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    // a child killed before it read stdin closes the pipe under us
    child.stdin!.on('error', () => {});
    child.stdin!.end(JSON.stringify(call.conf));
    const done = new Promise<Outcome>((resolve) => {
      child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr, json: parse(stdout) }));
    });
    return { child, done };
  }

  // ---- fixtures and looking -------------------------------------------------

  /** ip -n NS ARGS (fixtures) */
  ip(ns: string, ...args: string[]): string {
    return sh('ip', ['-n', ns, ...args]);
  }

  /** ip -n NS -j ARGS, parsed */
  ipj(ns: string, ...args: string[]): any[] {
    const out = sh('ip', ['-n', ns, '-j', ...args]);
    return out.trim() ? JSON.parse(out) : [];
  }

  /** ip -d link show dev NAME in NS, undefined when absent */
  link(ns: string, name: string): any | undefined {
    return this.ipj(ns, '-d', 'link', 'show').find((l) => l.ifname === name);
  }

  /** every link of NS (names) */
  linkNames(ns: string): string[] {
    return this.ipj(ns, 'link', 'show').map((l) => l.ifname);
  }

  /** the host veths of these containers (eth0) that exist in the lab's host namespace */
  hostVeths(containers: Container[]): string[] {
    const names = new Set(this.linkNames(this.host));
    return containers.map((c) => hostVethName(c.id, 'eth0')).filter((n) => names.has(n));
  }

  /** ports of a bridge in the host namespace ([] when there is no such bridge) */
  ports(bridge: string): string[] {
    if (!this.linkNames(this.host).includes(bridge)) return [];
    return this.ipj(this.host, 'link', 'show', 'master', bridge).map((l) => l.ifname);
  }

  /** "addr/prefix" of every global address on dev in NS */
  addrs(ns: string, dev: string): string[] {
    const [l] = this.ipj(ns, 'addr', 'show', 'dev', dev);
    return (l?.addr_info ?? []).filter((a: any) => a.scope === 'global').map((a: any) => `${a.local}/${a.prefixlen}`);
  }

  /** ip route show (both families) in NS */
  routes(ns: string): any[] {
    return [...this.ipj(ns, '-4', 'route', 'show'), ...this.ipj(ns, '-6', 'route', 'show')];
  }

  /** bridge -d -j link show dev NAME in the host namespace */
  bridgePort(name: string): any {
    const out = sh('bridge', ['-n', this.host, '-d', '-j', 'link', 'show', 'dev', name]);
    return JSON.parse(out)[0];
  }

  sysctl(ns: string, key: string): string {
    return sh('ip', ['netns', 'exec', ns, 'sysctl', '-n', key]).trim();
  }

  setSysctl(ns: string, key: string, value: string): void {
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`]);
  }

  /** `nft -j list table inet cni_ts_bridge` in the host namespace, parsed; undefined when there is no table */
  nftTable(): any[] | undefined {
    const r = spawnSync('ip', ['netns', 'exec', this.host, 'nft', '-j', 'list', 'table', 'inet', TABLE], { encoding: 'utf8' });
    if (r.status !== 0) return undefined;
    return JSON.parse(r.stdout).nftables;
  }

  /** an nft script run in the host namespace (fixtures that break the plugin's rules on purpose) */
  nftScript(script: string): void {
    execFileSync('ip', ['netns', 'exec', this.host, 'nft', '-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
  }

  /**
   * What the table holds for one network: its chains (names), the set/map
   * elements keyed by its bridge, and the text of its rules.
   */
  networkRules(bridge: string): { chains: string[]; elements: string[]; rules: any[] } {
    const items = this.nftTable() ?? [];
    const chains = items.filter((i) => i.chain && i.chain.name.startsWith(`net-${bridge}-`)).map((i) => i.chain.name);
    const elements: string[] = [];
    for (const i of items) {
      const s = i.set ?? i.map;
      for (const e of s?.elem ?? []) {
        const key = Array.isArray(e) ? e[0] : e;
        if (key === bridge) elements.push(s.name);
      }
    }
    const rules = items.filter((i) => i.rule && i.rule.chain.startsWith(`net-${bridge}-`)).map((i) => i.rule);
    return { chains, elements, rules };
  }

  /** addresses allocated in the network's local store (file names other than lock, last_reserved_ip.* and owner links) */
  allocations(network: string): string[] {
    const dir = path.join(this.dataDir, network);
    if (!fs.existsSync(dir)) return [];
    return fs.readdirSync(dir).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip.') && !f.startsWith('owner@')).sort();
  }

  /** every file in the network's store directory */
  storeFiles(network: string): string[] {
    const dir = path.join(this.dataDir, network);
    return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
  }

  /** One ICMP echo from NS to ip; true when answered. */
  pingOnce(ns: string, ip: string): boolean {
    const family = ip.includes(':') ? '-6' : '-4';
    return spawnSync('ip', ['netns', 'exec', ns, 'busybox', 'ping', family, '-c1', '-W1', ip], { stdio: 'ignore' }).status === 0;
  }

  /**
   * Reachability, asserted positively: up to three echoes, because the first
   * may be spent on neighbour discovery. A negative answer is the same
   * three tries all failing.
   */
  reachable(ns: string, ip: string): boolean {
    for (let i = 0; i < 3; i++) if (this.pingOnce(ns, ip)) return true;
    return false;
  }

  /** Processes (other than ours) still running inside the lab's host namespace: the plugin and any nft it started. */
  processesInHost(): number[] {
    const want = fs.statSync(this.hostPath).ino;
    const pids: number[] = [];
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d) || Number(d) === this.daemon?.pid) continue;
      try {
        const link = fs.readlinkSync(`/proc/${d}/ns/net`);
        if (link === `net:[${want}]`) pids.push(Number(d));
      } catch {
        // exited meanwhile, or a kernel thread
      }
    }
    return pids;
  }

  /** Removes every namespace (with their links and nft tables), the store and the lock files. Never throws. */
  cleanup(): void {
    this.daemon?.stop();
    for (const ns of this.namespaces.reverse()) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    fs.rmSync(this.dir, { recursive: true, force: true });
    for (const b of this.bridges) fs.rmSync(path.join(LOCK_DIR, `bridge-${b}.lock`), { force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until fn() is true or the time is up; returns the last answer (waits for the kernel, never times a test). */
export async function eventually(fn: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (fn()) return true;
    if (Date.now() > end) return false;
    await sleep(20);
  }
}
