import { describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { ENV_RULES, parseCniArgs, readEnv, splitCniArgs } from '../../../shared/cni/env';

const full = {
  CNI_CONTAINERID: 'ctr-0123.abc_d',
  CNI_NETNS: '/var/run/netns/blue',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin:/usr/lib/cni',
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

const required: Record<string, string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  GC: ['CNI_PATH'],
  STATUS: [],
  VERSION: [],
};

describe('readEnv: which variables each command needs', () => {
  for (const [command, vars] of Object.entries(required)) {
    it(`${command} needs ${vars.length ? vars.join(', ') : 'nothing but CNI_COMMAND'}`, () => {
      expect(ENV_RULES[command as keyof typeof ENV_RULES]).toEqual(vars);
      const env = readEnv(ENV_RULES, { CNI_COMMAND: command, ...full });
      expect(env.command).toBe(command);
      const minimal = Object.fromEntries(vars.map((v) => [v, full[v as keyof typeof full]]));
      expect(readEnv(ENV_RULES, { CNI_COMMAND: command, ...minimal }).command).toBe(command);
    });

    for (const v of vars) {
      it(`${command} without ${v} fails with code 4 naming ${v}`, () => {
        const env: Record<string, string> = { CNI_COMMAND: command, ...full };
        delete env[v];
        const e = thrown(() => readEnv(ENV_RULES, env));
        expect(e.code).toBe(4);
        expect(e.msg).toBe(`required env variables [${v}] missing`);
      });

      it(`${command} with an empty ${v} counts it as missing`, () => {
        const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: command, ...full, [v]: '' }));
        expect(e.msg).toContain(v);
      });
    }
  }

  it('names every missing variable at once, in the reference order', () => {
    const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: 'ADD' }));
    expect(e.code).toBe(4);
    expect(e.msg).toBe('required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing');
  });

  it('lets DEL run without CNI_NETNS and reports the namespace as empty', () => {
    const { CNI_NETNS: _netns, ...rest } = full;
    expect(readEnv(ENV_RULES, { CNI_COMMAND: 'DEL', ...rest }).netns).toBe('');
  });

  it('fails with code 4 when CNI_COMMAND is missing', () => {
    const e = thrown(() => readEnv(ENV_RULES, { ...full }));
    expect(e.code).toBe(4);
    expect(e.msg).toContain('CNI_COMMAND');
  });

  it('fails with code 4 naming CNI_COMMAND for an unknown command', () => {
    const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: 'UPDATE', ...full }));
    expect(e.code).toBe(4);
    expect(e.msg).toContain('CNI_COMMAND');
    expect(e.msg).toContain('UPDATE');
  });

  it('splits CNI_PATH on ":" and drops empty entries', () => {
    expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_PATH: '/opt/cni/bin::/usr/lib/cni:' }).path).toEqual([
      '/opt/cni/bin',
      '/usr/lib/cni',
    ]);
  });

  it('fills every field', () => {
    expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web' })).toEqual({
      command: 'ADD',
      containerId: 'ctr-0123.abc_d',
      netns: '/var/run/netns/blue',
      ifname: 'eth0',
      args: { IgnoreUnknown: '1', K8S_POD_NAME: 'web' },
      rawArgs: 'IgnoreUnknown=1;K8S_POD_NAME=web',
      path: ['/opt/cni/bin', '/usr/lib/cni'],
      netnsOverride: false,
    });
  });

  for (const v of ['1', 'true', 'TRUE', 'True']) {
    it(`reads CNI_NETNS_OVERRIDE=${v} as set`, () => {
      expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_NETNS_OVERRIDE: v }).netnsOverride).toBe(true);
    });
  }
  it('reads any other CNI_NETNS_OVERRIDE as unset', () => {
    expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_NETNS_OVERRIDE: 'yes' }).netnsOverride).toBe(false);
  });

  it('follows the rules it is given', () => {
    const rules = { ...ENV_RULES, STATUS: ['CNI_PATH'] as const };
    expect(thrown(() => readEnv(rules, { CNI_COMMAND: 'STATUS' })).msg).toContain('CNI_PATH');
  });
});

