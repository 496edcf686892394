/**
 * shared/etcd/kv.ts's promise to plugins that never talk to etcd: importing
 * it (for its types, or for EtcdKV behind a seam) loads neither etcd3 nor
 * gRPC; only constructing an EtcdKV does. Checked in a fresh Node process,
 * on the module bundled as build.sh bundles it (etcd3 kept external).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildSync } from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';

const root = path.join(__dirname, '../../..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-kv-load-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function loadedAfter(body: string): { atImport: boolean; afterBody: boolean } {
  const entry = path.join(dir, 'entry.ts');
  fs.writeFileSync(
    entry,
    `import * as kv from ${JSON.stringify(path.join(root, 'shared/etcd/kv'))};
const loaded = () => Object.keys(require.cache).some((f) => f.includes('/node_modules/etcd3/') || f.includes('/node_modules/@grpc/'));
const atImport = loaded();
${body}
process.stdout.write(JSON.stringify({ atImport, afterBody: loaded() }));`,
  );
  const out = path.join(dir, 'entry.cjs');
  buildSync({ entryPoints: [entry], bundle: true, platform: 'node', format: 'cjs', outfile: out, external: ['etcd3'], logLevel: 'silent' });
  return JSON.parse(execFileSync(process.execPath, [out], { env: { PATH: process.env.PATH ?? '', NODE_PATH: path.join(root, 'node_modules') }, encoding: 'utf8' }));
}

describe('the etcd KV module', () => {
  it('loads etcd3 only when an EtcdKV is constructed, never at import', () => {
    expect(loadedAfter('void kv.get;')).toEqual({ atImport: false, afterBody: false });
    expect(loadedAfter(`new kv.EtcdKV({ endpoints: ['127.0.0.1:1'], requestTimeoutMs: 100 }).close();`)).toEqual({ atImport: false, afterBody: true });
  });
});
