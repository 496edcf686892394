/**
 * The resolver: UDP and TCP listeners on each DNS-enabled network's gateway
 * addresses (and, for networks without one, at 127.0.0.11 inside each
 * container's namespace: netns-listener.ts), answering from that network's records (zone.ts) and
 * forwarding the rest (upstream.ts). `cni-ts dns` (cmd/dns.ts) runs one
 * per host; reload() re-reads the records directory (SIGHUP).
 *
 * What it trusts, and what it does not (it runs as root next to containers
 * nobody trusts):
 * - It listens only on addresses a network's description names AND that lie
 *   inside that network's subnets, never on a wildcard address: a host
 *   address that is not a network's gateway is never listened on, even if
 *   a records file says so.
 * - A query is answered only from networks whose listen address it was sent
 *   to AND whose subnet holds its source. A container of network X asking
 *   network Y's gateway, or anything on the host's other interfaces, gets
 *   no answer at all (and nothing is forwarded for it: no open resolver).
 *   Where several networks share a listen address (the overlay's gateway
 *   bridge), a network marked clientsOnly serves only the sources its own
 *   entries list, so the source picks the network.
 * - Cluster networks (cluster-watch.ts) add other hosts' records from etcd,
 *   validated, to their zone; local records never wait for etcd.
 * - Memory per client is bounded: at most MAX_TCP connections in all and
 *   MAX_TCP_PER_CLIENT per source address, each closed after TCP_IDLE_MS
 *   without a complete query; at most TCP_PIPELINE queries queued per
 *   connection; a TCP message is at most 65535 bytes by its length prefix;
 *   forwarded queries in flight are bounded by the Forwarder.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { type Cidr, parseCidr, parseIp } from '../netlink/ipaddr';
import type { Logger } from '../log';
import { type LoadedNetwork, loadAll } from './records';
import { Forwarder, ResolvConf, upstreamServers } from './upstream';
import { type NetZone, RCODE, answer, buildZone, errorReply } from './zone';
import { EMBEDDED_DNS, NetnsListener, answersFrom, netnsAlive, netnsKey } from './netns-listener';
import { removeEntry } from './records';
import { ClusterWatch, type KvFactory, clientsOf, withClusterRecords } from './cluster-watch';
import { canonicalIp } from '../netlink/ipaddr';

export const MAX_TCP = 256;
export const MAX_TCP_PER_CLIENT = 16;
export const TCP_IDLE_MS = 10_000;
export const TCP_PIPELINE = 16;

export interface ResolverOptions {
  /** the records directory (records.ts) */
  dir: string;
  /** 53 unless a test says otherwise */
  port?: number;
  resolvConf?: string;
  log?: Logger;
  tcpIdleMs?: number;
  /** cluster networks' etcd (cluster-watch.ts): EtcdKV from the network's description unless a test says otherwise */
  clusterKv?: KvFactory;
  clusterRetryMs?: number;
  /**
   * The resolver itself removed records (a container's namespace is gone):
   * cmd/dns.ts reloads through its own path (serial, exit when empty);
   * default: reload().
   */
  recordsChanged?: () => void;
  /** how often listeners' namespaces are looked at (default NETNS_CHECK_MS) */
  netnsCheckMs?: number;
}

/** A container namespace that went away is noticed within this long (or at the next reload). */
export const NETNS_CHECK_MS = 5000;

interface Served {
  net: LoadedNetwork;
  zone: NetZone;
  subnets: Cidr[];
  /** clientsOnly networks: the only sources served */
  clients?: Set<string>;
}

interface Listener {
  address: string;
  udp: dgram.Socket;
  tcp: net.Server;
  /** a 127.0.0.11 listener inside a container's namespace: its key (netnsKey) */
  netns?: string;
}

export function cidrContains(c: Cidr, ip: string): boolean {
  let a;
  try {
    a = parseIp(ip);
  } catch {
    return false;
  }
  if (a.family !== c.family) return false;
  let bits = c.prefixLen;
  for (let i = 0; i < a.bytes.length && bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((a.bytes[i] & mask) !== (c.bytes[i] & mask)) return false;
  }
  return true;
}

function canonicalOr(ip: string): string {
  try {
    return canonicalIp(ip);
  } catch {
    return ip;
  }
}

/**
 * Who a bound counts against: the source address; for a namespace's
 * listener, the namespace (one container, whatever 127/8 source it picks).
 */
function clientKey(l: Listener, source: string): string {
  return l.netns === undefined ? source : `netns:${l.netns}`;
}

