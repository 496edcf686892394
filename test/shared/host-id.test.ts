import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hostId } from '../../shared/host-id';

const run = promisify(execFile);

describe('hostId', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'host-id-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('creates a random 128-bit id once, in a 0755 directory, and returns the same id afterwards', () => {
    const file = join(dir, 'nested', 'cni-ts', 'host-id');
    const id = hostId(file);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(hostId(file)).toBe(id);
    expect(readFileSync(file, 'utf8').trim()).toBe(id);
    expect(statSync(file).mode & 0o777).toBe(0o644);
    expect(statSync(join(dir, 'nested', 'cni-ts')).mode & 0o777).toBe(0o755);
    // no temp file left behind
    expect(readdirSync(join(dir, 'nested', 'cni-ts'))).toEqual(['host-id']);
  });

  it('gives two files two different ids', () => {
    expect(hostId(join(dir, 'a'))).not.toBe(hostId(join(dir, 'b')));
  });

  it('refuses a malformed file with a clear message and leaves it as it was', () => {
    const file = join(dir, 'host-id');
    for (const bad of ['', 'not-an-id\n', 'ABCDEF0123456789ABCDEF0123456789', 'ab'.repeat(17)]) {
      writeFileSync(file, bad);
      expect(() => hostId(file)).toThrow(/host id file .* is malformed/);
      expect(readFileSync(file, 'utf8')).toBe(bad);
    }
  });

  it('accepts an id written by hand with a trailing newline', () => {
    const file = join(dir, 'host-id');
    writeFileSync(file, '0123456789abcdef0123456789abcdef\n');
    expect(hostId(file)).toBe('0123456789abcdef0123456789abcdef');
  });

  it('gives every one of many concurrent first callers (separate processes) the same id', async () => {
    const script = join(dir, 'host-id.cjs');
    await build({
      entryPoints: [join(__dirname, '../../shared/host-id.ts')],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      outfile: script,
      logLevel: 'silent',
    });
    for (let round = 0; round < 3; round++) {
      const file = join(dir, `race-${round}`, 'host-id');
      const code = `process.stdout.write(require(${JSON.stringify(script)}).hostId(${JSON.stringify(file)}))`;
      const outs = await Promise.all(Array.from({ length: 8 }, () => run(process.execPath, ['-e', code])));
      const ids = new Set(outs.map((o) => o.stdout));
      expect(ids.size).toBe(1);
      expect([...ids][0]).toBe(readFileSync(file, 'utf8').trim());
    }
  });
});
