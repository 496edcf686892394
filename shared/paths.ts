/**
 * Every path cni-ts keeps on a host, under one root per lifetime. Code that
 * needs one of these reads it from here; configs and flags may point
 * elsewhere (tests do), but the defaults live only in this file.
 *
 *  RUN_ROOT   /run/cni-ts       volatile (tmpfs, gone at reboot, as is what
 *                               it describes): locks, the daemon's socket,
 *                               the executable's unpacked assets and code
 *                               caches, the overlay's pinned namespaces,
 *                               gateway pool and key-ring cache.
 *  STATE_ROOT /var/lib/cni-ts   persistent: this host's ID, the etcd IPAM's
 *                               liveness records, the VLAN links' user
 *                               records.
 *
 * One path stays where a contract puts it: the local IPAM's dataDir,
 * /var/lib/cni/networks, is host-local's layout (the store is host-local
 * compatible, so a node moving from host-local, or from an earlier cni-ts,
 * finds its allocations where they are).
 *
 * The VLAN records lived under /var/lib/cni/cni-ts before this module;
 * where that directory still holds them, it stays in use (see vlanStateDir),
 * so links created before an upgrade keep their count of users.
 *
 * Outside TypeScript: cmd/shim.c (DEFAULT_SOCKET) and scripts/sea-main.cjs
 * (its code-cache directory) name the same RUN_ROOT paths and must agree.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Volatile state: gone at reboot. Root's, 0700. */
export const RUN_ROOT = '/run/cni-ts';
/** Persistent state: kept across reboots. */
export const STATE_ROOT = '/var/lib/cni-ts';

/** `cni-ts daemon`'s socket (the shim's default too). */
export const DAEMON_SOCKET = path.join(RUN_ROOT, 'daemon.sock');
/** The native binding, the etcd bundle and V8 code caches, unpacked from the executable. */
export const ASSET_DIR = RUN_ROOT;
/** flock(2) files: one per bridge (bridge-<name>.lock) and portmap's. */
export const LOCK_DIR = RUN_ROOT;
export const PORTMAP_LOCK_FILE = path.join(LOCK_DIR, 'portmap.lock');
/** What each owned nftables table was built from, per network namespace (shared/nft/records.ts): `cni-ts firewall-reload` rebuilds from it. */
export const FIREWALL_STATE_DIR = path.join(RUN_ROOT, 'firewall');
/** The ::1 port relay's records, status, lock and pid, one directory per network namespace (shared/portproxy/records.ts). */
export const PORT_PROXY_DIR = path.join(RUN_ROOT, 'port-proxy');
/** The overlay's network namespaces, locks, gateway pool and key-ring cache. */
export const OVERLAY_STATE_DIR = path.join(RUN_ROOT, 'overlay');

/** This host's random ID (shared/host-id.ts). */
export const HOST_ID_FILE = path.join(STATE_ROOT, 'host-id');
/** How each etcd-IPAM store reaches etcd, for the liveness keeper (ipam/etcd/liveness.ts). */
export const LIVENESS_DIR = path.join(STATE_ROOT, 'ipam-etcd');
/** The local IPAM's default dataDir: host-local's, by contract (see above). */
export const LOCAL_IPAM_DATA_DIR = '/var/lib/cni/networks';

/** Where VLAN user records lived before this module (<dir>/vlan/...). */
export const LEGACY_VLAN_STATE_DIR = '/var/lib/cni/cni-ts';

/**
 * The VLAN records' stateDir default (records under <dir>/vlan/):
 * STATE_ROOT, unless the pre-upgrade directory still holds records; then
 * that one, for good, so every process of the host agrees on one place.
 */
export function vlanStateDir(exists: (p: string) => boolean = fs.existsSync): string {
  return exists(path.join(LEGACY_VLAN_STATE_DIR, 'vlan')) ? LEGACY_VLAN_STATE_DIR : STATE_ROOT;
}
