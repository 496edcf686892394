/**
 * fast-check generators for plugin calls (not a test file itself): a
 * plugin, an environment and the bytes on stdin.
 *
 * Configs start from a structurally valid one per plugin and get mutated:
 * fields set to wrong types, huge or negative numbers, bad CIDRs and MACs,
 * unicode, very long strings, deep nesting; fields deleted; prototype keys
 * ("__proto__", "constructor") set as own JSON keys; or stdin replaced
 * outright by bytes that are not a JSON object. Environments mix valid
 * values with missing or hostile ones.
 *
 * Safety: every generated path a plugin may write to (dataDir, stateDir)
 * lies under the lab's temp directory or is not a string; CNI_PATH names
 * only the lab's bin/ or directories that do not exist (so a generated IPAM
 * "type" can never name a program of the machine); CNI_NETNS names only the
 * lab's namespaces, the calling process's own, or things that are not
 * network namespaces. The machine's host namespace (/proc/1/ns/net) is
 * never generated.
 */
import fc from 'fast-check';

export const PLUGINS = ['none', 'host', 'bridge', 'portmap', 'macvlan', 'ipvlan', 'overlay', 'cluster-ipam'] as const;
export type PluginName = (typeof PLUGINS)[number];

/**
 * The plugins with nftables code; the ruleset (one `nft` process per look,
 * the costly part of a snapshot) is compared for their calls only.
 */
export const NFT_PLUGINS: ReadonlySet<PluginName> = new Set<PluginName>(['bridge', 'portmap', 'overlay']);

export const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

export interface LabPaths {
  hostPath: string;
  contPath: string;
  stateDir: string;
  binDir: string;
}

export interface Call {
  plugin: PluginName;
  env: Record<string, string>;
  stdin: Buffer;
  /** the config before it was serialised, for the report; undefined when stdin is raw bytes */
  config?: unknown;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const LONG = 'x'.repeat(70_000);

function deep(depth: number, leaf: Json, kind: 'array' | 'object'): Json {
  let v: Json = leaf;
  for (let i = 0; i < depth; i++) v = kind === 'array' ? [v] : { a: v };
  return v;
}

const BAD_CIDRS = [
  '10.0.0.0/33',
  '10.0.0.0/-1',
  '10.0.0.0/',
  '/24',
  '300.1.1.1/24',
  '10.0.0.1',
  '::/129',
  'fd00::/64/1',
  '10.0.0.0/24 ',
  '10.0.0.0/0',
  '0.0.0.0/0',
  '255.255.255.255/32',
  '::ffff:10.0.0.0/120',
  '10.0.0.0/08',
  '1e1.0.0.0/8',
  '10.1.2.3/24',
  'fe80::1%eth0/64',
];
const WEIRD_STRINGS = [
  '',
  ' ',
  '\u0000',
  '\n',
  '../../../../etc',
  '/',
  'eth0',
  'lo',
  'fzdummy0',
  'a'.repeat(16),
  'ünïcödé',
  '😀😀😀😀😀😀',
  '\u202e',
  '${HOME}',
  '%s%s%n',
  '__proto__',
  'constructor',
  'toString',
  'hasOwnProperty',
  'passthru',
  'l3s',
  'etcd',
  'sctp',
  '01:00:5e:00:00:01',
  '00:00:00:00:00:00',
  '02:42:ac:11:00:02',
  'ff:ff:ff:ff:ff:ff',
  '1.0.0',
  '0.1.0',
  '99.0.0',
  LONG,
];
const NUMBERS = [0, -1, 1, 67, 68, 576, 1500, 9000, 65535, 65536, 4094, 4095, 0xffffff, 0x1000000, 2 ** 31, 2 ** 32, 2 ** 53 + 2, 1e308, -1e308, 0.5, -0.0, 1e-300];

/** A value that is wrong somewhere: type, range, syntax, size, depth. */
export function nastyValue(): fc.Arbitrary<Json> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom<Json>(...BAD_CIDRS, ...WEIRD_STRINGS) },
    { weight: 3, arbitrary: fc.constantFrom<Json>(...NUMBERS, null, true, false, [], {}) },
    { weight: 1, arbitrary: fc.integer() },
    { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
    { weight: 1, arbitrary: fc.constantFrom<Json>(deep(3000, 1, 'array'), deep(3000, 'x', 'object'), deep(50, null, 'object')) },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json> },
    { weight: 1, arbitrary: fc.array(fc.constantFrom<Json>(...BAD_CIDRS, 1, null, {}), { maxLength: 5 }) },
  );
}

