/**
 * Runs the portmap plugin in-process through the real skel (runPlugin),
 * with its host dependencies replaced: nft by whatever the test passes
 * (FakeNft, or realNft inside a scratch namespace), the lock by a counter,
 * route_localnet by a recorder. Not a test file itself.
 */
import { runPlugin } from '../../../shared/cni/skel';
import type { Listing, Nft } from '../../../shared/nft/nft-interface';
import { OwnedTable } from '../../../shared/nft/table';
import { FirewallRecords } from '../../../shared/nft/records';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FakeNft } from '../../../testkit/fake-nft';
import { makePlugin, type PortmapDeps } from '../../../plugins/portmap/main';
import { PORTMAP_TABLE } from '../../../plugins/portmap/rules';

export interface FakeHost {
  deps: PortmapDeps;
  /** IPv4 addresses route_localnet was enabled for */
  localnet: string[];
  locks: number;
  /** How the table's markers are read without nft (realTable: netlink); absent: the skeleton is always written. */
  markers?: (chain: string) => { comment?: string } | undefined;
  /** How the table is read (realTable: netlink); absent: through nft. */
  list?: () => Listing | undefined;
  /** The table's records (a fresh temporary directory), as realTable keeps them on a host; undefined: none kept. */
  records?: FirewallRecords;
}

export function fakeHost(nft: Nft, opts: { records?: boolean } = {}): FakeHost {
  const dir = opts.records === false ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'portmap-records-'));
  const host: FakeHost = {
    localnet: [],
    locks: 0,
    ...(dir && { records: new FirewallRecords(() => dir) }),
    // a FakeNft's markers read from its model, as realTable reads the kernel's over netlink
    ...(nft instanceof FakeNft && { markers: (name: string) => nft.chainInfo(PORTMAP_TABLE.family, PORTMAP_TABLE.table, name) }),
    deps: {
      table: () =>
        new OwnedTable(PORTMAP_TABLE, {
          nft,
          lock: (fn) => {
            host.locks++;
            return fn();
          },
          ...(host.markers && { chain: (_ref, name) => host.markers!(name) }),
          ...(host.list && { list: () => host.list!() }),
          ...(host.records && { records: host.records }),
        }),
      enableLocalnet: (ip) => {
        host.localnet.push(ip);
      },
    },
  };
  return host;
}

export interface CallResult {
  code: number;
  /** the parsed stdout: the result, or the error object */
  out: Record<string, unknown> | undefined;
}

export interface Call {
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC';
  containerId?: string;
  ifname?: string;
  conf: Record<string, unknown>;
}

/** One plugin invocation; CNI_NETNS is a made-up path the skel is told is a namespace. */
export async function call(host: FakeHost, c: Call): Promise<CallResult> {
  const gcLike = c.command === 'GC';
  let stdout = '';
  const code = await runPlugin(makePlugin(host.deps), {
    env: {
      CNI_COMMAND: c.command,
      CNI_CONTAINERID: gcLike ? '' : (c.containerId ?? 'c1'),
      CNI_NETNS: gcLike ? '' : '/var/run/netns/portmap-test',
      CNI_IFNAME: gcLike ? '' : (c.ifname ?? 'eth0'),
      CNI_PATH: '/opt/cni/bin',
    },
    readStdin: () => Buffer.from(JSON.stringify(c.conf)),
    writeStdout: (s) => {
      stdout += s;
    },
    interfaceExists: () => false,
    netnsStatus: () => 'netns',
  });
  return { code, out: stdout.trim() ? (JSON.parse(stdout) as Record<string, unknown>) : undefined };
}

export interface ConfOptions {
  name?: string;
  cniVersion?: string;
  mappings?: unknown[];
  /** prevResult ips, e.g. ["10.1.0.5/24"]; undefined: no prevResult at all */
  ips?: string[];
  extra?: Record<string, unknown>;
}

/** A portmap config as libcni builds it after a bridge: prevResult with the container on eth0. */
export function portmapConf(o: ConfOptions = {}): Record<string, unknown> {
  const conf: Record<string, unknown> = {
    cniVersion: o.cniVersion ?? '1.1.0',
    name: o.name ?? 'net1',
    type: 'portmap',
    capabilities: { portMappings: true },
    ...o.extra,
  };
  if (o.mappings) conf.runtimeConfig = { portMappings: o.mappings };
  if (o.ips) {
    conf.prevResult = {
      cniVersion: o.cniVersion ?? '1.1.0',
      interfaces: [
        { name: 'cni0', mac: '0a:58:0a:01:00:01' },
        { name: 'veth0123', mac: '0a:58:0a:01:00:02' },
        { name: 'eth0', mac: '02:42:0a:01:00:05', sandbox: '/var/run/netns/portmap-test' },
      ],
      ips: o.ips.map((address) => ({ address, interface: 2 })),
    };
  }
  return conf;
}
