/**
 * The resolver at 127.0.0.11 inside a container's network namespace, as
 * Docker's embedded DNS: for networks whose gateway is not the host
 * (macvlan, ipvlan: the parent's own addresses are unreachable from the
 * container by design), a resolver on a host address is useless, so the
 * resolver opens a UDP and a TCP socket INSIDE the container's namespace on
 * 127.0.0.11 at ports the kernel picks, and a NAT rule in that namespace
 * (our table `ip cni_ts_dns`, output hook) sends 127.0.0.11:53 there. A
 * process in the container binding :53 itself never collides with it; the
 * container's resolv.conf names 127.0.0.11.
 *
 * Which namespace: the record keeps the netns path the runtime gave
 * (CNI_NETNS) with its device, inode and SO_NETNS_COOKIE as ADD saw them.
 * The resolver opens the path, and uses it only when it is still that
 * namespace (a /proc/PID/ns/net whose process died and whose PID was reused
 * is another namespace, maybe the host's: refused), and never its own
 * namespace. The inode alone does not say so: the kernel hands a freed
 * namespace's inode number to a later namespace, which may be bound at the
 * same path; the cookie is never reused during a boot, so a record matches
 * only the namespace ADD saw (a record without a cookie matches none). From
 * then on it holds the descriptor's namespace, not the path: the sockets
 * are made through the descriptor and nft runs in /proc/self/fd/N, so a
 * path swapped meanwhile changes nothing.
 *
 * A listener's sockets keep its namespace alive, so "the container is
 * gone" is seen by its path: when the path no longer names the recorded
 * namespace (netnsAlive), the resolver closes the listener and drops the
 * record (server.ts).
 *
 * Only loopback sources are answered (answersFrom): 127.0.0.11 is not
 * routable from outside a namespace unless the container turns on
 * route_localnet, and even then its neighbours get nothing from us.
 */
import type * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as dnsPacket from 'dns-packet';
import type * as net from 'node:net';
import { CLONE_NEWNET, nsType } from '../sys';
import { native } from '../sys/native';
import { tcpServerAt, udpSocketAt } from '../sys/inet-socket';
import { projectTable } from '../nft/table';
import { realTable } from '../nft/real';
import type { NetnsRef } from './records';
import { askFromNetns } from './ask-in-netns';

export type { NetnsRef };

/** Docker's address for the embedded resolver, on the container's loopback. */
export const EMBEDDED_DNS = '127.0.0.11';
/** Our table in the container's namespace: the DNAT of EMBEDDED_DNS port 53 to the listener's ports. */
export const REDIRECT_TABLE = projectTable('ip', 'dns');
const CHAIN = 'output';

/** One key per namespace (listeners are per namespace, whatever the number of its attachments). */
export function netnsKey(ref: NetnsRef): string {
  return `${ref.dev}:${ref.ino}:${ref.cookie}`;
}

/** The SO_NETNS_COOKIE of the network namespace open at fd, as a record keeps it. */
function cookieOf(fd: number): string {
  return native().netnsCookie(fd).toString();
}

