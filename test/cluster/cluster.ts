/**
 * The chaos test's cluster: the overlay lab's simulated hosts (namespaces on
 * one underlay, etcd on it; testkit/overlay/lab.ts), but every agent and
 * every plugin call is the packaged executable from bin/, entered into its
 * host's namespace with `nsenter --net=` (which, unlike `ip netns exec`,
 * keeps the mount namespace, so the namespaces the plugin pins with bind
 * mounts outlive the call). The executable is copied once at the start, so
 * a rebuild of bin/ during a run cannot swap it under the test. Plugins run
 * as `cni-ts overlay`, what the shim execs: the shim itself drops LD_* from
 * the environment (as it must), which would keep the clock below from
 * reaching the clock host's plugin calls.
 *
 * One host may have a clock of its own: its agent and its plugin calls run
 * with libfaketime preloaded, reading their offset from a file
 * (FAKETIME_TIMESTAMP_FILE) that the test rewrites to make that host's wall
 * clock jump mid-run. Only the wall clock moves
 * (FAKETIME_DONT_FAKE_MONOTONIC): a real host's clock step (NTP, a wrong
 * RTC) does not move CLOCK_MONOTONIC either, and libuv's timers run on it.
 *
 * Also here: asynchronous plugin calls (the hosts' ADD/DEL loops run at the
 * same time), a reader of etcd prefixes through etcd's JSON gateway from the
 * underlay namespace, the kernel entries of a host's VXLAN device, and a
 * steady ping whose losses are located in time.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BIN } from '../../testkit/exec';
import { ETCD_IP, type Lab, type PluginCall } from '../../testkit/overlay/lab';

const LIBFAKETIME_CANDIDATES = [
  '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1',
  '/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1',
  '/usr/lib/faketime/libfaketimeMT.so.1',
];

/** libfaketime's multi-threaded variant (Node runs threads), from the Debian package `libfaketime`. */
export function libfaketime(): string | undefined {
  return LIBFAKETIME_CANDIDATES.find((f) => fs.existsSync(f));
}

export class Cluster {
  /** plugin calls under way, so a run cut short can end them before the namespaces go */
  private readonly calls = new Set<ChildProcess>();
  private stopped = false;

  constructor(
    readonly lab: Lab,
    /** the host whose wall clock the test moves */
    readonly clockHost: number,
  ) {
    if (!fs.existsSync(path.join(BIN, 'cni-ts'))) throw new Error(`${BIN}/cni-ts missing: run ./build.sh first`);
    if (!libfaketime()) throw new Error('libfaketime is missing: apt-get install faketime (scripts/deps.sh installs it)');
    // under the build lock, shared: never a half-written executable
    const cp = spawnSync('flock', ['-s', '/tmp/cni-ts-build.lock', 'cp', path.join(BIN, 'cni-ts'), this.exe], { encoding: 'utf8', timeout: 600_000 });
    if (cp.status !== 0) throw new Error(`copying ${BIN}/cni-ts failed: ${cp.stderr}`);
    fs.writeFileSync(this.clockFile, '+0\n');
  }

  /** this run's copy of bin/cni-ts */
  get exe(): string {
    return path.join(this.lab.dir, 'cni-ts');
  }

  get clockFile(): string {
    return path.join(this.lab.dir, `clock-h${this.clockHost}`);
  }

  /** Moves the clock host's wall clock to `offset` from the real one (libfaketime syntax: "+2h", "-30m"). */
  setClockOffset(offset: string): void {
    // written whole, then renamed: libfaketime rereads the file every second
    const tmp = `${this.clockFile}.tmp`;
    fs.writeFileSync(tmp, `${offset}\n`);
    fs.renameSync(tmp, this.clockFile);
  }