describe('readEnv: CNI_CONTAINERID', () => {
  for (const id of ['a', 'abc', '0123', 'a-b.c_d', 'A'.repeat(200)]) {
    it(`accepts ${JSON.stringify(id.length > 20 ? `${id.slice(0, 8)}...` : id)}`, () => {
      expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_CONTAINERID: id }).containerId).toBe(id);
    });
  }

  for (const id of ['-abc', '_abc', '.abc', 'a b', 'a/b', 'a:b', 'ctr\n', 'üé']) {
    it(`refuses ${JSON.stringify(id)} with code 4 naming CNI_CONTAINERID`, () => {
      const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: 'DEL', ...full, CNI_CONTAINERID: id }));
      expect(e.code).toBe(4);
      expect(e.msg).toContain('CNI_CONTAINERID');
      expect(e.details).toBe(id);
    });
  }

  it('reports a bad container ID before missing variables, like the reference', () => {
    const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: '-x' }));
    expect(e.msg).toContain('invalid characters');
  });

  it('does not judge a container ID the command does not need', () => {
    expect(readEnv(ENV_RULES, { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin', CNI_CONTAINERID: '-x' }).command).toBe('GC');
  });
});

describe('readEnv: CNI_IFNAME', () => {
  for (const name of ['eth0', 'a', 'x'.repeat(15), 'net1.100', 'é'.repeat(7)]) {
    it(`accepts ${JSON.stringify(name)}`, () => {
      expect(readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_IFNAME: name }).ifname).toBe(name);
    });
  }

  const bad: [string, string][] = [
    ['x'.repeat(16), 'longer than 15 bytes'],
    ['é'.repeat(8), 'longer than 15 bytes'],
    ['.', 'must not be'],
    ['..', 'must not be'],
    ['eth/0', "'/'"],
    ['eth:0', "':'"],
    ['eth 0', 'whitespace'],
    ['eth\t0', 'whitespace'],
    ['eth\u00850', 'whitespace'],
    ['eth\u00a00', 'whitespace'],
  ];
  for (const [name, why] of bad) {
    it(`refuses ${JSON.stringify(name)} with code 4 naming CNI_IFNAME`, () => {
      for (const command of ['ADD', 'CHECK', 'DEL']) {
        const e = thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: command, ...full, CNI_IFNAME: name }));
        expect(e.code).toBe(4);
        expect(e.msg).toContain('CNI_IFNAME');
        expect(e.msg).toContain(why);
      }
    });
  }
});

describe('CNI_ARGS', () => {
  it('splits K=V pairs separated by semicolons', () => {
    expect(splitCniArgs('FOO=BAR;ABC=123')).toEqual({ FOO: 'BAR', ABC: '123' });
    expect(splitCniArgs('')).toEqual({});
  });

  it('skips empty segments and keeps "=" inside values', () => {
    expect(splitCniArgs(';A=1;;B=x=y;')).toEqual({ A: '1', B: 'x=y' });
  });

  for (const bad of ['FOO', 'A=1;BAR', '=value']) {
    it(`refuses the pair in ${JSON.stringify(bad)} with code 4 naming CNI_ARGS`, () => {
      const e = thrown(() => splitCniArgs(bad));
      expect(e.code).toBe(4);
      expect(e.msg).toContain('CNI_ARGS');
      expect(thrown(() => readEnv(ENV_RULES, { CNI_COMMAND: 'ADD', ...full, CNI_ARGS: bad })).msg).toContain('CNI_ARGS');
    });
  }

  it('keeps a key named __proto__ as a plain key', () => {
    const args = splitCniArgs('__proto__=x;A=1');
    expect(Object.keys(args)).toEqual(['__proto__', 'A']);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('parseCniArgs returns the known keys', () => {
    expect(parseCniArgs('IP=10.1.0.9;MAC=00:11:22:33:44:55', ['IP', 'MAC'])).toEqual({ IP: '10.1.0.9', MAC: '00:11:22:33:44:55' });
  });

  it('parseCniArgs refuses unknown keys with code 4, naming them', () => {
    const e = thrown(() => parseCniArgs('IP=10.1.0.9;K8S_POD_NAME=web', ['IP']));
    expect(e.code).toBe(4);
    expect(e.msg).toContain('CNI_ARGS');
    expect(e.msg).toContain('K8S_POD_NAME');
  });

  for (const v of ['1', 'true', 'TRUE', 'True']) {
    it(`parseCniArgs drops unknown keys when IgnoreUnknown=${v}`, () => {
      expect(parseCniArgs(`IgnoreUnknown=${v};K8S_POD_NAME=web;IP=10.1.0.9`, ['IP'])).toEqual({ IP: '10.1.0.9' });
    });
  }

  for (const v of ['0', 'false']) {
    it(`parseCniArgs still refuses unknown keys when IgnoreUnknown=${v}`, () => {
      expect(thrown(() => parseCniArgs(`IgnoreUnknown=${v};K8S_POD_NAME=web`, ['IP'])).code).toBe(4);
    });
  }

  it('parseCniArgs refuses an IgnoreUnknown that is not a boolean', () => {
    const e = thrown(() => parseCniArgs('IgnoreUnknown=maybe', []));
    expect(e.code).toBe(4);
    expect(e.msg).toContain('IgnoreUnknown');
  });

  it('parseCniArgs matches keys case-sensitively, like the reference', () => {
    expect(thrown(() => parseCniArgs('ip=10.1.0.9', ['IP'])).msg).toContain('ip');
  });
});
