/**
 * The overlay agent: one long-running process per host (`cni-ts
 * overlay-agent`, examples/cni-ts-overlay-agent.service), the part of
 * Docker's daemon that keeps overlay networks' forwarding state current.
 *
 *  - claims its node name for this machine (its random host ID,
 *    shared/host-id.ts) by compare-and-swap, and exits with a clear error
 *    when another machine holds the name (controlplane.ts, "Identity");
 *  - registers its host (node name -> VTEP address) on an etcd lease and
 *    keeps the lease alive; a host whose agent is gone longer than the TTL
 *    disappears from every other host's entries;
 *  - watches the control plane's prefix and, on any change (and every few
 *    seconds regardless), converges the static neighbour/FDB entries of
 *    every overlay network that has a namespace on this host, i.e. a local
 *    container (shared/vxlan.ts converge): adds what is missing, removes
 *    what is gone;
 *  - for encrypted networks (encryption.ts): keeps IPsec SAs and policies
 *    with exactly the hosts that share one with it, from the key ring in
 *    etcd, before any forwarding entry to such a host exists; and, when it
 *    wins the election, rotates the keys (--rotate-every, default 12 h);
 *  - watches this host's nftables (shared/nft/watch.ts), since the daemon
 *    may not run on an overlay host: when `nft flush ruleset` (or anyone)
 *    deletes from the gateway table, it is rebuilt from its record
 *    (gateway.ts); when the IPsec table lost its rules while peers are
 *    keyed, a pass runs at once (it rewrites the table whole).
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
import { DEFAULT_LIVENESS_DIR, startLivenessKeeper } from '../../ipam/etcd/liveness';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CniError } from '../../shared/cni/errors';
import { checkConnection, readPasswordFile } from '../../shared/etcd/connection';
import { type FlagSpecs, parseFlags, UsageError } from '../../shared/flags';
import { DEFAULT_HOST_ID_FILE, hostId as readHostId } from '../../shared/host-id';
import { prefixed, stderrLog, type Logger } from '../../shared/log';
import { withHandle } from '../../shared/netlink';
import { canonicalIp } from '../../shared/netlink/ipaddr';
import { isIP } from '../../shared/ip';
import { XfrmHandle } from '../../shared/netlink/xfrm';
import type { XfrmOps } from '../../shared/ipsec';
import type { Nft } from '../../shared/nft/nft-interface';
import { realNft, realTable } from '../../shared/nft/real';
import { isNetnsPath } from '../../shared/netns/netns';
import { converge, overlayNames } from '../../shared/vxlan';
import type { Listing } from '../../shared/nft/types';
import { watchTables } from '../../shared/nft/watch';
import { CLEARTEXT_CHAIN, IPSEC_TABLE, MARK_CHAIN } from '../../shared/ipsec/firewall';
import { GATEWAY_TABLE, realGatewayTable, reloadGatewayTable } from './gateway';
import { ControlPlane, DEFAULT_PREFIX, IdentityConflictError, remoteEndpoints, type NetworkRecord, type Snapshot } from './controlplane';
import { DEFAULT_STATE_DIR } from './config';
import { DEFAULT_ROTATE_EVERY_MS, HostEncryption, acksOver, ringCacheDir } from './encryption';
import { EtcdKV, type KV, type LeaseId, type Watch } from '../../shared/etcd/kv';
import { withNetworkLock } from './lock';

export interface AgentOptions {
  readonly node: string;
  /** this machine's random ID (shared/host-id.ts, --host-id-file) */
  readonly hostId: string;
  readonly vtep: string;
  readonly endpoints: readonly string[];
  readonly prefix: string;
  readonly stateDir: string;
  /** host lease TTL, seconds */
  readonly ttlSeconds: number;
  /** full re-read interval, ms, whatever the watch says */
  readonly resyncMs: number;
  readonly requestTimeoutMs: number;
  /** encrypted networks' key rotation period, ms (default 12 h) */
  readonly rotateEveryMs?: number;
  /** TTL of the key-rotation leader's lease, seconds (default 15) */
  readonly leaderTtlSeconds?: number;
  /** TLS to etcd: PEM files read at start (--etcd-ca, --etcd-cert, --etcd-key) */
  readonly tls?: { readonly ca: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  /** etcd user, with the password read from a file (--etcd-user, --etcd-password-file): never on the command line */
  readonly auth?: { readonly username: string; readonly password: string };
  /** credentials over http:// allowed (--etcd-insecure) */
  readonly insecure?: boolean;
}

