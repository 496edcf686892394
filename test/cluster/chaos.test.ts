/**
 * Chaos on a three-host cluster (issue 13, item 8), with the packaged
 * executables (bin/) and a real etcd:
 *
 *  - one long-lived overlay container per host, and a steady ping around
 *    them (h0 -> h1 -> h2 -> h0), every reply timestamped;
 *  - on each host a bounded loop of ADD and DEL (at most CHURN_KEEP of its
 *    own churn containers alive at once; a failed ADD or DEL is retried as
 *    a runtime does: DEL until it succeeds);
 *  - meanwhile, in turn: host 1's agent SIGKILLed and started again; host
 *    2's wall clock jumping two hours ahead (libfaketime, see cluster.ts);
 *    etcd SIGKILLed, left down for OUTAGE_MS, started again on its data.
 *
 * After recovery (and a GC on every host, twice: a leak is freed when seen
 * twice), the invariants a cluster must keep whatever happened:
 *  - no address twice: in etcd (allocation records, owner index, block
 *    bitmaps, block claims, overlay endpoints) nor in the kernel;
 *  - no lost endpoint: every container alive has its endpoint record, and
 *    its FDB and neighbour entries on the other hosts;
 *  - no leaked key: nothing left in etcd (or as a bridge port) for a
 *    container that was deleted;
 *  - no ping lost outside the etcd outage window, and none inside it either:
 *    the data plane is the kernel's static entries, which need no etcd.
 *
 * etcd is the lab's, on the underlay (the hosts reach it there), killed with
 * SIGKILL and started again on the same data dir and address, as
 * testkit/etcd-server.ts does on loopback for the store's tests.
 *
 * Every loop is bounded in count and in time; the figures (pings, losses and
 * when, the outage window, ADD/DEL counts, duplicates) go to stderr.
 */
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, sleep } from '../../testkit/overlay/lab';
import { Cluster, SteadyPing, type PingReport } from './cluster';

const NETWORK = 'chaos';
const SUBNET = '10.68.0.0/24';
const CHURN_MIN = 6; // ADDs each host makes at least...
const CHURN_MAX = 12; // ...and at most (it goes on past CHURN_MIN until the chaos is over)
const CHURN_KEEP = 2; // churn containers a host keeps alive at once
const CHURN_TIME_LIMIT_MS = 110_000;
const OUTAGE_MS = 8000;
const AGENT_KILLED = 1;
const CLOCK_HOST = 2;
const CLOCK_JUMP = '+2h';
/** a ping's bound: 5 a second for 5 minutes, longer than the test may run */
const PING_MAX = 1500;
/** room either side of the outage window: a lost request's send time is an estimate on ping's schedule */
const WINDOW_MARGIN_MS = 1000;

interface Live {
  host: number;
  ip: string;
  mac: string;
}

interface HostFigures {
  adds: number;
  addOk: number;
  /** failed ADDs by CNI error code */
  addFailed: Record<string, number>;
  /** failed ADDs that left an interface in the container */
  addLeftovers: number;
  dels: number;
  delOk: number;
  delFailed: number;
  /** containers whose DEL never succeeded within its bound */
  delStuck: string[];
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0);
}
function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