  /** The environment of host i's processes: a clean one, plus the clock for the clock host. */
  env(i: number, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...extra };
    if (i === this.clockHost) {
      Object.assign(env, {
        LD_PRELOAD: libfaketime()!,
        FAKETIME_TIMESTAMP_FILE: this.clockFile,
        FAKETIME_CACHE_DURATION: '1',
        FAKETIME_DONT_FAKE_MONOTONIC: '1',
      });
    }
    return env;
  }

  /**
   * `cni-ts overlay-agent` on host i, from bin/. nsenter execs it, so the
   * child's pid is the agent's and lab.killAgent(i) SIGKILLs the agent
   * itself. The production TTL (10 s): a SIGKILLed agent restarted at once
   * must not let its host's key expire.
   */
  startAgent(i: number): ChildProcess {
    if (this.stopped) throw new Error('the cluster is being torn down');
    const lab = this.lab;
    const args = ['overlay-agent', '--node', lab.hosts[i], '--vtep', lab.vtep(i), '--etcd', `${ETCD_IP}:2379`, '--prefix', lab.prefix, '--state-dir', lab.stateDir(i), '--host-id-file', lab.hostIdFile(i), '--ttl', '10', '--resync-ms', '1000', '--timeout-ms', '2000'];
    const log = fs.openSync(this.agentLogFile(i), 'a');
    const child = spawn('nsenter', [`--net=${lab.nsPath(lab.hosts[i])}`, '--', this.exe, ...args], { env: this.env(i), stdio: ['ignore', log, log] });
    fs.closeSync(log);
    lab.agents.set(i, child);
    return child;
  }

  agentLogFile(i: number): string {
    return path.join(this.lab.dir, `agent-h${i}.log`);
  }

  agentLog(i: number): string {
    const f = this.agentLogFile(i);
    return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
  }

  /** `cni-ts overlay` in host i's namespace; never rejects. */
  plugin(i: number, command: string, containerId: string, conf: object, netns = this.lab.nsPath(containerId), timeoutMs = 60_000): Promise<PluginCall> {
    const env = this.env(i, { CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' });
    if (this.stopped) return Promise.resolve({ status: -1, json: undefined, stdout: '', stderr: 'the cluster is being torn down' });
    return new Promise((resolve) => {
      const child = spawn('nsenter', [`--net=${this.lab.nsPath(this.lab.hosts[i])}`, '--', this.exe, 'overlay'], { env, stdio: ['pipe', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
      this.calls.add(child);
      child.once('close', () => this.calls.delete(child));
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d.toString()));
      child.stderr!.on('data', (d) => (stderr += d.toString()));
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(JSON.stringify(conf));
      child.once('error', (e) => resolve({ status: -1, json: undefined, stdout, stderr: `${stderr}${e.message}` }));
      child.once('close', (code, signal) => {
        let json: any;
        try {
          json = stdout.trim() ? JSON.parse(stdout) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: code ?? -1, json, stdout, stderr: signal ? `${stderr}killed by ${signal}` : stderr });
      });
    });
  }

  /** No new agent or call from now on; the calls under way are killed (their pids are ours). */
  stop(): void {
    this.stopped = true;
    for (const c of this.calls) c.kill('SIGKILL');
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** Every key under `prefix` with its value and create revision, read through etcd's JSON gateway. */
  etcdRange(prefix: string): Array<{ key: string; value: string; createRevision: string }> {
    const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
    const end = Buffer.from(prefix);
    end[end.length - 1] = end[end.length - 1]! + 1;
    const body = JSON.stringify({ key: b64(prefix), range_end: b64(end) });
    const r = spawnSync('ip', ['netns', 'exec', this.lab.underlay, 'busybox', 'wget', '-q', '-O', '-', '--header', 'Content-Type: application/json', '--post-data', body, `http://${ETCD_IP}:2379/v3/kv/range`], { encoding: 'utf8', timeout: 20_000 });
    if (r.status !== 0) throw new Error(`etcd range ${prefix} failed: ${r.stderr}`);
    const kvs = (JSON.parse(r.stdout).kvs ?? []) as Array<{ key: string; value?: string; create_revision: string }>;
    return kvs.map((kv) => ({ key: Buffer.from(kv.key, 'base64').toString(), value: Buffer.from(kv.value ?? '', 'base64').toString(), createRevision: kv.create_revision }));
  }

  /**
   * The overlay control plane as etcd holds it (controlplane.ts's layout),
   * read through the gateway: no code of the tree under test runs to look.
   */
  controlPlane(): { hosts: Array<{ name: string; vtep: string }>; networks: Array<{ name: string; vni: number }>; endpoints: Array<{ network: string; containerId: string; ip: string; mac: string; host: string }> } {
    const read = <T>(what: string) => this.etcdRange(`${this.lab.prefix}/${what}/`).map((kv) => JSON.parse(kv.value) as T);
    return { hosts: read('hosts'), networks: read('networks'), endpoints: read('endpoints') };
  }

  /**
   * Host i's static entries for overlay `vni`: FDB (remote MAC -> VTEP) and
   * neighbours (remote IP -> MAC), looked at with `bridge`/`ip` in the
   * network's namespace. Empty when the host has no such namespace.
   */
  remoteEntries(i: number, vni: number): { fdb: Map<string, string[]>; neigh: Map<string, string> } {
    const ns = path.join(this.lab.stateDir(i), 'netns', `ov-${vni}`);
    const fdb = new Map<string, string[]>();
    const neigh = new Map<string, string>();
    if (!fs.existsSync(ns)) return { fdb, neigh };
    const look = (cmd: string[]) => {
      const r = spawnSync('nsenter', [`--net=${ns}`, ...cmd], { encoding: 'utf8' });
      return r.status === 0 && r.stdout.trim() ? JSON.parse(r.stdout) : [];
    };
    for (const e of look(['bridge', '-j', 'fdb', 'show', 'dev', `vx-${vni}`]) as Array<{ mac: string; dst?: string }>) {
      if (e.dst) fdb.set(e.mac, [...(fdb.get(e.mac) ?? []), e.dst]);
    }
    for (const e of look(['ip', '-j', 'neigh', 'show', 'dev', `vx-${vni}`]) as Array<{ dst: string; lladdr?: string; state?: string[] }>) {
      if (e.lladdr && (e.state ?? []).includes('PERMANENT')) neigh.set(e.dst, e.lladdr);
    }
    return { fdb, neigh };
  }

  /** The IPv4 addresses and MAC of a container's interface, as the kernel has them. */
  interfaceOf(container: string, ifname = 'eth0'): { ips: string[]; mac: string } | undefined {
    const r = spawnSync('ip', ['-n', container, '-j', 'addr', 'show', 'dev', ifname], { encoding: 'utf8' });
    if (r.status !== 0 || !r.stdout.trim()) return undefined;
    const link = JSON.parse(r.stdout)[0] as { address: string; addr_info: Array<{ family: string; local: string }> } | undefined;
    if (!link) return undefined;
    return { mac: link.address, ips: link.addr_info.filter((a) => a.family === 'inet').map((a) => a.local) };
  }
}

export interface PingReport {
  from: string;
  to: string;
  /** requests sent, from ping's own summary */
  sent: number;
  received: number;
  /** each lost sequence number with the (real) time it was sent */
  lost: Array<{ seq: number; at: number }>;
  /** requests sent and answered in each second since the ping's start (index = second) */
  perSecond: Array<{ sent: number; answered: number }>;
}

/**
 * A steady busybox ping (every 200 ms) from one container to an address.
 * A request's send time is its sequence number on ping's own schedule
 * (start + seq x the measured period), not the arrival of its reply in
 * this process: the test's synchronous looks at the kernel can hold this
 * process's event loop for seconds, and replies read late would otherwise
 * look bunched and mislocate a loss.
 */
export class SteadyPing {
  static readonly INTERVAL_S = 0.2;
  private readonly child: ChildProcess;
  private readonly replied = new Set<number>();
  private out = '';
  private buf = '';
  readonly startedAt = Date.now();
  private readonly exited: Promise<void>;

  constructor(
    readonly from: string,
    readonly to: string,
    /** a bound: the ping ends by itself after this many requests */
    maxCount: number,
  ) {
    this.child = spawn('nsenter', [`--net=/var/run/netns/${from}`, '--', 'busybox', 'ping', '-i', String(SteadyPing.INTERVAL_S), '-c', String(maxCount), to], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.once('close', () => r()));
    this.child.stdout!.on('data', (d: Buffer) => {
      this.out += d.toString();
      this.buf += d.toString();
      const lines = this.buf.split('\n');
      this.buf = lines.pop()!;
      for (const line of lines) {
        const m = /bytes from .*seq=(\d+)/.exec(line);
        if (m) this.replied.add(Number(m[1]));
      }
    });
  }

  /** Distinct requests answered so far. */
  replies(): number {
    return this.replied.size;
  }

  /** SIGINT (ping prints its summary), then the report. */
  async stop(): Promise<PingReport> {
    const stoppedAt = Date.now();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGINT');
    await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5000))]);
    this.kill();
    const m = /(\d+) packets transmitted, (\d+) packets received/.exec(this.out);
    const sent = m ? Number(m[1]) : Math.max(-1, ...this.replied) + 1;
    // the last request may have been on the wire when SIGINT came
    const judged = this.replied.has(sent - 1) ? sent : Math.max(0, sent - 1);
    const period = sent > 0 ? (stoppedAt - this.startedAt) / sent : SteadyPing.INTERVAL_S * 1000;
    const sentAt = (seq: number) => Math.round(this.startedAt + seq * period);
    const lost: PingReport['lost'] = [];
    const perSecond: PingReport['perSecond'] = [];
    for (let seq = 0; seq < judged; seq++) {
      const s = Math.floor((sentAt(seq) - this.startedAt) / 1000);
      while (perSecond.length <= s) perSecond.push({ sent: 0, answered: 0 });
      perSecond[s]!.sent++;
      if (this.replied.has(seq)) perSecond[s]!.answered++;
      else lost.push({ seq, at: sentAt(seq) });
    }
    return { from: this.from, to: this.to, sent: judged, received: this.replied.size, lost, perSecond };
  }

  /** Kills the ping if it still runs (cleanup on every path). */
  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}
