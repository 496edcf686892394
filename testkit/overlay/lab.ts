/**
 * A simulated cluster for the overlay's tests: namespaces only, nothing
 * reaches the machine's own network.
 *
 *   <id>u   the underlay: a bridge "ub" 192.168.200.254/24; etcd listens there
 *   <id>h0..  hosts: "u0" on the underlay, 192.168.200.(i+1)/24, each with its agent
 *           (IPv6 underlay, `{ underlay6: true }`: also fd00:200::(i+1)/64, the VTEP; etcd stays on IPv4)
 *   <id>x   "outside": 192.168.200.100/24 on the underlay, no route back to any
 *           container subnet, so a reply reaches a container only through NAT
 *   <id>cN  containers, made by the test
 *
 * The plugin and agents run from an esbuild bundle of runner.ts, entered
 * into their host's namespace (see runner.ts for why not `ip netns exec`).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, uniqueName } from '../exec';

export const UNDERLAY = '192.168.200';
export const ETCD_IP = `${UNDERLAY}.254`;
export const OUTSIDE_IP = `${UNDERLAY}.100`;
/** The hosts' IPv6 underlay addresses (ULA, only on the lab's own bridge) when the lab has one. */
export const UNDERLAY6 = 'fd00:200::';
export const ETCD = `${ETCD_IP}:2379`;

export interface PluginCall {
  status: number;
  json: any;
  stdout: string;
  stderr: string;
}

export class Lab {
  readonly id = uniqueName('ov');
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-overlay-'));
  readonly prefix = `/ovt-${this.id}`;
  readonly hosts: string[];
  readonly agents = new Map<number, ChildProcess>();
  private readonly containers: string[] = [];
  private etcd?: ChildProcess;
  private runner = '';

  /** `root`: the repository (in the VM, bundled guest code cannot find it from __dirname; it is the cwd there) */
  constructor(
    readonly hostCount: number,
    readonly root: string = ROOT,
    readonly opts: { underlay6?: boolean } = {},
  ) {
    this.hosts = Array.from({ length: hostCount }, (_, i) => `${this.id}h${i}`);
  }

  get underlay(): string {
    return `${this.id}u`;
  }
  get outside(): string {
    return `${this.id}x`;
  }
  nsPath(name: string): string {
    return `/var/run/netns/${name}`;
  }
  vtep(i: number): string {
    return this.opts.underlay6 ? `${UNDERLAY6}${i + 1}` : `${UNDERLAY}.${i + 1}`;
  }
  stateDir(i: number): string {
    return path.join(this.dir, `state-h${i}`);
  }
  /** each simulated host is its own machine: its own host ID file (shared/host-id.ts) */
  hostIdFile(i: number): string {
    return path.join(this.dir, `host-id-h${i}`);
  }

  async setUp(): Promise<void> {
    this.bundle();
    execFileSync('ip', ['netns', 'add', this.underlay]);
    this.in(this.underlay, 'ip', 'link', 'add', 'ub', 'type', 'bridge');
    this.in(this.underlay, 'ip', 'addr', 'add', `${ETCD_IP}/24`, 'dev', 'ub');
    this.in(this.underlay, 'ip', 'link', 'set', 'ub', 'up');
    this.in(this.underlay, 'ip', 'link', 'set', 'lo', 'up');
    const attach = (ns: string, ip: string, port: string) => {
      execFileSync('ip', ['netns', 'add', ns]);
      execFileSync('ip', ['link', 'add', 'u0', 'netns', ns, 'type', 'veth', 'peer', 'name', port, 'netns', this.underlay]);
      this.in(this.underlay, 'ip', 'link', 'set', port, 'master', 'ub', 'up');
      this.in(ns, 'ip', 'addr', 'add', `${ip}/24`, 'dev', 'u0');
      if (this.opts.underlay6 && ns !== this.outside) this.in(ns, 'ip', 'addr', 'add', `${this.vtep(this.hosts.indexOf(ns))}/64`, 'dev', 'u0', 'nodad');
      this.in(ns, 'ip', 'link', 'set', 'u0', 'up');
      this.in(ns, 'ip', 'link', 'set', 'lo', 'up');
    };
    this.hosts.forEach((h, i) => attach(h, `${UNDERLAY}.${i + 1}`, `p${i}`));
    attach(this.outside, OUTSIDE_IP, 'px');
    await this.startEtcd();
  }

  /** Bundles runner.ts; etcd3 stays external and resolves through NODE_PATH. */
  private bundle(): void {
    this.runner = path.join(this.dir, 'runner.js');
    execFileSync(
      path.join(this.root, 'node_modules/.bin/esbuild'),
      [path.join(this.root, 'testkit/overlay/runner.ts'), '--bundle', '--platform=node', '--target=node20', '--format=cjs', '--log-level=warning', `--outfile=${this.runner}`, '--external:etcd3'],
      { cwd: this.root },
    );
  }