function isUnspecified(ip: string): boolean {
  return parseIp(ip).bytes.every((b) => b === 0);
}

export class Resolver {
  private served: Served[] = [];
  private readonly listeners = new Map<string, Listener>();
  private readonly forwarder = new Forwarder();
  private readonly resolv: ResolvConf;
  private readonly port: number;
  private readonly log: Logger;
  private readonly tcpIdleMs: number;
  private readonly tcpPerClient = new Map<string, number>();
  /** 127.0.0.11 listeners, by namespace key */
  private readonly inNetns = new Map<string, { l: Listener; nl: NetnsListener }>();
  /** netns listeners are opened and closed one reload at a time */
  private netnsChain: Promise<void> = Promise.resolve();
  private readonly netnsTimer: NodeJS.Timeout;
  /** cluster networks' records from etcd (their snapshot while etcd is down) */
  readonly cluster: ClusterWatch;
  /** counters, for tests and the log */
  readonly stats = { answered: 0, forwarded: 0, dropped: 0, refusedClients: 0, tcpRejected: 0 };

  constructor(private readonly opts: ResolverOptions) {
    this.port = opts.port ?? 53;
    this.log = opts.log ?? (() => {});
    this.resolv = new ResolvConf(opts.resolvConf);
    this.tcpIdleMs = opts.tcpIdleMs ?? TCP_IDLE_MS;
    this.netnsTimer = setInterval(() => this.sweepNetns(), opts.netnsCheckMs ?? NETNS_CHECK_MS);
    this.netnsTimer.unref();
    this.cluster = new ClusterWatch({ dir: opts.dir, kv: opts.clusterKv, log: this.log, retryMs: opts.clusterRetryMs, onChange: () => this.rebuildZones() });
  }

  /** The zones again, after the cluster records of a network changed. */
  private rebuildZones(): void {
    this.served = this.served.map((s) => ({ ...s, zone: buildZone(withClusterRecords(s.net, this.cluster.records(s.net.name))) }));
  }

  /** Re-reads the records and opens/closes listeners to match; resolves once every new listener is bound or failed. */
  async reload(): Promise<void> {
    const nets = loadAll(this.opts.dir, this.log);
    this.cluster.sync(nets);
    this.served = nets.map((n) => ({
      net: n,
      zone: buildZone(withClusterRecords(n, this.cluster.records(n.name))),
      subnets: n.subnets.map(parseCidr),
      clients: clientsOf(n),
    }));
    const want = new Set<string>();
    for (const s of this.served) {
      for (const a of s.net.listen) {
        if (isUnspecified(a) || !s.subnets.some((c) => cidrContains(c, a))) {
          this.log(`dns: network ${s.net.name}: not listening on ${a}: not a gateway address inside the network's subnets`);
          continue;
        }
        want.add(a);
      }
    }
    for (const [a, l] of this.listeners) {
      if (!want.has(a)) {
        this.closeListener(l);
        this.listeners.delete(a);
      }
    }
    const opened: Promise<void>[] = [];
    for (const a of want) if (!this.listeners.has(a)) opened.push(this.open(a));
    await Promise.all(opened);
    // a failure is logged, never left to poison the chain for the next reload
    const netnsDone = (this.netnsChain = this.netnsChain.then(() => this.reloadNetns()).catch((e) => this.log(`dns: namespace listeners: ${(e as Error).message}`)));
    await netnsDone;
  }