export interface AgentDeps {
  readonly kv: KV;
  readonly log: (line: string) => void;
  /** the kernel's xfrm tables and nftables of this host; default: the real ones, opened on first use */
  readonly ipsec?: { readonly xfrm: XfrmOps; readonly nft: Nft };
  readonly clock?: () => number;
  /** called once when the agent must stop (its node name is another machine's) */
  readonly onFatal?: (e: Error) => void;
  /**
   * Watch the nftables of this host (or of netnsPath) and rebuild the
   * gateway and IPsec tables when they vanish (watchOwnTables); agentMain
   * turns it on, tests on fakes leave it off. pollMs: default 250.
   */
  readonly tableWatch?: { readonly netnsPath?: string; readonly pollMs?: number };
}

export interface Agent {
  /** one convergence pass now; resolves false when etcd could not be read */
  sync(): Promise<boolean>;
  /** stops timers and the watch; keeps the lease (a restart must not disrupt) */
  stop(): Promise<void>;
  /** revokes the lease: this host leaves the overlay at once */
  leave(): Promise<void>;
}

const USAGE = `usage: cni-ts overlay-agent [leave|forget] --node NAME --vtep ADDRESS [--etcd host:port,...]
       [--prefix ${DEFAULT_PREFIX}] [--state-dir ${DEFAULT_STATE_DIR}] [--ttl 10s] [--resync-ms 5s] [--timeout-ms 3s]
       [--rotate-every 12h] [--leader-ttl 15s] [--host-id-file ${DEFAULT_HOST_ID_FILE}] [--liveness-dir ${DEFAULT_LIVENESS_DIR}]
       [--etcd-ca FILE [--etcd-cert FILE --etcd-key FILE]] [--etcd-user NAME --etcd-password-file FILE] [--etcd-insecure]
  leave:  this host leaves the overlay now (its lease revoked, its node name released)
  forget: removes NODE's identity and host record, whichever machine held them (a machine gone for good)
  durations: 500ms, 2s, 30m, 12h; a bare number is seconds (milliseconds for --resync-ms and --timeout-ms)`;

/** The agent's flags (shared/flags.ts: durations like 2s, 30m, 12h; a bare number is seconds, in milliseconds for the -ms flags). */
const FLAGS = {
  node: { type: 'string' },
  vtep: { type: 'string', default: '' },
  etcd: { type: 'string', default: '127.0.0.1:2379' },
  prefix: { type: 'string', default: DEFAULT_PREFIX },
  'state-dir': { type: 'string', default: DEFAULT_STATE_DIR },
  ttl: { type: 'duration', default: 10_000, min: 2000, wholeSeconds: true },
  'resync-ms': { type: 'duration', bare: 'ms', default: 5000, min: 100 },
  'timeout-ms': { type: 'duration', bare: 'ms', default: 3000, min: 100 },
  'rotate-every': { type: 'duration', default: DEFAULT_ROTATE_EVERY_MS, min: 1000 },
  'leader-ttl': { type: 'duration', default: 15_000, min: 2000, wholeSeconds: true },
  'etcd-ca': { type: 'string' },
  'etcd-cert': { type: 'string' },
  'etcd-key': { type: 'string' },
  'etcd-user': { type: 'string' },
  'etcd-password-file': { type: 'string' },
  'etcd-insecure': { type: 'boolean' },
  'host-id-file': { type: 'string', default: DEFAULT_HOST_ID_FILE },
  'liveness-dir': { type: 'string', default: DEFAULT_LIVENESS_DIR },
} as const satisfies FlagSpecs;

