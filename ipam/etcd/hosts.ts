/**
 * This host as the etcd store knows it: its node-name registration and its
 * liveness key.
 *
 * Host identity: a node name is registered (P/hosts/<node>, compare-and-
 * swap) to one host ID, this host's random ID from shared/host-id.ts (not
 * /etc/machine-id, which cloned images share); another host claiming the
 * name is refused with 7.
 *
 * Liveness: every operation reads the host's liveness key P/alive/<node>,
 * which is attached to an etcd lease, creates it when it is missing, and
 * puts it on a new lease once half the TTL has passed by this host's clock.
 * What keeps it through hours without a CNI call is the liveness keeper of
 * the daemon or the overlay agent (./liveness.ts), fed by the record each
 * store writes of its connection (recordForKeeper). The key only ever
 * informs: the maintenance command (./maint.ts) reports a host without it
 * as suspect and frees nothing until an operator decommissions the host.
 * Renewing also deletes older versions' maintenance sightings (P/gone/).
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { previousMachineId } from './config';
import { aliveKey, aliveValueSchema, goneKey, hostKey, hostValueSchema, readRecord, type AliveValue } from './keys';
import type { KeyValue } from '../../shared/etcd/kv';
import { recordStore } from './liveness';
import type { Operation, StoreContext } from './operation';

export class HostIdentity {
  /** P/hosts/<node> */
  readonly hostKey: string;
  /** P/alive/<node> */
  readonly aliveKey: string;
  private registered = false;
  private recorded = false;

  constructor(
    private readonly ctx: StoreContext,
    /** where the keeper's record goes (./liveness.ts); null: not recorded */
    private readonly livenessDir: string | null,
  ) {
    this.hostKey = hostKey(ctx.conf.keyPrefix, ctx.conf.nodeName);
    this.aliveKey = aliveKey(ctx.conf.keyPrefix, ctx.conf.nodeName);
  }

  /**
   * Checks the registration read at the operation's start: once per store,
   * and again whenever it is missing (the maintenance command removed it
   * when the host looked gone: it is made again).
   */
  async ensureRegistered(op: Operation, existing: KeyValue | undefined): Promise<void> {
    if (this.registered && existing) return;
    await this.register(op, existing);
    this.registered = true;
  }

  /**
   * Renews the liveness lease when its key is missing, not ours, or past
   * half its TTL: a new lease and the key put on it (the old lease then
   * expires holding nothing), and the maintenance command's sightings of
   * this host dropped in the same transaction.
   */
  async renewLiveness(op: Operation, alive: KeyValue | undefined): Promise<void> {
    const { conf, kv } = this.ctx;
    const now = this.ctx.clock();
    const v = alive && readRecord(aliveValueSchema, alive, this.ctx.log);
    if (v && v.hostId === conf.hostId && now < v.renewAfter) return;
    const lease = await kv.leaseGrant(Math.ceil(conf.livenessTtlMs / 1000), op.deadline);
    const value: AliveValue = { hostId: conf.hostId, renewAfter: now + Math.floor(conf.livenessTtlMs / 2) };
    await kv.txn(
      {
        success: [
          { put: this.aliveKey, value: JSON.stringify(value), lease },
          { delete: goneKey(conf.keyPrefix, conf.nodeName), prefix: true },
        ],
      },
      op.deadline,
    );
  }

  /**
   * Records how this store reaches etcd (no secret: file paths only) for the
   * liveness keeper of the daemon or the overlay agent (./liveness.ts), once
   * per store. A failure costs the host its keeper, not the operation:
   * logged, never thrown.
   */
  recordForKeeper(): void {
    if (this.recorded || this.livenessDir === null) return;
    this.recorded = true;
    const { conf } = this.ctx;
    try {
      recordStore(this.livenessDir, {
        ...conf.connection,
        endpoints: [...conf.connection.endpoints],
        keyPrefix: conf.keyPrefix,
        nodeName: conf.nodeName,
        hostId: conf.hostId,
        livenessTtlMs: conf.livenessTtlMs,
        requestTimeoutMs: conf.requestTimeoutMs,
      });
    } catch (err) {
      this.ctx.log(`cluster-ipam: cannot record this store for the liveness keeper in ${this.livenessDir}: ${(err as Error).message}`);
    }
  }

  /**
   * Registers this host under its node name (compare-and-swap on the key's
   * version), or checks that the registration is this host's: a second
   * host claiming the node name with another ID is refused (7), whatever
   * else it shares with the first (cloned images share /etc/machine-id,
   * which is why the ID is this host's own random one, shared/host-id.ts).
   *
   * Migration from the machine-id era: a registration holding this
   * machine's /etc/machine-id is taken over (compare-and-swap on its mod
   * revision) by this host's new ID, once. Of two clones sharing that
   * machine-id under one node name, the first to upgrade wins and the other
   * is refused from then on, which is the refusal the machine-id never gave.
   *
   * A registration that is not a host record at all (written by hand,
   * corrupted) is logged and taken over the same way: nobody can prove it
   * theirs, and refusing would stop the node for good.
   */
  private async register(op: Operation, existing: KeyValue | undefined): Promise<void> {
    const { conf, kv, log } = this.ctx;
    const key = this.hostKey;
    const value = JSON.stringify({ hostId: conf.hostId, registeredAt: new Date(this.ctx.clock()).toISOString() });
    let current = existing;
    for (let attempt = 0; ; attempt++) {
      if (!current) {
        const r = await kv.txn({ compare: [{ key, target: 'version', value: 0n }], success: [{ put: key, value }], failure: [{ get: key }] }, op.deadline);
        if (r.succeeded) return;
        current = r.results[0]![0];
        if (!current) continue;
      }
      const holder = readRecord(hostValueSchema, current, log)?.hostId;
      if (holder === conf.hostId) return;
      const migrating = holder !== undefined && holder === previousMachineId();
      if (holder !== undefined && !migrating) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `node name "${conf.nodeName}" is registered in etcd by another host (host ID ${holder}; this host is ${conf.hostId})`,
          `${key} belongs to another machine: give each host its own ipam.etcd.nodeName; if that host is gone for good, run "cni-ts ipam-maint decommission ${conf.nodeName}" first. (A host's ID is kept in its host-id file, /var/lib/cni-ts/host-id: hosts cloned from one image after it was written share it; remove it on the clone before first use.)`,
        );
      }
      log(
        migrating
          ? `cluster-ipam: node ${conf.nodeName}: registration by this machine's machine-id moved to its host ID ${conf.hostId}`
          : `cluster-ipam: node ${conf.nodeName}: unreadable registration replaced by host ID ${conf.hostId}`,
      );
      const r = await kv.txn(
        { compare: [{ key, target: 'mod', value: current.modRevision }], success: [{ put: key, value }], failure: [{ get: key }] },
        op.deadline,
      );
      if (r.succeeded) return;
      current = r.results[0]![0];
      await op.backoff(attempt);
    }
  }
}
