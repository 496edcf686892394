/**
 * Which mappings the ::1 relay serves and which the kernel does
 * (shared/portproxy/index.ts), and the records it trusts
 * (shared/portproxy/records.ts): pure logic and files in a temporary
 * directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { kernelMappings, proxyEntries } from '../../../shared/portproxy';
import { relayCommand } from '../../../shared/portproxy/launch';
import { entrySchema, loadRecords, putRecord, recordFile, type ProxyRecord } from '../../../shared/portproxy/records';

const v4 = { family: 'ipv4', ip: '10.1.0.5' } as const;
const v6 = { family: 'ipv6', ip: 'fd00::5' } as const;
const m = (hostPort: number, extra: { hostIP?: string; protocol?: string; range?: number; containerPort?: number } = {}) => ({
  hostPort,
  containerPort: extra.containerPort ?? 80,
  protocol: extra.protocol ?? 'tcp',
  ...(extra.hostIP !== undefined && { hostIP: extra.hostIP }),
  ...(extra.range !== undefined && { range: extra.range }),
});

describe('kernelMappings', () => {
  it('leaves every mapping but those on ::1 (in any spelling) to the kernel', () => {
    const all = [m(1), m(2, { hostIP: '::1' }), m(3, { hostIP: '0:0::1' }), m(4, { hostIP: '::' }), m(5, { hostIP: '127.0.0.1' }), m(6, { hostIP: 'bogus' })];
    expect(kernelMappings(all).map((x) => x.hostPort)).toEqual([1, 4, 5, 6]);
  });
});

describe('proxyEntries', () => {
  it('serves ::1 and wildcard mappings, to the IPv6 address when there is one', () => {
    expect(proxyEntries([m(8080, { hostIP: '::1' }), m(9090), m(7070, { hostIP: '::', protocol: 'udp' })], [v4, v6])).toEqual([
      { protocol: 'tcp', hostPort: 8080, containerIP: 'fd00::5', containerPort: 80, explicit: true },
      { protocol: 'tcp', hostPort: 9090, containerIP: 'fd00::5', containerPort: 80, explicit: false },
      { protocol: 'udp', hostPort: 7070, containerIP: 'fd00::5', containerPort: 80, explicit: false },
    ]);
  });

  it('relays to an IPv4-only container too', () => {
    expect(proxyEntries([m(8080, { hostIP: '::1' })], [v4])).toEqual([{ protocol: 'tcp', hostPort: 8080, containerIP: '10.1.0.5', containerPort: 80, explicit: true }]);
  });

  it('serves nothing for IPv4 or other addresses, sctp, or a container without addresses', () => {
    expect(proxyEntries([m(1, { hostIP: '0.0.0.0' }), m(2, { hostIP: '127.0.0.1' }), m(3, { hostIP: 'fd00::1' }), m(4, { protocol: 'sctp' })], [v4, v6])).toEqual([]);
    expect(proxyEntries([m(1, { hostIP: '::1' })], [])).toEqual([]);
  });

  it('expands a range port by port', () => {
    expect(proxyEntries([m(8000, { hostIP: '::1', range: 3, containerPort: 90 })], [v6]).map((e) => `${e.hostPort}->${e.containerPort}`)).toEqual(['8000->90', '8001->91', '8002->92']);
  });

  it('gives a port an explicit ::1 mapping and a wildcard one both name to the explicit one', () => {
    const out = proxyEntries([m(8080, { containerPort: 1 }), m(8080, { hostIP: '::1', containerPort: 2 })], [v6]);
    expect(out).toEqual([{ protocol: 'tcp', hostPort: 8080, containerIP: 'fd00::5', containerPort: 2, explicit: true }]);
  });

  it('refuses two ::1 mappings competing for one port (code 7)', () => {
    let err: unknown;
    try {
      proxyEntries([m(8080, { hostIP: '::1', containerPort: 1 }), m(8080, { hostIP: '::1', containerPort: 2 })], [v6]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(7);
  });
});

describe('records', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portproxy-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const owner = { network: 'n', containerID: 'c1', ifname: 'eth0' };
  const record = (containerIP: string): ProxyRecord => ({ owner, seq: 1, entries: [{ protocol: 'tcp', hostPort: 8080, containerIP, containerPort: 80, explicit: true }] });

  it('never lets a record send the relay to the host itself, a wildcard or a multicast group', () => {
    for (const ip of ['127.0.0.1', '127.1.2.3', '::1', '::', '0.0.0.0', '::ffff:127.0.0.1', '224.0.0.1', 'ff02::1', 'example.com']) {
      expect(entrySchema.safeParse({ protocol: 'tcp', hostPort: 1, containerIP: ip, containerPort: 1, explicit: true }).success, ip).toBe(false);
    }
    for (const ip of ['10.1.0.5', 'fd00::5', '192.0.2.1']) {
      expect(entrySchema.safeParse({ protocol: 'tcp', hostPort: 1, containerIP: ip, containerPort: 1, explicit: true }).success, ip).toBe(true);
    }
  });

  it('writes 0600 records and reads back only whole, valid ones under their owner\'s name', () => {
    putRecord(dir, record('10.1.0.5'));
    const file = recordFile(owner);
    expect(fs.statSync(path.join(dir, file)).mode & 0o777).toBe(0o600);
    expect(loadRecords(dir).map((r) => r.file)).toEqual([file]);
    // a torn file, a record with a loopback target, a record copied under another name: skipped
    fs.writeFileSync(path.join(dir, `${'a'.repeat(32)}.json`), '{"owner":');
    fs.writeFileSync(path.join(dir, recordFile({ ...owner, containerID: 'c2' })), JSON.stringify({ ...record('127.0.0.1'), owner: { ...owner, containerID: 'c2' } }));
    fs.copyFileSync(path.join(dir, file), path.join(dir, `${'b'.repeat(32)}.json`));
    const skipped: string[] = [];
    expect(loadRecords(dir, (msg) => skipped.push(msg)).map((r) => r.file)).toEqual([file]);
    expect(skipped).toHaveLength(3);
  });

  it('putRecord refuses to write what the relay would refuse to read', () => {
    expect(() => putRecord(dir, record('::1'))).toThrow();
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});


describe('relayCommand', () => {
  it('refuses to start the relay from a process that is not cni-ts (here: the test runner)', () => {
    expect(process.argv[1]).toBeDefined();
    expect(relayCommand()).toBeUndefined();
  });
});