  /**
   * The 127.0.0.11 listeners to match the records: one per container
   * namespace named by an entry, opened (with its redirect) when new,
   * closed (redirect removed) when no entry names it any more. An entry
   * whose namespace is gone is removed from the records.
   */
  private async reloadNetns(): Promise<void> {
    const want = new Map<string, NonNullable<LoadedNetwork['entries'][number]['netns']>>();
    const dead: Array<{ network: string; containerId: string; ifname: string }> = [];
    for (const s of this.served) {
      for (const e of s.net.entries) {
        if (!e.netns) continue;
        if (netnsAlive(e.netns)) want.set(netnsKey(e.netns), e.netns);
        else dead.push({ network: s.net.name, containerId: e.containerId, ifname: e.ifname });
      }
    }
    for (const [key, { nl }] of this.inNetns) {
      if (want.has(key)) continue;
      this.inNetns.delete(key);
      try {
        nl.close({ removeRedirect: true });
      } catch (e) {
        this.log(`dns: closing the listener in ${nl.ref.path}: ${(e as Error).message}`);
      }
      this.log(`dns: closed the listener in ${nl.ref.path}`);
    }
    for (const [key, ref] of want) {
      if (this.inNetns.has(key)) continue;
      const tcp = net.createServer();
      tcp.maxConnections = MAX_TCP;
      // the listener exists once both sockets do; a connection before that is not served
      let l: Listener | undefined;
      tcp.on('connection', (sock) => (l ? this.onTcp(l, sock) : sock.destroy()));
      tcp.on('drop', () => this.stats.tcpRejected++);
      tcp.on('error', (e) => this.log(`dns: tcp in ${ref.path}: ${e.message}`));
      try {
        const nl = await NetnsListener.open(ref, tcp);
        if (!nl) {
          this.log(`dns: not listening in ${ref.path}: it is not the namespace the record names`);
          continue;
        }
        const listener: Listener = (l = { address: EMBEDDED_DNS, udp: nl.udp, tcp, netns: key });
        this.inNetns.set(key, { l: listener, nl });
        nl.udp.on('message', (msg, rinfo) => this.onUdp(listener, msg, rinfo));
        nl.udp.on('error', (e) => this.log(`dns: udp in ${ref.path}: ${e.message}`));
        this.log(`dns: listening on 127.0.0.11 in ${ref.path} (udp ${nl.ports.udp}, tcp ${nl.ports.tcp})`);
      } catch (e) {
        this.log(`dns: cannot listen in ${ref.path}: ${(e as Error).message}`);
      }
    }
    if (dead.length) this.dropDead(dead);
  }

  /** Records of attachments whose namespace is gone: removed, and the records reloaded. */
  private dropDead(dead: ReadonlyArray<{ network: string; containerId: string; ifname: string }>): void {
    let changed = false;
    for (const d of dead) {
      try {
        if (removeEntry(this.opts.dir, d.network, d.containerId, d.ifname) !== undefined) changed = true;
        this.log(`dns: network ${d.network}: ${d.containerId}/${d.ifname} dropped: its namespace is gone`);
      } catch (e) {
        this.log(`dns: cannot drop the record of ${d.containerId}/${d.ifname}: ${(e as Error).message}`);
      }
    }
    if (changed) setImmediate(() => (this.opts.recordsChanged ? this.opts.recordsChanged() : void this.reload()));
  }

  /** Between reloads: a listener whose namespace is gone starts a reload (which closes it and drops its records). */
  private sweepNetns(): void {
    for (const { nl } of this.inNetns.values()) {
      if (!netnsAlive(nl.ref)) {
        void this.reload();
        return;
      }
    }
  }

  /** The namespaces (their paths) with a 127.0.0.11 listener, and its ports. */
  listeningInNetns(): Array<{ path: string; udp: number; tcp: number }> {
    return [...this.inNetns.values()].map(({ nl }) => ({ path: nl.ref.path, ...nl.ports }));
  }

  /** The zones a listener answers a source from: a gateway's by address and subnet, a namespace's by its entries (loopback sources only). */
  private zonesOf(l: Listener, source: string): NetZone[] {
    if (l.netns === undefined) return this.zonesFor(l.address, source);
    if (!answersFrom(source)) return [];
    return this.served.filter((s) => s.net.entries.some((e) => e.netns && netnsKey(e.netns) === l.netns)).map((s) => s.zone);
  }

  private isOpen(l: Listener): boolean {
    return l.netns === undefined ? this.listeners.get(l.address) === l : this.inNetns.get(l.netns)?.l === l;
  }

  /** Addresses with a bound UDP and TCP listener. */
  listening(): string[] {
    return [...this.listeners.keys()];
  }

  networks(): string[] {
    return this.served.map((s) => s.net.name);
  }

  async close(): Promise<void> {
    clearInterval(this.netnsTimer);
    await this.netnsChain;
    // the redirects stay: a restarted resolver rewrites them to its new ports
    for (const { nl } of this.inNetns.values()) nl.close();
    this.inNetns.clear();
    this.cluster.close();
    for (const l of this.listeners.values()) this.closeListener(l);
    this.listeners.clear();
  }

  /** The zones a query from source to local may be answered from (empty: answer nothing). */
  zonesFor(local: string, source: string): NetZone[] {
    return this.served
      .filter((s) => s.net.listen.includes(local) && s.subnets.some((c) => cidrContains(c, source)) && (!s.clients || s.clients.has(canonicalOr(source))))
      .map((s) => s.zone);
  }

