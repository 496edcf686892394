/**
 * The test API for guest files (test/vm/guest/*.guest.ts): tests that run
 * inside the VM, on a kernel with ipvlan, 802.1q and ESP.
 *
 * Deliberately tiny and dependency-free: vitest would cost many seconds to
 * start under TCG, and one node process runs every guest file in sequence.
 * Use node:assert/strict for checks; a test fails when its function throws or
 * its promise rejects, and the message travels back to the host's vitest run.
 *
 * A guest file's top-level code must only register tests: the host also loads
 * the bundle (without running anything) to learn the test names before boot.
 */

export interface GuestTestOptions {
  /** per-test limit inside the VM; TCG is slow, so be generous */
  timeoutMs?: number;
}

export interface RegisteredTest {
  file: string;
  name: string;
  fn: () => unknown;
  timeoutMs: number;
}

export interface RegisteredHook {
  file: string;
  fn: () => unknown;
}

export const DEFAULT_TIMEOUT_MS = 120_000;

/** Filled by the guest runner while it loads each file in turn. */
export const registry = {
  currentFile: '',
  tests: [] as RegisteredTest[],
  afterAll: [] as RegisteredHook[],
};

/** Registers a test. Names are sentences and must be unique within a file. */
export function test(name: string, fn: () => unknown, opts: GuestTestOptions = {}): void {
  if (!registry.currentFile) throw new Error(`test("${name}") called outside a guest file being loaded`);
  registry.tests.push({ file: registry.currentFile, name, fn, timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS });
}

/**
 * Runs after the file's last test, whether its tests passed or not: the place
 * to delete namespaces and links. A throwing hook is reported as a failure.
 */
export function afterAll(fn: () => unknown): void {
  if (!registry.currentFile) throw new Error('afterAll() called outside a guest file being loaded');
  registry.afterAll.push({ file: registry.currentFile, fn });
}
