/** Shared fixtures for the nft tests (not a test file itself). */
import type { TableRef } from '../../../shared/nft/nft-interface';
import { Transaction } from '../../../shared/nft/transaction';

/** Every verb and object form, the way the bridge and portmap plugins will use them. */
export function everyForm(t: TableRef = { family: 'inet', table: 'cni_ts_test' }): Transaction {
  return new Transaction()
    .add({ kind: 'table', ...t, comment: 'owned by cni-ts' })
    .add({ kind: 'chain', ...t, name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat', policy: 'accept' })
    .add({ kind: 'chain', ...t, name: 'prerouting', type: 'nat', hook: 'prerouting', priority: -100 })
    .add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: 'filter - 5', comment: 'isolation' })
    .add({ kind: 'chain', ...t, name: 'net_a' })
    .add({ kind: 'set', ...t, name: 'subnets', type: 'ipv4_addr', flags: ['interval'], comment: 'all bridge subnets' })
    .add({ kind: 'map', ...t, name: 'hostports', type: ['ipv4_addr', 'inet_proto', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] })
    .add({ kind: 'map', ...t, name: 'bridges', type: 'ifname', valueType: 'verdict' })
    .add({ kind: 'element', ...t, set: 'subnets', key: '10.88.0.0/16', comment: 'cni-ts:a' })
    .add({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.2', '80'], comment: 'cni-ts:a:c1' })
    .add({ kind: 'element', ...t, set: 'bridges', key: '"cni0"', value: 'jump net_a' })
    .add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade', comment: 'cni-ts:a' })
    .add({ kind: 'rule', ...t, chain: 'prerouting', rule: 'dnat ip to ip daddr . meta l4proto . th dport map @hostports' })
    .add({ kind: 'rule', ...t, chain: 'forward', rule: 'iifname vmap @bridges' })
    .insert({ kind: 'rule', ...t, chain: 'forward', rule: 'ct state established,related accept' })
    .add({ kind: 'rule', ...t, chain: 'net_a', rule: 'oifname "cni0" accept', handle: 7 })
    .insert({ kind: 'rule', ...t, chain: 'net_a', rule: 'meta secpath missing accept', handle: 8 })
    .replace({ kind: 'rule', ...t, chain: 'net_a', rule: 'drop', handle: 9, comment: 'cni-ts:a' })
    .delete({ kind: 'rule', ...t, chain: 'net_a', handle: 9 })
    .delete({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'], value: 'ignored' })
    .flush({ kind: 'set', ...t, name: 'subnets' })
    .flush({ kind: 'map', ...t, name: 'hostports' })
    .flush({ kind: 'chain', ...t, name: 'net_a' })
    .create({ kind: 'chain', ...t, name: 'net_b' })
    .delete({ kind: 'chain', ...t, name: 'net_b' })
    .delete({ kind: 'map', ...t, name: 'hostports' })
    .destroy({ kind: 'chain', ...t, name: 'net_c' })
    .destroy({ kind: 'table', family: 'ip', table: 'cni_ts_old' })
    .delete({ kind: 'table', ...t });
}

