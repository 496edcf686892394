import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../../shared/sys/file';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-file-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('writeFileAtomic', () => {
  it('replaces the file whole with mode 0600 by default, or the mode asked for', () => {
    const f = path.join(dir, 'state.json');
    fs.writeFileSync(f, 'old', { mode: 0o644 });
    expect(writeFileAtomic(f, 'new')).toBe(true);
    expect(fs.readFileSync(f, 'utf8')).toBe('new');
    expect(fs.statSync(f).mode & 0o777).toBe(0o600);
    writeFileAtomic(f, 'other', { mode: 0o644 });
    expect(fs.statSync(f).mode & 0o777).toBe(0o644);
    expect(fs.readdirSync(dir)).toEqual(['state.json']);
  });

  it('leaves a file that already holds the data alone with unlessSame', () => {
    const f = path.join(dir, 'r.json');
    writeFileAtomic(f, 'x');
    const ino = fs.statSync(f).ino;
    expect(writeFileAtomic(f, 'x', { unlessSame: true })).toBe(false);
    expect(fs.statSync(f).ino).toBe(ino);
    expect(writeFileAtomic(f, 'y', { unlessSame: true })).toBe(true);
    expect(fs.statSync(f).ino).not.toBe(ino);
  });

  it('creates the directory 0700 when asked, and refuses without it', () => {
    const f = path.join(dir, 'sub', 'deeper', 'a');
    expect(() => writeFileAtomic(f, 'a')).toThrow(/ENOENT/);
    writeFileAtomic(f, 'a', { mkdir: true, syncDir: true });
    expect(fs.statSync(path.dirname(f)).mode & 0o777).toBe(0o700);
    expect(fs.readFileSync(f, 'utf8')).toBe('a');
  });

  it('a failed rename leaves what was there and no temporary file', () => {
    // a non-empty directory at the name: rename(2) refuses to replace it
    const f = path.join(dir, 'taken');
    fs.mkdirSync(f);
    fs.writeFileSync(path.join(f, 'inside'), 'old');
    expect(() => writeFileAtomic(f, 'new')).toThrow(/EISDIR|ENOTEMPTY|EEXIST/);
    expect(fs.readFileSync(path.join(f, 'inside'), 'utf8')).toBe('old');
    expect(fs.readdirSync(dir)).toEqual(['taken']);
  });

  it('replaces a symlink at the name instead of writing into what it points at', () => {
    const victim = path.join(dir, 'victim');
    fs.writeFileSync(victim, 'untouched');
    const f = path.join(dir, 'target');
    fs.symlinkSync(victim, f);
    writeFileAtomic(f, 'data');
    expect(fs.readFileSync(victim, 'utf8')).toBe('untouched');
    expect(fs.lstatSync(f).isSymbolicLink()).toBe(false);
    expect(fs.readFileSync(f, 'utf8')).toBe('data');
  });
});
