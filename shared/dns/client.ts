/**
 * A one-question DNS client over UDP: CHECK uses it to ask the resolver
 * whether a container's name answers (from the gateway address, which is
 * inside the network, so the resolver serves it), and tests and the
 * benchmark use it to ask.
 */
import { randomInt } from 'node:crypto';
import * as dnsPacket from 'dns-packet';
import { udpExchange } from './udp';

export interface QueryOptions {
  server: string;
  port?: number;
  /** source address to send from */
  from?: string;
  timeoutMs?: number;
}

/** Sends one query and resolves with the decoded reply, or undefined on timeout. */
export function query(name: string, type: dnsPacket.RecordType, opts: QueryOptions): Promise<dnsPacket.DecodedPacket | undefined> {
  const id = randomInt(0, 65536);
  const packet = dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  return rawQuery(packet, opts).then((r) => {
    if (!r) return undefined;
    try {
      const d = dnsPacket.decode(r);
      return d.id === id ? d : undefined;
    } catch {
      return undefined;
    }
  });
}

/** Sends raw bytes to the server; resolves with the first datagram back from it, or undefined on timeout. */
export function rawQuery(packet: Buffer, opts: QueryOptions): Promise<Buffer | undefined> {
  const to = { host: opts.server, port: opts.port ?? 53, from: opts.from, timeoutMs: opts.timeoutMs ?? 1000 };
  return udpExchange(packet, to, (m, rinfo) => (rinfo.address === opts.server ? m : undefined));
}

/** The addresses of the answers (A and AAAA), sorted. */
export function addressesOf(reply: dnsPacket.DecodedPacket | undefined): string[] {
  return (reply?.answers ?? [])
    .filter((a) => a.type === 'A' || a.type === 'AAAA')
    .map((a) => String((a as { data: unknown }).data))
    .sort();
}
