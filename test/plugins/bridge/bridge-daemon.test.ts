/**
 * The whole bridge suite (bridge.test.ts) again, with every plugin call made
 * the way a node running `cni-ts daemon` makes it: the runtime execs the
 * shim, the shim hands the call to the lab's daemon. Same assertions, same
 * kernel checks; the suite's last test checks the daemon really served the
 * calls.
 */
import { describe, expect, it, vi } from 'vitest';

// before the import below: the Lab reads it when the suite's beforeAll makes one
vi.hoisted(() => {
  process.env.CNI_TS_TEST_DAEMON = '1';
});

import { currentLab } from './bridge.test';

describe('through cni-ts daemon', () => {
  it('the daemon served every call above, and declined none', () => {
    const lab = currentLab();
    expect(lab.usesDaemon).toBe(true);
    const log = lab.daemonLog();
    expect(log).not.toContain('declined');
    // ADD, CHECK, DEL and GC, successes and refusals, all answered in the daemon
    for (const command of ['ADD', 'CHECK', 'DEL', 'GC']) expect(log).toMatch(new RegExp(`served bridge ${command} .*exit 0 `));
    expect(log).toMatch(/served bridge ADD .*exit 1 /);
    expect(log.match(/^cni-ts daemon: served /gm)!.length).toBeGreaterThan(500);
  });
});
