/**
 * The relay's listeners (shared/portproxy/relay.ts) in this process: which
 * record gets a port, what could not be bound, closing on removal, and that
 * it binds ::1 alone. No traffic is sent: the records' container address is
 * never connected to here (the kernel test, test/plugins/portmap/
 * v6-loopback.test.ts, relays real traffic between namespaces it creates).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loopback6Listening } from '../../../shared/portproxy';
import { putRecord, recordFile, removeRecord, type ProxyEntry, type ProxyOwner } from '../../../shared/portproxy/records';
import { Relay } from '../../../shared/portproxy/relay';

const P = 30000 + Math.floor(Math.random() * 2000) * 10;
const TARGET = '192.0.2.10';

const owner = (containerID: string): ProxyOwner => ({ network: 'relaytest', containerID, ifname: 'eth0' });
const entry = (protocol: 'tcp' | 'udp', hostPort: number, explicit: boolean): ProxyEntry => ({ protocol, hostPort, containerIP: TARGET, containerPort: 80, explicit });

/** Every socket of this namespace bound to `port`, as "<proto> <local address>" from /proc. */
function boundTo(port: number): string[] {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const out: string[] = [];
  for (const proto of ['tcp', 'tcp6', 'udp', 'udp6']) {
    for (const line of fs.readFileSync(`/proc/thread-self/net/${proto}`, 'utf8').split('\n').slice(1)) {
      const local = line.trim().split(/\s+/)[1];
      if (local?.endsWith(`:${hex}`)) out.push(`${proto} ${local.split(':')[0]}`);
    }
  }
  return out.sort();
}

const LO6 = '00000000000000000000000001000000';

let dir: string;
let relay: Relay;
const logs: string[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portproxy-relay-'));
  relay = new Relay({ dir, log: (m) => logs.push(m) });
});
afterEach(async () => {
  await relay.closeAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('Relay.reload', () => {
  it('binds each recorded port on ::1 and nowhere else, TCP and UDP', async () => {
    putRecord(dir, { owner: owner('a'), seq: 1, entries: [entry('tcp', P, true), entry('udp', P, true), entry('tcp', P + 1, false)] });
    const served = await relay.reload();
    expect(served.failed).toEqual([]);
    expect(served.listening).toHaveLength(3);
    expect(boundTo(P)).toEqual([`tcp6 ${LO6}`, `udp6 ${LO6}`]);
    expect(boundTo(P + 1)).toEqual([`tcp6 ${LO6}`]);
    const seen = loopback6Listening();
    for (const k of [`tcp/${P}`, `udp/${P}`, `tcp/${P + 1}`]) expect(seen.has(k), k).toBe(true);
  });

  it('gives a contested port to the explicit ::1 mapping over an earlier wildcard one, and reports the other', async () => {
    putRecord(dir, { owner: owner('wild'), seq: 1, entries: [entry('tcp', P + 2, false)] });
    putRecord(dir, { owner: owner('lo'), seq: 2, entries: [entry('tcp', P + 2, true)] });
    const served = await relay.reload();
    expect(served.listening).toEqual([{ protocol: 'tcp', hostPort: P + 2, file: recordFile(owner('lo')) }]);
    expect(served.failed).toEqual([{ protocol: 'tcp', hostPort: P + 2, file: recordFile(owner('wild')), error: `held by record ${recordFile(owner('lo'))}` }]);
  });

  it('reports a port another socket holds on ::1 as EADDRINUSE and serves the rest', async () => {
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen({ host: '::1', port: P + 3, ipv6Only: true }, () => r()));
    try {
      putRecord(dir, { owner: owner('a'), seq: 1, entries: [entry('tcp', P + 3, true), entry('tcp', P + 4, true)] });
      const served = await relay.reload();
      expect(served.failed).toEqual([{ protocol: 'tcp', hostPort: P + 3, file: recordFile(owner('a')), error: 'EADDRINUSE' }]);
      expect(served.listening.map((l) => l.hostPort)).toEqual([P + 4]);
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  it('closes the ports of a removed record before it returns', async () => {
    putRecord(dir, { owner: owner('a'), seq: 1, entries: [entry('tcp', P + 5, true), entry('udp', P + 5, true)] });
    await relay.reload();
    expect(boundTo(P + 5)).toHaveLength(2);
    removeRecord(dir, owner('a'));
    const served = await relay.reload();
    expect(served.listening).toEqual([]);
    expect(relay.size).toBe(0);
    expect(boundTo(P + 5)).toEqual([]);
  });
});
