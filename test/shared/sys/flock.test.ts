/**
 * withFileLock, the one lock helper (bridge, portmap, overlay and VLAN
 * reference counts all call it): the lock is really held while fn runs
 * (probed from another open file description, as another process would),
 * held until asynchronous work settles, released however fn ends; its
 * shared mode admits other shared holders and no exclusive one; and
 * withExclusiveTurn asks the process's arbiter before taking the lock.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, flock, setExclusiveArbiter, withExclusiveTurn, withFileLock } from '../../../shared/sys/flock';

let tmp = '';
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'withfilelock-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Can someone else take the lock right now? (a second open: flock locks belong to the open file description) */
function freeFromOutside(file: string, mode = LOCK_EX): boolean {
  const fd = fs.openSync(file, 'r+');
  try {
    flock(fd, mode | LOCK_NB);
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

  it('holds the lock until an asynchronous fn settles, and releases it when it rejects', async () => {
    const file = path.join(tmp, 'd.lock');
    let finish!: (v: number) => void;
    const held = withFileLock(file, () => new Promise<number>((r) => (finish = r)));
    await new Promise((r) => setImmediate(r));
    expect(freeFromOutside(file)).toBe(false);
    finish(1);
    expect(await held).toBe(1);
    expect(freeFromOutside(file)).toBe(true);
    await expect(withFileLock(file, async () => Promise.reject(new Error('async step failed')))).rejects.toThrow('async step failed');
    expect(freeFromOutside(file)).toBe(true);
  });

  it('shared: other shared holders get in, an exclusive one does not, and the two shared holders run side by side', () => {
    const file = path.join(tmp, 's.lock');
    const seen = withFileLock(file, () => withFileLock(file, () => [freeFromOutside(file, LOCK_SH), freeFromOutside(file, LOCK_EX)], { shared: true }), { shared: true });
    expect(seen).toEqual([true, false]);
    expect(freeFromOutside(file)).toBe(true);
    // and an exclusive holder keeps shared ones out
    expect(withFileLock(file, () => freeFromOutside(file, LOCK_SH))).toBe(false);
  });

  it('withExclusiveTurn waits for the arbiter\'s turn before taking the lock, and says when it is done, even when fn throws', async () => {
    const file = path.join(tmp, 't.lock');
    const events: string[] = [];
    let grant!: () => void;
    setExclusiveArbiter({
      turn: (f) => {
        events.push(`turn ${path.basename(f)}`);
        return new Promise<void>((r) => (grant = r));
      },
      done: (f) => events.push(`done ${path.basename(f)}`),
    });
    try {
      const out = withExclusiveTurn(file, () => {
        events.push(`locked ${freeFromOutside(file)}`);
        return 7;
      });
      await new Promise((r) => setImmediate(r));
      expect(events).toEqual(['turn t.lock']);
      grant();
      expect(await out).toBe(7);
      const failing = withExclusiveTurn(file, () => {
        throw new Error('teardown failed');
      });
      await new Promise((r) => setImmediate(r));
      grant();
      await expect(failing).rejects.toThrow('teardown failed');
      expect(events).toEqual(['turn t.lock', 'locked false', 'done t.lock', 'turn t.lock', 'done t.lock']);
      expect(freeFromOutside(file)).toBe(true);
    } finally {
      setExclusiveArbiter(undefined);
    }
  });

  it('takes a lock that is free again after a nested section on another file', () => {
    const outer = path.join(tmp, 'e.lock');
    const inner = path.join(tmp, 'f.lock');
    const held = withFileLock(outer, () => withFileLock(inner, () => [freeFromOutside(outer), freeFromOutside(inner)]));
    expect(held).toEqual([false, false]);
    expect([freeFromOutside(outer), freeFromOutside(inner)]).toEqual([true, true]);
  });
});
