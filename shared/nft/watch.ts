/**
 * The daemon's watch on this project's nftables tables: when something
 * deletes one (`nft flush ruleset`, `nft delete table`, firewalld
 * restarting), `onGone` runs, and the daemon rebuilds the tables from their
 * records (cmd/firewall-reload.ts) without any container being re-added.
 *
 * How it notices: a netlink socket joined to the NFNLGRP_NFTABLES multicast
 * group, which the kernel sends every committed nf_tables change to (what
 * `nft monitor` reads). Every table, chain, rule, set and element message
 * carries its table's name as attribute 1, so a deletion in one of our
 * tables (cni_ts_*) is told apart from everyone else's changes without a
 * listing. The socket is drained from a timer (`pollMs`, 1 s) by a
 * non-blocking poll(2): the native binding gives libuv no descriptor to
 * watch, and a blocking recv would stall the daemon's main thread. An
 * overflowed socket (ENOBUFS: more changes than its buffer held) counts as
 * "maybe ours". Then `onGone` is asked, never told: it checks each table
 * itself (a netlink chain lookup), so our own DELs cost one cheap check.
 * It is given the names of our tables that saw a deletion (none on an
 * overflow: then any may have), so a watcher that rebuilds only some
 * tables (the overlay agent: the gateway and IPsec tables) skips the
 * deletions that every ADD, DEL and rewrite of the others makes.
 *
 * Two processes may watch one namespace (the daemon, and the overlay agent
 * on an overlay host where the daemon may not run): each rebuild takes its
 * table's lock and checks the marker inside it, so the second finds the
 * table current and writes nothing.
 */
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { decodeAttrs, decodeMessages, readString } from '../netlink/codec';
import { NETLINK_NETFILTER } from '../netlink/nftables';
import { TABLE_PREFIX } from './table';
import { NFNL_SUBSYS_NFTABLES } from '../netlink/nft-consts';

/** NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h): the nf_tables change notifications. */
export const NFNLGRP_NFTABLES = 7;
/** NFT_MSG_DEL* (linux/netfilter/nf_tables.h): table, chain, rule, set, element. */
const DEL_TYPES = new Set([2, 5, 8, 11, 14]);
/** NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE}: all 1. */
const ATTR_TABLE = 1;
/** sizeof(struct nfgenmsg) */
const NFGENMSG_LEN = 4;
const POLLIN = 0x1;
const ENOBUFS = 105;

/** Our tables (cni_ts_*) that one multicast datagram reports a deletion in. */
export function deletedTables(datagram: Buffer): Set<string> {
  const out = new Set<string>();
  for (const m of decodeMessages(datagram)) {
    if (m.type >> 8 !== NFNL_SUBSYS_NFTABLES || !DEL_TYPES.has(m.type & 0xff)) continue;
    const table = readString(decodeAttrs(m.payload, NFGENMSG_LEN).get(ATTR_TABLE));
    if (table?.startsWith(TABLE_PREFIX)) out.add(table);
  }
  return out;
}

/** Whether one multicast datagram reports a deletion in one of our tables. */
export function deletesOurs(datagram: Buffer): boolean {
  return deletedTables(datagram).size > 0;
}

export interface TableWatchOptions {
  /**
   * Runs on the timer after our tables saw a deletion; it decides what is
   * gone and rebuilds it. `tables`: the names of our tables that saw one,
   * undefined when the socket overflowed (any may have).
   */
  onGone: (tables?: ReadonlySet<string>) => void;
  /** How often the socket is drained (default 1000 ms). */
  pollMs?: number;
  log: (line: string) => void;
  /** Watch the nf_tables of the namespace at this path (default: the calling thread's). */
  netnsPath?: string;
}

export interface TableWatch {
  stop(): void;
}

/** Join NFNLGRP_NFTABLES in the namespace (the calling thread's by default) and start draining (see the header). */
export function watchTables(opts: TableWatchOptions): TableWatch {
  const binding = native();
  let fd: number;
  if (opts.netnsPath === undefined) fd = binding.socket(NETLINK_NETFILTER);
  else {
    const nsFd = fs.openSync(opts.netnsPath, 'r');
    try {
      fd = binding.socketAt(nsFd, NETLINK_NETFILTER);
    } finally {
      fs.closeSync(nsFd);
    }
  }
  try {
    binding.bind(fd, 1 << (NFNLGRP_NFTABLES - 1));
  } catch (e) {
    binding.close(fd);
    throw e;
  }
  let closed = false;
  const tick = (): void => {
    const touched = new Set<string>();
    let overflowed = false;
    // bounded, so a storm of changes never holds the main thread for long
    for (let i = 0; i < 4096 && !closed && binding.pollEvents(fd, POLLIN) & POLLIN; i++) {
      try {
        for (const t of deletedTables(binding.recv(fd))) touched.add(t);
      } catch (e) {
        if ((e as { errno?: number }).errno === ENOBUFS || (e as { code?: string }).code === 'ENOBUFS') overflowed = true;
        else throw e;
      }
    }
    if (!overflowed && touched.size === 0) return;
    try {
      opts.onGone(overflowed ? undefined : touched);
    } catch (e) {
      opts.log(`firewall reload failed: ${(e as Error).message}`);
    }
  };
  const timer = setInterval(() => {
    try {
      tick();
    } catch (e) {
      opts.log(`nf_tables watch: ${(e as Error).message}`);
    }
  }, opts.pollMs ?? 1000);
  timer.unref();
  return {
    stop() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      binding.close(fd);
    },
  };
}
