/**
 * The bridge networks' nftables state (plugins/bridge/firewall.ts) as golden
 * text from FakeNft, plus one kernel check that real nft accepts the same
 * transaction and lists it the way the fake dumps it.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { realNft } from '../../../shared/nft/real';
import { Transaction } from '../../../shared/nft/transaction';
import type { Nft } from '../../../shared/nft/nft-interface';
import { OwnedTable } from '../../../shared/nft/table';
import { BRIDGE_TABLE, TABLE, addNetworkRules, chainNames, ensureNetworkRules, networkSignature, networkAddTx, networkRemoveTx, networkRulesPresent, removeNetworkRules } from '../../../plugins/bridge/firewall';

/** The bridge table on any Nft (the fake or the kernel's), locked by nothing: these tests run one call at a time. */
const tab = (nft: Nft): OwnedTable => new OwnedTable(BRIDGE_TABLE, { nft, lock: (fn) => fn() });

const masqA = { bridge: 'br-a', subnets: ['10.1.0.0/24', 'fd00:1::/64'], masquerade: true, internal: false };
const plainA = { ...masqA, subnets: ['10.1.0.0/24'], masquerade: false };
const internalI = { bridge: 'br-i', subnets: ['10.9.0.0/24'], masquerade: false, internal: true };

/** The marker chain whose comment records what a network's rules were written from. */
const cfgChain = (n: { bridge: string; subnets: string[]; masquerade: boolean; internal: boolean }) => `\tchain cfg-${n.bridge} {\n\t\tcomment "${networkSignature(n)}"\n\t}`;

/** The part every network shares: sets/maps of bridges, and base chains holding one lookup each. */
const BASE_CHAINS = `	chain forward {
		type filter hook forward priority filter; policy accept;
		jump user comment "operator rules first (never flushed by cni-ts)"
		iifname vmap @fwd_in
		oifname vmap @fwd_out
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @masq
	}

	chain user {
	}`;

const MASQ_DUAL_STACK = `table inet cni_ts_bridge {
	comment "cni-ts bridge networks"
	set bridges {
		type ifname
		elements = { "br-a" }
	}

	map fwd_in {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-in }
	}

	map fwd_out {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-out }
	}

	map masq {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-masq }
	}

${BASE_CHAINS}

	chain net-br-a-in {
		oifname "br-a" return
		oifname @bridges drop comment "isolation between networks"
	}

	chain net-br-a-out {
		iifname "br-a" return
		iifname @bridges drop comment "isolation between networks"
	}

	chain net-br-a-masq {
		ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 oifname != "br-a" masquerade comment "ipMasq"
		ip6 saddr fd00:1::/64 ip6 daddr != fd00:1::/64 oifname != "br-a" masquerade comment "ipMasq"
	}

${cfgChain(masqA)}
}
`;

const NO_MASQ = `table inet cni_ts_bridge {
	comment "cni-ts bridge networks"
	set bridges {
		type ifname
		elements = { "br-a" }
	}

	map fwd_in {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-in }
	}

	map fwd_out {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-out }
	}

	map masq {
		type ifname : verdict
		elements = { "br-a" : jump net-br-a-masq }
	}

${BASE_CHAINS}

	chain net-br-a-in {
		oifname "br-a" return
		oifname @bridges drop comment "isolation between networks"
	}

	chain net-br-a-out {
		iifname "br-a" return
		iifname @bridges drop comment "isolation between networks"
	}

	chain net-br-a-masq {
	}

${cfgChain(plainA)}
}
`;

const INTERNAL_CHAINS = `	chain net-br-i-in {
		oifname "br-i" return
		oifname @bridges drop comment "isolation between networks"
		drop comment "internal network: no egress"
	}

	chain net-br-i-out {
		iifname "br-i" return
		iifname @bridges drop comment "isolation between networks"
		drop comment "internal network: no ingress"
	}

	chain net-br-i-masq {
	}`;

const INTERNAL = `table inet cni_ts_bridge {
	comment "cni-ts bridge networks"
	set bridges {
		type ifname
		elements = { "br-i" }
	}

	map fwd_in {
		type ifname : verdict
		elements = { "br-i" : jump net-br-i-in }
	}

	map fwd_out {
		type ifname : verdict
		elements = { "br-i" : jump net-br-i-out }
	}

	map masq {
		type ifname : verdict
		elements = { "br-i" : jump net-br-i-masq }
	}

${BASE_CHAINS}

${INTERNAL_CHAINS}

${cfgChain(internalI)}
}
`;


