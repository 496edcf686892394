/**
 * withFileLock, the one lock helper (bridge, portmap, overlay and VLAN
 * reference counts all call it): the lock is really held while fn runs
 * (probed from another open file description, as another process would),
 * released however fn ends, and refused for asynchronous work it could
 * not cover.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCK_EX, LOCK_NB, LOCK_UN, flock, withFileLock } from '../../../shared/sys/flock';

let tmp = '';
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'withfilelock-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Can someone else take the lock right now? (a second open: flock locks belong to the open file description) */
function freeFromOutside(file: string): boolean {
  const fd = fs.openSync(file, 'r+');
  try {
    flock(fd, LOCK_EX | LOCK_NB);
    flock(fd, LOCK_UN);
    return true;
  } catch (e) {
    if ((e as { errno?: number }).errno === os.constants.errno.EWOULDBLOCK) return false;
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}

describe('withFileLock', () => {
  it('holds the lock while fn runs, and creates the file 0600 in a new 0700 directory', () => {
    const file = path.join(tmp, 'new-dir', 'a.lock');
    const seen = withFileLock(file, () => freeFromOutside(file));
    expect(seen).toBe(false);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
    expect(freeFromOutside(file)).toBe(true);
  });

  it('returns what fn returns', () => {
    expect(withFileLock(path.join(tmp, 'b.lock'), () => 'done')).toBe('done');
  });

  it('releases the lock when fn throws', () => {
    const file = path.join(tmp, 'c.lock');
    expect(() =>
      withFileLock(file, () => {
        throw new Error('step failed');
      }),
    ).toThrow('step failed');
    expect(freeFromOutside(file)).toBe(true);
  });

  it('refuses an asynchronous fn (the lock would go before its work is done) and releases the lock', () => {
    const file = path.join(tmp, 'd.lock');
    const pending = Promise.resolve(1);
    expect(() => withFileLock(file, () => pending)).toThrow(/must be synchronous/);
    expect(freeFromOutside(file)).toBe(true);
  });

  it('takes a lock that is free again after a nested section on another file', () => {
    const outer = path.join(tmp, 'e.lock');
    const inner = path.join(tmp, 'f.lock');
    const held = withFileLock(outer, () => withFileLock(inner, () => [freeFromOutside(outer), freeFromOutside(inner)]));
    expect(held).toEqual([false, false]);
    expect([freeFromOutside(outer), freeFromOutside(inner)]).toEqual([true, true]);
  });
});