/** Throws UsageError for a bad command line (agentMain: exit 2), other errors for unreadable files. */
export function parseArgs(args: readonly string[]): { leave: boolean; forget: boolean; livenessDir: string; opts: AgentOptions } {
  const { values: flags, positionals } = parseFlags(args, FLAGS, { positionals: true });
  const leave = positionals[0] === 'leave';
  const forget = positionals[0] === 'forget';
  if (positionals.length > (leave || forget ? 1 : 0)) throw new UsageError(`unexpected argument "${positionals[leave || forget ? 1 : 0]}"`);
  const readPem = (file: string | undefined): Buffer | undefined => (file === undefined ? undefined : fs.readFileSync(file));
  const ca = readPem(flags['etcd-ca']);
  const has = (k: 'etcd-cert' | 'etcd-key' | 'etcd-user' | 'etcd-password-file' | 'node') => flags[k] !== undefined;
  if ((has('etcd-cert') || has('etcd-key')) && !ca) throw new UsageError('--etcd-cert and --etcd-key need --etcd-ca');
  if (has('etcd-cert') !== has('etcd-key')) throw new UsageError('--etcd-cert and --etcd-key go together');
  if (has('etcd-user') !== has('etcd-password-file')) throw new UsageError('--etcd-user and --etcd-password-file go together');
  const tls = ca ? { ca, cert: readPem(flags['etcd-cert']), key: readPem(flags['etcd-key']) } : undefined;
  // the same rules as a plugin's passwordFile: root's, 0600
  const auth = flags['etcd-user'] !== undefined
    ? { username: flags['etcd-user'], password: readPasswordFile(flags['etcd-password-file']!, '--etcd-password-file') }
    : undefined;
  const insecure = flags['etcd-insecure'] || undefined;
  const endpoints = flags.etcd.split(',').filter(Boolean);
  // https:// without --etcd-ca, or a password in clear without --etcd-insecure: refused here, with the flag to fix
  checkConnection({ endpoints, ...(tls && { tls }), ...(auth && { auth }), ...(insecure && { insecure }) }, '--etcd');
  const vtep = flags.vtep;
  if (!leave && !forget && !isIP(vtep)) throw new UsageError('--vtep ADDRESS (this host\'s IPv4 or IPv6 underlay address) is required');
  if (forget && !has('node')) throw new UsageError('forget needs --node NAME (the machine gone for good)');
  return {
    leave,
    forget,
    livenessDir: flags['liveness-dir'],
    opts: {
      node: flags.node ?? os.hostname(),
      // forget names another machine's node: this one's ID is not needed (nor created)
      hostId: forget ? '' : readHostId(flags['host-id-file']),
      // canonical, as it is compared with every other host's and the kernel's
      vtep: isIP(vtep) ? canonicalIp(vtep) : vtep,
      endpoints,
      prefix: flags.prefix,
      stateDir: flags['state-dir'],
      ttlSeconds: flags.ttl / 1000,
      resyncMs: flags['resync-ms'],
      requestTimeoutMs: flags['timeout-ms'],
      rotateEveryMs: flags['rotate-every'],
      leaderTtlSeconds: flags['leader-ttl'] / 1000,
      tls,
      auth,
      ...(insecure && { insecure }),
    },
  };
}

