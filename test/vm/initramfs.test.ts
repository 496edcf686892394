import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { buildInitramfs, cpioNewc, findBusybox, findKernel, moduleLoadOrder } from '../../testkit/vm/initramfs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-initramfs-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('cpioNewc', () => {
  test('writes an archive that busybox cpio lists and extracts byte for byte', () => {
    const archive = path.join(tmp, 'a.cpio');
    fs.writeFileSync(
      archive,
      cpioNewc([
        { name: 'bin', mode: 0o040755 },
        // Odd lengths exercise the 4-byte padding of names and data.
        { name: 'bin/x', mode: 0o100755, data: Buffer.from('abc') },
        { name: 'init', mode: 0o100755, data: Buffer.from('#!/bin/sh\necho hi\n') },
      ]),
    );
    const list = execFileSync(findBusybox(), ['cpio', '-t', '-F', archive], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(list.trim().split('\n')).toEqual(['bin', 'bin/x', 'init']);
    const out = path.join(tmp, 'out');
    fs.mkdirSync(out);
    execFileSync(findBusybox(), ['cpio', '-i', '-d', '-F', archive], { cwd: out, stdio: 'ignore' });
    expect(fs.readFileSync(path.join(out, 'bin/x'), 'utf8')).toBe('abc');
    expect(fs.readFileSync(path.join(out, 'init'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect(fs.statSync(path.join(out, 'init')).mode & 0o777).toBe(0o755);
  });

  test('is deterministic: the same entries give the same bytes', () => {
    const entries = [{ name: 'f', mode: 0o100644, data: Buffer.from('x') }];
    expect(cpioNewc(entries).equals(cpioNewc(entries))).toBe(true);
  });
});

describe('moduleLoadOrder', () => {
  const dir = path.join(tmp, 'modules');
  fs.mkdirSync(dir);
  // modules.dep lists a module's whole dependency closure, last-loaded first.
  fs.writeFileSync(
    path.join(dir, 'modules.dep'),
    [
      'kernel/a/top.ko.xz: kernel/a/mid.ko.xz kernel/a/base.ko.xz',
      'kernel/a/mid.ko.xz: kernel/a/base.ko.xz',
      'kernel/a/base.ko.xz:',
      'kernel/a/other.ko.xz: kernel/a/base.ko.xz',
    ].join('\n') + '\n',
  );
  fs.writeFileSync(path.join(dir, 'modules.builtin'), 'kernel/b/builtin.ko\n');

  test('loads dependencies first and each module once', () => {
    expect(moduleLoadOrder(dir, ['top', 'other']).map((f) => path.relative(dir, f))).toEqual([
      'kernel/a/base.ko.xz',
      'kernel/a/mid.ko.xz',
      'kernel/a/top.ko.xz',
      'kernel/a/other.ko.xz',
    ]);
  });

  test('skips a module built into the kernel', () => {
    expect(moduleLoadOrder(dir, ['builtin'])).toEqual([]);
  });

  test('names a module the kernel does not have', () => {
    expect(() => moduleLoadOrder(dir, ['nope'])).toThrow(/module nope is neither built into/);
  });

  test("gives, for Debian's kernel, the order found by hand for mounting 9p", () => {
    const kernel = findKernel();
    expect(moduleLoadOrder(kernel.modulesDir).map((f) => path.basename(f).replace(/\.ko.*$/, ''))).toEqual([
      'virtio_ring',
      'virtio',
      'virtio_pci_modern_dev',
      'virtio_pci_legacy_dev',
      'virtio_pci',
      '9pnet',
      '9pnet_virtio',
      'netfs',
      'fscache',
      '9p',
    ]);
  });
});

describe('buildInitramfs', () => {
  test('reuses the cached image when nothing changed', () => {
    const kernel = findKernel();
    const cache = path.join(tmp, 'cache');
    const first = buildInitramfs(kernel, cache);
    const mtime = fs.statSync(first).mtimeMs;
    expect(buildInitramfs(kernel, cache)).toBe(first);
    expect(fs.statSync(first).mtimeMs).toBe(mtime);
    expect(fs.readdirSync(cache)).toEqual([path.basename(first)]);
  });
});
