/**
 * Tests that must FAIL: they prove the harness reports failures, each with
 * the guest's message, instead of losing them. vm.test.ts runs this file in
 * the same boot as the real guest files and asserts the opposite outcome.
 *
 * Not under test/vm/guest/, so `bash test/vm/run.sh` alone does not run it.
 */
import assert from 'node:assert/strict';
import { afterAll, test } from '../../../testkit/vm/guest-api';

test('a test that returns normally is reported as passed', () => {
  assert.equal(1 + 1, 2);
});

test('a test that throws is reported as failed', () => {
  throw new Error('deliberate failure: thrown');
});

test('a failing assertion is reported as failed', () => {
  assert.equal('ipvlan', 'macvlan', 'deliberate failure: assertion');
});

test('a rejected promise is reported as failed', async () => {
  await Promise.resolve();
  throw new Error('deliberate failure: rejected');
});

test('an exception thrown outside the test promise is charged to the test', () => {
  setImmediate(() => {
    throw new Error('deliberate failure: stray exception');
  });
  return new Promise(() => undefined);
});

test('a test that never settles is stopped by its timeout', () => new Promise(() => undefined), { timeoutMs: 200 });

test('a test after failing ones still runs and passes', () => {
  assert.ok(true);
});

afterAll(() => {
  throw new Error('deliberate failure: afterAll');
});