/** Is `vtep` an address of an interface in this namespace? */
export function vtepIsLocal(vtep: string): boolean {
  const want = canonicalIp(vtep);
  return withHandle(undefined, (h) => h.addrList().some((a) => canonicalIp(a.address) === want));
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

/**
 * Makes the kernel entries of every local network match `snap`.
 * `reachable(network)`, when it returns a set, limits the network's
 * entries to endpoints on those VTEPs: for an encrypted network, the peers
 * whose SAs are installed, so nothing is ever sent to a peer in the clear.
 */
export function convergeHost(
  snap: Snapshot,
  node: string,
  stateDir: string,
  log: (l: string) => void,
  reachable: (network: NetworkRecord) => ReadonlySet<string> | undefined = () => undefined,
): { added: number; removed: number } {
  let added = 0;
  let removed = 0;
  for (const vni of localVnis(stateDir)) {
    const names = overlayNames(vni, path.join(stateDir, 'netns'));
    const network = snap.networks.find((n) => n.vni === vni);
    const limit = network ? reachable(network) : undefined;
    const all = network ? remoteEndpoints(snap, network.name, node) : [];
    const desired = limit ? all.filter((d) => limit.has(canonicalIp(d.vtep))) : all;
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
  const cp = new ControlPlane(deps.kv, { prefix: opts.prefix, timeoutMs: opts.requestTimeoutMs, log: deps.log });
  let lease: LeaseId | undefined;
  let stopped = false;
  let watch: Watch | undefined;
  let running: Promise<boolean> | undefined;
  let again = false;
  let debounce: NodeJS.Timeout | undefined;
  const timers: NodeJS.Timeout[] = [];
  const log = deps.log;
  const clock = deps.clock ?? Date.now;
  let xfrmHandle: XfrmHandle | undefined;
  const enc = new HostEncryption(
    {
      node: opts.node,
      vtep: opts.vtep,
      prefix: opts.prefix,
      cacheDir: ringCacheDir(opts.stateDir),
      rotateEveryMs: opts.rotateEveryMs ?? DEFAULT_ROTATE_EVERY_MS,
      leaderTtlSeconds: opts.leaderTtlSeconds ?? 15,
      requestTimeoutMs: opts.requestTimeoutMs,
    },
    {
      ringKv: deps.kv,
      acks: acksOver(deps.kv, opts.prefix, opts.requestTimeoutMs, clock),
      // opened on first use: a host with only unencrypted networks never needs xfrm
      xfrm: deps.ipsec?.xfrm ?? lazyXfrm(() => (xfrmHandle ??= XfrmHandle.open())),
      nft: deps.ipsec?.nft ?? realNft(),
      clock,
      log,
    },
  );
  let lastSnap: Snapshot | undefined;
  let ticking = false;
  let fatal: IdentityConflictError | undefined;

  const deadline = () => Date.now() + opts.requestTimeoutMs;

  async function register(): Promise<void> {
    if (lease !== undefined && (await deps.kv.leaseKeepAlive(lease, deadline())) > 0) return;
    if (lease !== undefined) log(`lease ${lease} is gone; registering again`);
    // the node name must be this machine's before its VTEP is written under it
    const identity = await cp.claimIdentity(opts.node, opts.hostId);
    lease = await deps.kv.leaseGrant(opts.ttlSeconds, deadline());
    await cp.registerHost({ name: opts.node, vtep: opts.vtep, hostId: opts.hostId }, lease, identity);
    log(`registered host ${opts.node} (VTEP ${opts.vtep}, host ID ${opts.hostId}) on lease ${lease}`);
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
      lastSnap = snap;
      // Keys first: an encrypted network's entries go only to keyed peers.
      try {
        await enc.sync(snap);
      } catch (e) {
        log(`ipsec: ${(e as Error).message}; keeping current SAs`);
      }
      const r = convergeHost(snap, opts.node, opts.stateDir, log, (n) => (n.encrypted ? enc.keyedPeers() : undefined));
      if (r.added || r.removed) log(`converged at revision ${snap.revision}: +${r.added} -${r.removed}`);
      return true;
    } catch (e) {
      if (e instanceof IdentityConflictError) {
        // another machine holds this node name: touch nothing, stop (agentMain exits non-zero)
        fatal ??= e;
        log(`${e.message}; ${e.details}`);
        stopped = true;
        deps.onFatal?.(e);
        return false;
      }
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

  /** The leader's round; a rotation shows up in every agent's watch (the ring is under the prefix). */
  async function rotationTick(): Promise<void> {
    if (ticking || stopped || !lastSnap) return;
    ticking = true;
    try {
      const r = await enc.tick(lastSnap);
      if (r && (r.action === 'created' || r.action === 'rotated' || r.action === 'restored' || r.action === 'clamped')) schedule();
    } catch (e) {
      // etcd unreachable or a lost race: the ring is unchanged, hosts keep their keys; retry next tick
      log(`ipsec: rotation tick: ${(e as Error).message}`);
    } finally {
      ticking = false;
    }
  }

  await sync();
  if (fatal) {
    await watch?.cancel().catch(() => undefined);
    throw fatal;
  }
  timers.push(setInterval(() => void sync(), opts.resyncMs));
  const stopWatch = deps.tableWatch ? watchOwnTables(deps.tableWatch, { ipsecExpected: () => enc.keyedPeers().size > 0, resync: schedule, log }) : undefined;
  // Often enough to keep the leader's lease and to rotate on time, rarely enough to cost nothing.
  const tickMs = Math.max(200, Math.min(5000, (opts.rotateEveryMs ?? DEFAULT_ROTATE_EVERY_MS) / 4, ((opts.leaderTtlSeconds ?? 15) * 1000) / 3));
  await rotationTick();
  timers.push(setInterval(() => void rotationTick(), tickMs));
  // keep-alive well inside the TTL, separate from the (possibly slow) convergence
  timers.push(
    setInterval(() => {
      if (lease === undefined) return;
      deps.kv.leaseKeepAlive(lease, deadline()).then(
        (ttl) => {
          if (ttl === 0) schedule();
        },
        () => undefined,
      );
    }, Math.max(500, (opts.ttlSeconds * 1000) / 3)),
  );

  async function stop(): Promise<void> {
    stopped = true;
    stopWatch?.();
    for (const t of timers) clearInterval(t);
    if (debounce) clearTimeout(debounce);
    await running;
    await watch?.cancel().catch(() => undefined);
    // leadership is only who rotates: handing it over at once disrupts nothing
    await enc.stop();
    xfrmHandle?.close();
  }

  return {
    sync,
    stop,
    async leave() {
      await stop();
      if (lease !== undefined) await deps.kv.leaseRevoke(lease, deadline());
      else await cp.deregisterHost(opts.node);
      await cp.releaseIdentity(opts.node, opts.hostId);
    },
  };
}

/**
 * Whether the IPsec table holds what a pass with keyed peers writes
 * (shared/ipsec/firewall.ts): the cleartext drop and the encrypt mark,
 * each with its rules. Without the mark, an encrypted VNI's VXLAN matches
 * no (marked) policy and leaves in clear; without the drop, cleartext
 * frames could be injected.
 */
export function ipsecTableIntact(listing: Listing | undefined): boolean {
  const rules = (name: string) => listing?.chains.find((c) => c.name === name)?.rules.length ?? 0;
  return rules(CLEARTEXT_CHAIN.name) > 0 && rules(MARK_CHAIN.name) > 0;
}

/**
 * The agent's half of firewall recovery (the daemon's is
 * cmd/firewall-reload.ts; either may run alone). The gateway table is
 * rebuilt from its record now (the agent may start after a flush) and
 * whenever the watch sees it lose something and its marker is gone; the
 * IPsec table, whose peers live in etcd, by an immediate pass. Polled
 * every 250 ms rather than the daemon's second: while the encrypt mark is
 * gone an encrypted network's VXLAN leaves in clear. Deletions in other
 * tables (bridge and portmap ADD/DEL) are not looked at. Returns the
 * function that stops the watch.
 */
export function watchOwnTables(
  w: { readonly netnsPath?: string; readonly pollMs?: number },
  agent: { ipsecExpected: () => boolean; resync: () => void; log: (line: string) => void },
): () => void {
  const { log } = agent;
  const gateway = realGatewayTable({ netnsPath: w.netnsPath });
  const ipsecTable = realTable(IPSEC_TABLE, { netnsPath: w.netnsPath });
  const rebuildGateway = (): void => {
    try {
      const gw = reloadGatewayTable(gateway, { onlyGone: true, log });
      if (gw) log(`firewall: gateway table (${gw.bridge}, ${gw.subnet}) rebuilt from its record`);
    } catch (e) {
      log(`firewall: cannot rebuild the gateway table: ${(e as Error).message}`);
    }
  };
  const onGone = (tables?: ReadonlySet<string>): void => {
    if (!tables || tables.has(GATEWAY_TABLE.table)) rebuildGateway();
    // the agent's own pass rewrites this table (flush + add), so a deletion there is usually ours: look first
    if ((!tables || tables.has(IPSEC_TABLE.table)) && agent.ipsecExpected() && !ipsecTableIntact(ipsecTable.list())) {
      log('firewall: the IPsec table lost its rules; converging now');
      agent.resync();
    }
  };
  rebuildGateway();
  try {
    return watchTables({ netnsPath: w.netnsPath, pollMs: w.pollMs ?? 250, onGone, log }).stop;
  } catch (e) {
    log(`firewall: cannot watch nf_tables (${(e as Error).message}); run \`cni-ts firewall-reload\` after a flush`);
    return () => {};
  }
}

/** XfrmOps that opens the real handle on the first call. */
function lazyXfrm(get: () => XfrmOps): XfrmOps {
  return {
    xfrmStateAdd: (s) => get().xfrmStateAdd(s),
    xfrmStateDel: (id) => get().xfrmStateDel(id),
    xfrmStateList: () => get().xfrmStateList(),
    xfrmPolicyAdd: (p) => get().xfrmPolicyAdd(p),
    xfrmPolicyUpdate: (p) => get().xfrmPolicyUpdate(p),
    xfrmPolicyDel: (id) => get().xfrmPolicyDel(id),
    xfrmPolicyList: () => get().xfrmPolicyList(),
  };
}

/** `cni-ts overlay-agent ...`: runs until SIGTERM/SIGINT; resolves to the exit code. Diagnostics go to `sink` (stderr). */
export async function agentMain(args: string[], sink: Logger = stderrLog): Promise<number> {
  const log = prefixed(sink, 'overlay-agent: ');
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs(args);
  } catch (e) {
    log(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { opts } = parsed;
  const kv = new EtcdKV({ endpoints: opts.endpoints, requestTimeoutMs: opts.requestTimeoutMs, tls: opts.tls, auth: opts.auth, insecure: opts.insecure });
  try {
    const cp = new ControlPlane(kv, { prefix: opts.prefix, timeoutMs: opts.requestTimeoutMs, log });
    if (parsed.leave) {
      // a leave from another machine with the same name must not remove this name's host
      await cp.checkIdentity(opts.node, opts.hostId);
      await cp.deregisterHost(opts.node);
      await cp.releaseIdentity(opts.node, opts.hostId);
      log(`host ${opts.node} left the overlay`);
      return 0;
    }
    if (parsed.forget) {
      await cp.forget(opts.node);
      log(`node ${opts.node} forgotten: its identity and host record are removed`);
      return 0;
    }
    if (!vtepIsLocal(opts.vtep)) {
      log(`--vtep ${opts.vtep} is not an address of any interface on this host; give this host's underlay address`);
      return 2;
    }
    let failed: Error | undefined;
    let wake = () => undefined as void;
    const agent = await startAgent(opts, {
      kv,
      log,
      tableWatch: {},
      onFatal: (e) => {
        failed = e;
        wake();
      },
    });
    // The etcd IPAM's host liveness, when this host's stores recorded any
    // (ipam/etcd/liveness.ts): the agent is one of the long-running
    // processes that keep it, beside the daemon.
    const liveness = new AbortController();
    const keeper = startLivenessKeeper({ dir: parsed.livenessDir, signal: liveness.signal, log });
    await new Promise<void>((resolve) => {
      wake = resolve;
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    });
    liveness.abort();
    await Promise.all([agent.stop(), keeper]);
    if (failed) return 1;
    log('stopped (lease kept: a restart within the TTL disrupts nothing)');
    return 0;
  } catch (e) {
    log(e instanceof CniError && e.details ? `${e.message}` : (e as Error).message);
    return 1;
  } finally {
    kv.close();
  }
}
