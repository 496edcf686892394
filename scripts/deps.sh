#!/usr/bin/env bash
# Installs everything the build, the tests, the demo and the benchmarks need
# on a fresh Debian machine: Debian packages and the npm dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential python3         # node-gyp: the native netlink binding
  nftables iproute2 procps        # nft for rules; ip/bridge only to LOOK in tests
  containernetworking-plugins     # the reference Go plugins (conformance oracle, benchmarks)
  etcd-server                     # a real etcd for the cluster IPAM and overlay tests
  busybox-static                  # tiny rootfs and ping/nc inside test namespaces
  podman runc                     # a real runtime calling our binaries
  qemu-system-x86 linux-image-amd64 cpio xz-utils  # VM harness for ipvlan/802.1q/ESP
  iperf3 tcpdump time hyperfine   # throughput, captures, peak memory, timing
  netavark aardvark-dns           # podman's default network backend and its DNS (runtime benches)
  containerd                      # a second real runtime (`ctr run --cni`) for the runtime bench
  faketime                        # a shifted wall clock for time-dependent tests
  valgrind                        # callgrind instruction counts of start-up (repeatable profiles)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[deps] apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[deps] npm ci" >&2
  # Exactly the committed lock, never `npm install`: that would rewrite
  # package-lock.json and leave a fresh clone dirty.
  npm ci --no-audit --no-fund --loglevel=error
fi
