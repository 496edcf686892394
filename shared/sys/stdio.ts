/**
 * Whole reads and writes of the process's stdio descriptors, synchronously.
 *
 * Why not process.stdout/stderr: a plugin exits right after printing its
 * answer, and a runtime may hand us non-blocking pipes, where Node's
 * streams queue what the kernel did not take yet (EAGAIN) and process.exit
 * then drops it. These loops wait for room instead.
 */
import * as fs from 'node:fs';

/** Everything on fd until end of file; a terminal yields nothing (`CNI_COMMAND=VERSION ./bridge` typed by hand). */
export function readAllSync(fd: number): Buffer {
  // A terminal would block until ^D; a character device never carries a runtime's config anyway.
  if (fs.fstatSync(fd).isCharacterDevice()) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        pause();
        continue;
      }
      if ((e as NodeJS.ErrnoException).code === 'EOF') break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks);
}

/** Writes all of s to fd before returning. */
export function writeAllSync(fd: number, s: string): void {
  const data = Buffer.from(s, 'utf8');
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      // stdio inherited in non-blocking mode: wait for room rather than lose output
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      pause();
    }
  }
}

/** Sleep 1 ms without spinning (only for EAGAIN on non-blocking stdio). */
function pause(): void {
  sleepSync(1);
}

/** A synchronous pause without spinning: EAGAIN on stdio, and the short polls of callers waiting on a helper's status file. */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
