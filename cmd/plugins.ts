/**
 * The plugins this executable carries, by the name a runtime calls them
 * under. Each is required lazily so a call pays only for its own code.
 *
 * A Map, not an object literal: names come from argv[0], argv[1] and the
 * daemon's requests, and `constructor`, `__proto__` or `toString` must be
 * unknown names like any other, not Object.prototype's members.
 */
import type { Plugin } from '../shared/cni/skel';

/** A plugin's module: `plugin` is what the skel runs, as this process (pluginMain) or in the daemon. */
export interface PluginModule {
  plugin: Plugin<unknown>;
}

/* eslint-disable @typescript-eslint/no-require-imports */
export const plugins: ReadonlyMap<string, () => PluginModule> = new Map<string, () => PluginModule>([
  ['none', () => require('../plugins/none/main')],
  ['host', () => require('../plugins/host/main')],
  ['container', () => require('../plugins/container/main')],
  ['bridge', () => require('../plugins/bridge/main')],
  ['portmap', () => require('../plugins/portmap/main')],
  ['macvlan', () => require('../plugins/macvlan/main')],
  ['ipvlan', () => require('../plugins/ipvlan/main')],
  ['overlay', () => require('../plugins/overlay/main')],
  ['cluster-ipam', () => require('../ipam/main')],
]);
/* eslint-enable @typescript-eslint/no-require-imports */

/** The plugin called name, or undefined for any other string. */
export function findPlugin(name: string): (() => PluginModule) | undefined {
  return plugins.get(name);
}
