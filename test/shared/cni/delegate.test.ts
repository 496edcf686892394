/**
 * execDelegate runs an IPAM plugin found in CNI_PATH as libcni would; what
 * that plugin prints on stderr belongs to the call's logger (the caller's
 * stderr in the daemon), never to this process's stderr or stdout.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { execDelegate } from '../../../shared/cni/delegate';
import { CniError } from '../../../shared/cni/errors';

let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-delegate-'));
  const script = (body: string) => `#!/bin/sh\ncat >/dev/null\n${body}\n`;
  fs.writeFileSync(path.join(dir, 'chatty'), script(`echo "allocating from pool" >&2\necho '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}'`), { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'broken'), script(`echo "disk full" >&2\necho '{"cniVersion":"1.0.0","code":11,"msg":"try later"}'\nexit 1`), { mode: 0o755 });
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const call = (type: string, log: (l: string) => void) =>
  execDelegate({ command: 'ADD', type, stdin: '{}', env: { PATH: '/usr/bin:/bin', CNI_PATH: dir }, cniVersion: '1.0.0', log });

describe('execDelegate', () => {
  it("passes the plugin's stderr to the call's logger and returns its result", () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const lines: string[] = [];
      const r = call('chatty', (l) => lines.push(l));
      expect(r?.ips?.[0]?.address).toBe('10.9.0.2/24');
      expect(lines).toEqual(['allocating from pool']);
      expect(stderr).not.toHaveBeenCalled();
    } finally {
      stderr.mockRestore();
    }
  });

  it("keeps the plugin's error code, and its stderr still goes to the logger", () => {
    const lines: string[] = [];
    let err: unknown;
    try {
      call('broken', (l) => lines.push(l));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(11);
    expect(lines).toEqual(['disk full']);
  });
});
