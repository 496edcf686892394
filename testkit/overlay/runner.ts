/**
 * Runs the overlay plugin, its agent, or a control-plane dump inside a
 * simulated host's network namespace:
 *
 *   node runner.js NETNS_PATH plugin              (CNI_* from the environment, config on stdin)
 *   node runner.js NETNS_PATH agent ARGS...       (cni-ts overlay-agent ARGS)
 *   node runner.js NETNS_PATH snapshot ENDPOINT PREFIX
 *   node runner.js NETNS_PATH kv-delete ENDPOINT KEY
 *   node runner.js NETNS_PATH kv-get ENDPOINT KEY      (the value on stdout, nothing when absent)
 *   node runner.js NETNS_PATH dns ARGS...         (cni-ts dns ARGS: the host's resolver, as systemd would run it)
 *
 * Why not `ip netns exec`: it runs its command in a private mount
 * namespace, so the network namespaces the plugin pins (bind mounts) would
 * vanish with the process. setns(2) on the JavaScript thread before
 * anything else runs moves every socket this process opens (netlink, etcd's
 * gRPC) and every child it spawns (nft, unshare) into the host's namespace,
 * and leaves the mount namespace shared.
 *
 * Bundled by lab.ts with esbuild, etcd3 left external (NODE_PATH).
 */
import * as fs from 'node:fs';
import { CLONE_NEWNET } from '../../shared/sys/setns';
import { native } from '../../shared/sys/native';
import { plugin } from '../../plugins/overlay/main';
import { pluginMain } from '../../cmd/plugin-io';
import { agentMain } from '../../plugins/overlay/agent';
import { ControlPlane } from '../../plugins/overlay/controlplane';
import { EtcdKV } from '../../shared/etcd/kv';
import { dnsMain } from '../../cmd/dns';

const [nsPath, mode, ...rest] = process.argv.slice(2);
const fd = fs.openSync(nsPath!, 'r');
native().setns(fd, CLONE_NEWNET);
fs.closeSync(fd);

if (mode === 'plugin') {
  pluginMain(plugin);
} else if (mode === 'agent') {
  void agentMain(rest).then((c) => {
    process.exitCode = c;
  });
} else if (mode === 'dns') {
  void dnsMain(rest).then((c) => {
    process.exitCode = c;
  });
} else if (mode === 'snapshot') {
  const kv = new EtcdKV({ endpoints: [rest[0]!], requestTimeoutMs: 10_000 });
  new ControlPlane(kv, { prefix: rest[1] })
    .snapshot()
    .then(
      (s) => process.stdout.write(JSON.stringify({ ...s, revision: String(s.revision) })),
      (e) => {
        process.stderr.write(String(e));
        process.exitCode = 1;
      },
    )
    .finally(() => kv.close());
} else if (mode === 'kv-delete') {
  const kv = new EtcdKV({ endpoints: [rest[0]!], requestTimeoutMs: 10_000 });
  kv.txn({ success: [{ delete: rest[1]! }] }, Date.now() + 10_000)
    .catch((e) => {
      process.stderr.write(String(e));
      process.exitCode = 1;
    })
    .finally(() => kv.close());
} else if (mode === 'kv-get') {
  const kv = new EtcdKV({ endpoints: [rest[0]!], requestTimeoutMs: 10_000 });
  kv.txn({ success: [{ get: rest[1]! }] }, Date.now() + 10_000)
    .then((r) => process.stdout.write(r.results[0]?.[0]?.value ?? ''))
    .catch((e) => {
      process.stderr.write(String(e));
      process.exitCode = 1;
    })
    .finally(() => kv.close());
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exitCode = 2;
}
