/**
 * The overlay agent: one long-running process per host (`cni-ts
 * overlay-agent`, examples/cni-ts-overlay-agent.service), the part of
 * Docker's daemon that keeps overlay networks' forwarding state current.
 *
 *  - registers its host (node name -> VTEP address) on an etcd lease and
 *    keeps the lease alive; a host whose agent is gone longer than the TTL
 *    disappears from every other host's entries;
 *  - watches the control plane's prefix and, on any change (and every few
 *    seconds regardless), converges the static neighbour/FDB entries of
 *    every overlay network that has a namespace on this host, i.e. a local
 *    container (shared/vxlan.ts converge): adds what is missing, removes
 *    what is gone.
 *
 * Level-triggered, never edge-triggered: each pass reads the whole state at
 * one revision and makes the kernel match it, so missed events, repeated
 * events, etcd restarts and the agent's own restarts all end in the same
 * state. When etcd cannot be read, nothing is touched: the kernel keeps the
 * last state (traffic flows on), and the next successful read converges.
 * Stopping the agent (SIGTERM) does not revoke its lease, so a restart
 * within the TTL changes nothing anywhere; `overlay-agent leave` is how a
 * host leaves at once.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CniError } from '../../shared/cni/errors';
import { withHandle } from '../../shared/netlink';
import { isNetnsPath } from '../../shared/netns/netns';
import { converge, overlayNames } from '../../shared/vxlan';
import { ControlPlane, DEFAULT_PREFIX, remoteEndpoints, type Snapshot } from './controlplane';
import { DEFAULT_STATE_DIR } from './config';
import { EtcdKV, type KV, type Unwatch } from './kv';
import { withNetworkLock } from './lock';

export interface AgentOptions {
  readonly node: string;
  readonly vtep: string;
  readonly endpoints: readonly string[];
  readonly prefix: string;
  readonly stateDir: string;
  /** host lease TTL, seconds */
  readonly ttlSeconds: number;
  /** full re-read interval, ms, whatever the watch says */
  readonly resyncMs: number;
  readonly requestTimeoutMs: number;
}

export interface AgentDeps {
  readonly kv: KV;
  readonly log: (line: string) => void;
}

export interface Agent {
  /** one convergence pass now; resolves false when etcd could not be read */
  sync(): Promise<boolean>;
  /** stops timers and the watch; keeps the lease (a restart must not disrupt) */
  stop(): Promise<void>;
  /** revokes the lease: this host leaves the overlay at once */
  leave(): Promise<void>;
}

const USAGE = `usage: cni-ts overlay-agent [leave] --node NAME --vtep ADDRESS [--etcd host:port,...]
       [--prefix ${DEFAULT_PREFIX}] [--state-dir ${DEFAULT_STATE_DIR}] [--ttl 10] [--resync-ms 5000] [--timeout-ms 3000]`;

export function parseArgs(args: readonly string[]): { leave: boolean; opts: AgentOptions } {
  const rest = [...args];
  const leave = rest[0] === 'leave';
  if (leave) rest.shift();
  const flags = new Map<string, string>();
  while (rest.length) {
    const a = rest.shift()!;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`unexpected argument "${a}"`);
    const v = m[2] ?? rest.shift();
    if (v === undefined) throw new Error(`--${m[1]} needs a value`);
    flags.set(m[1], v);
  }
  const known = ['node', 'vtep', 'etcd', 'prefix', 'state-dir', 'ttl', 'resync-ms', 'timeout-ms'];
  for (const k of flags.keys()) if (!known.includes(k)) throw new Error(`unknown flag --${k}`);
  const num = (k: string, d: number, min: number) => {
    const v = flags.has(k) ? Number(flags.get(k)) : d;
    if (!Number.isInteger(v) || v < min) throw new Error(`--${k} must be an integer >= ${min}`);
    return v;
  };
  const vtep = flags.get('vtep') ?? '';
  if (!leave && !/^\d{1,3}(\.\d{1,3}){3}$/.test(vtep)) throw new Error('--vtep ADDRESS (this host\'s IPv4 underlay address) is required');
  return {
    leave,
    opts: {
      node: flags.get('node') ?? os.hostname(),
      vtep,
      endpoints: (flags.get('etcd') ?? '127.0.0.1:2379').split(',').filter(Boolean),
      prefix: flags.get('prefix') ?? DEFAULT_PREFIX,
      stateDir: flags.get('state-dir') ?? DEFAULT_STATE_DIR,
      ttlSeconds: num('ttl', 10, 2),
      resyncMs: num('resync-ms', 5000, 100),
      requestTimeoutMs: num('timeout-ms', 3000, 100),
    },
  };
}

/** Is `vtep` an address of an interface in this namespace? */
export function vtepIsLocal(vtep: string): boolean {
  return withHandle(undefined, (h) => h.addrList().some((a) => a.address === vtep));
}

/** The VNIs this host has a network namespace for (its networks with local containers). */
function localVnis(stateDir: string): number[] {
  let files: string[];
  try {
    files = fs.readdirSync(path.join(stateDir, 'netns'));
  } catch {
    return [];
  }
  return files.map((f) => /^ov-(\d+)$/.exec(f)).filter((m): m is RegExpExecArray => m !== null).map((m) => Number(m[1]));
}

