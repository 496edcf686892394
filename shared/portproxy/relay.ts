/**
 * The ::1 relay itself: userspace listeners on [::1]:port that pass TCP
 * connections and UDP datagrams on to a container's address, as
 * docker-proxy does for Docker. IPv6 has no route_localnet: the kernel never
 * lets a packet from ::1 leave the loopback device, so DNAT cannot publish
 * on ::1 (portmap's output chain returns ::1 untouched, rules.ts) and a
 * process has to accept there and connect again.
 *
 * Why this is safe next to untrusted containers: it binds ::1 and nothing
 * else (RELAY_HOST, never taken from a record), and the kernel drops any
 * packet for ::1 that did not arrive on lo, so only processes of the host's
 * own namespace reach it; the loopback hardening of the IPv4 side (DNAT to
 * loopback only in the output path, the martian guard) is untouched, as the
 * relay needs neither DNAT nor route_localnet. What it connects to comes
 * from records only root can write, validated again here (records.ts): a
 * container's unicast address, never loopback.
 *
 * TCP: one upstream connection per accepted one, half-close passed through.
 * UDP: one connected upstream socket per client address and port (a flow),
 * closed after `udpIdleMs` without a datagram either way; being connected,
 * it receives only the container's answers. At most
 * `maxUdpFlows` flows per port: the oldest goes first.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { loadRecords, type ProxyProtocol, type ProxyStatus } from './records';

/** The one address the relay ever listens on. */
export const RELAY_HOST = '::1';

export interface RelayOptions {
  dir: string;
  log: (msg: string) => void;
  /** a UDP flow without a datagram for this long is closed (default 60 s) */
  udpIdleMs?: number;
  maxUdpFlows?: number;
}

interface Target {
  ip: string;
  port: number;
  /** the record that holds the port */
  file: string;
}

interface TcpListener {
  protocol: 'tcp';
  port: number;
  server: net.Server;
  target: Target;
  conns: Set<net.Socket>;
}

interface Flow {
  upstream: dgram.Socket;
  /** fixed when the flow starts: a retargeted port sends new flows elsewhere */
  target: Target;
  /** datagrams that arrived before the upstream socket was connected */
  pending: Buffer[] | undefined;
  timer: NodeJS.Timeout;
}

interface UdpListener {
  protocol: 'udp';
  port: number;
  socket: dgram.Socket;
  target: Target;
  flows: Map<string, Flow>;
}

type Listener = TcpListener | UdpListener;

type Served = Pick<ProxyStatus, 'listening' | 'failed'>;

const keyOf = (protocol: ProxyProtocol, port: number): string => `${protocol}/${port}`;

export class Relay {
  private readonly listeners = new Map<string, Listener>();
  private readonly udpIdleMs: number;
  private readonly maxUdpFlows: number;

  constructor(private readonly opts: RelayOptions) {
    this.udpIdleMs = opts.udpIdleMs ?? 60_000;
    this.maxUdpFlows = opts.maxUdpFlows ?? 1024;
  }

  /** How many ports are being served. */
  get size(): number {
    return this.listeners.size;
  }

  /**
   * Serve what the records say now: ports no record names any more are
   * closed (their connections and flows too), new ones bound, a port whose
   * target changed keeps its socket and sends new connections to the new
   * target. A port two records name goes to an explicit ::1 mapping before
   * a wildcard one, then to the earlier record.
   */
  async reload(): Promise<Served> {
    const records = loadRecords(this.opts.dir, this.opts.log);
    const candidates = records.flatMap((r) => r.record.entries.map((e) => ({ ...e, file: r.file, seq: r.record.seq })));
    candidates.sort((a, b) => Number(b.explicit) - Number(a.explicit) || a.seq - b.seq || a.file.localeCompare(b.file));
    const want = new Map<string, (typeof candidates)[number]>();
    const failed: Served['failed'] = [];
    for (const c of candidates) {
      const key = keyOf(c.protocol, c.hostPort);
      const holder = want.get(key);
      if (!holder) want.set(key, c);
      else if (holder.file !== c.file) failed.push({ protocol: c.protocol, hostPort: c.hostPort, file: c.file, error: `held by record ${holder.file}` });
    }
    await Promise.all([...this.listeners].filter(([key]) => !want.has(key)).map(([key, l]) => this.close(key, l)));
    for (const [key, c] of want) {
      const target: Target = { ip: c.containerIP, port: c.containerPort, file: c.file };
      const open = this.listeners.get(key);
      if (open) {
        open.target = target;
        continue;
      }
      try {
        this.listeners.set(key, c.protocol === 'tcp' ? await this.openTcp(c.hostPort, target) : await this.openUdp(c.hostPort, target));
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        failed.push({ protocol: c.protocol, hostPort: c.hostPort, file: c.file, error: err.code ?? err.message });
        this.opts.log(`port-proxy: cannot listen on ${c.protocol} [${RELAY_HOST}]:${c.hostPort}: ${err.message}`);
      }
    }
    const listening = [...this.listeners.values()].map((l) => ({ protocol: l.protocol, hostPort: l.port, file: l.target.file }));
    return { listening, failed };
  }

