import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNetns, delNetns, hostSnapshot, ipJson, runPlugin, uniqueName } from '../../../testkit/exec';

const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
const ns = uniqueName('tnone');
let nsPath: string;

beforeAll(() => {
  nsPath = addNetns(ns);
});
afterAll(() => delNetns(ns));

function env(command: string, extra: Record<string, string> = {}) {
  return { CNI_COMMAND: command, CNI_CONTAINERID: 'c-none-1', CNI_NETNS: nsPath, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', ...extra };
}
const conf = (cniVersion: string, extra: object = {}) => ({ cniVersion, name: 'none-test', type: 'none', ...extra });

function loUp(): boolean {
  const [lo] = ipJson(['-n', ns, 'link', 'show', 'lo']);
  return lo.flags.includes('UP');
}

describe('none plugin (packaged executable)', () => {
  it('answers VERSION with every supported version, in the config version', () => {
    const r = runPlugin('none', { CNI_COMMAND: 'VERSION' }, conf('0.4.0'));
    expect(r.status).toBe(0);
    expect(r.json).toEqual({ cniVersion: '0.4.0', supportedVersions: VERSIONS });
  });

  for (const v of VERSIONS) {
    it(`[${v}] ADD brings lo up and reports 127.0.0.1/8 and ::1/128, DEL takes it down`, () => {
      const add = runPlugin('none', env('ADD'), conf(v));
      expect(add.status, add.stdout).toBe(0);
      expect(add.json.cniVersion).toBe(v);
      const addresses = add.json.ips.map((ip: any) => ip.address);
      expect(addresses).toContain('127.0.0.1/8');
      expect(addresses).toContain('::1/128');
      if (v.startsWith('0.')) expect(add.json.ips[0].version).toBe('4');
      expect(add.json.interfaces[0]).toMatchObject({ name: 'lo', sandbox: nsPath });
      expect(loUp()).toBe(true);
      // only loopback exists in the container
      expect(ipJson(['-n', ns, 'link', 'show']).map((l) => l.ifname)).toEqual(['lo']);

      if (v !== '0.3.0' && v !== '0.3.1') {
        const check = runPlugin('none', env('CHECK'), conf(v, { prevResult: add.json }));
        expect(check.status, check.stdout).toBe(0);
        expect(check.stdout).toBe('');
      }
      const del = runPlugin('none', env('DEL'), conf(v, { prevResult: add.json }));
      expect(del.status, del.stdout).toBe(0);
      expect(del.stdout).toBe('');
      expect(loUp()).toBe(false);
    });
  }

  it('refuses CHECK for a 0.3.1 config with code 1', () => {
    const r = runPlugin('none', env('CHECK'), conf('0.3.1'));
    expect(r.status).not.toBe(0);
    expect(r.json.code).toBe(1);
  });

  it('CHECK fails once lo was taken down behind its back', () => {
    const add = runPlugin('none', env('ADD'), conf('1.1.0'));
    expect(add.status).toBe(0);
    runPlugin('none', env('DEL'), conf('1.1.0'));
    const check = runPlugin('none', env('CHECK'), conf('1.1.0', { prevResult: add.json }));
    expect(check.status).not.toBe(0);
    expect(check.json.msg).toMatch(/loopback/);
  });

  it('DEL succeeds twice and after the namespace is gone', () => {
    expect(runPlugin('none', env('DEL'), conf('1.1.0')).status).toBe(0);
    expect(runPlugin('none', env('DEL'), conf('1.1.0')).status).toBe(0);
    expect(runPlugin('none', env('DEL', { CNI_NETNS: '/var/run/netns/does-not-exist' }), conf('1.1.0')).status).toBe(0);
    expect(runPlugin('none', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0')).status).toBe(0);
  });

  it('GC and STATUS succeed for 1.1.0 and print nothing', () => {
    const gc = runPlugin('none', { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0', { 'cni.dev/valid-attachments': [] }));
    expect(gc.status).toBe(0);
    expect(gc.stdout).toBe('');
    const st = runPlugin('none', { CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0'));
    expect(st.status).toBe(0);
    expect(st.stdout).toBe('');
  });
});

describe('none plugin: bad input gets the spec error and changes nothing', () => {
  const cases: Array<[string, Record<string, string | undefined>, string | object, number]> = [
    ['malformed JSON', {}, '{"cniVersion": ', 6],
    ['empty stdin', {}, '', 6],
    ['a JSON array instead of an object', {}, '[1,2]', 6],
    ['an unsupported cniVersion', {}, conf('9.9.9'), 1],
    ['a name of the wrong type', {}, { cniVersion: '1.1.0', name: 42, type: 'none' }, 7],
    ['a missing network name', {}, { cniVersion: '1.1.0', type: 'none' }, 7],
    ['a missing CNI_CONTAINERID', { CNI_CONTAINERID: undefined }, conf('1.1.0'), 4],
    ['a CNI_CONTAINERID outside the spec pattern', { CNI_CONTAINERID: '-bad/id' }, conf('1.1.0'), 4],
    ['a missing CNI_NETNS', { CNI_NETNS: undefined }, conf('1.1.0'), 4],
    ['a missing CNI_IFNAME', { CNI_IFNAME: undefined }, conf('1.1.0'), 4],
    ['a CNI_IFNAME longer than 15 characters', { CNI_IFNAME: 'abcdefghijklmnopq' }, conf('1.1.0'), 4],
    ['a CNI_NETNS that does not exist', { CNI_NETNS: '/var/run/netns/nope-nope' }, conf('1.1.0'), 8],
    ['a CNI_NETNS that is a regular file', { CNI_NETNS: '/etc/hostname' }, conf('1.1.0'), 8],
    ['a CNI_NETNS that is a UTS namespace', { CNI_NETNS: '/proc/self/ns/uts' }, conf('1.1.0'), 8],
    ['an unknown CNI_COMMAND', { CNI_COMMAND: 'FROB' }, conf('1.1.0'), 4],
  ];
  for (const [what, override, stdin, code] of cases) {
    it(`ADD with ${what} fails with code ${code}`, () => {
      const before = hostSnapshot();
      const loBefore = loUp();
      const e = { ...env('ADD'), ...override };
      const r = runPlugin('none', e, stdin);
      expect(r.status).not.toBe(0);
      expect(r.json.code, r.stdout).toBe(code);
      expect(typeof r.json.msg).toBe('string');
      expect(r.stdout).not.toMatch(/\n\s+at /); // no stack trace
      expect(hostSnapshot()).toBe(before);
      expect(loUp()).toBe(loBefore);
    });
  }
});