/** Per plugin: a valid config, and the dotted paths worth mutating (besides random ones). */
export function baseConfig(plugin: PluginName, version: string, lab: LabPaths, n: number): { config: Record<string, Json>; paths: string[]; alternatives: Record<string, Json[]> } {
  const name = `fz${n}`;
  const ipam = { type: 'cluster-ipam', subnet: `10.214.${n}.0/24`, gateway: `10.214.${n}.1`, dataDir: `${lab.stateDir}/ipam`, routes: [{ dst: '0.0.0.0/0' }] };
  const ipamPaths = ['ipam', 'ipam.type', 'ipam.subnet', 'ipam.gateway', 'ipam.rangeStart', 'ipam.rangeEnd', 'ipam.routes', 'ipam.routes.0.dst', 'ipam.routes.0.gw', 'ipam.ranges', 'ipam.ranges.0', 'ipam.ranges.0.0.subnet', 'ipam.ranges.0.0.gateway', 'ipam.store', 'ipam.resolvConf', 'ipam.etcd'];
  const ipamAlternatives: Record<string, Json[]> = {
    'ipam.type': ['cluster-ipam', 'host-local', 'garbage-ipam', 'failing-ipam', 'no-such-ipam', '../bin/garbage-ipam'],
    'ipam.ranges': [[[{ subnet: `10.216.${n}.0/24` }], [{ subnet: 'fd00:216::/64' }]], [[{ subnet: `10.216.${n}.0/30` }]], [[{ subnet: `10.216.${n}.0/24`, rangeStart: `10.216.${n}.200`, rangeEnd: `10.216.${n}.100` }]]],
    'ipam.dataDir': [`${lab.stateDir}/ipam2`, `${lab.stateDir}/${'d'.repeat(300)}`, `${lab.stateDir}/ünï`, '', 7],
    'ipam.resolvConf': ['/nonexistent/resolv.conf', '/dev/null', '/proc/self/status', lab.stateDir],
  };
  const common = { cniVersion: version, name };
  switch (plugin) {
    case 'none':
    case 'host':
      return { config: { ...common, type: plugin }, paths: ['cniVersion', 'name', 'type', 'prevResult', 'args', 'runtimeConfig'], alternatives: {} };
    case 'bridge':
      return {
        config: { ...common, type: 'bridge', bridge: `fzbr${n}`, isGateway: true, ipMasq: true, ipam },
        paths: ['cniVersion', 'name', 'bridge', 'isGateway', 'isDefaultGateway', 'ipMasq', 'internal', 'icc', 'mtu', 'hairpinMode', 'promiscMode', 'runtimeConfig', 'runtimeConfig.mac', 'runtimeConfig.ips', 'runtimeConfig.ips.0', 'prevResult', ...ipamPaths],
        alternatives: { ...ipamAlternatives, bridge: [UPLINK_NAME, 'lo', `fzbr${n}x`], mtu: [1280, 9000, 68], internal: [true], isDefaultGateway: [true], icc: [false], 'runtimeConfig.mac': ['02:42:0a:00:00:09'], 'runtimeConfig.ips': [[`10.214.${n}.9/24`], ['10.99.0.1/24'], ['garbage']] },
      };
    case 'portmap': {
      const prevResult = { cniVersion: version, interfaces: [{ name: 'eth0', sandbox: lab.contPath }], ips: [{ address: `10.214.${n}.5/24`, interface: 0, gateway: `10.214.${n}.1` }] };
      return {
        config: { ...common, type: 'portmap', snat: true, runtimeConfig: { portMappings: [{ hostPort: 18000 + n, containerPort: 80, protocol: 'tcp' }] }, prevResult },
        paths: ['cniVersion', 'name', 'snat', 'masqAll', 'markMasqBit', 'backend', 'conditionsV4', 'externalSetMarkChain', 'runtimeConfig', 'runtimeConfig.portMappings', 'runtimeConfig.portMappings.0', 'runtimeConfig.portMappings.0.hostPort', 'runtimeConfig.portMappings.0.containerPort', 'runtimeConfig.portMappings.0.protocol', 'runtimeConfig.portMappings.0.hostIP', 'prevResult', 'prevResult.ips', 'prevResult.ips.0.address', 'prevResult.ips.0.interface', 'prevResult.interfaces', 'prevResult.interfaces.0.name'],
        alternatives: {
          'runtimeConfig.portMappings.0.hostIP': ['127.0.0.1', '::1', '0.0.0.0', '::', '10.213.0.1', 'fe80::1'],
          'runtimeConfig.portMappings.0.protocol': ['udp', 'sctp', 'UDP', 'icmp'],
          'runtimeConfig.portMappings': [Array.from({ length: 300 }, (_, i) => ({ hostPort: 20000 + i, containerPort: 80, protocol: 'tcp' })), Array.from({ length: 5 }, () => ({ hostPort: 18000 + n, containerPort: 80, protocol: 'tcp' }))],
          'prevResult.ips.0.address': ['fd00::5/64', '10.214.0.5', 'garbage'],
        },
      };
    }
    case 'macvlan':
    case 'ipvlan':
      return {
        config: { ...common, type: plugin, master: UPLINK_NAME, mode: plugin === 'macvlan' ? 'bridge' : 'l2', stateDir: `${lab.stateDir}/vlan`, ipam },
        paths: ['cniVersion', 'name', 'master', 'vlan', 'mode', 'flag', 'mtu', 'stateDir', 'runtimeConfig', 'runtimeConfig.mac', 'prevResult', ...ipamPaths],
        alternatives: {
          ...ipamAlternatives,
          master: [`${UPLINK_NAME}.10`, 'lo', 'nosuchdev', `${UPLINK_NAME}.4095`, `${UPLINK_NAME}.0`, `${UPLINK_NAME}.99999999999`, 'a.b.c.1'],
          vlan: [1, 10, 4094, 4095, 0, -1, 1.5],
          mode: plugin === 'macvlan' ? ['private', 'vepa', 'passthru', 'source'] : ['l3', 'l3s', 'l4'],
          flag: ['private', 'vepa', 'bridge'],
          stateDir: [`${lab.stateDir}/vlan2`, `${lab.stateDir}/${'s'.repeat(300)}`, 'relative/dir', '', 3],
          'runtimeConfig.mac': ['02:42:0a:00:00:09', '00:00:00:00:00:00'],
          mtu: [1280, 1500, 9000],
        },
      };
    case 'overlay':
      return {
        config: { ...common, type: 'overlay', subnet: `10.215.${n}.0/24`, nodeName: 'fz-node', stateDir: `${lab.stateDir}/overlay`, gateway: { subnet: '172.30.0.0/16' }, etcd: { requestTimeoutMs: 100 }, ipam: { ...ipam, subnet: `10.215.${n}.0/24`, gateway: undefined as unknown as Json } },
        paths: ['cniVersion', 'name', 'subnet', 'vni', 'mtu', 'encrypted', 'nodeName', 'stateDir', 'etcd', 'etcd.endpoints', 'etcd.keyPrefix', 'etcd.caFile', 'etcd.username', 'gateway', 'gateway.enabled', 'gateway.bridge', 'gateway.subnet', 'gateway.ifname', 'runtimeConfig.mac', 'prevResult', ...ipamPaths],
        alternatives: {
          ...ipamAlternatives,
          'gateway.subnet': ['172.30.0.1/16', '172.30.0.0/31', 'fd00::/64', '10.215.0.0/24'],
          'gateway.ifname': ['eth0'],
          vni: [1, 0xffffff, 0x1000000, 0],
          'etcd.endpoints': [['127.0.0.1:1'], ['https://127.0.0.1:2379'], [], ['not a url']],
          stateDir: [`${lab.stateDir}/ov2`, 'relative', ''],
        },
      };
    case 'cluster-ipam':
      return {
        config: { ...common, type: 'cluster-ipam', ipam },
        paths: ['cniVersion', 'name', 'prevResult', 'runtimeConfig', 'runtimeConfig.ips', 'runtimeConfig.ipRanges', 'args', 'args.cni.ips', ...ipamPaths],
        alternatives: { ...ipamAlternatives, 'runtimeConfig.ips': [[`10.214.${n}.9/24`], [`10.214.${n}.9`], ['10.99.0.1/24'], ['garbage'], Array.from({ length: 50 }, (_, i) => `10.214.${n}.${i + 10}/24`)] },
      };
  }
}

