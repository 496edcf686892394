import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN } from '../../../shared/sys/flock';
import { type NativeError, native } from '../../../shared/sys/native';

const EWOULDBLOCK = os.constants.errno.EWOULDBLOCK;
const ADDON = path.resolve(__dirname, '../../../shared/netlink/native/build/Release/netlink_native.node');

/**
 * A child Node process that opens the lock file itself (flock locks belong to
 * the open file description, so an inherited fd would share our lock) and
 * either tries a non-blocking lock once ("try") or takes a lock and holds it
 * until killed ("hold").
 */
const CHILD = `
const fs = require('node:fs');
const [addon, file, mode, op] = process.argv.slice(1);
const m = { exports: {} };
process.dlopen(m, addon);
const fd = fs.openSync(file, 'r+');
if (mode === 'try') {
  try { m.exports.flock(fd, Number(op)); process.stdout.write('locked'); }
  catch (e) { process.stdout.write('errno=' + e.errno + ' syscall=' + e.syscall); }
} else {
  m.exports.flock(fd, Number(op));
  process.stdout.write('holding\\n');
  setInterval(() => {}, 1000);
}
`;

function tryLockInChild(file: string, op: number): string {
  const r = spawnSync(process.execPath, ['-e', CHILD, ADDON, file, 'try', String(op)], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return r.stdout;
}

let tmp = '';
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'flock-test-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('native flock', () => {
  it('loads the binding the child uses from the same file native() loads', () => {
    expect(fs.existsSync(ADDON)).toBe(true);
    expect(typeof native().flock).toBe('function');
  });

  it('keeps a second process out with EWOULDBLOCK while the lock is held, and lets it in after LOCK_UN', () => {
    const file = path.join(tmp, 'a.lock');
    fs.writeFileSync(file, '');
    const fd = fs.openSync(file, 'r+');
    try {
      native().flock(fd, LOCK_EX);
      expect(tryLockInChild(file, LOCK_EX | LOCK_NB)).toBe(`errno=${EWOULDBLOCK} syscall=flock`);
      expect(tryLockInChild(file, LOCK_SH | LOCK_NB)).toBe(`errno=${EWOULDBLOCK} syscall=flock`);
      native().flock(fd, LOCK_UN);
      expect(tryLockInChild(file, LOCK_EX | LOCK_NB)).toBe('locked');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('lets shared locks coexist but keeps an exclusive one out', () => {
    const file = path.join(tmp, 'b.lock');
    fs.writeFileSync(file, '');
    const fd = fs.openSync(file, 'r+');
    try {
      native().flock(fd, LOCK_SH);
      expect(tryLockInChild(file, LOCK_SH | LOCK_NB)).toBe('locked');
      expect(tryLockInChild(file, LOCK_EX | LOCK_NB)).toBe(`errno=${EWOULDBLOCK} syscall=flock`);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('throws an error carrying errno and syscall when this process is locked out', async () => {
    const file = path.join(tmp, 'c.lock');
    fs.writeFileSync(file, '');
    const holder = spawn(process.execPath, ['-e', CHILD, ADDON, file, 'hold', String(LOCK_EX)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const fd = fs.openSync(file, 'r+');
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout!.on('data', (d: Buffer) => d.toString().includes('holding') && resolve());
        holder.on('exit', (code) => reject(new Error(`holder exited early (${code})`)));
      });
      let err: NativeError | undefined;
      try {
        native().flock(fd, LOCK_EX | LOCK_NB);
      } catch (e) {
        err = e as NativeError;
      }
      expect(err).toBeInstanceOf(Error);
      expect(err!.errno).toBe(EWOULDBLOCK);
      expect(err!.syscall).toBe('flock');

      // The kernel drops a lock when its holder dies, however it dies: a
      // plugin killed mid-ADD must not leave the store locked for ever.
      const exited = new Promise((resolve) => holder.once('exit', (_code, signal) => resolve(signal)));
      holder.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      native().flock(fd, LOCK_EX | LOCK_NB);
      expect(tryLockInChild(file, LOCK_EX | LOCK_NB)).toBe(`errno=${EWOULDBLOCK} syscall=flock`);
    } finally {
      fs.closeSync(fd);
      if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL');
    }
  });

  it('rejects non-integer arguments with a TypeError instead of locking fd 0', () => {
    expect(() => (native().flock as unknown as (a: unknown, b: unknown) => void)('x', LOCK_EX)).toThrow(TypeError);
  });
});