describe('networkAddTx', () => {
  it('installs isolation and one masquerade rule per subnet for an ipMasq dual-stack network', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    expect(nft.dump()).toBe(MASQ_DUAL_STACK);
  });

  it('installs isolation and an empty masquerade chain without ipMasq', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), plainA);
    expect(nft.dump()).toBe(NO_MASQ);
  });

  it('drops everything routed in or out of an internal network', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), internalI);
    expect(nft.dump()).toBe(INTERNAL);
  });

  it('never masquerades an internal network, even when asked to', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), { ...internalI, masquerade: true });
    expect(nft.dump()).toBe(INTERNAL);
  });

  it('is one nft run per ADD, the same state when repeated', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    addNetworkRules(tab(nft), masqA);
    expect(nft.applied).toHaveLength(2);
    expect(nft.execs).toBe(2);
    expect(nft.dump()).toBe(MASQ_DUAL_STACK);
  });

  it('converges to the new configuration when a network changes (reconcile, not add-if-missing)', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    addNetworkRules(tab(nft), plainA);
    expect(nft.dump()).toBe(NO_MASQ);
  });

  it('keeps two networks side by side, each isolated from the other through the shared bridges set', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), plainA);
    addNetworkRules(tab(nft), internalI);
    const dump = nft.dump();
    expect(dump).toContain('elements = { "br-a", "br-i" }');
    expect(dump).toContain('elements = { "br-a" : jump net-br-a-in, "br-i" : jump net-br-i-in }');
    expect(dump).toContain(INTERNAL_CHAINS);
    expect(dump).toContain('chain net-br-a-in {\n\t\toifname "br-a" return\n\t\toifname @bridges drop comment "isolation between networks"\n\t}');
  });

  it('renders a script of one command per line that starts with the table', () => {
    const script = networkAddTx(plainA).render();
    const lines = script.trim().split('\n');
    expect(lines[0]).toBe('add table inet cni_ts_bridge { comment "cni-ts bridge networks" ; }');
    expect(lines).toContain('add element inet cni_ts_bridge masq { "br-a" : jump net-br-a-masq }');
    expect(lines.every((l) => l.includes(` inet ${TABLE} `))).toBe(true);
  });
});

describe('removeNetworkRules', () => {
  it('removes one network\'s elements and chains and leaves the other network whole', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    addNetworkRules(tab(nft), internalI);
    removeNetworkRules(tab(nft), 'br-a');
    expect(nft.dump()).toBe(INTERNAL);
  });

  it('takes one nft run and no listing for a network whose rules are all in place', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    addNetworkRules(tab(nft), internalI);
    const execs = nft.execs;
    removeNetworkRules(tab(nft), 'br-a');
    expect(nft.execs - execs).toBe(1);
    expect(nft.applied.at(-1)).toBe(networkRemoveTx('br-a').render());
    expect(nft.dump()).toBe(INTERNAL);
  });

  it('reads the table and removes what is left when part of the network is already gone', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    addNetworkRules(tab(nft), internalI);
    const t = { family: 'inet' as const, table: TABLE };
    nft.run(new Transaction().delete({ kind: 'element', ...t, set: 'masq', key: '"br-a"' }).delete({ kind: 'chain', ...t, name: chainNames('br-a').masq }));
    removeNetworkRules(tab(nft), 'br-a');
    expect(nft.dump()).toBe(INTERNAL);
  });

  it('leaves the shared base objects, empty, when the last network goes', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    removeNetworkRules(tab(nft), 'br-a');
    const dump = nft.dump();
    expect(dump).not.toContain('br-a');
    expect(dump).toContain(BASE_CHAINS);
    expect(dump).toContain('\tset bridges {\n\t\ttype ifname\n\t}');
  });

  it('also removes a set member written without quotes (a hand-made element)', () => {
    // what a hand-written or older table may hold: the key as bare text
    const nft = new FakeNft();
    addNetworkRules(tab(nft), plainA);
    nft.run(new Transaction().add({ kind: 'element', family: 'inet', table: TABLE, set: 'bridges', key: 'br-x' }));
    removeNetworkRules(tab(nft), 'br-x');
    expect(nft.dump()).toBe(NO_MASQ);
  });

  it('does nothing, and runs no transaction, for a network that has no rules', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), plainA);
    const before = nft.dump();
    removeNetworkRules(tab(nft), 'br-none');
    expect(nft.dump()).toBe(before);
    expect(nft.applied).toHaveLength(1);
  });

  it('does nothing when the table does not exist (DEL after everything is gone)', () => {
    const nft = new FakeNft();
    removeNetworkRules(tab(nft), 'br-a');
    expect(nft.dump()).toBe('');
    expect(nft.applied).toHaveLength(0);
  });

  it('is idempotent: a second removal finds nothing to do', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), masqA);
    removeNetworkRules(tab(nft), 'br-a');
    const after = nft.dump();
    removeNetworkRules(tab(nft), 'br-a');
    expect(nft.dump()).toBe(after);
    expect(nft.applied).toHaveLength(2);
  });
});

