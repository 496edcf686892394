/**
 * The macvlan suite (macvlan.test.ts) again, every call made through the
 * shim to a `cni-ts daemon` running in the calling host's namespace. Same
 * assertions; the suite's last test checks the daemons served the calls.
 */
import { describe, expect, it, vi } from 'vitest';

vi.hoisted(() => {
  process.env.CNI_TS_TEST_DAEMON = '1';
});

import { daemonLogs } from './macvlan.test';

describe('through cni-ts daemon', () => {
  it('the daemons served every call above, and declined none', () => {
    const { log, served } = daemonLogs();
    expect(log).not.toContain('declined');
    for (const command of ['ADD', 'CHECK', 'DEL']) expect(log).toMatch(new RegExp(`served macvlan ${command} .*exit 0 `));
    expect(log).toMatch(/served macvlan ADD .*exit 1 /);
    expect(served).toBeGreaterThan(20);
  });
});
