/**
 * conformance/services.ts: processes a network needs on its host for the
 * run, started in the host namespace and stopped afterwards, and the
 * "services" key of a descriptor.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../conformance/config';
import { createNetns, deleteNetns, type Ns } from '../../conformance/kernel';
import { ConfigError } from '../../conformance/libcni';
import { runSuite } from '../../conformance/runner';
import { resolveCommand, ServiceSchema, startService, startServices, stopService, stopServices } from '../../conformance/services';
import { uniqueName } from '../../testkit/exec';

const ph = { STATE_DIR: '/tmp/run1/state', RUN_ID: 'abc123' };
const net = { cniVersion: '1.0.0', name: 'n', type: 'none' };

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return false;
  }
}

describe('the services key of a descriptor', () => {
  it('is optional, fills placeholders and defaults the ready timeout', () => {
    expect(configFromObject({ network: net }, 'x.json', ph).services).toEqual([]);
    const cfg = configFromObject({ network: net, services: [{ name: 'store', argv: ['etcd', '--data-dir', '${STATE_DIR}/etcd'], readyLog: 'ready' }] }, 'x.json', ph);
    expect(cfg.services).toEqual([{ name: 'store', argv: ['etcd', '--data-dir', '/tmp/run1/state/etcd'], readyLog: 'ready', readyTimeoutMs: 20_000 }]);
  });

  it('refuses a service without a command, with a name unfit for a file, or with unknown keys', () => {
    expect(() => configFromObject({ network: net, services: [{ name: 'a', argv: [] }] }, 'x.json', ph)).toThrow(ConfigError);
    expect(() => configFromObject({ network: net, services: [{ name: '../a', argv: ['x'] }] }, 'x.json', ph)).toThrow(/services\.0\.name/);
    expect(() => ServiceSchema.parse({ name: 'a', argv: ['x'], ready: 'y' })).toThrow(/Unrecognized key/);
  });
});

describe('resolveCommand', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-svc-bin-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('finds a bare name in the plugin directories first, leaves others to PATH and keeps paths as given', () => {
    fs.writeFileSync(path.join(dir, 'tool'), '#!/bin/sh\n', { mode: 0o755 });
    expect(resolveCommand('tool', ['/nonexistent', dir])).toBe(path.join(dir, 'tool'));
    expect(resolveCommand('sh', [dir])).toBe('sh');
    expect(resolveCommand('./tool', [dir])).toBe('./tool');
  });
});

describe('services in a network namespace', () => {
  let ns: Ns;
  const logs = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-svc-log-'));
  const started: number[] = [];
  beforeAll(() => {
    ns = createNetns(uniqueName('cfsv'));
  });
  afterAll(() => {
    for (const pid of started) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone, as it should be
      }
    }
    deleteNetns(ns);
    fs.rmSync(logs, { recursive: true, force: true });
  });

  it('starts a service inside the host namespace, ready once its output matches, and stops it', () => {
    const svc = startService(
      ServiceSchema.parse({ name: 'ok', argv: ['sh', '-c', 'sleep 0.2; echo "all ready now"; exec sleep 600'], readyLog: 'ready now$' }),
      ns,
      [],
      logs,
    );
    started.push(svc.pid);
    expect(fs.readFileSync(svc.logFile, 'utf8')).toContain('all ready now');
    expect(fs.readlinkSync(`/proc/${svc.pid}/ns/net`)).toBe(`net:[${fs.statSync(ns.path).ino}]`);
    expect(fs.readlinkSync(`/proc/${svc.pid}/ns/net`)).not.toBe(fs.readlinkSync('/proc/self/ns/net'));
    stopService(svc);
    expect(alive(svc.pid)).toBe(false);
  });

  it('reports a service that exits before it is ready, quoting its output', () => {
    const spec = ServiceSchema.parse({ name: 'dies', argv: ['sh', '-c', 'echo "bad flag --x" >&2; exit 3'], readyLog: 'ready' });
    expect(() => startService(spec, ns, [], logs)).toThrow(/service dies exited before it was ready:\s+bad flag --x/);
  });

  it('gives up on a service that never logs its ready line, and stops it', () => {
    const spec = ServiceSchema.parse({ name: 'mute', argv: ['sh', '-c', 'echo "pid $$"; exec sleep 600'], readyLog: 'ready', readyTimeoutMs: 300 });
    expect(() => startService(spec, ns, [], logs)).toThrow(/service mute did not log \/ready\/ within 300 ms/);
    const pid = Number(/pid (\d+)/.exec(fs.readFileSync(path.join(logs, 'mute.log'), 'utf8'))![1]);
    started.push(pid);
    expect(alive(pid)).toBe(false);
  });

  it('says so when the command does not exist', () => {
    const spec = ServiceSchema.parse({ name: 'missing', argv: ['no-such-command-cf'] });
    expect(() => startService(spec, ns, [], logs)).toThrow(/cannot start no-such-command-cf/);
  });

  it('stops the services already started when a later one fails, and stops them all newest first', () => {
    const first = ServiceSchema.parse({ name: 'first', argv: ['sh', '-c', 'echo "pid $$"; exec sleep 600'] });
    const broken = ServiceSchema.parse({ name: 'broken', argv: ['sh', '-c', 'exit 1'], readyLog: 'never' });
    expect(() => startServices([first, broken], ns, [], logs)).toThrow(/service broken exited/);
    const pid = Number(/pid (\d+)/.exec(fs.readFileSync(path.join(logs, 'first.log'), 'utf8'))![1]);
    started.push(pid);
    expect(alive(pid)).toBe(false);

    // the second service records whether the first is still up when it is told to stop
    const order = path.join(logs, 'order');
    const a = ServiceSchema.parse({ name: 'a', argv: ['sh', '-c', `trap 'echo a >> ${order}; exit 0' TERM; echo ready; while :; do sleep 0.05; done`], readyLog: 'ready' });
    const b = ServiceSchema.parse({ name: 'b', argv: ['sh', '-c', `trap 'echo b >> ${order}; exit 0' TERM; echo ready; while :; do sleep 0.05; done`], readyLog: 'ready' });
    const running = startServices([a, b], ns, [], logs);
    started.push(...running.map((s) => s.pid));
    stopServices(running);
    expect(fs.readFileSync(order, 'utf8')).toBe('b\na\n');
    expect(running.map((s) => alive(s.pid))).toEqual([false, false]);
  });
});

describe('runSuite with services', () => {
  it('keeps a service running in the host namespace through every rule and stops it when the network is done', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-svc-run-'));
    try {
      const pidFile = path.join(dir, 'pid');
      const seen: boolean[] = [];
      const readPid = () => Number(fs.readFileSync(pidFile, 'utf8'));
      const report = runSuite({
        pluginDirs: ['/usr/lib/cni'],
        configs: [
          {
            name: 'with-service',
            object: {
              network: { cniVersion: '1.0.0', name: 'svc', type: 'loopback' },
              ifname: 'lo',
              services: [{ name: 'keeper', argv: ['sh', '-c', `echo $$ > ${pidFile}; echo ready; exec sleep 600`], readyLog: 'ready' }],
            },
          },
        ],
        rules: ['version.', 'add.sandbox'],
        onResult: () => seen.push(alive(readPid())),
      });
      expect(report.results.length).toBeGreaterThan(1);
      expect(seen.every(Boolean)).toBe(true);
      expect(alive(readPid())).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