  private env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      NODE_PATH: path.join(this.root, 'node_modules'),
      NETLINK_TS_NATIVE: path.join(this.root, 'shared/netlink/native/build/Release/netlink_native.node'),
      ...extra,
    };
  }

  in(ns: string, ...cmd: string[]): string {
    return execFileSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8' });
  }

  async startEtcd(): Promise<void> {
    const data = path.join(this.dir, 'etcd');
    const log = fs.openSync(path.join(this.dir, 'etcd.log'), 'a');
    const url = `http://${ETCD_IP}:2379`;
    const peer = `http://${ETCD_IP}:2380`;
    this.etcd = spawn(
      'ip',
      ['netns', 'exec', this.underlay, 'etcd', '--name', 'default', '--data-dir', data, '--listen-client-urls', url, '--advertise-client-urls', url, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `default=${peer}`],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    for (let i = 0; i < 200; i++) {
      const r = spawnSync('ip', ['netns', 'exec', this.underlay, 'busybox', 'wget', '-q', '-O', '-', `${url}/health`], { encoding: 'utf8' });
      if (r.status === 0 && r.stdout.includes('"health":"true"')) return;
      await sleep(50);
    }
    throw new Error(`etcd did not start:\n${fs.readFileSync(path.join(this.dir, 'etcd.log'), 'utf8').slice(-1500)}`);
  }

  async stopEtcd(): Promise<void> {
    const e = this.etcd;
    this.etcd = undefined;
    if (!e || e.exitCode !== null) return;
    const gone = new Promise((r) => e.once('exit', r));
    e.kill('SIGKILL');
    await gone;
  }

  startAgent(i: number, extra: string[] = []): ChildProcess {
    const args = [this.runner, this.nsPath(this.hosts[i]), 'agent', '--node', this.hosts[i], '--vtep', this.vtep(i), '--etcd', ETCD, '--prefix', this.prefix, '--state-dir', this.stateDir(i), '--host-id-file', this.hostIdFile(i), '--liveness-dir', `${this.stateDir(i)}/liveness`, '--ttl', '3', '--resync-ms', '1000', '--timeout-ms', '1000', ...extra];
    const log = fs.openSync(path.join(this.dir, `agent-h${i}.log`), 'a');
    const child = spawn(process.execPath, args, { env: this.env(), stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.agents.set(i, child);
    return child;
  }

  /** Runs the agent binary to completion (leave, or a start expected to fail). */
  agentOnce(i: number, args: string[]): { status: number; stderr: string } {
    const r = spawnSync(process.execPath, [this.runner, this.nsPath(this.hosts[i]), 'agent', ...args], { env: this.env(), encoding: 'utf8', timeout: 60_000 });
    return { status: r.status ?? -1, stderr: r.stderr };
  }

  async killAgent(i: number): Promise<void> {
    const a = this.agents.get(i);
    this.agents.delete(i);
    if (!a || a.exitCode !== null) return;
    const gone = new Promise((r) => a.once('exit', r));
    a.kill('SIGKILL');
    await gone;
  }

  /** Host i's resolver (`cni-ts dns --dir DIR`), run as a systemd unit would; the plugin signals it after each change. */
  startResolver(i: number, dir: string): ChildProcess {
    const log = fs.openSync(path.join(this.dir, `dns-h${i}.log`), 'a');
    const child = spawn(process.execPath, [this.runner, this.nsPath(this.hosts[i]), 'dns', '--dir', dir], { env: this.env(), stdio: ['ignore', log, log] });
    fs.closeSync(log);
    return child;
  }

  agentLog(i: number): string {
    const f = path.join(this.dir, `agent-h${i}.log`);
    return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
  }

  addContainer(): string {
    const name = `${this.id}c${this.containers.length}`;
    execFileSync('ip', ['netns', 'add', name]);
    this.in(name, 'ip', 'link', 'set', 'lo', 'up');
    this.containers.push(name);
    return name;
  }

  conf(i: number, network: string, subnet: string, extra: Record<string, unknown> = {}, ipamExtra: Record<string, unknown> = {}): object {
    return {
      cniVersion: '1.1.0',
      name: network,
      type: 'overlay',
      nodeName: this.hosts[i],
      stateDir: this.stateDir(i),
      hostIdFile: this.hostIdFile(i),
      etcd: { endpoints: [ETCD], keyPrefix: this.prefix, requestTimeoutMs: 1500 },
      ...extra,
      ipam: {
        type: 'cluster-ipam',
        store: 'etcd',
        subnet,
        etcd: { endpoints: [ETCD], keyPrefix: `${this.prefix}-ipam`, requestTimeoutMs: 1500, nodeName: this.hosts[i], hostId: this.hosts[i], blockSize: 28 },
        ...ipamExtra,
      },
    };
  }

  /**
   * An overlay example conflist's plugin as a user copies it, pointed at this
   * lab for host i: its etcd, node names, state, host ID and key prefixes;
   * everything else as the example has it, then `extra`.
   */
  exampleConf(i: number, file: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    const list = JSON.parse(fs.readFileSync(file, 'utf8')) as { cniVersion: string; name: string; plugins: Record<string, any>[] };
    const p = list.plugins[0]!;
    const lb = this.conf(i, list.name, p.subnet ?? p.subnets[0]) as { nodeName: string; stateDir: string; hostIdFile: string; etcd: { endpoints: string[] }; ipam: { etcd: { nodeName: string; hostId: string } } };
    return {
      ...p,
      cniVersion: list.cniVersion,
      name: list.name,
      nodeName: lb.nodeName,
      stateDir: lb.stateDir,
      hostIdFile: lb.hostIdFile,
      etcd: { ...p.etcd, endpoints: lb.etcd.endpoints, keyPrefix: this.prefix },
      ipam: { ...p.ipam, etcd: { ...p.ipam.etcd, endpoints: lb.etcd.endpoints, keyPrefix: `${this.prefix}-ex`, nodeName: lb.ipam.etcd.nodeName, hostId: lb.ipam.etcd.hostId } },
      ...extra,
    };
  }

  plugin(i: number, command: string, container: string, conf: object, ifname = 'eth0', netns = this.nsPath(container)): PluginCall {
    const r = spawnSync(process.execPath, [this.runner, this.nsPath(this.hosts[i]), 'plugin'], {
      env: this.env({ CNI_COMMAND: command, CNI_CONTAINERID: container, CNI_NETNS: netns, CNI_IFNAME: ifname, CNI_PATH: '/nonexistent' }),
      input: JSON.stringify(conf),
      encoding: 'utf8',
      timeout: 90_000,
    });
    let json: any;
    try {
      json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
    } catch {
      json = undefined;
    }
    return { status: r.status ?? -1, json, stdout: r.stdout, stderr: r.stderr };
  }

  snapshot(): { hosts: Array<{ name: string; vtep: string }>; endpoints: Array<{ network: string; containerId: string; ip: string; mac: string; host: string }>; networks: Array<{ name: string; vni: number }> } {
    const out = execFileSync(process.execPath, [this.runner, this.nsPath(this.hosts[0]), 'snapshot', ETCD, this.prefix], { env: this.env(), encoding: 'utf8', timeout: 60_000 });
    return JSON.parse(out);
  }

  /** One etcd key's value, undefined when absent. */
  kvGet(key: string): string | undefined {
    const out = execFileSync(process.execPath, [this.runner, this.nsPath(this.hosts[0]), 'kv-get', ETCD, key], { env: this.env(), encoding: 'utf8', timeout: 60_000 });
    return out === '' ? undefined : out;
  }

  /** Deletes one control-plane key (to simulate a lost registration). */
  kvDelete(key: string): void {
    execFileSync(process.execPath, [this.runner, this.nsPath(this.hosts[0]), 'kv-delete', ETCD, key], { env: this.env(), encoding: 'utf8', timeout: 60_000 });
  }

  /** The remote MACs host i's VXLAN device of `vni` forwards (bridge fdb, looked at with nsenter). */
  fdbMacs(i: number, vni: number): string[] {
    const ns = path.join(this.stateDir(i), 'netns', `ov-${vni}`);
    if (!fs.existsSync(ns)) return [];
    const r = spawnSync('nsenter', [`--net=${ns}`, 'bridge', '-j', 'fdb', 'show', 'dev', `vx-${vni}`], { encoding: 'utf8' });
    if (r.status !== 0) return [];
    return (JSON.parse(r.stdout || '[]') as Array<{ mac: string; dst?: string }>).filter((e) => e.dst).map((e) => e.mac).sort();
  }

  ping(from: string, to: string, count = 1): boolean {
    return spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', String(count), '-W', '2', to], { encoding: 'utf8' }).status === 0;
  }

  async tearDown(): Promise<void> {
    for (const i of [...this.agents.keys()]) await this.killAgent(i).catch(() => undefined);
    await this.stopEtcd().catch(() => undefined);
    // the overlay namespaces are bind mounts under our state dirs
    for (let i = 0; i < this.hostCount; i++) {
      const dir = path.join(this.stateDir(i), 'netns');
      if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) spawnSync('umount', ['-l', path.join(dir, f)]);
    }
    for (const ns of [...this.containers, ...this.hosts, this.outside, this.underlay]) spawnSync('ip', ['netns', 'del', ns]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until fn() is true or `limitMs` passes; a bound on waiting, not a timing assertion. */
export async function eventually(fn: () => boolean, limitMs = 15_000): Promise<boolean> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    if (fn()) return true;
    await sleep(100);
  }
  return fn();
}
