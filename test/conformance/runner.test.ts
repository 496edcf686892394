/**
 * The suite judged on plugins whose behaviour is known:
 *  - the reference plugins (Debian containernetworking-plugins in /usr/lib/cni)
 *    pass every rule they implement, with their documented deviations;
 *  - deliberately broken wrappers (fixtures/) are each caught by the rule
 *    meant to catch them, and only there.
 * Every run uses a private host namespace, so nothing here touches the
 * machine's own links or nft ruleset.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { expandConfigPaths } from '../../conformance/config';
import { ConfigError } from '../../conformance/libcni';
import { runSuite, type RuleResult, type SuiteReport } from '../../conformance/runner';

const REFERENCE = '/usr/lib/cni';
const FIXTURES = path.join(__dirname, 'fixtures');
const CONFIGS = path.resolve(__dirname, '../../conformance/configs/reference');

function result(report: SuiteReport, config: string, rule: string): RuleResult {
  const r = report.results.find((x) => x.config === config && x.rule === rule);
  if (!r) throw new Error(`no result for ${config} ${rule}`);
  return r;
}

/** A bridge + host-local network whose bridge plugin is `type` (a fixture or the real one). */
function bridgeNetwork(type: string, cniVersion = '1.0.0'): Record<string, unknown> {
  return {
    cniVersion,
    name: `cf-${type}`,
    plugins: [
      {
        type,
        bridge: 'cfbr9',
        isGateway: true,
        ipam: {
          type: 'host-local',
          dataDir: '${STATE_DIR}/host-local',
          ranges: [[{ subnet: '10.202.9.0/24' }]],
          routes: [{ dst: '0.0.0.0/0' }],
        },
      },
    ],
  };
}

function runFixture(type: string, rules: string[], cniVersion = '1.0.0'): SuiteReport {
  return runSuite({
    pluginDirs: [FIXTURES, REFERENCE],
    configs: [{ name: type, object: { network: bridgeNetwork(type, cniVersion), stateDirs: ['${STATE_DIR}'] } }],
    rules,
  });
}

describe('the suite against the reference plugins', () => {
  let report: SuiteReport;
  beforeAll(() => {
    report = runSuite({ pluginDirs: [REFERENCE], configs: expandConfigPaths([CONFIGS]).map((file) => ({ file })) });
  });

  it('runs every rule on every reference config', () => {
    expect(report.configs.sort()).toEqual(['ref-bridge', 'ref-bridge-portmap', 'ref-loopback', 'ref-macvlan']);
    expect(report.results.length).toBe(report.configs.length * report.rules.length);
  });

  it('fails no rule: every failure is a documented deviation', () => {
    const failures = report.results.filter((r) => r.status === 'FAIL');
    expect(failures).toEqual([]);
    expect(report.failed).toBe(false);
  });

  it('calls a rule not applicable only where the reference plugins lack the feature', () => {
    const na = report.results.filter((r) => r.status === 'N/A').map((r) => `${r.config} ${r.rule}`);
    const expected = report.configs.flatMap((c) => [`${c} add.schema.v1.1.0`, `${c} gc.frees-unlisted`, `${c} status.answers`]);
    // lo exists before any ADD and cannot be deleted: nothing for these two rules to judge
    expected.push('ref-loopback add.second-add', 'ref-loopback check.interface-removed');
    expect(na.sort()).toEqual(expected.sort());
  });

  it('passes the kernel, DEL, CHECK and leak rules on bridge and macvlan', () => {
    for (const config of ['ref-bridge', 'ref-macvlan']) {
      for (const rule of [
        'add.kernel-reality',
        'add.sandbox',
        'add.second-add',
        'del.frees',
        'del.twice',
        'del.after-failed-add',
        'del.missing-prevresult',
        'check.healthy',
        'check.interface-removed',
        'check.address-removed',
        'leaks.links',
        'leaks.addresses',
        'leaks.routes',
        'leaks.nft',
        'leaks.state-files',
        'errors.stdout-only-json',
      ]) {
        expect(result(report, config, rule), `${config} ${rule}`).toMatchObject({ status: 'PASS' });
      }
    }
  });

  it('names the known deviations with the reason from the expectation file', () => {
    const dev = result(report, 'ref-bridge', 'del.netns-gone');
    expect(dev.status).toBe('DEVIATION');
    expect(dev.reason).toContain('containernetworking/plugins#810');
    expect(dev.reason).toContain('nft: left behind');
    expect(result(report, 'ref-loopback', 'add.schema.v0.3.0').reason).toContain('ips[0].version');
  });
});

