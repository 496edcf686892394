/**
 * A minimal runtime for the demo: runs a conflist's plugins the way libcni
 * does (name and cniVersion injected into each plugin's config, capability
 * arguments as runtimeConfig, each ADD's result passed on as prevResult,
 * DEL in reverse order with the cached result).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Attachment {
  containerId: string;
  netns: string;
  ifname: string;
  capabilityArgs?: Record<string, unknown>;
}

export interface Conflist {
  cniVersion: string;
  name: string;
  plugins: Array<Record<string, any>>;
}

export class MiniRuntime {
  private readonly cache = new Map<string, unknown>();

  constructor(private readonly pluginDir: string) {}

  static load(file: string): Conflist {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  }

  private exec(type: string, command: string, a: Attachment, conf: object): any {
    const r = spawnSync(path.join(this.pluginDir, type), [], {
      env: {
        PATH: process.env.PATH,
        CNI_COMMAND: command,
        CNI_CONTAINERID: a.containerId,
        CNI_NETNS: a.netns,
        CNI_IFNAME: a.ifname,
        CNI_PATH: this.pluginDir,
      },
      input: JSON.stringify(conf),
      encoding: 'utf8',
    });
    const out = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
    if (r.status !== 0) throw new Error(`${type} ${command} failed: ${out?.msg ?? r.stderr} (code ${out?.code})`);
    return out;
  }

  private pluginConf(list: Conflist, plugin: Record<string, any>, a: Attachment, prevResult: unknown): object {
    const conf: Record<string, any> = { ...plugin, cniVersion: list.cniVersion, name: list.name };
    const runtimeConfig: Record<string, unknown> = {};
    for (const [cap, on] of Object.entries(plugin.capabilities ?? {})) {
      if (on && a.capabilityArgs?.[cap] !== undefined) runtimeConfig[cap] = a.capabilityArgs[cap];
    }
    if (Object.keys(runtimeConfig).length) conf.runtimeConfig = runtimeConfig;
    if (prevResult) conf.prevResult = prevResult;
    return conf;
  }

  add(list: Conflist, a: Attachment): any {
    let result: unknown;
    for (const plugin of list.plugins) result = this.exec(plugin.type, 'ADD', a, this.pluginConf(list, plugin, a, result));
    this.cache.set(`${list.name}/${a.containerId}/${a.ifname}`, result);
    return result;
  }

  del(list: Conflist, a: Attachment): void {
    const cached = this.cache.get(`${list.name}/${a.containerId}/${a.ifname}`);
    for (const plugin of [...list.plugins].reverse()) this.exec(plugin.type, 'DEL', a, this.pluginConf(list, plugin, a, cached));
    this.cache.delete(`${list.name}/${a.containerId}/${a.ifname}`);
  }
}
