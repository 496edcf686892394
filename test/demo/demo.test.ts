import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '../..');

describe('the README demo (dist/demo.js after ./build.sh)', () => {
  it('runs every step ok and leaves nothing behind', () => {
    const r = spawnSync('node', ['dist/demo.js'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
    expect(r.stdout).toContain('a pings b');
    expect(r.stdout).toContain('published on localhost');
    expect(r.stdout).not.toContain('FAIL');
    expect(r.stdout).toContain('demo finished: every step ok');
    expect(r.status).toBe(0);
  });
});