  /** Close every listener, connection and flow. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.listeners].map(([key, l]) => this.close(key, l)));
  }

  private async close(key: string, l: Listener): Promise<void> {
    this.listeners.delete(key);
    if (l.protocol === 'tcp') {
      const closed = new Promise<void>((resolve) => l.server.close(() => resolve()));
      for (const c of l.conns) c.destroy();
      await closed;
    } else {
      for (const f of l.flows.values()) this.endFlow(f);
      l.flows.clear();
      await new Promise<void>((resolve) => l.socket.close(() => resolve()));
    }
  }

  private openTcp(port: number, target: Target): Promise<TcpListener> {
    const server = net.createServer({ allowHalfOpen: true });
    const l: TcpListener = { protocol: 'tcp', port, server, target, conns: new Set() };
    server.on('connection', (client) => this.relayTcp(l, client));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // exclusive: never share the port with another process's socket
      server.listen({ host: RELAY_HOST, port, ipv6Only: true, exclusive: true }, () => {
        server.off('error', reject);
        server.on('error', (e) => this.opts.log(`port-proxy: tcp [${RELAY_HOST}]:${port}: ${e.message}`));
        resolve(l);
      });
    });
  }

  private relayTcp(l: TcpListener, client: net.Socket): void {
    const upstream = net.connect({ host: l.target.ip, port: l.target.port, allowHalfOpen: true });
    l.conns.add(client);
    l.conns.add(upstream);
    let done = false;
    const end = (): void => {
      if (done) return;
      done = true;
      client.destroy();
      upstream.destroy();
      l.conns.delete(client);
      l.conns.delete(upstream);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    // pipe passes each side's FIN on (end: true), so half-closed exchanges work
    client.pipe(upstream);
    upstream.pipe(client);
  }

  private openUdp(port: number, target: Target): Promise<UdpListener> {
    const socket = dgram.createSocket({ type: 'udp6', ipv6Only: true });
    const l: UdpListener = { protocol: 'udp', port, socket, target, flows: new Map() };
    socket.on('message', (msg, rinfo) => this.relayUdp(l, msg, rinfo));
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address: RELAY_HOST, port, exclusive: true }, () => {
        socket.off('error', reject);
        socket.on('error', (e) => this.opts.log(`port-proxy: udp [${RELAY_HOST}]:${port}: ${e.message}`));
        resolve(l);
      });
    });
  }

  private relayUdp(l: UdpListener, msg: Buffer, client: dgram.RemoteInfo): void {
    const key = `${client.address} ${client.port}`;
    let flow = l.flows.get(key);
    if (!flow) {
      if (l.flows.size >= this.maxUdpFlows) {
        const [oldestKey, oldest] = l.flows.entries().next().value as [string, Flow];
        this.endFlow(oldest);
        l.flows.delete(oldestKey);
      }
      flow = this.openFlow(l, key, client);
    }
    flow.timer.refresh();
    if (flow.pending) {
      // a handful while connecting; a client that floods before then loses the rest, as UDP may
      if (flow.pending.length < 64) flow.pending.push(msg);
    }
    else flow.upstream.send(msg, (err) => err && this.opts.log(`port-proxy: udp [${RELAY_HOST}]:${l.port}: ${err.message}`));
  }

  /**
   * A connected upstream socket: the kernel hands it only the container's
   * answers, and it is bound to no wildcard address anyone could send to.
   * Datagrams wait in `pending` until the connect completes.
   */
  private openFlow(l: UdpListener, key: string, client: dgram.RemoteInfo): Flow {
    const target = { ...l.target };
    const upstream = dgram.createSocket(net.isIPv4(target.ip) ? 'udp4' : 'udp6');
    const expire = (): void => {
      this.endFlow(f);
      if (l.flows.get(key) === f) l.flows.delete(key);
    };
    const f: Flow = { upstream, target, pending: [], timer: setTimeout(expire, this.udpIdleMs) };
    upstream.on('message', (answer) => {
      f.timer.refresh();
      l.socket.send(answer, client.port, client.address);
    });
    upstream.on('error', expire);
    upstream.connect(target.port, target.ip, () => {
      const queued = f.pending ?? [];
      f.pending = undefined;
      for (const m of queued) upstream.send(m);
    });
    l.flows.set(key, f);
    return f;
  }

  private endFlow(f: Flow): void {
    clearTimeout(f.timer);
    try {
      f.upstream.close();
    } catch {
      // already closed
    }
  }
}
