/**
 * The resolver at 127.0.0.11 inside containers' namespaces, on this kernel:
 * the native call makes its socket in the target namespace; the resolver
 * (in this process) opens a listener and a redirect in each recorded
 * namespace, answers each container from its own network only, over UDP
 * and TCP through 127.0.0.11:53; a container process binding :53 itself
 * keeps working; removal closes the listener and removes the redirect; a
 * restarted resolver answers again; a namespace that goes away takes its
 * listener and record with it; a record naming a namespace that is not the
 * one recorded is not listened in, even a later namespace at the same path
 * that got the recorded inode back (its cookie differs), and a record
 * without a cookie (an older version's) is skipped; malformed queries get
 * an error or nothing. Nothing changes in this process's own namespace.
 */
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { addressesOf } from '../../../shared/dns/client';
import { EMBEDDED_DNS, REDIRECT_TABLE, answersFrom, askInNetns, netnsAlive, netnsRefOf, openRecordedNetns, type NetnsRef } from '../../../shared/dns/netns-listener';
import { entryFile, getEntry, putEntry, removeEntry, type DnsNetwork } from '../../../shared/dns/records';
import { MAX_TCP_PER_CLIENT, Resolver } from '../../../shared/dns/server';
import { inetSocketAt, udpSocketAt } from '../../../shared/sys/inet-socket';
import { native } from '../../../shared/sys/native';
import { addNetns, delNetns, uniqueName } from '../../../testkit/netns';

const made: string[] = [];
function netns(prefix: string): { name: string; path: string } {
  const name = uniqueName(prefix);
  const p = addNetns(name);
  made.push(name);
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return { name, path: p };
}
afterAll(() => {
  for (const n of made.reverse()) delNetns(n);
});

function run(cmd: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8' }, (err, stdout, stderr) => resolve({ status: err ? Number(err.code ?? 1) : 0, stdout, stderr }));
  });
}

/** Ports with a socket in the namespace (the reader's /proc/net is its namespace's). */
function boundPorts(ns: string | undefined, proto: 'udp' | 'tcp'): number[] {
  const text = ns ? execFileSync('ip', ['netns', 'exec', ns, 'cat', `/proc/net/${proto}`], { encoding: 'utf8' }) : fs.readFileSync(`/proc/net/${proto}`, 'utf8');
  return text
    .split('\n')
    .slice(1)
    .filter((l) => l.trim())
    .map((l) => parseInt(l.trim().split(/\s+/)[1].split(':')[1], 16));
}

function tablesIn(ns: string): string[] {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'tables'], { encoding: 'utf8' });
  return (JSON.parse(out).nftables as Array<{ table?: { family: string; name: string } }>).filter((o) => o.table).map((o) => `${o.table!.family} ${o.table!.name}`);
}

