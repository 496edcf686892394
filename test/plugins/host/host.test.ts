import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNetns, delNetns, hostSnapshot, ipJson, runPlugin, uniqueName } from '../../../testkit/exec';

const ns = uniqueName('thost');
let nsPath: string;
beforeAll(() => {
  nsPath = addNetns(ns);
});
afterAll(() => delNetns(ns));

// The plugin's own namespace is the host's here; /proc/self/ns/net read by
// the plugin process names exactly that.
const HOST_NETNS = '/proc/self/ns/net';
const env = (command: string, netns = HOST_NETNS) => ({ CNI_COMMAND: command, CNI_CONTAINERID: 'c-host-1', CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' });
const conf = (extra: object = {}) => ({ cniVersion: '1.1.0', name: 'host-test', type: 'host', ...extra });

describe('host plugin (packaged executable)', () => {
  it('ADD in the host namespace reports the host interfaces and addresses', () => {
    const r = runPlugin('host', env('ADD'), conf());
    expect(r.status, r.stdout).toBe(0);
    const names = r.json.interfaces.map((i: any) => i.name);
    const hostLinks = ipJson(['link', 'show']).filter((l) => l.ifname !== 'lo').map((l) => l.ifname);
    expect(new Set(names)).toEqual(new Set(hostLinks));
    const hostAddrs = ipJson(['addr', 'show'])
      .flatMap((l) => (l.addr_info ?? []).filter((a: any) => a.scope === 'global').map((a: any) => `${a.local}/${a.prefixlen}`));
    expect(new Set(r.json.ips.map((ip: any) => ip.address))).toEqual(new Set(hostAddrs));
  });

  it('ADD into any other namespace fails with code 8 and changes nothing', () => {
    const before = hostSnapshot();
    const r = runPlugin('host', env('ADD', nsPath), conf());
    expect(r.status).not.toBe(0);
    expect(r.json.code).toBe(8);
    expect(r.json.msg).toMatch(/host/);
    expect(hostSnapshot()).toBe(before);
  });

  it('CHECK passes on the prevResult of ADD and fails for a vanished interface', () => {
    const add = runPlugin('host', env('ADD'), conf());
    expect(runPlugin('host', env('CHECK'), conf({ prevResult: add.json })).status).toBe(0);
    const forged = { ...add.json, interfaces: [...add.json.interfaces, { name: 'no-such-if0' }] };
    const bad = runPlugin('host', env('CHECK'), conf({ prevResult: forged }));
    expect(bad.status).not.toBe(0);
    expect(bad.json.msg).toMatch(/no-such-if0/);
  });

  it('DEL changes nothing on the host, twice', () => {
    const before = hostSnapshot();
    expect(runPlugin('host', env('DEL'), conf()).status).toBe(0);
    expect(runPlugin('host', env('DEL'), conf()).status).toBe(0);
    expect(hostSnapshot()).toBe(before);
  });

  it('GC and STATUS succeed', () => {
    expect(runPlugin('host', { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf({ 'cni.dev/valid-attachments': [] })).status).toBe(0);
    expect(runPlugin('host', { CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' }, conf()).status).toBe(0);
  });
});
