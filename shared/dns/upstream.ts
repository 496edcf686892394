/**
 * Forwarding names that are not ours to the host's resolvers: the
 * nameservers of /etc/resolv.conf (read again whenever the file changes:
 * its mtime, size or inode, looked at no more than once a second), or a
 * network's `dns.upstream`.
 *
 * Each forwarded query goes out from a fresh UDP socket (a random source
 * port, chosen by the kernel) with a fresh random ID; only a reply from the
 * server it was sent to, with that ID and the same question, is taken, and
 * it goes back to the client under the client's ID. The number of queries
 * in flight is bounded (MAX_INFLIGHT, and per client MAX_PER_CLIENT), so a
 * container flooding names that time out cannot grow our memory.
 */
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import { isIp } from '../netlink/ipaddr';
import { parseHostPort } from './config';
import { udpExchange } from './udp';

export interface Server {
  host: string;
  port: number;
}

/** The nameserver lines of a resolv.conf text. */
export function parseResolvConf(text: string): Server[] {
  const out: Server[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const host = m[1].replace(/%.*$/, '');
    if (isIp(host)) out.push({ host, port: 53 });
  }
  return out.slice(0, 8);
}

/** resolv.conf's servers, re-read when the file changes. */
export class ResolvConf {
  private key = '';
  private servers: Server[] = [];
  private checkedAt = -Infinity;

  constructor(
    readonly file = '/etc/resolv.conf',
    private readonly now: () => number = () => performance.now(),
  ) {}

  get(): Server[] {
    const t = this.now();
    if (t - this.checkedAt < 1000) return this.servers;
    this.checkedAt = t;
    try {
      const st = fs.statSync(this.file);
      const key = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (key !== this.key) {
        this.servers = parseResolvConf(fs.readFileSync(this.file, 'utf8'));
        this.key = key;
      }
    } catch {
      this.servers = [];
      this.key = '';
    }
    return this.servers;
  }
}

export function upstreamServers(configured: readonly string[] | undefined, resolv: ResolvConf): Server[] {
  if (configured?.length) return configured.map((s) => parseHostPort(s)).filter((s): s is Server => s !== undefined);
  return resolv.get();
}

export const MAX_INFLIGHT = 1024;
export const MAX_PER_CLIENT = 64;
/** per server tried */
export const UPSTREAM_TIMEOUT_MS = 2000;

export class Forwarder {
  private inflight = 0;
  private readonly perClient = new Map<string, number>();

  /**
   * Sends query to the servers in turn; resolves with the reply (under the
   * client's ID) or undefined when none answered or a bound was hit.
   * `exclude` are addresses never forwarded to (our own listeners: no loops).
   */
  async forward(query: Buffer, client: string, servers: readonly Server[], exclude: ReadonlySet<string>): Promise<Buffer | undefined> {
    const usable = servers.filter((s) => !exclude.has(s.host));
    if (!usable.length || this.inflight >= MAX_INFLIGHT) return undefined;
    const mine = this.perClient.get(client) ?? 0;
    if (mine >= MAX_PER_CLIENT) return undefined;
    this.inflight++;
    this.perClient.set(client, mine + 1);
    try {
      for (const s of usable.slice(0, 3)) {
        const r = await exchange(query, s);
        if (r) return r;
      }
      return undefined;
    } finally {
      this.inflight--;
      const n = (this.perClient.get(client) ?? 1) - 1;
      if (n <= 0) this.perClient.delete(client);
      else this.perClient.set(client, n);
    }
  }

  get pending(): number {
    return this.inflight;
  }
}

function exchange(query: Buffer, server: Server): Promise<Buffer | undefined> {
  const clientId = query.readUInt16BE(0);
  const ourId = randomInt(0, 65536);
  const out = Buffer.from(query);
  out.writeUInt16BE(ourId, 0);
  const question = questionBytes(query);
  return udpExchange(out, { host: server.host, port: server.port, timeoutMs: UPSTREAM_TIMEOUT_MS }, (msg, rinfo) => {
    // only the server we asked, our ID, a response, the same question
    if (rinfo.address !== server.host || rinfo.port !== server.port) return undefined;
    if (msg.length < 12 || msg.readUInt16BE(0) !== ourId || !(msg.readUInt16BE(2) & 0x8000)) return undefined;
    const q = questionBytes(msg);
    if (!q || !question || !q.equals(question)) return undefined;
    const reply = Buffer.from(msg);
    reply.writeUInt16BE(clientId, 0);
    return reply;
  });
}

/** The question section's bytes (uncompressed in any query and in every reply we accept), case-folded. */
function questionBytes(msg: Buffer): Buffer | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return undefined;
  let o = 12;
  while (o < msg.length && msg[o] !== 0) {
    if (msg[o] >= 0x40) return undefined;
    o += msg[o] + 1;
  }
  o += 5;
  if (o > msg.length) return undefined;
  return Buffer.from(msg.subarray(12, o).toString('latin1').toLowerCase(), 'latin1');
}
