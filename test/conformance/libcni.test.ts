/**
 * The suite's runtime must call plugins exactly as libcni does; these tests
 * pin that behaviour down with a fake invoker (no processes, no kernel).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  buildOneConfig,
  ConfigError,
  parseNetworkConfig,
  PluginError,
  ResultCache,
  Runtime,
  withVersion,
  type Invocation,
  type InvocationOutcome,
  type Invoker,
  type RuntimeConf,
} from '../../conformance/libcni';

/** Answers from a script keyed by "plugin COMMAND"; records every call. */
class FakeInvoker implements Invoker {
  readonly calls: (Invocation & { conf: Record<string, unknown> })[] = [];
  constructor(private readonly answers: Record<string, (conf: Record<string, unknown>) => Partial<InvocationOutcome>>) {}
  invoke(_path: string, inv: Invocation): InvocationOutcome {
    const conf = JSON.parse(inv.stdin) as Record<string, unknown>;
    this.calls.push({ ...inv, conf });
    const answer = this.answers[`${inv.plugin} ${inv.env.CNI_COMMAND}`]?.(conf) ?? {};
    return { status: 0, signal: null, stdout: '', stderr: '', ...answer };
  }
}

let dir: string;
let pluginDir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-libcni-'));
  pluginDir = path.join(dir, 'bin');
  fs.mkdirSync(pluginDir);
  for (const p of ['first', 'second']) fs.writeFileSync(path.join(pluginDir, p), '#!/bin/sh\n', { mode: 0o755 });
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const rt: RuntimeConf = {
  containerId: 'c1',
  netns: '/var/run/netns/x',
  ifname: 'eth0',
  args: [
    ['IgnoreUnknown', '1'],
    ['K8S_POD_NAME', 'p'],
  ],
  capabilityArgs: { portMappings: [{ hostPort: 80 }], ips: ['10.0.0.5/24'] },
};

function list(cniVersion = '1.0.0', extra: Record<string, unknown> = {}) {
  return parseNetworkConfig({
    cniVersion,
    name: 'net1',
    plugins: [{ type: 'first', capabilities: { ips: true } }, { type: 'second', capabilities: { portMappings: true, mac: false } }],
    ...extra,
  });
}

const result = (tag: string) => () => ({ stdout: JSON.stringify({ cniVersion: '1.0.0', interfaces: [{ name: tag }] }) });

function runtime(invoker: Invoker): Runtime {
  return new Runtime([path.join(dir, 'empty'), pluginDir], invoker, new ResultCache(path.join(dir, 'cache')));
}

describe('buildOneConfig', () => {
  it('injects the list name and version, prevResult, and only the capabilities the plugin declares', () => {
    const l = list();
    const conf = buildOneConfig(l, l.plugins[1], { cniVersion: '1.0.0' }, rt);
    expect(conf).toEqual({
      type: 'second',
      capabilities: { portMappings: true, mac: false },
      name: 'net1',
      cniVersion: '1.0.0',
      prevResult: { cniVersion: '1.0.0' },
      runtimeConfig: { portMappings: [{ hostPort: 80 }] },
    });
  });

  it('adds no runtimeConfig when no declared capability is offered', () => {
    const l = parseNetworkConfig({ cniVersion: '1.0.0', name: 'n', type: 'first', capabilities: { mac: true } });
    expect(buildOneConfig(l, l.plugins[0], undefined, rt)).not.toHaveProperty('runtimeConfig');
  });
});

describe('parseNetworkConfig', () => {
  it('turns a single .conf into a list of one', () => {
    const l = parseNetworkConfig({ cniVersion: '0.4.0', name: 'n', type: 'first' });
    expect(l.plugins.map((p) => p.type)).toEqual(['first']);
    expect(l.cniVersion).toBe('0.4.0');
  });

  it('refuses a list without a name, a version or plugins with a type', () => {
    expect(() => parseNetworkConfig({ cniVersion: '1.0.0', plugins: [{ type: 'a' }] })).toThrow(ConfigError);
    expect(() => parseNetworkConfig({ name: 'n', plugins: [{ type: 'a' }] })).toThrow(ConfigError);
    expect(() => parseNetworkConfig({ cniVersion: '1.0.0', name: 'n', plugins: [{}] })).toThrow(ConfigError);
  });

  it('keeps disableCheck when the version changes', () => {
    expect(withVersion(list('1.0.0', { disableCheck: true }), '0.4.0')).toMatchObject({ cniVersion: '0.4.0', disableCheck: true });
  });
});