export const UPLINK_NAME = 'fzdummy0';

type Mutation = { op: 'set'; path: string[]; value: Json; proto: boolean } | { op: 'delete'; path: string[] };

function setPath(obj: Record<string, Json>, pathParts: string[], value: Json, proto: boolean): void {
  let cur: Record<string, Json> = obj;
  for (let i = 0; i < pathParts.length - 1; i++) {
    const k = pathParts[i];
    const next = Object.prototype.hasOwnProperty.call(cur, k) ? cur[k] : undefined;
    if (next === null || typeof next !== 'object') {
      const fresh: Record<string, Json> = {};
      defineOwn(cur, k, fresh);
      cur = fresh;
    } else {
      cur = next as Record<string, Json>;
    }
  }
  const last = pathParts[pathParts.length - 1];
  // "__proto__" must become an own key that JSON.stringify writes out, as a
  // runtime's JSON would carry it, not this object's prototype.
  if (proto || last === '__proto__') defineOwn(cur, last, value);
  else cur[last] = value;
}

function defineOwn(o: Record<string, Json>, k: string, v: Json): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

function deletePath(obj: Record<string, Json>, pathParts: string[]): void {
  let cur: Json = obj;
  for (let i = 0; i < pathParts.length - 1; i++) {
    if (cur === null || typeof cur !== 'object' || !Object.prototype.hasOwnProperty.call(cur, pathParts[i])) return;
    cur = (cur as Record<string, Json>)[pathParts[i]];
  }
  if (cur !== null && typeof cur === 'object') delete (cur as Record<string, Json>)[pathParts[pathParts.length - 1]];
}

