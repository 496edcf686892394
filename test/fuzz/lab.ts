/**
 * The fuzz tests' bench (not a test file itself): a throwaway network
 * namespace that plays the node's host, one that plays the container, and a
 * temp directory for every state directory a config may name.
 *
 * The JavaScript thread enters the "host" namespace (setns(2), as the daemon
 * and testkit/overlay/runner.ts do), so in-process plugin calls, the nft
 * children they spawn and the packaged executables this process starts all
 * work on the throwaway namespace; the machine's own host namespace is never
 * named by any generated CNI_NETNS. `ip` builds the fixtures (an "uplink"
 * veth with an address and a default route, so macvlan/ipvlan have a parent
 * and the IPAM a world to route to; nothing answers at its far end);
 * after that only the plugins change anything.
 *
 * snapshot() is what a rejected call must leave unchanged: the host's and
 * the container's links and addresses, the host's routes, its nft ruleset,
 * and every file under the state directories. Kernel state is read over
 * netlink in-process (cheap enough to take before and after every call);
 * the ruleset with `nft -j list ruleset`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NetlinkHandle } from '../../shared/netlink';
import { CLONE_NEWNET, setns } from '../../shared/sys/setns';

export const UPLINK = 'fzdummy0';

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface Snapshot {
  host: string;
  container: string;
  nft: string;
  files: string;
}

export class FuzzLab {
  readonly id = randomBytes(3).toString('hex');
  readonly hostNs = `tfz-${this.id}-h`;
  readonly contNs = `tfz-${this.id}-c`;
  readonly hostPath = `/var/run/netns/${this.hostNs}`;
  readonly contPath = `/var/run/netns/${this.contNs}`;
  /** everything on disk: state/ (every dataDir and stateDir of the generated configs), bin/ (CNI_PATH) */
  readonly root: string;
  readonly stateDir: string;
  readonly binDir: string;
  private home?: number;

  constructor() {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-fuzz-'));
    this.stateDir = path.join(this.root, 'state');
    this.binDir = path.join(this.root, 'bin');
    fs.mkdirSync(this.stateDir);
    fs.mkdirSync(this.binDir);
    // Delegated IPAM plugins that misbehave, for configs that name them:
    // one prints something that is not JSON, one exits non-zero with garbage.
    fs.writeFileSync(path.join(this.binDir, 'garbage-ipam'), '#!/bin/sh\ncat >/dev/null\necho "not { json"\n', { mode: 0o755 });
    fs.writeFileSync(path.join(this.binDir, 'failing-ipam'), '#!/bin/sh\ncat >/dev/null\necho "{\\"code\\": \\"x\\"}"\nexit 3\n', { mode: 0o755 });
    try {
      this.build();
    } catch (e) {
      this.cleanup();
      throw e;
    }
  }

  private build(): void {
    ip(['netns', 'add', this.hostNs]);
    ip(['netns', 'add', this.contNs]);
    ip(['-n', this.hostNs, 'link', 'set', 'lo', 'up']);
    // no dummy module in every kernel: a veth pair whose far end nobody
    // answers on plays the uplink (ARP for the gateway fails, packets die)
    ip(['-n', this.hostNs, 'link', 'add', UPLINK, 'type', 'veth', 'peer', 'name', `${UPLINK}p`]);
    ip(['-n', this.hostNs, 'link', 'set', `${UPLINK}p`, 'up']);
    ip(['-n', this.hostNs, 'addr', 'add', '10.213.0.1/24', 'dev', UPLINK]);
    ip(['-n', this.hostNs, 'link', 'set', UPLINK, 'up']);
    ip(['-n', this.hostNs, 'route', 'add', 'default', 'via', '10.213.0.254', 'dev', UPLINK]);
  }

  /** Move the JavaScript thread (and what it spawns from now on) into the host namespace. */
  enter(): void {
    if (this.home !== undefined) return;
    this.home = fs.openSync('/proc/thread-self/ns/net', 'r');
    const fd = fs.openSync(this.hostPath, 'r');
    try {
      setns(fd, CLONE_NEWNET);
    } finally {
      fs.closeSync(fd);
    }
  }

  leave(): void {
    if (this.home === undefined) return;
    setns(this.home, CLONE_NEWNET);
    fs.closeSync(this.home);
    this.home = undefined;
  }

  cleanup(): void {
    this.leave();
    spawnSync('ip', ['netns', 'del', this.hostNs]);
    spawnSync('ip', ['netns', 'del', this.contNs]);
    // overlay configs may have pinned namespaces under a stateDir
    spawnSync('sh', ['-c', `grep -o ' ${this.root}/[^ ]*' /proc/self/mountinfo | xargs -r -n1 umount -l`]);
    fs.rmSync(this.root, { recursive: true, force: true });
  }

  /** Everything; `nft: false` leaves the ruleset out (one `nft` process, the costly part). */
  snapshot(opts: { nft: boolean } = { nft: true }): Snapshot {
    return {
      host: kernelState(undefined, true),
      container: fs.existsSync(this.contPath) ? kernelState(this.contPath, false) : 'gone',
      nft: opts.nft ? nftRuleset() : '',
      files: fileTree(this.stateDir),
    };
  }
}

