/**
 * The whole bridge suite (bridge.test.ts) again, with every plugin call made
 * the way a node running `cni-ts daemon` makes it: the runtime execs the
 * shim, the shim hands the call to the lab's daemon. Same assertions, same
 * kernel checks; the suite's last test checks the daemon really served the
 * calls.
 */
import { vi } from 'vitest';

// before the import below: the Lab reads it when the suite's beforeAll makes one
vi.hoisted(() => {
  process.env.CNI_TS_TEST_DAEMON = '1';
});

import './bridge.test';