const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty'];

function mutation(paths: string[], alternatives: Record<string, Json[]>): fc.Arbitrary<Mutation> {
  const altPaths = Object.keys(alternatives);
  const knownPath = fc.constantFrom(...paths).map((p) => p.split('.'));
  const protoPath = fc.tuple(fc.constantFrom('', ...paths.filter((p) => !p.includes('.'))), fc.constantFrom(...PROTO_KEYS)).map(([p, k]) => (p ? [...p.split('.'), k] : [k]));
  const randomKey = fc.tuple(fc.constantFrom('', 'ipam', 'runtimeConfig', 'args'), fc.string({ minLength: 1, maxLength: 12 })).map(([p, k]) => (p ? [p, k] : [k]));
  const arbs: Array<fc.WeightedArbitrary<Mutation>> = [
    { weight: 6, arbitrary: fc.record({ op: fc.constant('set' as const), path: knownPath, value: nastyValue(), proto: fc.constant(false) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), path: knownPath }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('set' as const), path: protoPath, value: fc.oneof(nastyValue(), fc.constant<Json>({ mac: '01:00:5e:00:00:01', ips: ['garbage'], portMappings: [{ hostPort: -1 }] })), proto: fc.constant(true) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('set' as const), path: randomKey, value: nastyValue(), proto: fc.constant(false) }) },
  ];
  if (altPaths.length) {
    arbs.push({
      weight: 4,
      arbitrary: fc.constantFrom(...altPaths).chain((p) => fc.record({ op: fc.constant('set' as const), path: fc.constant(p.split('.')), value: fc.constantFrom(...alternatives[p]), proto: fc.constant(false) })),
    });
  }
  return fc.oneof(...arbs);
}

