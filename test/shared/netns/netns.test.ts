import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetNs, NotANetnsError, isHostNetns, isNetnsPath, sysctlGet, sysctlSet, withNetns } from '../../../shared/netns/netns';
import { addNetns, delNetns, uniqueName } from '../../../testkit/netns';

/** Which network namespace the calling thread is in right now. */
const threadNs = (): number => fs.statSync('/proc/thread-self/ns/net').ino;
const readForward = (): string => fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();

const nsA = uniqueName('nsts');
const nsB = uniqueName('nsts');
let pathA = '';
let pathB = '';
let tmp = '';
let home = 0;

beforeAll(() => {
  home = threadNs();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'netns-test-'));
  pathA = addNetns(nsA);
  pathB = addNetns(nsB);
});

afterAll(() => {
  delNetns(nsA);
  delNetns(nsB);
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('NetNs.open', () => {
  it('rejects a regular file with NotANetnsError naming the path', () => {
    const file = path.join(tmp, 'not-a-netns');
    fs.writeFileSync(file, 'x');
    let err: unknown;
    try {
      NetNs.open(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NotANetnsError);
    expect((err as NotANetnsError).nsPath).toBe(file);
  });

  it('rejects a directory with NotANetnsError', () => {
    expect(() => NetNs.open(tmp)).toThrow(NotANetnsError);
  });

  it('fails with ENOENT for a path that does not exist', () => {
    expect(() => NetNs.open(path.join(tmp, 'missing'))).toThrow(expect.objectContaining({ code: 'ENOENT' }));
  });

  it('rejects the namespace file of another kind (a mount namespace) with NotANetnsError', () => {
    expect(() => NetNs.open('/proc/self/ns/mnt')).toThrow(NotANetnsError);
  });

  it('opens a named namespace whose inode is that of the bind mount', () => {
    const ns = NetNs.open(pathA);
    try {
      expect(ns.path).toBe(pathA);
      expect(ns.inode()).toBe(fs.statSync(pathA).ino);
      expect(ns.inode()).not.toBe(home);
    } finally {
      ns.close();
    }
  });

  it('NetNs.current() is the namespace the thread is in', () => {
    const ns = NetNs.current();
    try {
      expect(ns.inode()).toBe(home);
    } finally {
      ns.close();
    }
  });
});

describe('isNetnsPath', () => {
  it('is true for a named namespace and for the process own namespace link', () => {
    expect(isNetnsPath(pathA)).toBe(true);
    expect(isNetnsPath('/proc/self/ns/net')).toBe(true);
  });

  it('is false for a regular file, a directory and a missing path', () => {
    const file = path.join(tmp, 'plain');
    fs.writeFileSync(file, '');
    expect(isNetnsPath(file)).toBe(false);
    expect(isNetnsPath(tmp)).toBe(false);
    expect(isNetnsPath(path.join(tmp, 'nope'))).toBe(false);
  });

  it('is false for a namespace file of another kind', () => {
    expect(isNetnsPath('/proc/self/ns/uts')).toBe(false);
  });
});

describe('isHostNetns', () => {
  it('is true for the namespace the tests run in, which is the host one', () => {
    expect(isHostNetns('/proc/self/ns/net')).toBe(true);
  });

  it('is true for /proc/1/ns/net wherever PID 1 can be inspected', () => {
    let inspectable = true;
    try {
      fs.readlinkSync('/proc/1/ns/net');
    } catch {
      inspectable = false; // a sandbox whose PID 1 holds capabilities we lack
    }
    if (inspectable) expect(isHostNetns('/proc/1/ns/net')).toBe(true);
    else expect(() => isHostNetns('/proc/1/ns/net')).toThrow(/EACCES|EPERM/);
  });

  it('is false for a namespace the test created', () => {
    expect(isHostNetns(pathA)).toBe(false);
  });
});

describe('withNetns', () => {
  it('runs the function inside the namespace, returns its value and comes back', () => {
    const inside = withNetns(pathA, () => threadNs());
    expect(inside).toBe(fs.statSync(pathA).ino);
    expect(threadNs()).toBe(home);
  });

  it('makes a /proc/sys write inside land in that namespace and leaves the host value unchanged', () => {
    const hostBefore = readForward();
    const otherBefore = withNetns(pathB, readForward);
    const want = hostBefore === '1' ? '0' : '1';
    sysctlSet('net.ipv4.ip_forward', want, pathA);
    expect(withNetns(pathA, readForward)).toBe(want);
    expect(sysctlGet('net.ipv4.ip_forward', pathA)).toBe(want);
    expect(sysctlGet('net/ipv4/ip_forward', pathA)).toBe(want);
    // the other namespace keeps its own value
    expect(withNetns(pathB, readForward)).toBe(otherBefore);
    expect(readForward()).toBe(hostBefore);
    expect(sysctlGet('net.ipv4.ip_forward')).toBe(hostBefore);
  });

  it('runs child processes spawned synchronously inside in the namespace', () => {
    const r = withNetns(pathB, () => spawnSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' }));
    expect(r.status).toBe(0);
    const names = (JSON.parse(r.stdout) as Array<{ ifname: string }>).map((l) => l.ifname);
    expect(names).toEqual(['lo']);
    expect(threadNs()).toBe(home);
  });

  it('refuses an async function and leaves the thread in its own namespace', () => {
    expect(() => withNetns(pathA, async () => 1)).toThrow(/synchronous/);
    expect(threadNs()).toBe(home);
  });

  it('brings the thread home after the function throws and rethrows that same error', () => {
    const boom = new Error('boom');
    let caught: unknown;
    try {
      withNetns(pathA, () => {
        throw boom;
      });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBe(boom);
    expect(threadNs()).toBe(home);
  });

  it('returns to the outer namespace, not the host, when calls are nested', () => {
    const seen = withNetns(pathA, () => {
      const inner = withNetns(pathB, () => threadNs());
      return { inner, after: threadNs() };
    });
    expect(seen).toEqual({ inner: fs.statSync(pathB).ino, after: fs.statSync(pathA).ino });
    expect(threadNs()).toBe(home);
  });

  it('runs in the current namespace when no path is given', () => {
    expect(withNetns(undefined, () => threadNs())).toBe(home);
  });

  it('fails before running anything for a path that is not a namespace', () => {
    let ran = false;
    const file = path.join(tmp, 'plain2');
    fs.writeFileSync(file, '');
    expect(() =>
      withNetns(file, () => {
        ran = true;
      }),
    ).toThrow(NotANetnsError);
    expect(ran).toBe(false);
    expect(threadNs()).toBe(home);
  });
});