/** ADD: the namespace at path, as it is now (it must be a network namespace). */
export function netnsRefOf(path: string): NetnsRef {
  const fd = fs.openSync(path, fs.constants.O_RDONLY);
  try {
    if (nsType(fd) !== CLONE_NEWNET) throw new Error(`${path} is not a network namespace`);
    const st = fs.fstatSync(fd);
    return { path, dev: st.dev, ino: st.ino, cookie: cookieOf(fd) };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Whether the network namespace open at fd is the one ref records: device,
 * inode and cookie. A ref without a cookie (an older record) is none.
 * Throws when fd is not a namespace file.
 */
function isRecorded(fd: number, ref: NetnsRef): boolean {
  if (typeof ref.cookie !== 'string' || !ref.cookie) return false;
  const st = fs.fstatSync(fd);
  if (st.dev !== ref.dev || st.ino !== ref.ino) return false;
  return nsType(fd) === CLONE_NEWNET && cookieOf(fd) === ref.cookie;
}

/** Whether ref's path still names the namespace ADD recorded (a later namespace reusing its inode there does not). */
export function netnsAlive(ref: NetnsRef): boolean {
  let fd: number;
  try {
    // the cheap look first: most paths either still match or are gone
    const st = fs.statSync(ref.path);
    if (st.dev !== ref.dev || st.ino !== ref.ino) return false;
    fd = fs.openSync(ref.path, fs.constants.O_RDONLY);
  } catch {
    return false;
  }
  try {
    return isRecorded(fd, ref);
  } catch {
    return false;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * An open descriptor of the recorded namespace, or undefined when the path
 * is gone, names another namespace (or not one; another with the recorded
 * inode too: the cookie differs), or names ours.
 */
export function openRecordedNetns(ref: NetnsRef): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(ref.path, fs.constants.O_RDONLY);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(fd);
    const own = fs.statSync('/proc/thread-self/ns/net');
    const ok = !(st.dev === own.dev && st.ino === own.ino) && isRecorded(fd, ref);
    if (ok) return fd;
  } catch {
    // not a namespace file
  }
  fs.closeSync(fd);
  return undefined;
}

/** Only the container's own processes: a loopback source. */
export function answersFrom(source: string): boolean {
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(source);
}

/**
 * The redirect, written whole in one transaction (reconcile by flush): the
 * table, its output nat chain, and one DNAT per protocol to the listener's
 * port. Nothing else in the container changes.
 */
export function writeRedirect(netnsPath: string, ports: { udp: number; tcp: number }): void {
  const t = realTable(REDIRECT_TABLE, { netnsPath });
  const tx = t.tx();
  tx.add({ kind: 'table', comment: 'cni-ts: 127.0.0.11:53 to the resolver (shared/dns/netns-listener.ts)' });
  tx.syncChain({ name: CHAIN, type: 'nat', hook: 'output', priority: -100, policy: 'accept' }, [
    `ip daddr ${EMBEDDED_DNS} udp dport 53 dnat to ${EMBEDDED_DNS}:${ports.udp}`,
    `ip daddr ${EMBEDDED_DNS} tcp dport 53 dnat to ${EMBEDDED_DNS}:${ports.tcp}`,
  ]);
  t.run(tx);
}

/** DEL: the redirect table goes (absent is fine). */
export function removeRedirect(netnsPath: string): void {
  const t = realTable(REDIRECT_TABLE, { netnsPath });
  t.run(t.tx().destroy({ kind: 'table' }));
}

/** A resolver's sockets in one container namespace. */
export class NetnsListener {
  private closed = false;

  private constructor(
    readonly ref: NetnsRef,
    readonly udp: dgram.Socket,
    readonly tcp: net.Server,
  ) {}

  get ports(): { udp: number; tcp: number } {
    return { udp: this.udp.address().port, tcp: (this.tcp.address() as net.AddressInfo).port };
  }

  /**
   * Opens the sockets in the recorded namespace and points the redirect at
   * them; undefined when the namespace is not the recorded one any more.
   * `tcp` is the server the caller has set up (its connection handler).
   */
  static async open(ref: NetnsRef, tcp: net.Server): Promise<NetnsListener | undefined> {
    const fd = openRecordedNetns(ref);
    if (fd === undefined) return undefined;
    let udp: dgram.Socket | undefined;
    try {
      udp = await udpSocketAt(fd, EMBEDDED_DNS, 0);
      await tcpServerAt(fd, EMBEDDED_DNS, 0, tcp);
      const l = new NetnsListener(ref, udp, tcp);
      // the namespace by descriptor: the path may name another by now
      writeRedirect(`/proc/self/fd/${fd}`, l.ports);
      return l;
    } catch (e) {
      try {
        udp?.close();
      } catch {
        /* not open */
      }
      tcp.close();
      throw e;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Closes the sockets; with removeRedirect, the table goes too when the path still names the namespace. */
  close(opts: { removeRedirect?: boolean } = {}): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.udp.close();
    } catch {
      /* already closed */
    }
    this.tcp.close();
    if (opts.removeRedirect) {
      const fd = openRecordedNetns(this.ref);
      if (fd === undefined) return;
      try {
        removeRedirect(`/proc/self/fd/${fd}`);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
}

/**
 * One question asked from inside the namespace at netnsPath to
 * 127.0.0.11:53, as the container's own resolver library asks (through the
 * redirect): CHECK and tests. Undefined when nothing answered in time.
 */
export async function askInNetns(netnsPath: string, name: string, type: 'A' | 'AAAA', timeoutMs = 1000): Promise<dnsPacket.DecodedPacket | undefined> {
  return askFromNetns(netnsPath, '127.0.0.1', EMBEDDED_DNS, name, type, timeoutMs);
}
