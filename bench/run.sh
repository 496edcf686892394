#!/usr/bin/env bash
# Runs every benchmark against the packaged executable and the reference
# plugins from Debian's containernetworking-plugins. Build first (build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# Node reads extra CA certificates at start-up when this is set (about
# 100 ms here): never what a runtime's environment looks like.
unset NODE_EXTRA_CA_CERTS
[ -x bin/cni-ts ] || bash build.sh
mkdir -p dist/bench
# ipvlan-vm (ipvlan inside the qemu VM, minutes) runs only when asked:
#   BENCHES=ipvlan-vm bash bench/run.sh
# runtime: podman and containerd running containers on ours, netavark and
# the reference plugins (a few minutes; RUNTIME_ROUNDS, RUNTIME_BURST):
#   BENCHES=runtime bash bench/run.sh
# dns: cni-ts dns against aardvark-dns (queries/s, p99, name visible after ADD, RSS)
for b in ${BENCHES:-none bridge chain parallel macvlan overlay runtime dns}; do
  # esbuild stays external: the VM harness bundles the guest side at run
  # time, and esbuild finds its own native binary from node_modules.
  npx --no-install esbuild "bench/$b.ts" --bundle --platform=node --format=cjs --log-level=warning --external:esbuild --outfile="dist/bench/$b.js"
  node "dist/bench/$b.js"
  echo
done