describe('inetSocketAt (native)', () => {
  it('makes and binds the socket inside the target namespace, not in ours', async () => {
    const ns = netns('h3sock');
    const fd = fs.openSync(ns.path, 'r');
    try {
      const sock = await udpSocketAt(fd, '127.0.0.1', 0);
      const port = sock.address().port;
      expect(port).toBeGreaterThan(0);
      expect(boundPorts(ns.name, 'udp')).toContain(port);
      expect(boundPorts(undefined, 'udp')).not.toContain(port);
      sock.close();
      expect(boundPorts(ns.name, 'udp')).not.toContain(port);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('binds 127.0.0.11 in a namespace whose loopback is still down (IP_FREEBIND)', () => {
    const name = uniqueName('h3down');
    const p = addNetns(name);
    made.push(name);
    const fd = fs.openSync(p, 'r');
    try {
      const s = inetSocketAt(fd, 'tcp', EMBEDDED_DNS, 0);
      expect(s).toBeGreaterThan(2);
      native().close(s);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('throws with the errno for a descriptor that is not a namespace, and a TypeError for a bad address', () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      expect(() => inetSocketAt(fd, 'udp', '127.0.0.1', 0)).toThrow(expect.objectContaining({ syscall: 'setns', errno: 22 }));
      expect(() => inetSocketAt(fd, 'udp', 'not-an-ip', 0)).toThrow(TypeError);
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('openRecordedNetns', () => {
  it('opens the recorded namespace only: not another at the same path, not the opener\'s own', () => {
    const ns = netns('h3open');
    const ref = netnsRefOf(ns.path);
    const fd = openRecordedNetns(ref);
    expect(fd).toBeGreaterThan(2);
    fs.closeSync(fd!);
    expect(openRecordedNetns({ ...ref, ino: ref.ino + 1 })).toBeUndefined();
    expect(openRecordedNetns({ ...ref, dev: ref.dev + 1 })).toBeUndefined();
    expect(openRecordedNetns(netnsRefOf('/proc/self/ns/net'))).toBeUndefined();
    expect(openRecordedNetns({ path: '/dev/null', dev: fs.statSync('/dev/null').dev, ino: fs.statSync('/dev/null').ino, cookie: ref.cookie })).toBeUndefined();
    // the same device and inode with another cookie, and without one (a record from before the cookie)
    expect(openRecordedNetns({ ...ref, cookie: (BigInt(ref.cookie) + 1n).toString() })).toBeUndefined();
    const { cookie: _, ...legacy } = ref;
    expect(openRecordedNetns(legacy as unknown as NetnsRef)).toBeUndefined();
    expect(netnsAlive(ref)).toBe(true);
    expect(netnsAlive(legacy as unknown as NetnsRef)).toBe(false);
  });

  it('refuses a later namespace bound at the recorded path that got the recorded inode back', () => {
    const name = uniqueName('h3reuse');
    const p = addNetns(name);
    made.push(name);
    const ref = netnsRefOf(p);
    // the recorded namespace goes; the kernel frees its inode number (asynchronously) and hands it out again
    let reused = false;
    for (let i = 0; i < 200 && !reused; i++) {
      delNetns(name);
      addNetns(name);
      reused = fs.statSync(p).ino === ref.ino;
    }
    let recorded: NetnsRef = ref;
    if (!reused) {
      // never repeated here: the same situation built directly, the live namespace's device and inode with a gone one's cookie
      const gone = uniqueName('h3gone');
      const cookie = netnsRefOf(addNetns(gone)).cookie;
      delNetns(gone);
      recorded = { ...netnsRefOf(p), cookie };
    }
    console.log(`inode reuse at ${p}: ${reused ? 'observed' : 'not observed, constructed'}`);
    // the path names a namespace with the recorded device and inode: only the cookie tells it is another one
    const now = netnsRefOf(p);
    expect({ dev: now.dev, ino: now.ino }).toEqual({ dev: recorded.dev, ino: recorded.ino });
    expect(now.cookie).not.toBe(recorded.cookie);
    expect(openRecordedNetns(recorded)).toBeUndefined();
    expect(netnsAlive(recorded)).toBe(false);
    // the namespace now there is opened by its own record
    const fd = openRecordedNetns(now);
    expect(fd).toBeGreaterThan(2);
    fs.closeSync(fd!);
  });
});

describe('the resolver at 127.0.0.11 inside containers', () => {
  let dir: string;
  let resolver: Resolver;
  let a: { name: string; path: string };
  let b: { name: string; path: string };
  let c: { name: string; path: string };
  const logs: string[] = [];
  const idA = 'a'.repeat(20);
  const idB = 'b'.repeat(20);
  const idC = 'c'.repeat(20);

  // upstream: a loopback port where nothing listens, so nothing forwarded leaves this host
  const X: DnsNetwork = { name: 'h3x', domain: 'dns.cni-ts', internal: false, listen: [], subnets: ['10.91.0.0/24'], upstream: ['127.0.0.1:9'] };
  const Y: DnsNetwork = { ...X, name: 'h3y', subnets: ['10.92.0.0/24'] };

  const start = async () => {
    resolver = new Resolver({ dir, log: (m) => logs.push(m), netnsCheckMs: 50 });
    await resolver.reload();
  };

  beforeAll(() => {
    a = netns('h3a');
    b = netns('h3b');
    c = netns('h3c');
  });
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-netns-'));
    putEntry(dir, X, { containerId: idA, ifname: 'eth0', names: ['alpha', 'www'], v4: ['10.91.0.2'], v6: [], netns: netnsRefOf(a.path) });
    putEntry(dir, X, { containerId: idB, ifname: 'eth0', names: ['bravo'], v4: ['10.91.0.3'], v6: [], netns: netnsRefOf(b.path) });
    putEntry(dir, Y, { containerId: idC, ifname: 'eth0', names: ['charlie'], v4: ['10.92.0.2'], v6: [], netns: netnsRefOf(c.path) });
    logs.length = 0;
    await start();
  });
  afterEach(async () => {
    await resolver.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('listens in each container namespace, with a redirect there and nothing in ours', () => {
    const ours = { udp: boundPorts(undefined, 'udp'), tcp: boundPorts(undefined, 'tcp') };
    const l = resolver.listeningInNetns();
    expect(l.map((x) => x.path).sort()).toEqual([a.path, b.path, c.path].sort());
    for (const x of l) {
      const ns = path.basename(x.path);
      expect(boundPorts(ns, 'udp')).toContain(x.udp);
      expect(boundPorts(ns, 'tcp')).toContain(x.tcp);
      expect(tablesIn(ns)).toEqual([`ip ${REDIRECT_TABLE.table}`]);
      const rules = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'ip', REDIRECT_TABLE.table], { encoding: 'utf8' });
      expect(rules).toContain(`ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:${x.udp}`);
      expect(rules).toContain(`ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:${x.tcp}`);
      expect(ours.udp).not.toContain(x.udp);
    }
  });

  it('answers names and aliases of the same network through 127.0.0.11:53, over UDP', async () => {
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
    expect(addressesOf(await askInNetns(b.path, 'www.dns.cni-ts', 'A'))).toEqual(['10.91.0.2']);
    expect(addressesOf(await askInNetns(b.path, idA.slice(0, 12), 'A'))).toEqual(['10.91.0.2']);
  });

  it('a container on two networks has one listener answering the names of both', async () => {
    putEntry(dir, Y, { containerId: idA, ifname: 'eth1', names: ['alpha'], v4: ['10.92.0.7'], v6: [], netns: netnsRefOf(a.path) });
    await resolver.reload();
    expect(resolver.listeningInNetns().filter((x) => x.path === a.path)).toHaveLength(1);
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
    expect(addressesOf(await askInNetns(a.path, 'charlie', 'A'))).toEqual(['10.92.0.2']);
    // b is on X only: Y's names stay unseen
    const r = (await askInNetns(b.path, 'charlie.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r?.rcode).toBe('NXDOMAIN');
    // leaving one network keeps the listener for the other
    removeEntry(dir, 'h3y', idA, 'eth1');
    await resolver.reload();
    expect(resolver.listeningInNetns().map((x) => x.path)).toContain(a.path);
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
  });

  it('two networks do not see each other\'s names', async () => {
    const r = (await askInNetns(c.path, 'alpha.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r?.rcode).toBe('NXDOMAIN');
    const r2 = (await askInNetns(a.path, 'charlie.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r2?.rcode).toBe('NXDOMAIN');
    expect(addressesOf(await askInNetns(c.path, 'charlie', 'A'))).toEqual(['10.92.0.2']);
  });

  it('answers over TCP, and a process in the container binding 0.0.0.0:53 (UDP and TCP) still works', async () => {
    const q = dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'alpha', class: 'IN' }] });
    // in container b: its own DNS server binds :53, then asks 127.0.0.11 over TCP and UDP
    const script = `
      const dgram = require('dgram'), net = require('net');
      const q = Buffer.from(process.argv[1], 'hex');
      const own = dgram.createSocket('udp4'); const ownTcp = net.createServer();
      const t = setTimeout(() => { console.log('timeout'); process.exit(1); }, 3000);
      own.bind(53, '0.0.0.0', () => ownTcp.listen(53, '0.0.0.0', () => {
        const out = {};
        const u = dgram.createSocket('udp4');
        u.on('message', (m) => { out.udp = m.toString('hex'); u.close(); tcp(); });
        u.send(q, 53, '127.0.0.11');
        function tcp() {
          const s = net.connect(53, '127.0.0.11');
          let buf = Buffer.alloc(0);
          s.on('data', (d) => { buf = Buffer.concat([buf, d]); if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
            out.tcp = buf.subarray(2).toString('hex'); s.end(); clearTimeout(t);
            out.ownPort = own.address().port; console.log(JSON.stringify(out)); process.exit(0); } });
          const len = Buffer.alloc(2); len.writeUInt16BE(q.length); s.write(Buffer.concat([len, q]));
        }
      }));`;
    // asynchronously: the resolver answering it runs in this process
    const r = await run('ip', ['netns', 'exec', b.name, process.execPath, '-e', script, q.toString('hex')]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { udp: string; tcp: string; ownPort: number };
    expect(out.ownPort).toBe(53);
    expect(addressesOf(dnsPacket.decode(Buffer.from(out.udp, 'hex')))).toEqual(['10.91.0.2']);
    expect(addressesOf(dnsPacket.decode(Buffer.from(out.tcp, 'hex')))).toEqual(['10.91.0.2']);
  });

  it('after removal the name is gone, the listener closed and the redirect removed', async () => {
    const before = resolver.listeningInNetns().find((x) => x.path === a.path)!;
    removeEntry(dir, 'h3x', idA, 'eth0');
    await resolver.reload();
    expect(resolver.listeningInNetns().map((x) => x.path)).not.toContain(a.path);
    expect(boundPorts(a.name, 'udp')).not.toContain(before.udp);
    expect(boundPorts(a.name, 'tcp')).not.toContain(before.tcp);
    expect(tablesIn(a.name)).toEqual([]);
    const r = (await askInNetns(b.path, 'alpha.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r?.rcode).toBe('NXDOMAIN');
    expect(await askInNetns(a.path, 'bravo', 'A', 300)).toBeUndefined();
  });

  it('a restarted resolver re-opens every listener and points the redirects at them', async () => {
    const before = resolver.listeningInNetns();
    await resolver.close();
    // the old sockets are gone: nothing answers until the new resolver is up
    expect(await askInNetns(a.path, 'bravo', 'A', 300)).toBeUndefined();
    await start();
    const after = resolver.listeningInNetns();
    expect(after.map((x) => x.path).sort()).toEqual(before.map((x) => x.path).sort());
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
    expect(addressesOf(await askInNetns(c.path, 'charlie', 'A'))).toEqual(['10.92.0.2']);
  });

  it('a namespace that goes away takes its listener and its record with it', async () => {
    const gone = netns('h3gone');
    putEntry(dir, X, { containerId: 'd'.repeat(20), ifname: 'eth0', names: ['delta'], v4: ['10.91.0.9'], v6: [] , netns: netnsRefOf(gone.path) });
    await resolver.reload();
    expect(addressesOf(await askInNetns(a.path, 'delta', 'A'))).toEqual(['10.91.0.9']);
    delNetns(gone.name);
    // bounded wait for the periodic look (50 ms here), never a timing assertion
    for (let i = 0; i < 200 && resolver.listeningInNetns().some((x) => x.path === gone.path); i++) await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 200 && getEntry(dir, 'h3x', 'd'.repeat(20), 'eth0'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(resolver.listeningInNetns().map((x) => x.path)).not.toContain(gone.path);
    expect(getEntry(dir, 'h3x', 'd'.repeat(20), 'eth0')).toBeUndefined();
    const r = (await askInNetns(a.path, 'delta.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r?.rcode).toBe('NXDOMAIN');
  });

  it('never listens in a namespace the record does not name (another inode at the path), nor in its own', async () => {
    const other = netns('h3other');
    const ref = netnsRefOf(other.path);
    putEntry(dir, X, { containerId: 'e'.repeat(20), ifname: 'eth0', names: ['echo'], v4: ['10.91.0.10'], v6: [], netns: { ...ref, ino: ref.ino + 1 } });
    const own = netnsRefOf('/proc/self/ns/net');
    putEntry(dir, X, { containerId: 'f'.repeat(20), ifname: 'eth0', names: ['foxtrot'], v4: ['10.91.0.11'], v6: [], netns: own });
    await resolver.reload();
    const paths = resolver.listeningInNetns().map((x) => x.path);
    expect(paths).not.toContain(other.path);
    expect(paths).not.toContain('/proc/self/ns/net');
    expect(tablesIn(other.name)).toEqual([]);
  });

  it('never listens in a namespace whose device and inode match the record but whose cookie does not (a reused inode); the record is dropped', async () => {
    const other = netns('h3reuse');
    // other's device and inode with b's cookie: what a record of a gone namespace looks like once other got its inode
    const ref = { ...netnsRefOf(other.path), cookie: netnsRefOf(b.path).cookie };
    putEntry(dir, X, { containerId: 'e'.repeat(20), ifname: 'eth0', names: ['echo'], v4: ['10.91.0.10'], v6: [], netns: ref });
    await resolver.reload();
    expect(resolver.listeningInNetns().map((x) => x.path)).not.toContain(other.path);
    expect(tablesIn(other.name)).toEqual([]);
    for (let i = 0; i < 200 && getEntry(dir, 'h3x', 'e'.repeat(20), 'eth0'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(getEntry(dir, 'h3x', 'e'.repeat(20), 'eth0')).toBeUndefined();
    expect(addressesOf(await askInNetns(b.path, 'alpha', 'A'))).toEqual(['10.91.0.2']);
  });

  it('a record without a cookie (an older version\'s) is skipped and logged, no listener opened, and the resolver keeps answering', async () => {
    const other = netns('h3legacy');
    const { cookie: _, ...legacy } = netnsRefOf(other.path);
    const id = 'g'.repeat(20);
    const record = { containerId: id, ifname: 'eth0', names: ['golf'], v4: ['10.91.0.12'], v6: [], netns: legacy };
    fs.writeFileSync(path.join(dir, 'networks', 'h3x', entryFile(id, 'eth0')), JSON.stringify(record));
    await resolver.reload();
    expect(logs.some((m) => m.includes('skipping invalid record h3x/'))).toBe(true);
    expect(resolver.listeningInNetns().map((x) => x.path)).not.toContain(other.path);
    expect(tablesIn(other.name)).toEqual([]);
    const r = (await askInNetns(a.path, 'golf.dns.cni-ts', 'A')) as (dnsPacket.DecodedPacket & { rcode: string }) | undefined;
    expect(r?.rcode).toBe('NXDOMAIN');
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
  });

  it('malformed queries get an error answer or nothing, and the resolver keeps answering', async () => {
    const fd = fs.openSync(a.path, 'r');
    const sock = await udpSocketAt(fd, '127.0.0.1', 0);
    fs.closeSync(fd);
    const replies: Buffer[] = [];
    sock.on('message', (m) => replies.push(m));
    const good = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'bravo', class: 'IN' }] });
    const loop = Buffer.from(good);
    loop.writeUInt16BE(0xc00c, 12); // a name that points at itself
    const badClass = dnsPacket.encode({ type: 'query', id: 3, questions: [{ type: 'A', name: 'bravo', class: 'CH' }] });
    const response = Buffer.from(good);
    response.writeUInt16BE(0x8000, 2);
    for (const m of [Buffer.from([1, 2, 3]), good.subarray(0, 14), loop, badClass, response, Buffer.alloc(5000, 1)]) sock.send(m, 53, EMBEDDED_DNS);
    await new Promise((r) => setTimeout(r, 300));
    sock.close();
    for (const r of replies) {
      const rcode = r.readUInt16BE(2) & 0xf;
      expect(r.readUInt16BE(2) & 0x8000).toBe(0x8000);
      expect([1, 4, 5]).toContain(rcode); // FORMERR, NOTIMP, REFUSED
    }
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
  });

  it('answers only loopback sources: a query to 127.0.0.11 from a non-loopback address gets nothing', async () => {
    // a container address on its loopback plays a neighbour that the container's route_localnet let in
    execFileSync('ip', ['-n', a.name, 'addr', 'add', '10.91.0.200/32', 'dev', 'lo']);
    const fd = fs.openSync(a.path, 'r');
    const sock = await udpSocketAt(fd, '10.91.0.200', 0);
    fs.closeSync(fd);
    const replies: Buffer[] = [];
    sock.on('message', (m) => replies.push(m));
    sock.send(dnsPacket.encode({ type: 'query', id: 5, questions: [{ type: 'A', name: 'bravo', class: 'IN' }] }), 53, EMBEDDED_DNS);
    await new Promise((r) => setTimeout(r, 500));
    sock.close();
    expect(replies).toEqual([]);
    // from loopback, the same question answers
    expect(addressesOf(await askInNetns(a.path, 'bravo', 'A'))).toEqual(['10.91.0.3']);
  });

  it('bounds TCP connections per container, whatever 127/8 source addresses it uses', async () => {
    const script = `
      const net = require('net'); let open = 0, closed = 0;
      for (let i = 0; i < ${MAX_TCP_PER_CLIENT + 4}; i++) {
        const s = net.connect({ port: 53, host: '127.0.0.11', localAddress: '127.0.0.' + (i + 2) });
        s.on('connect', () => open++); s.on('close', () => closed++); s.on('error', () => {});
      }
      setTimeout(() => { console.log(JSON.stringify({ open, closed })); process.exit(0); }, 1500);`;
    const r = await run('ip', ['netns', 'exec', a.name, process.execPath, '-e', script]);
    expect(r.status, r.stderr).toBe(0);
    const { open, closed } = JSON.parse(r.stdout) as { open: number; closed: number };
    expect(open).toBe(MAX_TCP_PER_CLIENT + 4);
    expect(open - closed).toBe(MAX_TCP_PER_CLIENT);
  });

  it('answersFrom: 127.0.0.0/8 only', () => {
    expect(answersFrom('127.0.0.1')).toBe(true);
    expect(answersFrom('127.0.0.11')).toBe(true);
    expect(answersFrom('10.91.0.3')).toBe(false);
    expect(answersFrom('::1')).toBe(false);
  });
});
