/**
 * The `dns` configuration block, the names an ADD registers, and the
 * records directory (atomic files, idempotent removal, GC, invalid files
 * skipped when read back).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { plugin as ipvlan } from '../../../plugins/ipvlan/main';
import { plugin as macvlan } from '../../../plugins/macvlan/main';
import { schema as overlaySchema } from '../../../plugins/overlay/config';
import { dnsConf, parseHostPort } from '../../../shared/dns/config';
import { namesOf } from '../../../shared/dns';
import { gcEntries, getEntry, loadAll, putEntry, readSerial, removeEntry } from '../../../shared/dns/records';

describe('dns config', () => {
  it('is off by default with the default domain', () => {
    expect(dnsConf.parse({})).toMatchObject({ enabled: false, domain: 'dns.cni-ts' });
  });

  it('takes upstream as IP or IP:port and refuses anything else', () => {
    expect(parseHostPort('10.0.0.1')).toEqual({ host: '10.0.0.1', port: 53 });
    expect(parseHostPort('127.0.0.1:5353')).toEqual({ host: '127.0.0.1', port: 5353 });
    expect(parseHostPort('[::1]:5300')).toEqual({ host: '::1', port: 5300 });
    for (const bad of ['example.org', '10.0.0.1:0', '10.0.0.1:99999', '[::1', '']) expect(dnsConf.safeParse({ upstream: [bad] }).success, bad).toBe(false);
    expect(dnsConf.safeParse({ domain: 'bad domain' }).success).toBe(false);
    expect(dnsConf.safeParse({ dataDir: 'relative' }).success).toBe(false);
  });

  it('macvlan, ipvlan and overlay accept the block, enabled too (macvlan/ipvlan answer at 127.0.0.11, overlay from etcd)', () => {
    const base = { cniVersion: '1.0.0', name: 'n', master: 'eth0' };
    for (const [schema, type] of [[macvlan.schema, 'macvlan'], [ipvlan.schema, 'ipvlan'], [overlaySchema, 'overlay']] as const) {
      expect(schema.safeParse({ ...base, type, dns: { enabled: false } }).success, type).toBe(true);
      const r = schema.safeParse({ ...base, type, dns: { enabled: true } });
      expect(r.success, `${type}: ${JSON.stringify(r.error?.issues)}`).toBe(true);
    }
  });
});

describe('names an ADD registers', () => {
  const config = (runtimeConfig?: Record<string, unknown>) => ({ name: 'net1', runtimeConfig });
  it('K8S_POD_NAME and the aliases capability, as a list or as podman\'s map by network; non-DNS names left out', () => {
    expect(namesOf({ args: { K8S_POD_NAME: 'Web' }, config: config({ aliases: ['www', 'bad name', 'www'] }) })).toEqual(['web', 'www']);
    expect(namesOf({ args: { K8S_POD_NAME: 'web' }, config: config({ aliases: { net1: ['a1'], net2: ['other'] } }) })).toEqual(['web', 'a1']);
    expect(namesOf({ args: {}, config: config() })).toEqual([]);
    expect(namesOf({ args: { K8S_POD_NAME: 'x'.repeat(64) }, config: config() })).toEqual([]);
  });
});

describe('records directory', () => {
  const net = { name: 'net1', domain: 'dns.cni-ts', internal: false, listen: ['10.1.0.1'], subnets: ['10.1.0.0/24'] };
  const entry = (id: string) => ({ containerId: id, ifname: 'eth0', names: [id], v4: ['10.1.0.2'], v6: [] });

  it('writes, reads back, removes idempotently, and drops the network with its last record', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-rec-'));
    try {
      expect(putEntry(dir, net, entry('aaa'))).toBe(1);
      putEntry(dir, net, entry('bbb'));
      expect(loadAll(dir)[0].entries.map((e) => e.containerId).sort()).toEqual(['aaa', 'bbb']);
      expect(getEntry(dir, 'net1', 'aaa', 'eth0')?.names).toEqual(['aaa']);
      expect(removeEntry(dir, 'net1', 'aaa', 'eth0')).toBe(3);
      expect(removeEntry(dir, 'net1', 'aaa', 'eth0')).toBeUndefined();
      expect(gcEntries(dir, 'net1', [])).toBe(4);
      expect(loadAll(dir)).toEqual([]);
      expect(readSerial(dir)).toBe(4);
      // no temporary files left behind
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('skips files that do not validate (a corrupt record, a network file naming another network)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-rec-'));
    try {
      putEntry(dir, net, entry('aaa'));
      const d = path.join(dir, 'networks', 'net1');
      fs.writeFileSync(path.join(d, `${'f'.repeat(24)}.json`), '{"containerId": 5}');
      fs.mkdirSync(path.join(dir, 'networks', 'net2'));
      fs.writeFileSync(path.join(dir, 'networks', 'net2', 'network.json'), JSON.stringify(net));
      const warnings: string[] = [];
      const nets = loadAll(dir, (m) => warnings.push(m));
      expect(nets.map((n) => n.name)).toEqual(['net1']);
      expect(nets[0].entries.length).toBe(1);
      expect(warnings.length).toBe(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a network name that is a path', () => {
    expect(() => putEntry('/nonexistent', { ...net, name: '../x' }, entry('a'))).toThrow();
  });
});

describe('upstream servers', () => {
  it('come from resolv.conf, read again when the file changes (at most once a second), or from dns.upstream', async () => {
    const { ResolvConf, parseResolvConf, upstreamServers } = await import('../../../shared/dns/upstream');
    expect(parseResolvConf('# c\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch x\nnameserver bogus\n')).toEqual([
      { host: '10.0.0.2', port: 53 },
      { host: 'fe80::1', port: 53 },
    ]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-resolv-'));
    try {
      const file = path.join(dir, 'resolv.conf');
      fs.writeFileSync(file, 'nameserver 10.0.0.2\n');
      let now = 0;
      const rc = new ResolvConf(file, () => now);
      expect(rc.get()).toEqual([{ host: '10.0.0.2', port: 53 }]);
      // replaced the way resolvconf tools do: a new file renamed over the old one
      fs.writeFileSync(`${file}.new`, 'nameserver 10.0.0.3\nnameserver 10.0.0.4\n');
      fs.renameSync(`${file}.new`, file);
      expect(rc.get()).toEqual([{ host: '10.0.0.2', port: 53 }]);
      now += 1500;
      expect(rc.get().map((s) => s.host)).toEqual(['10.0.0.3', '10.0.0.4']);
      expect(upstreamServers(['127.0.0.1:5353'], rc)).toEqual([{ host: '127.0.0.1', port: 5353 }]);
      expect(upstreamServers(undefined, rc).length).toBe(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