describe('Runtime', () => {
  it('sets all six CNI variables on ADD, CNI_ARGS joined with ";" and CNI_PATH with ":"', () => {
    const inv = new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') });
    runtime(inv).add(list(), rt);
    expect(inv.calls[0].env).toEqual({
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'c1',
      CNI_NETNS: '/var/run/netns/x',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=p',
      CNI_IFNAME: 'eth0',
      CNI_PATH: `${path.join(dir, 'empty')}:${pluginDir}`,
    });
  });

  it('chains ADD results as prevResult and caches the last one', () => {
    const inv = new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') });
    const r = runtime(inv);
    expect(r.add(list(), rt)).toEqual({ cniVersion: '1.0.0', interfaces: [{ name: 'b' }] });
    expect(inv.calls[0].conf).not.toHaveProperty('prevResult');
    expect(inv.calls[1].conf.prevResult).toEqual({ cniVersion: '1.0.0', interfaces: [{ name: 'a' }] });
    expect(r.cache.get('net1', 'c1', 'eth0')).toEqual({ cniVersion: '1.0.0', interfaces: [{ name: 'b' }] });
  });

  it('writes the cache entry in libcni\'s cniCacheV1 format', () => {
    const r = runtime(new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') }));
    r.add(list(), rt);
    const cached = JSON.parse(fs.readFileSync(path.join(dir, 'cache/results/net1-c1-eth0'), 'utf8'));
    expect(cached).toMatchObject({ kind: 'cniCacheV1', containerId: 'c1', ifName: 'eth0', networkName: 'net1', netns: '/var/run/netns/x' });
    expect(JSON.parse(Buffer.from(cached.config, 'base64').toString())).toMatchObject({ name: 'net1' });
  });

  it('does not cache when a plugin of the chain fails, and says which plugin and code', () => {
    const inv = new FakeInvoker({
      'first ADD': result('a'),
      'second ADD': () => ({ status: 1, stdout: JSON.stringify({ cniVersion: '1.0.0', code: 7, msg: 'bad', details: 'port' }) }),
    });
    const r = runtime(inv);
    expect(() => r.add(list(), rt)).toThrow(/second ADD failed with code 7: bad \(port\)/);
    expect(r.cache.get('net1', 'c1', 'eth0')).toBeUndefined();
  });

  it('runs DEL in reverse order with the cached result as prevResult from 0.4.0 on, then forgets it', () => {
    const inv = new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') });
    const r = runtime(inv);
    r.add(list(), rt);
    r.del(list(), rt);
    const dels = inv.calls.filter((c) => c.env.CNI_COMMAND === 'DEL');
    expect(dels.map((c) => c.plugin)).toEqual(['second', 'first']);
    expect(dels.every((c) => (c.conf.prevResult as { interfaces: { name: string }[] }).interfaces[0].name === 'b')).toBe(true);
    expect(r.cache.get('net1', 'c1', 'eth0')).toBeUndefined();
  });

  it('sends no prevResult on DEL before 0.4.0, and none when nothing is cached', () => {
    const inv = new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') });
    const r = runtime(inv);
    r.add(list('0.3.1'), rt);
    r.del(list('0.3.1'), rt);
    r.del(list(), { ...rt, containerId: 'never-added' });
    expect(inv.calls.filter((c) => c.env.CNI_COMMAND === 'DEL').map((c) => 'prevResult' in c.conf)).toEqual([false, false, false, false]);
  });

  it('refuses CHECK before 0.4.0 and skips it when disableCheck is set', () => {
    const inv = new FakeInvoker({});
    const r = runtime(inv);
    expect(() => r.check(list('0.3.1'), rt)).toThrow(/does not support the CHECK command/);
    r.check(list('1.0.0', { disableCheck: true }), rt);
    expect(inv.calls).toEqual([]);
  });

  it('ignores stdout of a successful DEL, as libcni does (the stdout rule judges it instead)', () => {
    const r = runtime(new FakeInvoker({ 'first DEL': () => ({ stdout: 'deleting...\n' }) }));
    expect(() => r.del(list(), rt)).not.toThrow();
    expect(r.log.map((c) => c.stdout)).toEqual(['', 'deleting...\n']);
  });

  it('GC deletes stale cached attachments, then sends GC with the valid list only from 1.1.0 on', () => {
    const inv = new FakeInvoker({ 'first ADD': result('a'), 'second ADD': result('b') });
    const r = runtime(inv);
    const l = list('1.1.0');
    r.add(l, rt);
    r.add(l, { ...rt, containerId: 'c2' });
    expect(r.gc(l, [{ containerID: 'c2', ifname: 'eth0' }])).toEqual([]);
    const after = inv.calls.slice(4);
    expect(after.map((c) => `${c.plugin} ${c.env.CNI_COMMAND} ${c.env.CNI_CONTAINERID}`)).toEqual([
      'second DEL c1',
      'first DEL c1',
      'first GC ',
      'second GC ',
    ]);
    expect(after[2].conf['cni.dev/valid-attachments']).toEqual([{ containerID: 'c2', ifname: 'eth0' }]);
    expect(r.cache.list().map((c) => c.containerId)).toEqual(['c2']);

    inv.calls.length = 0;
    runtime(inv).gc(list('1.0.0'), []);
    expect(inv.calls.filter((c) => c.env.CNI_COMMAND === 'GC')).toEqual([]);
  });

  it('STATUS stops at the first plugin that is not ready', () => {
    const inv = new FakeInvoker({ 'first STATUS': () => ({ status: 1, stdout: '{"cniVersion":"1.1.0","code":50,"msg":"no etcd"}' }) });
    let err: unknown;
    try {
      runtime(inv).status(list('1.1.0'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PluginError);
    expect((err as PluginError).cniError?.code).toBe(50);
    expect(inv.calls.map((c) => c.plugin)).toEqual(['first']);
  });

  it('finds plugins in the first directory that has them and refuses names with a slash', () => {
    const r = runtime(new FakeInvoker({}));
    expect(r.findPlugin('second')).toBe(path.join(pluginDir, 'second'));
    expect(() => r.findPlugin('../bin/first')).toThrow(ConfigError);
    expect(() => r.findPlugin('third')).toThrow(/failed to find plugin "third"/);
  });
});
