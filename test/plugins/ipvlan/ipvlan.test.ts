/**
 * The packaged ipvlan plugin on this host's kernel, which has no ipvlan:
 * only what is decided before any ipvlan link exists is tested here (bad
 * input and the route plan). Connectivity in l2 and l3 modes is tested in
 * the VM (test/vm/guest/macvlan-ipvlan.guest.ts).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, addNetns, delNetns, ipJson, uniqueName } from '../../../testkit/exec';
import { containerRoutes } from '../../../plugins/ipvlan/main';

describe('ipvlan routes', () => {
  const ips = [{ address: '10.1.0.5/24', gateway: '10.1.0.1' }];

  it('l2 keeps IPAM\'s routes and sends them via the gateway', () => {
    expect(containerRoutes('l2', ips, [{ dst: '0.0.0.0/0' }, { dst: '10.9.0.0/16', gw: '10.1.0.9' }])).toEqual([
      { dst: '0.0.0.0/0', gw: '10.1.0.1' },
      { dst: '10.9.0.0/16', gw: '10.1.0.9' },
    ]);
  });

  it('l3 and l3s send every route out of the device without a gateway and always add a default route', () => {
    for (const mode of ['l3', 'l3s']) {
      expect(containerRoutes(mode, ips, [{ dst: '10.9.0.0/16', gw: '10.1.0.9' }])).toEqual([{ dst: '10.9.0.0/16' }, { dst: '0.0.0.0/0' }]);
      expect(containerRoutes(mode, [...ips, { address: 'fd00::5/64' }], [{ dst: '0.0.0.0/0' }])).toEqual([{ dst: '0.0.0.0/0' }, { dst: '::/0' }]);
    }
  });
});

describe('ipvlan bad input: a clear error code, and nothing created', () => {
  const host = uniqueName('ivh');
  const cont = uniqueName('ivc');
  let contPath: string;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ipvlan-'));
  beforeAll(() => {
    addNetns(host);
    contPath = addNetns(cont);
    for (const args of [
      ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0'],
      ['link', 'set', 'eth0', 'up'],
      ['link', 'add', 'down0', 'type', 'veth', 'peer', 'name', 'down0p'],
    ]) {
      const r = spawnSync('ip', ['-n', host, ...args], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(r.stderr);
    }
  });
  afterAll(() => {
    delNetns(cont);
    delNetns(host);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const linksIn = (ns: string) => ipJson(['-n', ns, 'link', 'show']).map((l) => l.ifname).sort();

  const cases: Array<[string, object, number, RegExp]> = [
    ['an unknown mode', { mode: 'l4' }, 7, /unknown ipvlan mode "l4"/],
    ['an unknown flag', { flag: 'passthru' }, 7, /unknown ipvlan flag "passthru"/],
    ['a missing parent', { master: 'nope0' }, 7, /nope0 does not exist/],
    ['a parent that is down', { master: 'down0' }, 11, /down0 is down/],
    ['an MTU above the parent\'s', { mtu: 9001 }, 7, /mtu 9001 is above the MTU 1500 of master eth0/],
    ['VLAN id 4095', { vlan: 4095 }, 7, /VLAN id 4095 is outside 1\.\.4094/],
  ];
  for (const [what, extra, code, msg] of cases) {
    it(`${what} fails with code ${code}`, () => {
      const before = [linksIn(host), linksIn(cont)];
      const conf = {
        cniVersion: '1.1.0',
        name: 'ivbad',
        type: 'ipvlan',
        master: 'eth0',
        ipam: { type: 'cluster-ipam', dataDir: tmp, subnet: '10.88.0.0/24' },
        ...extra,
      };
      const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_NETNS: contPath, CNI_PATH: BIN };
      const r = spawnSync('ip', ['netns', 'exec', host, path.join(BIN, 'ipvlan')], { env, input: JSON.stringify(conf), encoding: 'utf8' });
      expect(r.status).toBe(1);
      const json = JSON.parse(r.stdout);
      expect(json.code).toBe(code);
      expect(json.msg).toMatch(msg);
      expect([linksIn(host), linksIn(cont)]).toEqual(before);
      expect(fs.existsSync(path.join(tmp, 'ivbad'))).toBe(false);
    });
  }
});
