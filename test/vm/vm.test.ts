/**
 * The VM tests as part of the ordinary vitest run: boots the VM once for
 * every test/vm/guest/*.guest.ts plus the harness's self-test file, and turns
 * each guest test into one vitest test with the guest's own error message.
 *
 * Nothing is skipped on this host for lack of ipvlan, 802.1q or ESP: that is
 * what the VM is for. If qemu or the Debian kernel is missing, these tests
 * fail and say what to install.
 *
 * The test names are known before boot (prepareRun loads the bundle on the
 * host in --plan mode); a test the VM never reports fails with the reason.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AFTER_ALL_TEST_NAME } from '../../testkit/vm/guest-runner';
import { bootVm, defaultGuestFiles, formatTimings, prepareRun, type PreparedRun, type VmRunResult } from '../../testkit/vm/harness';
import { testKey, type Outcome, type PlannedTest } from '../../testkit/vm/protocol';

const SELFTEST = 'test/vm/selftest/expected-failures.guest.ts';

/** What the self-test file's cases must come back as: pass, or fail with this message. */
const SELFTEST_EXPECTED: Record<string, 'pass' | RegExp> = {
  'a test that returns normally is reported as passed': 'pass',
  'a test that throws is reported as failed': /^Error: deliberate failure: thrown/,
  'a failing assertion is reported as failed': /^AssertionError.*deliberate failure: assertion/,
  'a rejected promise is reported as failed': /^Error: deliberate failure: rejected/,
  'an exception thrown outside the test promise is charged to the test': /^Error: deliberate failure: stray exception/,
  'a test that never settles is stopped by its timeout': /^Error: timed out after 200 ms/,
  'a test after failing ones still runs and passes': 'pass',
};

/** Boot plus node start under TCG take seconds here but can take a minute on a loaded machine; the guest tests take about 9 minutes under TCG (the encrypted overlays are most of it). */
const RUN_TIMEOUT_MS = 900_000;

const run: PreparedRun = prepareRun([...defaultGuestFiles(), SELFTEST]);
let result: VmRunResult | undefined;

function outcomeOf(t: PlannedTest): Outcome {
  if (!result) throw new Error('the VM did not run (see the beforeAll error)');
  const o = result.outcomes.find((x) => testKey(x) === testKey(t));
  if (!o) throw new Error(`no outcome for ${t.file} > ${t.name}`);
  return o;
}

beforeAll(async () => {
  result = await bootVm(run, { timeoutMs: RUN_TIMEOUT_MS, keepRunDir: true });
}, RUN_TIMEOUT_MS + 60_000);

afterAll(() => {
  if (!result) return;
  console.log(`VM run: ${formatTimings(result.timings)}; guest kernel ${result.guestKernel ?? '?'}`);
  const realFailure =
    result.problems.length > 0 || result.outcomes.some((o) => o.file !== SELFTEST && o.status === 'fail');
  // Kept for reading when a real test failed; the self-test's failures are expected.
  if (realFailure) console.log(`VM run directory kept: ${result.runDir}`);
  else fs.rmSync(result.runDir, { recursive: true, force: true });
});

describe('guest tests in the VM', () => {
  for (const t of run.expected.filter((x) => x.file !== SELFTEST)) {
    test(`${t.file} > ${t.name}`, () => {
      const o = outcomeOf(t);
      if (o.status !== 'pass') throw new Error(o.error ?? 'failed without a message');
    });
  }
});

describe('the VM harness', () => {
  test('boots the Debian kernel it was given, not the host kernel', () => {
    expect(result?.guestKernel).toBe(run.kernel.version);
    expect(result?.guestKernel).not.toBe(os.release());
  });

  test('finishes the run with no problem of its own (boot, node, exit code, records)', () => {
    expect(result?.problems).toEqual([]);
  });

  test('has no failure outside a planned test except the self-test afterAll', () => {
    const planned = new Set(run.expected.map(testKey));
    const extra = (result?.outcomes ?? []).filter((o) => !planned.has(testKey(o)));
    expect(extra.filter((o) => o.file !== SELFTEST)).toEqual([]);
  });

  test('lists exactly the self-test cases this file has expectations for', () => {
    const names = run.expected.filter((x) => x.file === SELFTEST).map((x) => x.name);
    expect(names.sort()).toEqual(Object.keys(SELFTEST_EXPECTED).sort());
  });

  for (const [name, expected] of Object.entries(SELFTEST_EXPECTED)) {
    const verdict = expected === 'pass' ? 'a pass' : 'a failure with the guest message';
    test(`reports the self-test "${name}" as ${verdict}`, () => {
      const o = outcomeOf({ file: SELFTEST, name });
      if (expected === 'pass') {
        expect(o.status, o.error).toBe('pass');
      } else {
        expect(o.status).toBe('fail');
        expect(o.error).toMatch(expected);
      }
    });
  }

  test('reports a throwing afterAll hook as a failure of its file', () => {
    const o = result?.outcomes.find((x) => x.file === SELFTEST && x.name === AFTER_ALL_TEST_NAME);
    expect(o?.status).toBe('fail');
    expect(o?.error).toMatch(/^Error: deliberate failure: afterAll/);
  });
});

describe('a VM run whose node never starts', () => {
  // A second, short boot: the init script hands over to a node binary that
  // does not exist, as if node crashed before its first line.
  const broken = prepareRun([SELFTEST]);
  let brokenResult: VmRunResult | undefined;

  beforeAll(async () => {
    brokenResult = await bootVm(broken, { timeoutMs: RUN_TIMEOUT_MS, node: '/nonexistent/bin/node' });
  }, RUN_TIMEOUT_MS + 60_000);

  afterAll(() => {
    if (brokenResult) fs.rmSync(brokenResult.runDir, { recursive: true, force: true });
  });

  test('reports every planned test as failed, with the reason', () => {
    expect(brokenResult?.outcomes.length).toBe(broken.expected.length);
    for (const o of brokenResult?.outcomes ?? []) {
      expect(o.status).toBe('fail');
      expect(o.error).toMatch(/no result from the VM: .*node started but the guest runner never reported/);
    }
  });

  test('reports the guest runner exit code as a problem of the run', () => {
    expect(brokenResult?.problems).toContainEqual(expect.stringMatching(/the guest runner exited with code 127/));
  });
});
