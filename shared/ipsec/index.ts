/**
 * IPsec for encrypted overlays: ESP transport mode with rfc4106(gcm(aes))
 * between hosts that share an encrypted network, keys from a ring in etcd
 * rotated by an elected leader. Layers:
 *   spi.ts        SPIs both ends derive alone
 *   mtu.ts        the encrypted MTU arithmetic
 *   keyring.ts    the ring as a pure state machine (+ secret.ts)
 *   desired.ts    the SAs/policies a host should hold
 *   converge.ts   makes the kernel hold them (xfrm-ops.ts seam; its fake is testkit/fake-xfrm.ts)
 *   firewall.ts   the nftables cleartext-VXLAN drop (and optional mark)
 *   ring-store.ts, election.ts, rotator.ts   the ring and the leader in etcd (shared/etcd/kv.ts), the leader's loop
 *   host.ts       one host's sync in one call
 */
export * from './spi';
export * from './mtu';
export * from './secret';
export * from './keyring';
export * from './desired';
export * from './converge';
export type { XfrmOps } from './xfrm-ops';
export * from './firewall';
export * from './ring-store';
export * from './election';
export * from './rotator';
export * from './host';
