/**
 * ctnetlink through netlink-ts (shared/netlink/conntrack.ts) on this kernel:
 * two namespaces joined by a veth, A sending UDP to B from fixed source
 * ports, B tracking connections (an nft rule that reads ct state makes the
 * kernel track in B: a fixture, built with nft).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AF_INET, AF_INET6, IPPROTO, conntrackDeleteByDstPorts, conntrackList } from '../../../shared/netlink/conntrack';
import { addNetns, delNetns, uniqueName } from '../../../testkit/exec';

const a = uniqueName('cta');
const b = uniqueName('ctb');
const bPath = `/var/run/netns/${b}`;

function sh(...argv: string[]): void {
  execFileSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Datagrams from A (fixed source port) to B until B tracks the flow; nothing answers them. */
function send(dst: string, dstPort: number, srcPort: number): void {
  const family = dst.includes(':') ? AF_INET6 : AF_INET;
  const script = `const u=require('node:dgram').createSocket('${family === AF_INET6 ? 'udp6' : 'udp4'}');u.bind(${srcPort},()=>u.send('x',${dstPort},'${dst}',()=>u.close()));`;
  for (let attempt = 0; attempt < 50; attempt++) {
    const r = spawnSync('ip', ['netns', 'exec', a, process.execPath, '-e', script], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    // the first datagrams on a fresh link may wait for neighbour discovery
    for (let i = 0; i < 10; i++) {
      if (conntrackList(family, bPath).some((f) => f.orig.srcPort === srcPort && f.orig.dstPort === dstPort)) return;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  throw new Error(`B never tracked ${dst}:${dstPort} from port ${srcPort}`);
}

const flowsTo = (family: typeof AF_INET | typeof AF_INET6, port: number) =>
  conntrackList(family, bPath).filter((f) => f.orig.proto === IPPROTO.udp && f.orig.dstPort === port);

beforeAll(() => {
  addNetns(a);
  addNetns(b);
  sh('ip', '-n', a, 'link', 'add', 'ct0', 'type', 'veth', 'peer', 'name', 'ct0', 'netns', b);
  for (const [ns, v4, v6] of [
    [a, '10.98.0.1/24', 'fd98::1/64'],
    [b, '10.98.0.2/24', 'fd98::2/64'],
  ]) {
    sh('ip', '-n', ns, 'addr', 'add', v4, 'dev', 'ct0');
    sh('ip', '-n', ns, 'addr', 'add', v6, 'dev', 'ct0', 'nodad');
    sh('ip', '-n', ns, 'link', 'set', 'ct0', 'up');
    sh('ip', '-n', ns, 'link', 'set', 'lo', 'up');
  }
  sh('ip', 'netns', 'exec', b, 'nft', 'add table inet t; add chain inet t in { type filter hook input priority 0; }; add rule inet t in ct state new counter');
});

afterAll(() => {
  delNetns(a);
  delNetns(b);
});

describe('conntrack over netlink', () => {
  it('lists the UDP flows of both families with their tuples', () => {
    send('10.98.0.2', 7001, 40001);
    send('fd98::2', 7001, 40002);
    const [v4] = flowsTo(AF_INET, 7001);
    expect(v4.orig).toEqual({ src: '10.98.0.1', dst: '10.98.0.2', proto: 17, srcPort: 40001, dstPort: 7001 });
    expect(v4.reply).toEqual({ src: '10.98.0.2', dst: '10.98.0.1', proto: 17, srcPort: 7001, dstPort: 40001 });
    const [v6] = flowsTo(AF_INET6, 7001);
    expect(v6.orig).toMatchObject({ src: 'fd98::1', dst: 'fd98::2', srcPort: 40002, dstPort: 7001 });
  });

  it('deletes the flows to one port in both families, and only those', () => {
    send('10.98.0.2', 7002, 40003);
    send('10.98.0.2', 7003, 40004);
    send('fd98::2', 7002, 40005);
    expect(conntrackDeleteByDstPorts(IPPROTO.udp, [7002], [], bPath)).toBe(2);
    expect(flowsTo(AF_INET, 7002)).toEqual([]);
    expect(flowsTo(AF_INET6, 7002)).toEqual([]);
    expect(flowsTo(AF_INET, 7003)).toHaveLength(1);
    // nothing left to delete is not an error
    expect(conntrackDeleteByDstPorts(IPPROTO.udp, [7002], [], bPath)).toBe(0);
    // another protocol's port is another port
    expect(conntrackDeleteByDstPorts(IPPROTO.tcp, [7003], [], bPath)).toBe(0);
    expect(flowsTo(AF_INET, 7003)).toHaveLength(1);
  });

  it('keeps the flows already answered from an address it is told to keep', () => {
    send('10.98.0.2', 7004, 40006);
    send('fd98::2', 7004, 40007);
    expect(conntrackDeleteByDstPorts(IPPROTO.udp, [7004], ['10.98.0.2', 'fd98:0::2'], bPath)).toBe(0);
    expect(flowsTo(AF_INET, 7004)).toHaveLength(1);
    expect(conntrackDeleteByDstPorts(IPPROTO.udp, [7004], ['10.98.0.2'], bPath)).toBe(1);
    expect(flowsTo(AF_INET6, 7004)).toEqual([]);
  });
});
