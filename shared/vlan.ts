/**
 * The parent ("master") device of macvlan and ipvlan networks, and Docker's
 * 802.1q trunking: a parent written `eth0.10` (or `master: eth0` + `vlan: 10`)
 * is created on demand as VLAN 10 of eth0, shared by every network on that
 * VLAN, and deleted when its last user leaves.
 *
 * Why a reference count on disk: plugins are short-lived processes, and the
 * users of one VLAN link are containers of possibly several networks. Each
 * user is one file, so an interrupted ADD or DEL leaves at worst one stale
 * file (which GC removes), never a miscounted integer:
 *
 *   <stateDir>/vlan/<link>.lock        flock(2) target for every change below
 *   <stateDir>/vlan/<link>/owner.json  we created the link (ifindex, base, id)
 *   <stateDir>/vlan/<link>/<hash>.ref  one user: {network, containerId, ifname}
 *
 * The lock file lives beside the directory, not in it, so removing the
 * directory never races a waiter. A link without owner.json was made by
 * someone else (the operator): it is used as is and never deleted. A link
 * that is gone (reboot, operator) takes its users' macvlans with it, so
 * finding owner.json without the link means its refs are stale: reset.
 *
 * The kernel is reached through ParentLinks, which NetlinkHandle satisfies,
 * so the counting is tested with a fake on a kernel without 802.1q.
 *
 * Below ParentManager: the parent's side of a child link (config fields,
 * the temporary name, counting out at DEL and GC); the child-link plugin
 * itself (ADD, CHECK) is shared/childlink.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { CniError, ErrorCode } from './cni/errors';
import { vlanStateDir } from './paths';
import { AF_INET, AF_INET6, withHandle, type Link, type LinkSpec, type Route } from './netlink';
import { withFileLock } from './sys/flock';
import { writeFileAtomic } from './sys/file';
import { isNetnsPath } from './netns/netns';

/** The few kernel verbs parent handling needs; NetlinkHandle has them all. */
export interface ParentLinks {
  linkByName(name: string): Link | undefined;
  linkByIndex(index: number): Link | undefined;
  linkAdd(spec: LinkSpec): void;
  linkSetUp(name: string): void;
  linkDelIfExists(name: string): boolean;
  routeList(family?: number): Route[];
}

/** records under <dir>/vlan/: STATE_ROOT, or the pre-upgrade directory where it holds records (shared/paths.ts) */
export const DEFAULT_STATE_DIR = vlanStateDir();
export const MIN_VLAN_ID = 1;
export const MAX_VLAN_ID = 4094;
const IFNAMSIZ = 15;

/** What the network config says about its parent. */
export interface ParentConfig {
  /** interface name; undefined = the host's default-route interface */
  master?: string;
  /** 802.1q id: the parent becomes `<master>.<vlan>` */
  vlan?: number;
}

/** The parent after reading the config, before anything is created. */
export interface ResolvedParent {
  /** the device the macvlan/ipvlan hangs off: `eth0` or `eth0.10` */
  name: string;
  /** set when `name` is (or will be) a VLAN sub-interface we manage */
  vlan?: { base: string; id: number };
  /** MTU the parent has, or will have once created (a VLAN inherits its base's) */
  mtu: number;
}

/** One user of a VLAN link. */
export interface VlanUser {
  network: string;
  containerId: string;
  ifname: string;
}

const invalid = (msg: string, details?: string) => new CniError(ErrorCode.InvalidNetworkConfig, msg, details);

/** The host's IPv4 (else IPv6) default-route interface, as the reference plugins pick it. */
export function defaultRouteInterface(links: ParentLinks): string | undefined {
  for (const family of [AF_INET, AF_INET6]) {
    const defaults = links
      .routeList(family)
      .filter((r) => r.dst === 'default' && r.oifIndex !== undefined)
      .sort((a, b) => (a.priority ?? 0) - (b.priority ?? 0));
    for (const r of defaults) {
      const l = links.linkByIndex(r.oifIndex!);
      if (l) return l.name;
    }
  }
  return undefined;
}