/** Bytes on stdin that are not a usable JSON object. */
function rawStdin(): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc.constantFrom(
      '',
      'null',
      '[]',
      '"string"',
      '42',
      '{',
      '{"cniVersion": "1.0.0", "name": "x", "type": "none"',
      '{"cniVersion":"1.0.0","name":"x","type":"none"}{"second":1}',
      '{"cniVersion":"1.0.0","name":"x","name":"y","type":"none"}',
      '{"__proto__": {"name": "x", "cniVersion": "1.0.0"}, "type": "none"}',
      '{"constructor": {"prototype": {"polluted": 1}}, "cniVersion": "1.0.0", "name": "x"}',
      '\ufeff{"cniVersion":"1.0.0","name":"x","type":"none"}',
      `{"cniVersion":"1.0.0","name":"x","deep":${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
      `{"cniVersion":"1.0.0","name":"x","k":"${'y'.repeat(2_000_000)}"}`,
    ).map((s) => Buffer.from(s, 'utf8')),
    fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
    fc.constantFrom(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), Buffer.from([0xef, 0xbb, 0xbf, 0x7b, 0x7d])),
  );
}

/**
 * CNI_* variables: a valid set for the command, then none, one or two of
 * them replaced by something hostile (undefined means "not set"). Mostly
 * valid, so that most calls get past the skel into the plugin's own code.
 */
function envArb(lab: LabPaths): fc.Arbitrary<Record<string, string | undefined>> {
  const command = fc.oneof(
    { weight: 12, arbitrary: fc.constant('ADD') },
    { weight: 4, arbitrary: fc.constantFrom('DEL', 'CHECK', 'GC', 'STATUS', 'VERSION') },
  );
  const bad: Record<string, fc.Arbitrary<string | undefined>> = {
    CNI_COMMAND: fc.oneof(fc.constantFrom(undefined, '', 'add', 'ADD ', 'DELETE', '__proto__', 'constructor', 'hasOwnProperty', 'VERSION\n'), fc.string({ maxLength: 10 })),
    CNI_CONTAINERID: fc.constantFrom(undefined, '', '../../etc/passwd', 'a/b', 'c'.repeat(300), '-leading', '.hidden', 'ünï', 'a b', '__proto__', 'constructor'),
    CNI_NETNS: fc.constantFrom(undefined, '', '/proc/self/ns/net', '/proc/thread-self/ns/net', '/proc/self/ns/uts', '/proc/self/ns/mnt', '/dev/null', '/nonexistent/netns', lab.stateDir, 'relative/netns', lab.hostPath, `${lab.contPath}/../${lab.contPath.split('/').pop()}`, `/${'n'.repeat(5000)}`),
    CNI_IFNAME: fc.oneof(fc.constantFrom(undefined, '', 'lo', 'a'.repeat(16), 'a/b', 'a:b', 'a b', '.', '..', 'ünïcödéé', '😀😀😀😀', '\u0085x', '__proto__', 'eth0\n', 'fzdummy0'), fc.string({ maxLength: 18 })),
    CNI_ARGS: fc.oneof(fc.constantFrom('IgnoreUnknown=1', 'IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=n', 'IP=10.214.0.77', 'IgnoreUnknown=1;IP=garbage', 'IgnoreUnknown=maybe', ';;;', '=x', 'novalue', '__proto__=1;constructor=2', 'IgnoreUnknown=1;__proto__=x', `K=${'v'.repeat(5000)}`, 'IP=10.214.0.5,10.214.0.6;IgnoreUnknown=1'), fc.string({ maxLength: 30 })),
    CNI_PATH: fc.constantFrom(undefined, '', ':', '::::', '/nonexistent/cni/bin', `/nonexistent:${lab.binDir}`, `${lab.binDir}/garbage-ipam`, `/${'p'.repeat(5000)}`),
    CNI_NETNS_OVERRIDE: fc.constantFrom('1', 'true', 'garbage'),
    CNI_DEBUG: fc.constant('1'),
  };
  const mutations = fc.oneof(
    { weight: 6, arbitrary: fc.constant([] as Array<[string, string | undefined]>) },
    { weight: 4, arbitrary: fc.array(fc.constantFrom(...Object.keys(bad)).chain((k) => bad[k].map((v): [string, string | undefined] => [k, v])), { minLength: 1, maxLength: 2 }) },
  );
  return fc.tuple(command, fc.constantFrom('eth0', 'net1', 'fz0'), fc.stringMatching(/^[a-z0-9]{1,12}$/), mutations).map(([c, ifname, id, ms]) => {
    const env: Record<string, string | undefined> = { CNI_COMMAND: c, CNI_CONTAINERID: `fz${id}`, CNI_NETNS: lab.contPath, CNI_IFNAME: ifname, CNI_PATH: lab.binDir };
    for (const [k, v] of ms) env[k] = v;
    return env;
  });
}

/**
 * One call: a plugin, its environment, and its stdin (a mutated valid
 * config, usually). `n` keeps each call's network names and subnets apart.
 */
export function callArb(lab: LabPaths, plugins: readonly PluginName[] = PLUGINS): fc.Arbitrary<Call> {
  return fc
    .record({
      plugin: fc.constantFrom(...plugins),
      version: fc.constantFrom(...VERSIONS),
      n: fc.integer({ min: 0, max: 199 }),
      env: envArb(lab),
      mutations: fc.integer({ min: 0, max: 3 }),
      raw: fc.oneof({ weight: 11, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: rawStdin() }),
      seed: fc.integer(),
    })
    .chain(({ plugin, version, n, env, mutations, raw }) => {
      const cleanEnv: Record<string, string> = {};
      for (const [k, v] of Object.entries(env)) if (v !== undefined) cleanEnv[k] = v;
      if (raw !== null) return fc.constant<Call>({ plugin, env: cleanEnv, stdin: raw });
      const { config, paths, alternatives } = baseConfig(plugin, version, lab, n);
      return fc.array(mutation(paths, alternatives), { minLength: mutations, maxLength: mutations }).map((ms): Call => {
        const c = structuredClone(config);
        for (const m of ms) {
          if (m.op === 'set') setPath(c, m.path, m.value, m.proto);
          else deletePath(c, m.path);
        }
        return { plugin, env: cleanEnv, stdin: Buffer.from(JSON.stringify(c)), config: c };
      });
    });
}
