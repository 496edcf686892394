/**
 * Waiting without an event loop: the suite drives plugins and services with
 * synchronous process calls, so a pause between polls blocks the thread.
 * Its own module so that context.ts and services.ts, which both poll, do
 * not import each other.
 */

/** Blocks the thread for ms milliseconds without spinning. */
export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