/** Makes the kernel entries of every local network match `snap`. */
export function convergeHost(snap: Snapshot, node: string, stateDir: string, log: (l: string) => void): { added: number; removed: number } {
  let added = 0;
  let removed = 0;
  for (const vni of localVnis(stateDir)) {
    const names = overlayNames(vni, path.join(stateDir, 'netns'));
    const network = snap.networks.find((n) => n.vni === vni);
    const desired = network ? remoteEndpoints(snap, network.name, node) : [];
    try {
      const r = withNetworkLock(stateDir, vni, () => {
        // DEL may have removed the namespace while we waited for the lock
        if (!isNetnsPath(names.netns)) return { added: 0, removed: 0 };
        return withHandle(names.netns, (ov) => (ov.linkByName(names.vxlan) ? converge(ov, names, desired) : { added: 0, removed: 0 }));
      });
      added += r.added;
      removed += r.removed;
    } catch (e) {
      log(`network vni ${vni}: ${(e as Error).message}`);
    }
  }
  return { added, removed };
}

export async function startAgent(opts: AgentOptions, deps: AgentDeps): Promise<Agent> {
  const cp = new ControlPlane(deps.kv, { prefix: opts.prefix, timeoutMs: opts.requestTimeoutMs });
  let lease: string | undefined;
  let stopped = false;
  let watch: Unwatch | undefined;
  let running: Promise<boolean> | undefined;
  let again = false;
  let debounce: NodeJS.Timeout | undefined;
  const timers: NodeJS.Timeout[] = [];
  const log = deps.log;

  const deadline = () => Date.now() + opts.requestTimeoutMs;

  async function register(): Promise<void> {
    if (lease !== undefined && (await deps.kv.leaseKeepAlive(lease, deadline()))) return;
    if (lease !== undefined) log(`lease ${lease} is gone; registering again`);
    lease = await deps.kv.leaseGrant(opts.ttlSeconds, deadline());
    await cp.registerHost({ name: opts.node, vtep: opts.vtep }, lease);
    log(`registered host ${opts.node} (VTEP ${opts.vtep}) on lease ${lease}`);
  }

  async function ensureWatch(): Promise<void> {
    if (watch || stopped) return;
    watch = await cp.watch(() => schedule());
  }

  async function pass(): Promise<boolean> {
    try {
      await register();
      await ensureWatch();
      const snap = await cp.snapshot();
      const r = convergeHost(snap, opts.node, opts.stateDir, log);
      if (r.added || r.removed) log(`converged at revision ${snap.revision}: +${r.added} -${r.removed}`);
      return true;
    } catch (e) {
      // etcd unreachable: keep the kernel as it is; the next pass retries
      log(`etcd: ${e instanceof CniError ? e.message : (e as Error).message}; keeping current entries`);
      return false;
    }
  }

  function sync(): Promise<boolean> {
    if (running) {
      again = true;
      return running;
    }
    running = pass().finally(() => {
      running = undefined;
      if (again && !stopped) {
        again = false;
        void sync();
      }
    });
    return running;
  }

  function schedule(): void {
    if (stopped || debounce) return;
    // gather a burst of events into one pass
    debounce = setTimeout(() => {
      debounce = undefined;
      void sync();
    }, 20);
  }

  await sync();
  timers.push(setInterval(() => void sync(), opts.resyncMs));
  // keep-alive well inside the TTL, separate from the (possibly slow) convergence
  timers.push(
    setInterval(() => {
      if (lease === undefined) return;
      deps.kv.leaseKeepAlive(lease, deadline()).then(
        (alive) => {
          if (!alive) schedule();
        },
        () => undefined,
      );
    }, Math.max(500, (opts.ttlSeconds * 1000) / 3)),
  );

  async function stop(): Promise<void> {
    stopped = true;
    for (const t of timers) clearInterval(t);
    if (debounce) clearTimeout(debounce);
    await running;
    await watch?.cancel().catch(() => undefined);
  }

  return {
    sync,
    stop,
    async leave() {
      await stop();
      if (lease !== undefined) await deps.kv.leaseRevoke(lease, deadline());
      else await cp.deregisterHost(opts.node);
    },
  };
}

/** `cni-ts overlay-agent ...`: runs until SIGTERM/SIGINT; resolves to the exit code. */
export async function agentMain(args: string[]): Promise<number> {
  const log = (line: string) => process.stderr.write(`overlay-agent: ${line}\n`);
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs(args);
  } catch (e) {
    process.stderr.write(`overlay-agent: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { opts } = parsed;
  const kv = new EtcdKV({ endpoints: opts.endpoints, requestTimeoutMs: opts.requestTimeoutMs });
  try {
    if (parsed.leave) {
      const cp = new ControlPlane(kv, { prefix: opts.prefix, timeoutMs: opts.requestTimeoutMs });
      await cp.deregisterHost(opts.node);
      log(`host ${opts.node} left the overlay`);
      return 0;
    }
    if (!vtepIsLocal(opts.vtep)) {
      log(`--vtep ${opts.vtep} is not an address of any interface on this host; give this host's underlay address`);
      return 2;
    }
    const agent = await startAgent(opts, { kv, log });
    await new Promise<void>((resolve) => {
      const done = () => resolve();
      process.once('SIGTERM', done);
      process.once('SIGINT', done);
    });
    await agent.stop();
    log('stopped (lease kept: a restart within the TTL disrupts nothing)');
    return 0;
  } catch (e) {
    log((e as Error).message);
    return 1;
  } finally {
    kv.close();
  }
}
