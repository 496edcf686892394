/**
 * Loads the etcd3 client (and its gRPC stack) on demand. It is never part
 * of a plugin's start-up: only EtcdKV (./kv.ts) calls this, when constructed,
 * and only when a configuration asks for etcd.
 *
 * From a source checkout it is the npm package. Inside the packaged
 * executable there is no node_modules: build.sh bundles etcd3 into one file
 * and ships it, with the .proto files it reads from beside itself at load,
 * as SEA assets; the first use after a boot or an upgrade writes them to a
 * content-addressed directory (root only) and requires the bundle from there.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { assetCacheDir } from '../sys/native';

export type Etcd3 = typeof import('etcd3');

/** The SEA assets build.sh adds (scripts/pack-sea.cjs). */
export const ETCD_ASSETS = ['etcd/lib/etcd3.js', 'etcd/proto/rpc.proto', 'etcd/proto/kv.proto', 'etcd/proto/auth.proto'] as const;
export const ETCD_DIGEST_ASSET = 'etcd/sha256';

let loaded: Etcd3 | undefined;

export function loadEtcd3(): Etcd3 {
  // a require at call time, not an import: loading etcd3 is what this file defers
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  if (!loaded) loaded = fromSea() ?? (require('etcd3') as Etcd3);
  return loaded;
}

interface Sea {
  isSea(): boolean;
  getRawAsset(key: string): ArrayBuffer;
  getAsset(key: string, encoding: string): string;
}

/** The written-out assets hash to what scripts/pack-sea.cjs computed over them (name, then content, in order). */
function intact(dir: string, digest: string): boolean {
  const hash = createHash('sha256');
  try {
    for (const name of ETCD_ASSETS) {
      const file = path.join(dir, name);
      const st = fs.lstatSync(file);
      if (!st.isFile() || st.uid !== (process.geteuid?.() ?? 0) || (st.mode & 0o022) !== 0) return false;
      hash.update(name).update(fs.readFileSync(file));
    }
  } catch {
    return false;
  }
  return hash.digest('hex') === digest;
}

function fromSea(): Etcd3 | undefined {
  let sea: Sea;
  try {
    // node:sea exists only on Node 20+ and inside the packaged executable: probed, not imported
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    sea = require('node:sea') as Sea;
  } catch {
    return undefined;
  }
  if (!sea.isSea()) return undefined;
  const fullDigest = sea.getAsset(ETCD_DIGEST_ASSET, 'utf8').trim();
  const digest = fullDigest.slice(0, 16);
  // ours and closed to others (else refused), so what is checked below stays as checked
  const base = assetCacheDir();
  const dir = path.join(base, `etcd-${digest}`);
  const entry = path.join(dir, 'etcd/lib/etcd3.js');
  if (!intact(dir, fullDigest)) {
    // Write everything into a private temp directory, then rename it into
    // place: a concurrent first use sees either nothing or all of it. A
    // copy that does not match the build's digest (planted, damaged) goes.
    const tmp = fs.mkdtempSync(path.join(base, `.etcd-${digest}-`));
    for (const name of ETCD_ASSETS) {
      const file = path.join(tmp, name);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, Buffer.from(sea.getRawAsset(name)), { mode: 0o400 });
    }
    if (fs.existsSync(dir) && !intact(dir, fullDigest)) fs.rmSync(dir, { recursive: true, force: true });
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      // another process won the race; its copy is identical
      fs.rmSync(tmp, { recursive: true, force: true });
      if (!intact(dir, fullDigest)) throw e;
    }
  }
  return createRequire(entry)(entry) as Etcd3;
}
