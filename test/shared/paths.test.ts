import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as paths from '../../shared/paths';

describe('shared/paths', () => {
  it('puts every volatile path under /run/cni-ts and every persistent one under /var/lib/cni-ts, except host-local’s dataDir', () => {
    for (const p of [paths.DAEMON_SOCKET, paths.ASSET_DIR, paths.LOCK_DIR, paths.PORTMAP_LOCK_FILE, paths.OVERLAY_STATE_DIR]) {
      expect(p === paths.RUN_ROOT || p.startsWith(`${paths.RUN_ROOT}/`), p).toBe(true);
    }
    for (const p of [paths.HOST_ID_FILE, paths.LIVENESS_DIR]) expect(p.startsWith(`${paths.STATE_ROOT}/`), p).toBe(true);
    expect(paths.RUN_ROOT).toBe('/run/cni-ts');
    expect(paths.STATE_ROOT).toBe('/var/lib/cni-ts');
    expect(paths.LOCAL_IPAM_DATA_DIR).toBe('/var/lib/cni/networks');
    expect(paths.DAEMON_SOCKET).toBe('/run/cni-ts/daemon.sock');
  });

  it('keeps VLAN records where an earlier version wrote them, and otherwise under the persistent root', () => {
    const seen: string[] = [];
    const legacyHasRecords = (p: string) => (seen.push(p), true);
    expect(paths.vlanStateDir(legacyHasRecords)).toBe('/var/lib/cni/cni-ts');
    expect(seen).toEqual([path.join('/var/lib/cni/cni-ts', 'vlan')]);
    expect(paths.vlanStateDir(() => false)).toBe('/var/lib/cni-ts');
  });
});
