/**
 * One question asked from inside a container's network namespace, from a
 * given source address: how CHECK asks the resolver on a network whose
 * resolver address is shared (the overlay's gateway bridge), where only
 * the container's own address is answered. The socket is made in the
 * namespace (shared/sys/inet-socket.ts), so the query takes the
 * container's own path (its egress interface), as the container's would.
 */
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as dnsPacket from 'dns-packet';
import { udpSocketAt } from '../sys/inet-socket';

export async function askFromNetns(
  netnsPath: string,
  from: string,
  server: string,
  name: string,
  type: 'A' | 'AAAA',
  timeoutMs = 1000,
): Promise<dnsPacket.DecodedPacket | undefined> {
  const fd = fs.openSync(netnsPath, fs.constants.O_RDONLY);
  let sock;
  try {
    sock = await udpSocketAt(fd, from, 0);
  } finally {
    fs.closeSync(fd);
  }
  const s = sock;
  const id = randomInt(0, 65536);
  const packet = dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  return new Promise((resolve) => {
    const finish = (r: dnsPacket.DecodedPacket | undefined) => {
      clearTimeout(timer);
      s.close();
      resolve(r);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    s.on('message', (msg, rinfo) => {
      if (rinfo.address !== server || rinfo.port !== 53) return;
      try {
        const d = dnsPacket.decode(msg);
        if (d.id === id) finish(d);
      } catch {
        /* not a DNS message: keep waiting */
      }
    });
    s.on('error', () => finish(undefined));
    s.send(packet, 53, server);
  });
}