/**
 * Which VLAN (if any) the config asks for, by name alone: `master` + `vlan`,
 * or a master written `base.id`. Code 7 for an id outside 1..4094 or a name
 * longer than IFNAMSIZ. A `base.id` name is a VLAN request only when no link
 * of that exact name exists or the existing one is ours (decided by callers).
 */
export function vlanOfName(master: string, vlan: number | undefined): { name: string; base: string; id: number } | undefined {
  if (vlan !== undefined) {
    checkVlanId(vlan);
    const name = `${master}.${vlan}`;
    if (name.length > IFNAMSIZ) throw invalid(`VLAN interface name ${name} is longer than ${IFNAMSIZ} characters`);
    return { name, base: master, id: vlan };
  }
  const m = /^(.+)\.(\d+)$/.exec(master);
  if (!m) return undefined;
  return { name: master, base: m[1], id: Number(m[2]) };
}

function checkVlanId(id: number): void {
  if (!Number.isInteger(id) || id < MIN_VLAN_ID || id > MAX_VLAN_ID) {
    throw invalid(`VLAN id ${id} is outside ${MIN_VLAN_ID}..${MAX_VLAN_ID}`);
  }
}

/** Stable file name of one user's ref (ids and ifnames may hold characters unfit for a path). */
function refFile(user: VlanUser): string {
  return `${createHash('sha256').update(JSON.stringify([user.network, user.containerId, user.ifname])).digest('hex').slice(0, 32)}.ref`;
}

interface Owner {
  base: string;
  id: number;
  /** absent between writing the intent and the link existing (a crash there is harmless) */
  ifindex?: number;
}

/** Parent resolution, VLAN creation and reference counting over one state directory. */
export class ParentManager {
  private readonly root: string;

  constructor(
    private readonly links: ParentLinks,
    stateDir: string = DEFAULT_STATE_DIR,
  ) {
    this.root = path.join(stateDir, 'vlan');
  }

  /**
   * Read the config's parent and check it can be used, changing nothing.
   * Code 7: no parent and no default route, parent or VLAN base missing,
   * VLAN id out of range, a same-named link that is not that VLAN.
   * Code 11: the parent (or the VLAN's base) is down: it may come up.
   */
  resolve(conf: ParentConfig): ResolvedParent {
    const master = conf.master ?? defaultRouteInterface(this.links);
    if (!master) throw invalid('master: not given, and the host has no default route to take the interface from');
    const want = vlanOfName(master, conf.vlan);
    const existing = this.links.linkByName(want?.name ?? master);

    // An existing link is ours to manage only when we created it; anything
    // else (the operator's eth0.10, an interface whose name has a dot) is a
    // plain parent, used as is.
    if (want && (!existing || this.ownsLink(want.name, existing))) {
      checkVlanId(want.id);
      if (want.name.length > IFNAMSIZ) throw invalid(`VLAN interface name ${want.name} is longer than ${IFNAMSIZ} characters`);
      const base = this.links.linkByName(want.base);
      if (!base) throw invalid(`VLAN parent ${want.base} of ${want.name} does not exist`);
      if (!base.up) throw new CniError(ErrorCode.TryAgainLater, `VLAN parent ${want.base} of ${want.name} is down`);
      if (existing && (existing.kind !== 'vlan' || existing.vlanId !== want.id || existing.parentIndex !== base.index)) {
        throw invalid(`${want.name} exists but is not VLAN ${want.id} of ${want.base}`);
      }
      return { name: want.name, vlan: { base: want.base, id: want.id }, mtu: existing?.mtu ?? base.mtu };
    }
    if (!existing) throw invalid(`master interface ${master} does not exist`);
    if (conf.vlan !== undefined && (existing.kind !== 'vlan' || existing.vlanId !== conf.vlan)) {
      throw invalid(`${existing.name} exists but is not VLAN ${conf.vlan}`);
    }
    if (!existing.up) throw new CniError(ErrorCode.TryAgainLater, `master interface ${master} is down`);
    return { name: existing.name, mtu: existing.mtu };
  }

