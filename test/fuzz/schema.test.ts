/**
 * Issue 12.6: fields that used to be checked only halfway through ADD (or by
 * the kernel) are refused by the plugin's schema, code 7, before anything is
 * created: overlay `gateway.subnet` and macvlan `runtimeConfig.mac`.
 *
 * Run in-process through the skel. The plugin's verb is reached only if the
 * schema lets the config through; every handle and store a verb could touch
 * is made to record that it was reached (overlay: its KV factory; macvlan:
 * the netns seam, which the skel consults only after the schema), so "code 7
 * and nothing changed" is asserted as "code 7 and the verb never ran".
 */
import { afterAll, describe, expect, it } from 'vitest';
import { runPlugin, type Plugin, type SkelIO } from '../../shared/cni/skel';
import { plugin as macvlan } from '../../plugins/macvlan/main';
import { plugin as bridge } from '../../plugins/bridge/main';
import { deps as overlayDeps, plugin as overlay } from '../../plugins/overlay/main';
import { FakeKV } from '../../testkit/fake-kv';
import { loadIpamConfig } from '../../ipam/config';
import { CniError } from '../../shared/cni/errors';

const realKv = overlayDeps.kv;
afterAll(() => {
  overlayDeps.kv = realKv;
});

interface Outcome {
  code: number;
  out: any;
  /** the skel got past the schema (it asks about CNI_NETNS only then) */
  pastSchema: boolean;
  /** overlay only: the verb opened its control plane */
  kvOpened: boolean;
}

async function add(p: Plugin<unknown>, conf: object): Promise<Outcome> {
  let stdout = '';
  let pastSchema = false;
  let kvOpened = false;
  overlayDeps.kv = () => {
    kvOpened = true;
    return new FakeKV();
  };
  const io: SkelIO = {
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'schema-1', CNI_NETNS: '/var/run/netns/cni-ts-schema-none', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' },
    readStdin: () => Buffer.from(JSON.stringify(conf)),
    writeStdout: (s) => {
      stdout += s;
    },
    interfaceExists: () => false,
    netnsStatus: () => {
      pastSchema = true;
      // stop the call right there: nothing below the skel runs
      return 'not-netns';
    },
  };
  const code = await runPlugin(p, io);
  return { code, out: JSON.parse(stdout), pastSchema, kvOpened };
}

const overlayConf = (gateway: object) => ({
  cniVersion: '1.0.0',
  name: 'ovschema',
  type: 'overlay',
  subnet: '10.252.0.0/24',
  nodeName: 'n1',
  stateDir: '/nonexistent/ovschema',
  gateway,
  ipam: { type: 'cluster-ipam' },
});

describe('overlay gateway.subnet is validated by the schema', () => {
  for (const bad of [
    'not-a-cidr',
    '172.18.0.0',
    '172.18.0.0/33',
    '172.18.0.1/16', // host bits set
    '172.18.0.0/31', // no room for a gateway and a container
    '172.18.0.0/32',
    '10.0.0.0/4', // absurdly wide
    'fd00::/64', // IPv6: the gateway pool is IPv4
    '::ffff:172.18.0.0/112',
    '172.018.0.0/16',
    ' 172.18.0.0/16',
    '172.18.0.0/16\n',
    '172.18.0.0/+16',
    '',
  ]) {
    it(`refuses ${JSON.stringify(bad)} with code 7 before the verb runs`, async () => {
      const r = await add(overlay as Plugin<unknown>, overlayConf({ subnet: bad }));
      expect(r.code).toBe(1);
      expect(r.out.code).toBe(7);
      expect(r.out.msg).toMatch(/gateway\.subnet/);
      expect(r.pastSchema).toBe(false);
      expect(r.kvOpened).toBe(false);
    });
  }

  for (const good of ['172.18.0.0/16', '10.99.0.0/30', '192.168.0.0/24', '10.0.0.0/8']) {
    it(`accepts ${good} (the call goes on past the schema)`, async () => {
      const r = await add(overlay as Plugin<unknown>, overlayConf({ subnet: good }));
      expect(r.pastSchema).toBe(true);
      // refused only for the namespace this test gives it
      expect(r.out.code).toBe(8);
    });
  }
});

const macvlanConf = (mac: unknown) => ({
  cniVersion: '1.0.0',
  name: 'mvschema',
  type: 'macvlan',
  master: 'lo',
  stateDir: '/nonexistent/mvschema',
  runtimeConfig: { mac },
});

describe('macvlan runtimeConfig.mac is validated by the schema', () => {
  for (const bad of [
    'zz:zz:zz:zz:zz:zz',
    '02:42:ac:11:00',
    '02:42:ac:11:00:02:03',
    '0242ac110002',
    '02-42-ac-11-00-02',
    '01:00:5e:00:00:01', // multicast
    'ff:ff:ff:ff:ff:ff', // broadcast
    '03:00:00:00:00:01', // group bit set
    '00:00:00:00:00:00', // zero
    '02:42:ac:11:00:02\n',
    '',
    42,
  ]) {
    it(`refuses ${JSON.stringify(bad)} with code 7 before the verb runs`, async () => {
      const r = await add(macvlan as Plugin<unknown>, macvlanConf(bad));
      expect(r.code).toBe(1);
      expect(r.out.code).toBe(7);
      expect(r.out.msg).toMatch(/runtimeConfig\.mac/);
      expect(r.pastSchema).toBe(false);
    });
  }

  for (const good of ['02:42:ac:11:00:02', '00:16:3E:AA:bb:01']) {
    it(`accepts ${good}`, async () => {
      const r = await add(macvlan as Plugin<unknown>, macvlanConf(good));
      expect(r.pastSchema).toBe(true);
      expect(r.out.code).toBe(8);
    });
  }

  it('bridge refuses the all-zero MAC too', async () => {
    const r = await add(bridge as Plugin<unknown>, { cniVersion: '1.0.0', name: 'brschema', type: 'bridge', runtimeConfig: { mac: '00:00:00:00:00:00' } });
    expect(r.out.code).toBe(7);
    expect(r.pastSchema).toBe(false);
  });
});

describe('state directories are absolute paths (a relative one would land in the runtime\'s working directory)', () => {
  it('macvlan refuses a relative VLAN stateDir with code 7 before the verb runs', async () => {
    const r = await add(macvlan as Plugin<unknown>, { ...macvlanConf('02:42:ac:11:00:02'), stateDir: 'kjhOEH' });
    expect(r.out.code).toBe(7);
    expect(r.out.msg).toMatch(/stateDir/);
    expect(r.pastSchema).toBe(false);
  });

  it('cluster-ipam refuses a relative dataDir with code 7', () => {
    const load = () => loadIpamConfig({ cniVersion: '1.0.0', name: 'relnet', ipam: { type: 'cluster-ipam', subnet: '10.9.0.0/24', dataDir: 'state/ipam' } });
    expect(load).toThrow(CniError);
    try {
      load();
    } catch (e) {
      expect((e as CniError).code).toBe(7);
    }
  });
});