  private closeListener(l: Listener): void {
    try {
      l.udp.close();
    } catch {
      /* already closed */
    }
    l.tcp.close();
  }

  private open(address: string): Promise<void> {
    const v6 = address.includes(':');
    const udp = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: v6 });
    const tcp = net.createServer();
    tcp.maxConnections = MAX_TCP;
    const l: Listener = { address, udp, tcp };
    this.listeners.set(address, l);
    const failed = (what: string, e: Error) => {
      this.log(`dns: cannot listen on ${what} ${address}:${this.port}: ${e.message}`);
      if (this.listeners.get(address) === l) {
        this.listeners.delete(address);
        this.closeListener(l);
      }
    };
    udp.on('message', (msg, rinfo) => this.onUdp(l, msg, rinfo));
    tcp.on('connection', (sock) => this.onTcp(l, sock));
    tcp.on('drop', () => this.stats.tcpRejected++);
    const u = new Promise<void>((resolve) => {
      udp.once('error', (e) => (failed('udp', e), resolve()));
      udp.bind({ address, port: this.port, exclusive: true }, () => resolve());
    });
    const t = new Promise<void>((resolve) => {
      tcp.once('error', (e) => (failed('tcp', e), resolve()));
      tcp.listen({ host: address, port: this.port, ipv6Only: v6, exclusive: true }, () => resolve());
    });
    return Promise.all([u, t]).then(() => {
      if (this.listeners.get(address) === l) this.log(`dns: listening on ${address}:${this.port}`);
    });
  }

  private onUdp(l: Listener, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const zones = this.zonesOf(l, rinfo.address);
    if (!zones.length) {
      this.stats.refusedClients++;
      return;
    }
    void this.handle(msg, zones, 'udp', clientKey(l, rinfo.address)).then((reply) => {
      if (reply && this.isOpen(l)) l.udp.send(reply, rinfo.port, rinfo.address, () => {});
    });
  }

  private onTcp(l: Listener, sock: net.Socket): void {
    const source = sock.remoteAddress ?? '';
    const zones = this.zonesOf(l, source);
    // per client: 127.0.0.1 in one container is not 127.0.0.1 in another
    const client = clientKey(l, source);
    const mine = this.tcpPerClient.get(client) ?? 0;
    if (!zones.length || mine >= MAX_TCP_PER_CLIENT) {
      if (!zones.length) this.stats.refusedClients++;
      else this.stats.tcpRejected++;
      sock.destroy();
      return;
    }
    this.tcpPerClient.set(client, mine + 1);
    sock.once('close', () => {
      const n = (this.tcpPerClient.get(client) ?? 1) - 1;
      if (n <= 0) this.tcpPerClient.delete(client);
      else this.tcpPerClient.set(client, n);
    });
    sock.on('error', () => sock.destroy());
    // idle: no complete query for a while (a slowloris holding a slot)
    sock.setTimeout(this.tcpIdleMs, () => sock.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let queued = 0;
    let chain = Promise.resolve();
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const query = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        if (++queued > TCP_PIPELINE) {
          sock.destroy();
          return;
        }
        chain = chain.then(async () => {
          const reply = await this.handle(Buffer.from(query), zones, 'tcp', client);
          queued--;
          if (!reply || sock.destroyed) return;
          const framed = Buffer.alloc(2 + reply.length);
          framed.writeUInt16BE(reply.length, 0);
          reply.copy(framed, 2);
          sock.write(framed);
        });
      }
    });
  }

  /** The reply to one query from a client of zones, or undefined for none. */
  async handle(query: Buffer, zones: NetZone[], transport: 'udp' | 'tcp', client: string): Promise<Buffer | undefined> {
    let d;
    try {
      d = answer(query, zones, transport);
    } catch (e) {
      // never a crash on a packet: whatever slipped through is a SERVFAIL
      this.log(`dns: answering failed: ${(e as Error).message}`);
      return query.length >= 12 ? errorReply(query, RCODE.SERVFAIL) : undefined;
    }
    if (d.kind === 'drop') {
      this.stats.dropped++;
      return undefined;
    }
    if (d.kind === 'reply') {
      this.stats.answered++;
      return d.packet;
    }
    const servers = upstreamServers(zones[0].upstream, this.resolv);
    this.stats.forwarded++;
    const r = await this.forwarder.forward(query, client, servers, new Set(this.listeners.keys()));
    return r ?? errorReply(query, RCODE.SERVFAIL);
  }
}
