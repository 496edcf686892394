/**
 * What a guest test can rely on: where it may write, and where it runs.
 * See test/vm/README.md; these tests keep that description true.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from '../../../testkit/vm/guest-api';

test("the host's root file system is read-only inside the VM", () => {
  assert.throws(() => fs.writeFileSync(path.join(process.cwd(), `vm-write-probe-${process.pid}`), 'x'), { code: 'EROFS' });
});

test('/tmp, /run/netns, /var/lib and /var/log are writable and start empty of host state', () => {
  for (const dir of ['/tmp', '/run/netns', '/var/lib', '/var/log']) {
    const probe = path.join(dir, `vm-write-probe-${process.pid}`);
    fs.writeFileSync(probe, 'x');
    fs.rmSync(probe);
  }
  // A fresh tmpfs: the host's CNI state never leaks into a guest test.
  assert.equal(fs.existsSync('/var/lib/cni'), false);
  fs.mkdirSync('/var/lib/cni/networks', { recursive: true });
  fs.rmSync('/var/lib/cni', { recursive: true });
});

test('the working directory is the repository root', () => {
  assert.ok(fs.existsSync(path.join(process.cwd(), 'testkit/vm/guest-runner.ts')));
});
