import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { netConfBase, parseConfig } from '../../../shared/cni/config';
import { CniError } from '../../../shared/cni/errors';

/** A plugin's schema, the way plugins extend the base. */
const bridgeSchema = netConfBase.extend({
  bridge: z.string().default('cni0'),
  mtu: z.number().int().positive().optional(),
  mode: z.union([z.literal('bridge'), z.literal('nat')]).optional(),
  port: z.union([z.string(), z.number()]).optional(),
});

/** The bridge entry of SPEC.md's example, as the runtime sends it on ADD. */
const specExample = {
  cniVersion: '1.1.0',
  name: 'dbnet',
  type: 'bridge',
  bridge: 'cni0',
  keyA: ['some more', 'plugin specific', 'configuration'],
  ipam: { type: 'host-local', subnet: '10.1.0.0/16', gateway: '10.1.0.1' },
  dns: { nameservers: ['10.1.0.1'] },
};

function thrown(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error('expected a CniError');
}

describe('parseConfig', () => {
  it("reads the spec's example configuration from a Buffer or a string", () => {
    for (const input of [Buffer.from(JSON.stringify(specExample)), JSON.stringify(specExample)]) {
      const conf = parseConfig(input, bridgeSchema);
      expect(conf.name).toBe('dbnet');
      expect(conf.bridge).toBe('cni0');
      expect(conf.dns?.nameservers).toEqual(['10.1.0.1']);
    }
  });

  it('keeps every key of the ipam section for the IPAM plugin', () => {
    const conf = parseConfig(JSON.stringify(specExample), bridgeSchema);
    expect(conf.ipam).toEqual({ type: 'host-local', subnet: '10.1.0.0/16', gateway: '10.1.0.1' });
  });

  it('reads the protocol keys: runtimeConfig, args, capabilities, prevResult and valid attachments', () => {
    const conf = parseConfig(
      JSON.stringify({
        cniVersion: '1.1.0',
        name: 'net1',
        type: 'portmap',
        capabilities: { portMappings: true },
        runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], mac: '00:11:22:33:44:66', aliases: ['x'] },
        args: { cni: { ips: ['10.1.0.9'] } },
        prevResult: { ips: [] },
        disableCheck: true,
        disableGC: false,
        ipMasq: true,
        'cni.dev/valid-attachments': [{ containerID: 'abc', ifname: 'eth0' }],
      }),
      netConfBase,
    );
    expect(conf.runtimeConfig?.portMappings).toEqual([{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }]);
    expect(conf.runtimeConfig?.aliases).toEqual(['x']);
    expect(conf.args).toEqual({ cni: { ips: ['10.1.0.9'] } });
    expect(conf.prevResult).toEqual({ ips: [] });
    expect(conf['cni.dev/valid-attachments']).toEqual([{ containerID: 'abc', ifname: 'eth0' }]);
  });

  it('refuses text that is not JSON with code 6', () => {
    const e = thrown(() => parseConfig('{"cniVersion": "1.1.0",', netConfBase));
    expect(e.code).toBe(6);
    expect(e.msg).toContain('error decoding network config');
  });

  it('refuses empty stdin with code 6', () => {
    expect(thrown(() => parseConfig(Buffer.alloc(0), netConfBase)).code).toBe(6);
  });

  for (const [what, text] of [
    ['an array', '[]'],
    ['a string', '"bridge"'],
    ['null', 'null'],
    ['a number', '42'],
  ]) {
    it(`refuses JSON that is ${what} rather than an object with code 6`, () => {
      const e = thrown(() => parseConfig(text, netConfBase));
      expect(e.code).toBe(6);
      expect(e.msg).toContain('expected a JSON object');
    });
  }

  const wrong: [string, Record<string, unknown>, string][] = [
    ['a top-level key of the wrong type', { ipMasq: 'yes' }, 'ipMasq: expected boolean, received string'],
    ['a plugin key of the wrong type', { mtu: '1500' }, 'mtu: expected number, received string'],
    ['a nested key of the wrong type', { ipam: { type: 7 } }, 'ipam.type: expected string, received number'],
    ['a list entry of the wrong type', { dns: { nameservers: ['10.1.0.1', 53] } }, 'dns.nameservers[1]: expected string, received number'],
    ['a key with a slash in its name', { 'cni.dev/valid-attachments': [{ containerID: 'a', ifname: 1 }] }, '["cni.dev/valid-attachments"][0].ifname: expected string, received number'],
    ['a union of types', { port: true }, 'port: expected string or number, received boolean'],
    ['a capability that is not a boolean', { capabilities: { portMappings: 'yes' } }, 'capabilities.portMappings: expected boolean, received string'],
  ];
  for (const [what, patch, message] of wrong) {
    it(`refuses ${what} with code 7, naming the key and the expected type`, () => {
      const e = thrown(() => parseConfig(JSON.stringify({ ...specExample, ...patch }), bridgeSchema));
      expect(e.code).toBe(7);
      expect(e.msg).toContain(message);
    });
  }

  it('says which required key is missing', () => {
    const { type: _type, ...noType } = specExample;
    const e = thrown(() => parseConfig(JSON.stringify(noType), bridgeSchema));
    expect(e.code).toBe(7);
    expect(e.msg).toContain('type: required string is missing');
  });

  it('lists every problem, not only the first', () => {
    const e = thrown(() => parseConfig(JSON.stringify({ ...specExample, ipMasq: 1, mtu: 'x' }), bridgeSchema));
    expect(e.msg).toContain('ipMasq');
    expect(e.msg).toContain('mtu');
  });

  for (const name of ['-net', '_net', 'my net', 'net/1', '', 'ünet']) {
    it(`refuses the network name ${JSON.stringify(name)} with code 7`, () => {
      const e = thrown(() => parseConfig(JSON.stringify({ ...specExample, name }), bridgeSchema));
      expect(e.code).toBe(7);
      expect(e.msg).toContain('name');
    });
  }

  for (const name of ['dbnet', 'a', 'net-1.two_3', '0net']) {
    it(`accepts the network name ${JSON.stringify(name)}`, () => {
      expect(parseConfig(JSON.stringify({ ...specExample, name }), bridgeSchema).name).toBe(name);
    });
  }
});