describe('networkRulesPresent', () => {
  it('is true once a network is installed and false after it is removed or never was', () => {
    const nft = new FakeNft();
    expect(networkRulesPresent(tab(nft), 'br-a')).toBe(false);
    addNetworkRules(tab(nft), plainA);
    expect(networkRulesPresent(tab(nft), 'br-a')).toBe(true);
    expect(networkRulesPresent(tab(nft), 'br-i')).toBe(false);
    removeNetworkRules(tab(nft), 'br-a');
    expect(networkRulesPresent(tab(nft), 'br-a')).toBe(false);
  });

  it('is false when one of the three chains is missing', () => {
    const nft = new FakeNft();
    addNetworkRules(tab(nft), plainA);
    const c = chainNames('br-a');
    const t = { family: 'inet' as const, table: TABLE };
    nft.run(new Transaction().delete({ kind: 'element', ...t, set: 'masq', key: '"br-a"' }).delete({ kind: 'chain', ...t, name: c.masq }));
    expect(networkRulesPresent(tab(nft), 'br-a')).toBe(false);
  });
});

/** nft wraps long element lists over several lines; the fake prints them on one. */
function unwrapElements(text: string): string {
  return text.replace(/,\n\s+/g, ', ');
}

describe('the same transactions on the kernel', () => {
  const ns = `tbrfw-${randomBytes(4).toString('hex')}`;
  const nsPath = `/var/run/netns/${ns}`;
  beforeAll(() => {
    execFileSync('ip', ['netns', 'add', ns]);
  });
  afterAll(() => {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // never created
    }
  });

  it('are accepted by nft, listed as the fake dumps them, and removed again', () => {
    const real = realNft({ netnsPath: nsPath });
    const fake = new FakeNft();
    for (const nft of [real, fake]) {
      addNetworkRules(tab(nft), masqA);
      addNetworkRules(tab(nft), internalI);
      addNetworkRules(tab(nft), masqA);
    }
    const listed = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'inet', TABLE], { encoding: 'utf8' });
    expect(unwrapElements(listed)).toBe(fake.dump());
    expect(networkRulesPresent(tab(real), 'br-a')).toBe(true);

    removeNetworkRules(tab(real), 'br-a');
    removeNetworkRules(tab(fake), 'br-a');
    const after = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'inet', TABLE], { encoding: 'utf8' });
    expect(after).toBe(INTERNAL);
    expect(networkRulesPresent(tab(real), 'br-a')).toBe(false);
    expect(networkRulesPresent(tab(real), 'br-i')).toBe(true);
  });
});

describe('ensureNetworkRules', () => {
  it('writes the rules when the marker is missing and skips nft when the kernel already holds this configuration', () => {
    const nft = new FakeNft();
    let marker: string | undefined;
    const query = () => (marker === undefined ? undefined : { comment: marker });
    expect(ensureNetworkRules(new OwnedTable(BRIDGE_TABLE, { nft, chain: () => query() }), masqA)).toBe(true);
    expect(nft.execs).toBe(1);
    marker = networkSignature(masqA);
    expect(ensureNetworkRules(new OwnedTable(BRIDGE_TABLE, { nft, chain: () => query() }), masqA)).toBe(false);
    expect(nft.execs).toBe(1);
    // a changed configuration (ipMasq off) is written again
    expect(ensureNetworkRules(new OwnedTable(BRIDGE_TABLE, { nft, chain: () => query() }), plainA)).toBe(true);
    expect(nft.execs).toBe(2);
    expect(nft.dump()).toBe(NO_MASQ);
  });
});