describe('a three-host cluster under chaos (etcd killed, an agent killed, a clock jump) during pings and ADD/DEL', () => {
  const lab = new Lab(3);
  let cluster: Cluster;
  const longLived: string[] = [];
  const live = new Map<string, Live>();
  const deleted = new Set<string>();
  const figures: HostFigures[] = [0, 1, 2].map(() => ({ adds: 0, addOk: 0, addFailed: {}, addLeftovers: 0, dels: 0, delOk: 0, delFailed: 0, delStuck: [] }));
  const events: Array<{ at: number; what: string }> = [];
  const pings: SteadyPing[] = [];
  let reports: PingReport[] = [];
  let outage: { from: number; to: number } | undefined;
  let t0 = 0;
  let vni = 0;
  let chaosDone = false;
  let ran = false;
  /** the chaos run went to its end: the checks below judge a whole run, never part of one */
  let completed = false;
  /** the chaos and the ADD/DEL loops, while they run */
  let running: Promise<unknown> | undefined;
  const notes: string[] = [];
  let duplicates: string[] = [];
  let leaksBeforeGc: string[] = [];
  let leaksAfterGc: string[] = [];
  let lostEndpoints: string[] = [];
  let clockSkewMs: number | undefined;

  const ipamNet = () => `${lab.prefix}-ipam/networks/${NETWORK}`;
  const event = (what: string) => events.push({ at: Date.now(), what });
  const rel = (t: number) => `${((t - t0) / 1000).toFixed(1)}s`;

  function conf(i: number, extra: Record<string, unknown> = {}): object {
    const c = lab.conf(i, NETWORK, SUBNET) as { etcd: { requestTimeoutMs: number }; ipam: { etcd: Record<string, unknown> } };
    // a loaded CI machine: each etcd operation gets 4 s before 11
    c.etcd.requestTimeoutMs = 4000;
    c.ipam.etcd.requestTimeoutMs = 4000;
    // GC frees a leak on its second sighting, however close (the grace period is for ADDs in flight; none is, then)
    c.ipam.etcd.gcGracePeriodMs = 0;
    return { ...c, ...extra };
  }

  async function add(i: number, container: string): Promise<boolean> {
    figures[i]!.adds++;
    const r = await cluster.plugin(i, 'ADD', container, conf(i));
    if (r.status === 0 && r.json?.ips) {
      figures[i]!.addOk++;
      const eth0 = r.json.interfaces.find((x: { name: string }) => x.name === 'eth0');
      live.set(container, { host: i, ip: r.json.ips[0].address.split('/')[0], mac: eth0.mac });
      return true;
    }
    const code = String(r.json?.code ?? `exit ${r.status}`);
    figures[i]!.addFailed[code] = (figures[i]!.addFailed[code] ?? 0) + 1;
    notes.push(`h${i} ADD ${container} failed (${code}): ${r.json?.msg ?? r.stdout.slice(0, 300)} ${r.json ? '' : r.stderr.slice(-300)}`);
    const left = spawnSync('ip', ['-n', container, '-j', 'link', 'show'], { encoding: 'utf8' });
    const links = left.status === 0 ? (JSON.parse(left.stdout) as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n !== 'lo') : [];
    if (links.length) {
      figures[i]!.addLeftovers++;
      notes.push(`h${i} failed ADD of ${container} (${code}) left ${links.join(', ')}`);
    }
    return false;
  }

  /** DEL as a runtime does it: again until it succeeds (bounded), then the container's namespace goes. */
  async function del(i: number, container: string): Promise<void> {
    const end = Date.now() + 90_000;
    for (let attempt = 0; attempt < 60 && Date.now() < end && !cluster.isStopped; attempt++) {
      figures[i]!.dels++;
      const r = await cluster.plugin(i, 'DEL', container, conf(i));
      if (r.status === 0) {
        figures[i]!.delOk++;
        live.delete(container);
        deleted.add(container);
        spawnSync('ip', ['netns', 'del', container]);
        return;
      }
      figures[i]!.delFailed++;
      await sleep(1000);
    }
    figures[i]!.delStuck.push(container);
    live.delete(container);
    deleted.add(container);
  }

  async function churn(i: number): Promise<void> {
    const mine: string[] = [];
    const start = Date.now();
    for (let n = 0; n < CHURN_MAX && Date.now() - start < CHURN_TIME_LIMIT_MS && (n < CHURN_MIN || !chaosDone) && !cluster.isStopped; n++) {
      const c = lab.addContainer();
      if (await add(i, c)) mine.push(c);
      else await del(i, c);
      while (mine.length > CHURN_KEEP) await del(i, mine.shift()!);
      await sleep(200);
    }
  }

  async function chaos(): Promise<void> {
    // a run cut short (its timeout) stops here rather than start things after the teardown
    const pause = async (ms: number) => {
      await sleep(ms);
      if (cluster.isStopped) throw new Error('torn down');
    };
    try {
      await pause(2000);
      event(`SIGKILL agent h${AGENT_KILLED}`);
      await lab.killAgent(AGENT_KILLED);
      await pause(1000);
      cluster.startAgent(AGENT_KILLED);
      event(`agent h${AGENT_KILLED} started again`);
      await pause(3000);
      cluster.setClockOffset(CLOCK_JUMP);
      event(`h${CLOCK_HOST}'s clock jumps ${CLOCK_JUMP}`);
      await pause(4000);
      const from = Date.now();
      event('SIGKILL etcd');
      await lab.stopEtcd();
      await pause(OUTAGE_MS);
      await lab.startEtcd();
      outage = { from, to: Date.now() };
      event('etcd healthy again');
    } finally {
      chaosDone = true;
    }
  }

  /** What is wrong with the live containers' endpoints, records and remote entries (empty: nothing). */
  function endpointProblems(): string[] {
    const problems: string[] = [];
    const eps = cluster.controlPlane().endpoints.filter((e) => e.network === NETWORK);
    const entries = [0, 1, 2].map((h) => cluster.remoteEntries(h, vni));
    for (const [c, l] of live) {
      const k = cluster.interfaceOf(c);
      if (!k || k.ips.length !== 1 || k.ips[0] !== l.ip || k.mac !== l.mac) {
        problems.push(`${c} on h${l.host}: the kernel has ${JSON.stringify(k)}, ADD said ${l.ip} ${l.mac}`);
        continue;
      }
      const ep = eps.find((e) => e.containerId === c);
      if (!ep) problems.push(`${c} on h${l.host} (${l.ip}) has no endpoint record`);
      else if (ep.ip !== l.ip || ep.mac !== l.mac || ep.host !== lab.hosts[l.host]) problems.push(`${c}'s endpoint record says ${ep.ip} ${ep.mac} on ${ep.host}`);
      for (let h = 0; h < 3; h++) {
        if (h === l.host) continue;
        // a host with no local container of the network has no namespace for it, so no entries to keep
        if (![...live.values()].some((o) => o.host === h)) continue;
        const dst = entries[h]!.fdb.get(l.mac);
        if (!dst || dst.length !== 1 || dst[0] !== lab.vtep(l.host)) problems.push(`h${h} FDB for ${c} (${l.mac}): ${JSON.stringify(dst)}, want ${lab.vtep(l.host)}`);
        const mac = entries[h]!.neigh.get(l.ip);
        if (mac !== l.mac) problems.push(`h${h} neighbour for ${c} (${l.ip}): ${mac}, want ${l.mac}`);
      }
    }
    return problems;
  }

  async function waitFor(fn: () => boolean, limitMs: number): Promise<boolean> {
    const end = Date.now() + limitMs;
    while (Date.now() < end && !cluster?.isStopped) {
      if (fn()) return true;
      await sleep(500);
    }
    return !cluster?.isStopped && fn();
  }

  beforeAll(async () => {
    await lab.setUp();
    cluster = new Cluster(lab, CLOCK_HOST);
    for (let i = 0; i < 3; i++) cluster.startAgent(i);
    const up = await waitFor(() => {
      try {
        return cluster.controlPlane().hosts.length === 3;
      } catch {
        return false;
      }
    }, 30_000);
    if (!up) throw new Error(`agents did not register:\n${[0, 1, 2].map((i) => cluster.agentLog(i)).join('\n')}`);
    for (let i = 0; i < 3; i++) {
      const c = lab.addContainer();
      if (!(await add(i, c))) throw new Error(`ADD of the long-lived container on h${i} failed: ${notes.join('\n')}`);
      longLived.push(c);
    }
    vni = cluster.controlPlane().networks.find((n) => n.name === NETWORK)!.vni;
    for (let i = 0; i < 3; i++) {
      const to = live.get(longLived[(i + 1) % 3]!)!.ip;
      if (!(await waitFor(() => lab.ping(longLived[i]!, to), 20_000))) throw new Error(`h${i} cannot ping ${to} before the chaos`);
    }
  });

  afterAll(async () => {
    try {
      for (const p of pings) p.kill();
      if (ran) printFigures();
      // a run cut short: its loops stop, their calls are killed, before the namespaces go
      cluster?.stop();
      if (running) await Promise.race([running.catch(() => undefined), sleep(10_000)]);
    } finally {
      await lab.tearDown();
    }
  });

  function printFigures(): void {
    const lines: string[] = ['', '=== cluster chaos figures ==='];
    lines.push(`timeline (from the pings' start): ${events.map((e) => `${rel(e.at)} ${e.what}`).join('; ')}`);
    if (outage) lines.push(`etcd outage: ${rel(outage.from)} .. ${rel(outage.to)} (${((outage.to - outage.from) / 1000).toFixed(1)} s)`);
    for (const r of reports) {
      const where = r.lost.map((l) => `seq ${l.seq} at ${rel(l.at)}${outage && l.at >= outage.from - WINDOW_MARGIN_MS && l.at <= outage.to + WINDOW_MARGIN_MS ? ' (outage)' : ''}`);
      const dips = r.perSecond.map((n, s) => [s, n] as const).filter(([, n]) => n.answered < n.sent).map(([s, n]) => `${s}s:${n.answered}/${n.sent}`);
      lines.push(`ping ${r.from} -> ${r.to}: sent ${r.sent}, received ${r.received}, lost ${r.lost.length}${where.length ? ` [${where.slice(0, 20).join(', ')}${where.length > 20 ? ', ...' : ''}]` : ''}; answered/sent in the seconds with a loss: ${dips.length ? dips.join(' ') : 'none'}`);
    }
    figures.forEach((f, i) =>
      lines.push(`h${i}: ADD ${f.adds} (ok ${f.addOk}, failed ${JSON.stringify(f.addFailed)}, failed ADDs leaving interfaces ${f.addLeftovers}); DEL ${f.dels} (ok ${f.delOk}, failed ${f.delFailed}, never succeeded ${f.delStuck.length})`),
    );
    lines.push(`containers alive at the end: ${live.size}, deleted: ${deleted.size}`);
    lines.push(`duplicates found: ${duplicates.length}${duplicates.length ? ` [${duplicates.slice(0, 10).join('; ')}]` : ''}`);
    lines.push(`lost endpoints: ${lostEndpoints.length}${lostEndpoints.length ? ` [${lostEndpoints.slice(0, 10).join('; ')}]` : ''}`);
    lines.push(`keys of deleted containers before GC: ${leaksBeforeGc.length}, after GC: ${leaksAfterGc.length}${leaksAfterGc.length ? ` [${leaksAfterGc.slice(0, 10).join('; ')}]` : ''}`);
    if (clockSkewMs !== undefined) lines.push(`h${CLOCK_HOST}'s liveness record is ${(clockSkewMs / 3_600_000).toFixed(2)} h ahead of the real clock (the jump reached the packaged executable)`);
    for (const n of notes.slice(0, 10)) lines.push(`note: ${n}`);
    console.error(lines.join('\n'));
  }

  it('runs the chaos: pings and ADD/DEL loops on every host while an agent, the clock and etcd are upset', async () => {
    for (let i = 0; i < 3; i++) pings.push(new SteadyPing(longLived[i]!, live.get(longLived[(i + 1) % 3]!)!.ip, PING_MAX));
    t0 = Math.min(...pings.map((p) => p.startedAt));
    ran = true;
    try {
      expect(await waitFor(() => pings.every((p) => p.replies() > 0), 10_000)).toBe(true);
      running = Promise.all([chaos(), churn(0), churn(1), churn(2)]);
      await running;
      if (cluster.isStopped) return; // cut short (timed out): the teardown has begun
      event('ADD/DEL loops done');
      // recovery: every live container's entries everywhere (judged by the next test), then the
      // pings run on a little, so a flow still broken shows as losses at the end
      event(await waitFor(() => endpointProblems().length === 0, 30_000) ? 'every endpoint converged' : 'endpoints still not converged');
      await sleep(2000);
    } finally {
      reports = await Promise.all(pings.map((p) => p.stop()));
    }
    completed = !cluster.isStopped;
    expect(outage, 'etcd came back').toBeDefined();
    expect(cluster.controlPlane().hosts.map((h) => h.name).sort()).toEqual([...lab.hosts].sort());
    // no agent died of it (the restarted one, the one whose clock jumped, the ones that lost etcd)
    for (let i = 0; i < 3; i++) {
      const a = lab.agents.get(i);
      expect({ running: a !== undefined, exit: a?.exitCode, signal: a?.signalCode }, `agent h${i}:\n${cluster.agentLog(i).slice(-1500)}`).toEqual({ running: true, exit: null, signal: null });
    }
    for (const f of figures) expect(f.delStuck).toEqual([]);
  }, 240_000);

  it('no lost endpoint: every live container has its endpoint record and its FDB and neighbour entries on the other hosts', () => {
    expect(completed, 'the chaos run finished').toBe(true);
    lostEndpoints = endpointProblems();
    expect(lostEndpoints).toEqual([]);
  });

  it('no address twice: not in etcd (records, owner index, block bitmaps, claims, endpoints), not in the kernel', () => {
    expect(completed, 'the chaos run finished').toBe(true);
    const net = ipamNet();
    const found: string[] = [];
    const ips = cluster.etcdRange(`${net}/ips/`);
    const owners = cluster.etcdRange(`${net}/owners/`);
    const hostblocks = cluster.etcdRange(`${net}/hostblocks/`);
    const claims = cluster.etcdRange(`${net}/blocks/`);
    const records = new Map(ips.map((kv) => [kv.key.slice(`${net}/ips/`.length), JSON.parse(kv.value) as { containerId: string; ifname: string; node: string; blockKey: string; seq: number }]));

    // block bitmaps <-> allocation records: an address marked used with no record, or a record its block does not mark, is an address that can be handed out twice
    const marked = new Map<string, { blockKey: string; seq: number }>();
    const blockOwners = new Map<string, string[]>();
    for (const kv of hostblocks) {
      const [node, id] = kv.key.slice(`${net}/hostblocks/`.length).split('/') as [string, string];
      blockOwners.set(id, [...(blockOwners.get(id) ?? []), node]);
      const b = JSON.parse(kv.value) as { cidr: string; used: Record<string, number> };
      const base = ipToInt(b.cidr.split('/')[0]!);
      for (const [offset, seq] of Object.entries(b.used)) {
        const ip = intToIp(base + Number(offset));
        if (marked.has(ip)) found.push(`${ip} is marked used in two blocks`);
        marked.set(ip, { blockKey: kv.key, seq });
      }
    }
    for (const [ip, m] of marked) {
      const r = records.get(ip);
      if (!r) found.push(`${ip} is marked used in ${m.blockKey} but has no allocation record`);
      else if (r.blockKey !== m.blockKey || r.seq !== m.seq) found.push(`${ip}: record says ${r.blockKey}#${r.seq}, block says ${m.blockKey}#${m.seq}`);
    }
    for (const [ip, r] of records) if (!marked.has(ip)) found.push(`${ip} (${r.containerId}) is allocated but its block does not mark it used`);
    // claims: one node per block, and the claimant's
    for (const kv of claims) {
      const id = kv.key.slice(`${net}/blocks/`.length);
      const holders = blockOwners.get(id) ?? [];
      if (holders.length !== 1 || holders[0] !== kv.value) found.push(`block ${id} claimed by ${kv.value}, state under ${JSON.stringify(holders)}`);
    }
    for (const [id, holders] of blockOwners) if (holders.length > 1) found.push(`block ${id} has state under ${holders.join(' and ')}`);
    // owner index: one owner per address, matching its record; one address per attachment
    const byIp = new Map<string, string[]>();
    const byAttachment = new Map<string, string[]>();
    for (const kv of owners) {
      const [cid, ifname, ip] = kv.key.slice(`${net}/owners/`.length).split('/').map(decodeURIComponent) as [string, string, string];
      byIp.set(ip, [...(byIp.get(ip) ?? []), `${cid}/${ifname}`]);
      byAttachment.set(`${cid}/${ifname}`, [...(byAttachment.get(`${cid}/${ifname}`) ?? []), ip]);
    }
    for (const [ip, who] of byIp) {
      const r = records.get(ip);
      if (who.length > 1) found.push(`${ip} is indexed under ${who.join(' and ')}`);
      else if (!r || `${r.containerId}/${r.ifname}` !== who[0]) found.push(`${ip} is indexed under ${who[0]}, recorded for ${r ? `${r.containerId}/${r.ifname}` : 'nobody'}`);
    }
    for (const [ip, r] of records) if (!byIp.has(ip)) found.push(`${ip} (${r.containerId}) has no owner index entry`);
    for (const [a, addrs] of byAttachment) if (addrs.length > 1) found.push(`${a} holds ${addrs.join(' and ')}`);
    // overlay endpoints: one per address
    const epIps = new Map<string, string[]>();
    for (const e of cluster.controlPlane().endpoints.filter((x) => x.network === NETWORK)) epIps.set(e.ip, [...(epIps.get(e.ip) ?? []), e.containerId]);
    for (const [ip, who] of epIps) if (who.length > 1) found.push(`endpoints ${who.join(' and ')} share ${ip}`);
    // the kernel: every live container's address held by it alone, and allocated to it in etcd
    const kernel = new Map<string, string[]>();
    for (const c of live.keys()) for (const ip of cluster.interfaceOf(c)?.ips ?? []) kernel.set(ip, [...(kernel.get(ip) ?? []), c]);
    for (const [ip, who] of kernel) {
      if (who.length > 1) found.push(`containers ${who.join(' and ')} both have ${ip}`);
      else if (records.get(ip)?.containerId !== who[0]) found.push(`${who[0]} has ${ip}, allocated in etcd to ${records.get(ip)?.containerId ?? 'nobody'}`);
    }
    duplicates = found;
    expect(found).toEqual([]);
  });

  it('no leaked key: once GC ran on every host, nothing in etcd or on the bridges belongs to a deleted container', async () => {
    expect(completed, 'the chaos run finished').toBe(true);
    const net = ipamNet();
    const keysOfDeleted = (): string[] => {
      const out: string[] = [];
      for (const kv of cluster.etcdRange(`${net}/ips/`)) if (deleted.has((JSON.parse(kv.value) as { containerId: string }).containerId)) out.push(kv.key);
      for (const kv of cluster.etcdRange(`${net}/owners/`)) if (deleted.has(decodeURIComponent(kv.key.slice(`${net}/owners/`.length).split('/')[0]!))) out.push(kv.key);
      for (const kv of cluster.etcdRange(`${lab.prefix}/endpoints/${NETWORK}/`)) if (deleted.has((JSON.parse(kv.value) as { containerId: string }).containerId)) out.push(kv.key);
      return out;
    };
    leaksBeforeGc = keysOfDeleted();
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 3; i++) {
        const valid = [...live].filter(([, l]) => l.host === i).map(([c]) => ({ containerID: c, ifname: 'eth0' }));
        const r = await cluster.plugin(i, 'GC', '', conf(i, { 'cni.dev/valid-attachments': valid }), '');
        expect(r.status, `GC on h${i}: ${r.stdout} ${r.stderr}`).toBe(0);
      }
    }
    leaksAfterGc = keysOfDeleted();
    // a leak sighting left behind is a key nobody will ever remove (every live container was kept)
    for (const kv of cluster.etcdRange(`${net}/leaks/`)) leaksAfterGc.push(kv.key);
    for (const kv of cluster.etcdRange(`${lab.prefix}/gc/`)) leaksAfterGc.push(kv.key);
    // and in the kernel: a host's overlay bridge has one port per live local container
    for (let i = 0; i < 3; i++) {
      const ns = `${lab.stateDir(i)}/netns/ov-${vni}`;
      if (!fs.existsSync(ns)) continue;
      const r = spawnSync('nsenter', [`--net=${ns}`, 'ip', '-j', 'link', 'show', 'master', `ov-${vni}`], { encoding: 'utf8' });
      const ports = (JSON.parse(r.stdout || '[]') as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => /^ve[0-9a-f]{13}$/.test(n));
      const want = [...live.values()].filter((l) => l.host === i).length;
      if (ports.length !== want) leaksAfterGc.push(`h${i}: ${ports.length} ports on ov-${vni} for ${want} live containers`);
    }
    expect(leaksAfterGc).toEqual([]);
    // and a failed ADD left nothing in its container (before the runtime's DEL)
    expect(figures.map((f) => f.addLeftovers)).toEqual([0, 0, 0]);
  });

  it('no ping lost outside the etcd outage window, and none inside it either (the data plane needs no etcd)', () => {
    expect(completed, 'the chaos run finished').toBe(true);
    expect(outage).toBeDefined();
    expect(reports).toHaveLength(3);
    const inWindow = (t: number) => t >= outage!.from - WINDOW_MARGIN_MS && t <= outage!.to + WINDOW_MARGIN_MS;
    for (const r of reports) {
      expect(r.sent, `${r.from} -> ${r.to}`).toBeGreaterThan(0);
      expect.soft(r.lost.filter((l) => !inWindow(l.at)).map((l) => `seq ${l.seq} at ${rel(l.at)}`), `${r.from} -> ${r.to}: lost outside the outage`).toEqual([]);
      expect.soft(r.lost.filter((l) => inWindow(l.at)).map((l) => `seq ${l.seq} at ${rel(l.at)}`), `${r.from} -> ${r.to}: lost during the outage`).toEqual([]);
    }
  });

  it('the clock jump reached the packaged executable: the clock host runs with libfaketime and wrote times two hours ahead', () => {
    expect(completed, 'the chaos run finished').toBe(true);
    const agent = lab.agents.get(CLOCK_HOST);
    expect(fs.readFileSync(`/proc/${agent!.pid}/maps`, 'utf8')).toContain('libfaketime');
    // the IPAM's liveness record carries "renewAfter" by the host's own clock, renewed by its calls after the jump (the GCs above at least)
    const alive = cluster.etcdRange(`${lab.prefix}-ipam/alive/${lab.hosts[CLOCK_HOST]}`)[0];
    expect(alive, 'the clock host has a liveness record').toBeDefined();
    clockSkewMs = (JSON.parse(alive!.value) as { renewAfter: number }).renewAfter - Date.now();
    expect(clockSkewMs).toBeGreaterThan(3_600_000);
  });
});