describe('broken plugins are caught by the rule meant to catch them', () => {
  it('a bridge that leaks a host link per attachment fails del.frees and leaks.links, and nothing else', () => {
    const report = runFixture('leaky-bridge', ['del.frees', 'leaks.links', 'leaks.addresses', 'leaks.state-files']);
    expect(result(report, 'leaky-bridge', 'del.frees')).toMatchObject({ status: 'FAIL' });
    expect(result(report, 'leaky-bridge', 'del.frees').reason).toMatch(/links: left behind \[.*lk[0-9a-f]{10} \(veth\)/);
    expect(result(report, 'leaky-bridge', 'leaks.links')).toMatchObject({ status: 'FAIL' });
    // one leaked pair per cycle
    expect(result(report, 'leaky-bridge', 'leaks.links').reason.match(/lk[0-9a-f]{10} \(veth\)/g)).toHaveLength(3);
    expect(result(report, 'leaky-bridge', 'leaks.addresses')).toMatchObject({ status: 'PASS' });
    expect(result(report, 'leaky-bridge', 'leaks.state-files')).toMatchObject({ status: 'PASS' });
  });

  it('a bridge that logs to stdout on DEL fails errors.stdout-only-json, quoting the line', () => {
    const report = runFixture('chatty-bridge', ['del.twice', 'errors.stdout-only-json']);
    expect(result(report, 'chatty-bridge', 'del.twice')).toMatchObject({ status: 'PASS' });
    const r = result(report, 'chatty-bridge', 'errors.stdout-only-json');
    expect(r.status).toBe('FAIL');
    expect(r.reason).toContain('chatty-bridge DEL in del.twice');
    expect(r.reason).toContain('chatty-bridge: deleting');
  });

  it('a bridge that answers malformed JSON with code 999 fails errors.malformed-json', () => {
    const report = runFixture('wrong-code-bridge', ['errors.malformed-json', 'errors.bad-config']);
    const r = result(report, 'wrong-code-bridge', 'errors.malformed-json');
    expect(r.status).toBe('FAIL');
    expect(r.reason).toContain('answered code 999 (something went wrong), expected 6');
    expect(result(report, 'wrong-code-bridge', 'errors.bad-config')).toMatchObject({ status: 'PASS' });
  });

  it('a bridge whose CHECK always succeeds fails both breakage rules but passes check.healthy', () => {
    const report = runFixture('deaf-check-bridge', ['check.']);
    expect(result(report, 'deaf-check-bridge', 'check.healthy')).toMatchObject({ status: 'PASS' });
    expect(result(report, 'deaf-check-bridge', 'check.interface-removed')).toMatchObject({
      status: 'FAIL',
      reason: "CHECK passed after interface eth0 was removed behind the plugin's back",
    });
    expect(result(report, 'deaf-check-bridge', 'check.address-removed').status).toBe('FAIL');
    expect(result(report, 'deaf-check-bridge', 'check.address-removed').reason).toMatch(/^CHECK passed after address 10\.202\.9\.\d+\/24 on eth0/);
  });

  it('a bridge whose DEL fails when the interface is gone fails del.twice and del.netns-gone but not del.frees', () => {
    const report = runFixture('strict-del-bridge', ['del.frees', 'del.twice', 'del.netns-gone']);
    expect(result(report, 'strict-del-bridge', 'del.frees')).toMatchObject({ status: 'PASS' });
    expect(result(report, 'strict-del-bridge', 'del.twice').status).toBe('FAIL');
    expect(result(report, 'strict-del-bridge', 'del.twice').reason).toContain('the second DEL failed: strict-del-bridge DEL failed with code 3');
    expect(result(report, 'strict-del-bridge', 'del.netns-gone').status).toBe('FAIL');
  });

  it('a 1.1.0 bridge with a working GC and STATUS passes gc.frees-unlisted and status.answers', () => {
    const report = runFixture('gc-bridge', ['gc.', 'status.', 'errors.stdout-only-json'], '1.1.0');
    expect(report.results.map((r) => [r.rule, r.status])).toEqual([
      ['gc.frees-unlisted', 'PASS'],
      ['status.answers', 'PASS'],
      ['errors.stdout-only-json', 'PASS'],
    ]);
  });

  it('a 1.1.0 bridge whose GC frees nothing fails gc.frees-unlisted, and its chatty STATUS fails status.answers', () => {
    const report = runFixture('gc-noop-bridge', ['gc.', 'status.'], '1.1.0');
    const gc = result(report, 'gc-noop-bridge', 'gc.frees-unlisted');
    expect(gc.status).toBe('FAIL');
    // the stale attachment's host-local reservation is still on disk
    expect(gc.reason).toMatch(/not freed: stateFiles: left behind \[.*host-local\/cf-gc-noop-bridge\/10\.202\.9\.\d+/);
    expect(result(report, 'gc-noop-bridge', 'status.answers')).toMatchObject({
      status: 'FAIL',
      reason: 'gc-noop-bridge: STATUS succeeded but printed "bridge is ready"',
    });
  });
});

describe('expectations and declarations stay honest', () => {
  it('reports a listed deviation that no longer happens as a failure', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-expect-'));
    try {
      const file = path.join(dir, 'x.json');
      fs.writeFileSync(file, JSON.stringify({ deviations: { honest: { 'del.twice': 'claimed to fail' } } }));
      const report = runSuite({
        pluginDirs: [REFERENCE],
        configs: [{ name: 'honest', object: { network: bridgeNetwork('bridge'), stateDirs: ['${STATE_DIR}'], expectations: file } }],
        rules: ['del.twice'],
      });
      expect(result(report, 'honest', 'del.twice')).toMatchObject({ status: 'FAIL' });
      expect(result(report, 'honest', 'del.twice').reason).toContain('remove the entry from the expectation file');
      expect(report.failed).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a rule declared not applicable as N/A with the declared reason, without running it', () => {
    const report = runSuite({
      pluginDirs: [REFERENCE],
      configs: [{ name: 'declared', object: { network: bridgeNetwork('no-such-plugin'), notApplicable: { 'del.twice': 'not this time' } } }],
      rules: ['del.twice'],
    });
    expect(result(report, 'declared', 'del.twice')).toMatchObject({ status: 'N/A', reason: 'not this time (declared in declared.json)' });
  });

  it('refuses a declaration that names a rule the suite does not have', () => {
    expect(() =>
      runSuite({
        pluginDirs: [REFERENCE],
        configs: [{ name: 'typo', object: { network: bridgeNetwork('bridge'), notApplicable: { 'del.twise': 'typo' } } }],
      }),
    ).toThrow(ConfigError);
  });

  it('fails every rule that needs a plugin the directory does not have, saying which', () => {
    const report = runSuite({
      pluginDirs: [REFERENCE],
      configs: [{ name: 'missing', object: { network: bridgeNetwork('no-such-plugin') } }],
      rules: ['version.well-formed', 'add.kernel-reality'],
    });
    for (const r of report.results) {
      expect(r.status).toBe('FAIL');
      expect(r.reason).toContain('failed to find plugin "no-such-plugin"');
    }
  });
});
