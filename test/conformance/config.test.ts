import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configFromObject, expandConfigPaths, loadConfig, loadExpectations } from '../../conformance/config';
import { ConfigError } from '../../conformance/libcni';

const ph = { STATE_DIR: '/tmp/run1/state', RUN_ID: 'abc123' };
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-config-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function write(name: string, value: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify(value));
  return file;
}

describe('loadConfig', () => {
  it('runs a plain .conflist with the defaults, watching its dataDirs and /var/lib/cni', () => {
    const file = write('bridge.conflist', {
      cniVersion: '1.0.0',
      name: 'b',
      plugins: [{ type: 'bridge', ipam: { type: 'host-local', dataDir: '/run/x' } }],
    });
    const cfg = loadConfig(file, ph);
    expect(cfg).toMatchObject({ name: 'bridge', ifname: 'eth0', host: 'isolated', containerNetns: 'new', cycles: 3 });
    expect(cfg.stateDirs).toEqual(['/var/lib/cni', '/run/x']);
    expect(cfg.stateExcludes).toEqual(['/var/lib/cni/results']);
  });

  it('reads a descriptor that names its network file and expectations relative to itself, filling placeholders', () => {
    write('net.conflist', { cniVersion: '1.0.0', name: 'n-${RUN_ID}', plugins: [{ type: 'macvlan', ipam: { dataDir: '${STATE_DIR}/hl' } }] });
    write('exp.json', { deviations: { mine: { 'del.twice': 'because' } } });
    const file = write('mine.json', {
      network: 'net.conflist',
      ifname: 'net1',
      hostSetup: [['link', 'add', 'p${RUN_ID}', 'type', 'dummy']],
      stateDirs: ['${STATE_DIR}'],
      expectations: 'exp.json',
    });
    const cfg = loadConfig(file, ph);
    expect(cfg.network.name).toBe('n-abc123');
    expect(cfg.network.plugins[0]).toMatchObject({ ipam: { dataDir: '/tmp/run1/state/hl' } });
    expect(cfg.hostSetup).toEqual([['link', 'add', 'pabc123', 'type', 'dummy']]);
    expect(cfg.stateDirs).toEqual(['/tmp/run1/state']);
    expect(cfg.stateExcludes).toEqual([]);
    expect(cfg.deviations).toEqual({ 'del.twice': 'because' });
  });

  it('refuses unknown descriptor keys and a host-netns container in an isolated host', () => {
    const net = { cniVersion: '1.0.0', name: 'n', type: 'host' };
    expect(() => configFromObject({ network: net, ifnmae: 'x' }, 'x.json', ph)).toThrow(/Unrecognized key/);
    expect(() => configFromObject({ network: net, containerNetns: 'host' }, 'x.json', ph)).toThrow(ConfigError);
    expect(configFromObject({ network: net, containerNetns: 'host', host: 'current' }, 'x.json', ph).containerNetns).toBe('host');
  });

  it('says which file is not JSON', () => {
    const file = path.join(dir, 'broken.json');
    fs.writeFileSync(file, '{');
    expect(() => loadConfig(file, ph)).toThrow(`${file}: not JSON`);
  });
});

describe('expectations and paths', () => {
  it('returns the deviations of one config and nothing for others', () => {
    const file = write('e.json', { deviations: { a: { 'del.twice': 'x' } } });
    expect(loadExpectations(file, 'a')).toEqual({ 'del.twice': 'x' });
    expect(loadExpectations(file, 'b')).toEqual({});
  });

  it('expands a directory to its config files in name order', () => {
    write('b.conflist', {});
    write('a.json', {});
    fs.writeFileSync(path.join(dir, 'notes.md'), '');
    expect(expandConfigPaths([dir]).map((f) => path.basename(f))).toEqual(['a.json', 'b.conflist']);
  });
});