/**
 * Links and addresses (and, for the host, main-table routes), without what
 * the kernel changes on its own: carrier and operstate flags, and IPv6
 * link-local addresses and routes, which DAD and autoconf add a moment after
 * a link comes up.
 */
function kernelState(netns: string | undefined, routes: boolean): string {
  const h = NetlinkHandle.open(netns);
  try {
    const links = h
      .linkList()
      .map((l) => [l.index, l.name, l.kind, l.up, l.mtu, l.mac, l.masterIndex, l.parentIndex, l.promiscuity, l.macvlanMode, l.ipvlanMode, l.vlanId].join('|'))
      .sort();
    const addrs = h
      .addrList()
      .filter((a) => !a.address.startsWith('fe80:'))
      .map((a) => `${a.index}|${a.cidr}|${a.scope}`)
      .sort();
    const rt = routes
      ? h
          .routeList()
          .filter((r) => !r.dst.startsWith('fe80:'))
          .map((r) => `${r.dst}|${r.gw ?? ''}|${r.oifIndex ?? ''}|${r.priority ?? ''}`)
          .sort()
      : [];
    return JSON.stringify({ links, addrs, rt });
  } finally {
    h.close();
  }
}

/** `nft -j list ruleset`, without counters (packets the kernel itself sends may move them). */
function nftRuleset(): string {
  const r = spawnSync('nft', ['-j', 'list', 'ruleset'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nft list ruleset: ${r.stderr}`);
  return JSON.stringify(JSON.parse(r.stdout), (k, v) => (k === 'packets' || k === 'bytes' || k === 'metainfo' ? undefined : v));
}

/**
 * Every file under root with a digest of its content, and every directory
 * that holds one (an empty directory is not state). Empty lock files (flock(2) targets, `lock` or `*.lock`)
 * and the directories made only to hold them are not state: host-local, and
 * the IPAM here, create the network's lock before they know whether the
 * request is valid, and they record nothing in it. Nor is the allocator's
 * cursor (last_reserved_ip.N).
 */
function fileTree(root: string): string {
  const out: string[] = [];
  /** whether anything under dir was recorded */
  const walk = (dir: string): boolean => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return false;
    }
    let recorded = false;
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (walk(p)) {
          out.push(`${p}/`);
          recorded = true;
        }
        continue;
      }
      if (e.isFile()) {
        const data = fs.readFileSync(p);
        if (data.length === 0 && (e.name === 'lock' || e.name.endsWith('.lock'))) continue;
        // the allocator's cursor (host-local's file): where the next search
        // starts, moved by a rolled-back allocation too; it reserves nothing
        if (e.name.startsWith('last_reserved_ip.')) continue;
        out.push(`${p} ${createHash('sha1').update(data).digest('hex')}`);
      } else {
        out.push(`${p} (${e.isSymbolicLink() ? 'link' : 'other'})`);
      }
      recorded = true;
    }
    return recorded;
  };
  walk(root);
  return out.sort().join('\n');
}
