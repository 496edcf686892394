/**
 * portmap's calls into the ::1 relay (shared/portproxy/index.ts) against a
 * records directory of their own, in a process that is not cni-ts (the test
 * runner), so no relay is ever started here: conflicts decided from the
 * records under the lock, what is written or not, DEL and GC. The relay's
 * side, with real traffic, is test/plugins/portmap/v6-loopback.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { portProxy, type ProxyRequest } from '../../../shared/portproxy';
import { loadRecords, putRecord, readSerial, recordFile } from '../../../shared/portproxy/records';

let dir: string;
const logs: string[] = [];
const proxy = () => portProxy({ dir: () => dir, conflictCode: 110, missingCode: 111 });
const owner = (containerID: string, network = 'net') => ({ network, containerID, ifname: 'eth0' });
const heldByA = () =>
  putRecord(dir, { owner: owner('a'), seq: 1, entries: [{ protocol: 'tcp', hostPort: 8080, containerIP: 'fd00::a', containerPort: 80, explicit: true }] });
const req = (containerID: string, hostIP?: string): ProxyRequest => ({
  owner: owner(containerID),
  mappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', ...(hostIP && { hostIP }) }],
  addrs: [{ family: 'ipv6', ip: 'fd00::b' }],
});

function codeOf(fn: () => void): number | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
  return undefined;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portproxy-hook-'));
  logs.length = 0;
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('add', () => {
  it("refuses an explicit ::1 port another attachment's record holds (110, naming it) and writes nothing", () => {
    heldByA();
    let err: CniError | undefined;
    try {
      proxy().add(req('b', '::1'), (m) => logs.push(m));
    } catch (e) {
      err = e as CniError;
    }
    expect(err?.code).toBe(110);
    expect(err?.msg).toContain('container a (network net, eth0)');
    expect(loadRecords(dir).map((r) => r.record.owner.containerID)).toEqual(['a']);
  });

  it('logs a wildcard mapping whose ::1 port another record holds, and fails no ADD', () => {
    heldByA();
    expect(codeOf(() => proxy().add(req('b'), (m) => logs.push(m)))).toBeUndefined();
    expect(logs.join('\n')).toContain('tcp [::1]:8080 is published on ::1 by container a');
  });

  it('never starts a relay from a process that is not cni-ts: an explicit ::1 mapping is code 11, nothing is recorded', () => {
    expect(codeOf(() => proxy().add(req('b', '::1'), (m) => logs.push(m)))).toBe(11);
    expect(loadRecords(dir)).toEqual([]);
    expect(readSerial(dir)).toBe(0);
  });

  it('with no ::1 mapping left, a re-ADD forgets the earlier record', () => {
    heldByA();
    proxy().add({ owner: owner('a'), mappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '10.0.0.1' }], addrs: [{ family: 'ipv4', ip: '10.1.0.5' }] }, () => {});
    expect(loadRecords(dir)).toEqual([]);
  });
});

describe('del and gc', () => {
  it('DEL removes the record, bumps the serial, and is idempotent', () => {
    heldByA();
    proxy().del(owner('a'));
    expect(fs.existsSync(path.join(dir, recordFile(owner('a'))))).toBe(false);
    expect(readSerial(dir)).toBe(1);
    proxy().del(owner('a'));
    expect(readSerial(dir)).toBe(1);
  });

  it("GC removes the network's records valid-attachments does not list, and no other network's", () => {
    heldByA();
    putRecord(dir, { owner: owner('b'), seq: 2, entries: [{ protocol: 'udp', hostPort: 53, containerIP: 'fd00::b', containerPort: 53, explicit: true }] });
    putRecord(dir, { owner: owner('c', 'other'), seq: 3, entries: [{ protocol: 'tcp', hostPort: 9, containerIP: 'fd00::c', containerPort: 9, explicit: false }] });
    proxy().gc('net', [{ containerID: 'b', ifname: 'eth0' }]);
    expect(loadRecords(dir).map((r) => r.record.owner.containerID).sort()).toEqual(['b', 'c']);
  });
});

describe('check', () => {
  it('fails (111) for a recorded attachment when no relay runs', () => {
    heldByA();
    const r: ProxyRequest = { ...req('a', '::1'), addrs: [{ family: 'ipv6', ip: 'fd00::a' }] };
    expect(codeOf(() => proxy().check(r))).toBe(111);
  });

  it('passes a wildcard-only attachment that has no record (added before ::1 was served)', () => {
    expect(codeOf(() => proxy().check(req('b')))).toBeUndefined();
  });
});