  /**
   * Count `user` in on the parent: for a managed VLAN, create the link if
   * it is missing (up, on its base) and record the user. Returns the parent
   * link. Idempotent for the same user.
   */
  acquire(parent: ResolvedParent, user: VlanUser): Link {
    const vlan = parent.vlan;
    if (!vlan) return this.mustLink(parent.name);
    return this.locked(parent.name, (dir) => {
      let link = this.links.linkByName(parent.name);
      if (link && !this.ownsLink(parent.name, link)) {
        // someone else's link appeared since resolve(): use it, count nothing
        return link;
      }
      if (!link) {
        // A link we made and that is gone took its users with it: start over.
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir, { recursive: true });
        writeJson(path.join(dir, 'owner.json'), { base: vlan.base, id: vlan.id } satisfies Owner);
        try {
          const base = this.mustLink(vlan.base);
          this.links.linkAdd({ kind: 'vlan', name: parent.name, parentIndex: base.index, vlanId: vlan.id, up: true });
        } catch (e) {
          // the kernel refused the link: nothing exists to own, and a refused ADD leaves no record
          fs.rmSync(dir, { recursive: true, force: true });
          throw e;
        }
        link = this.mustLink(parent.name);
        writeJson(path.join(dir, 'owner.json'), { base: vlan.base, id: vlan.id, ifindex: link.index } satisfies Owner);
      } else if (!link.up) {
        this.links.linkSetUp(parent.name);
      }
      writeJson(path.join(dir, refFile(user)), user);
      return link;
    });
  }

  /**
   * Count `user` out; the last user out of a VLAN we created deletes it.
   * Idempotent: an unknown user or a missing link is success (DEL).
   */
  release(parentName: string, user: VlanUser): void {
    this.locked(parentName, (dir) => {
      fs.rmSync(path.join(dir, refFile(user)), { force: true });
      this.dropIfUnused(parentName, dir);
    });
  }

  /**
   * GC: forget `network`'s users that are not in `valid`, then drop the
   * link if nobody is left. Users of other networks are not touched: their
   * own GC judges them.
   */
  gc(parentName: string, network: string, valid: ReadonlyArray<{ containerID: string; ifname: string }>): void {
    const keep = new Set(valid.map((a) => refFile({ network, containerId: a.containerID, ifname: a.ifname })));
    this.locked(parentName, (dir) => {
      for (const u of this.readUsers(dir)) {
        if (u.user?.network === network && !keep.has(u.file)) fs.rmSync(path.join(dir, u.file), { force: true });
        // unreadable ref files (torn write before a crash) are dropped too
        if (!u.user) fs.rmSync(path.join(dir, u.file), { force: true });
      }
      this.dropIfUnused(parentName, dir);
    });
  }

  /** The users recorded for a parent (CHECK and tests). */
  users(parentName: string): VlanUser[] {
    return this.readUsers(path.join(this.root, parentName)).flatMap((u) => (u.user ? [u.user] : []));
  }

  /** Is `user` recorded on this parent? */
  holds(parentName: string, user: VlanUser): boolean {
    return fs.existsSync(path.join(this.root, parentName, refFile(user)));
  }

  /** Did we create the VLAN link of this name (and is `link` still that one)? */
  ownsLink(name: string, link: Link | undefined): boolean {
    const owner = readJson<Owner>(path.join(this.root, name, 'owner.json'));
    if (!owner) return false;
    return !link || owner.ifindex === undefined || owner.ifindex === link.index;
  }

  private dropIfUnused(parentName: string, dir: string): void {
    if (!fs.existsSync(path.join(dir, 'owner.json'))) return;
    if (this.readUsers(dir).length > 0) return;
    const link = this.links.linkByName(parentName);
    if (link && this.ownsLink(parentName, link)) this.links.linkDelIfExists(parentName);
    fs.rmSync(dir, { recursive: true, force: true });
  }

  private readUsers(dir: string): Array<{ file: string; user?: VlanUser }> {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return [];
    }
    return names.filter((n) => n.endsWith('.ref')).map((file) => ({ file, user: readJson<VlanUser>(path.join(dir, file)) }));
  }

  private mustLink(name: string): Link {
    const l = this.links.linkByName(name);
    if (!l) throw invalid(`master interface ${name} does not exist`);
    return l;
  }

  private locked<T>(parentName: string, fn: (dir: string) => T): T {
    return withFileLock(path.join(this.root, `${parentName}.lock`), () => fn(path.join(this.root, parentName)), { dirMode: 0o755 });
  }
}

// ---------------------------------------------------------------------------
// What macvlan and ipvlan configs and ADDs have in common.

/** The parent's fields of a macvlan or ipvlan network config (zod shape, for netConfBase.extend). */
export const parentConfFields = {
  /** parent interface; the host's default-route interface when omitted */
  master: z.string().min(1).max(15).regex(/^[^\s/:]+$/, 'not a valid interface name').optional(),
  /** 802.1q VLAN id: the parent becomes `<master>.<vlan>` (range checked with a clear message) */
  vlan: z.number().int().optional(),
  /** where VLAN reference counts live; every network sharing a VLAN must use the same one */
  stateDir: z.string().regex(/^\//, 'must be an absolute path').default(DEFAULT_STATE_DIR),
};

/**
 * A name no host link has, for a child link created in the container
 * under it and renamed to CNI_IFNAME there: some kernels (6.1) check the new
 * name against the creating namespace too, where the host's own eth0 would
 * clash (the reference plugins do the same). "cni" + 12 hex digits (IFNAMSIZ).
 */
export function childTempName(): string {
  return `cni${randomBytes(6).toString('hex')}`;
}

// ---------------------------------------------------------------------------
// DEL and GC of one child link (macvlan or ipvlan), on the parent's side.

/** The part of a macvlan or ipvlan network config that concerns its parent. */
export interface ParentNetConf extends ParentConfig {
  /** the network's name: users are counted per network */
  name: string;
  stateDir: string;
}

/** The attachment a DEL, CHECK or GC is about (a CniContext has these fields). */
export interface ChildAttachment {
  config: ParentNetConf;
  containerId: string;
  ifname: string;
  /** '' when the runtime gave none */
  netns: string;
}

export function vlanUser(att: ChildAttachment): VlanUser {
  return { network: att.config.name, containerId: att.containerId, ifname: att.ifname };
}

/** Name of the VLAN link this config manages, if any, from the config alone (DEL, GC). */
export function managedVlanName(conf: ParentConfig): string | undefined {
  if (conf.master === undefined) return undefined;
  try {
    return vlanOfName(conf.master, conf.vlan)?.name;
  } catch {
    return undefined; // a config that never got past ADD has nothing to release
  }
}

/**
 * DEL after IPAM: delete the child link in the container, then count this
 * attachment out of its VLAN (the last one out deletes the VLAN link).
 * Idempotent: the namespace, and with it the child link, which the kernel
 * destroys with its namespace, may be gone already.
 */
export function delChild(att: ChildAttachment): void {
  if (att.netns && isNetnsPath(att.netns)) {
    withHandle(att.netns, (cont) => cont.linkDelIfExists(att.ifname));
  }
  // Count out only after our link is gone: the VLAN link may go with us.
  const vlan = managedVlanName(att.config);
  if (vlan) withHandle(undefined, (host) => new ParentManager(host, att.config.stateDir).release(vlan, vlanUser(att)));
}

/**
 * GC after IPAM: users of this network's VLAN that are not valid any more
 * (a DEL that never came) are counted out, and the link goes if nobody is left.
 */
export function gcParent(conf: ParentNetConf, valid: ReadonlyArray<{ containerID: string; ifname: string }>): void {
  const vlan = managedVlanName(conf);
  if (vlan) withHandle(undefined, (host) => new ParentManager(host, conf.stateDir).gc(vlan, conf.name, valid));
}

/** A crash leaves the old file or the new one, never half of one. */
function writeJson(file: string, value: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomic(file, JSON.stringify(value), { mode: 0o644 });
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
