/**
 * Issue 12.6: a plugin's ADD must close every handle it opened on every
 * path. The daemon (cmd/daemon.ts) runs calls in one long-lived process, so
 * a netlink socket or namespace fd left open by a failed ADD is one fd
 * leaked per call until the daemon hits its limit.
 *
 * Each plugin's ADD is driven in-process through the skel, many times, with
 * a CNI_NETNS that passes the skel's check (the seam says "netns") but then
 * fails to open: gone (the namespace was deleted between the check and the
 * open) or a namespace file of another type. The process's fd count must
 * not grow.
 */
import * as fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { runPlugin, type Plugin, type SkelIO } from '../../shared/cni/skel';
import { plugin as bridge } from '../../plugins/bridge/main';
import { plugin as macvlan } from '../../plugins/macvlan/main';
import { plugin as ipvlan } from '../../plugins/ipvlan/main';
import { deps as overlayDeps, plugin as overlay } from '../../plugins/overlay/main';
import { FakeKV } from '../../testkit/fake-kv';

const CALLS = 40;

const realKv = overlayDeps.kv;
afterAll(() => {
  overlayDeps.kv = realKv;
});

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

async function add(p: Plugin<unknown>, conf: object, netns: string): Promise<{ code: number; out: any }> {
  let stdout = '';
  const io: SkelIO = {
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'fd-leak-1', CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' },
    readStdin: () => Buffer.from(JSON.stringify(conf)),
    writeStdout: (s) => {
      stdout += s;
    },
    interfaceExists: () => false,
    // the namespace was there when the skel looked
    netnsStatus: () => 'netns',
  };
  const code = await runPlugin(p, io);
  return { code, out: JSON.parse(stdout) };
}

const base = { cniVersion: '1.0.0', name: 'fdleak' };
const cases: Array<[string, Plugin<unknown>, object]> = [
  ['bridge', bridge as Plugin<unknown>, { ...base, type: 'bridge', bridge: 'fdleak0' }],
  ['macvlan', macvlan as Plugin<unknown>, { ...base, type: 'macvlan', master: 'lo', stateDir: '/nonexistent/fdleak' }],
  ['ipvlan', ipvlan as Plugin<unknown>, { ...base, type: 'ipvlan', master: 'lo', stateDir: '/nonexistent/fdleak' }],
  [
    'overlay',
    overlay as Plugin<unknown>,
    { ...base, type: 'overlay', subnet: '10.251.0.0/24', nodeName: 'fdleak', stateDir: '/nonexistent/fdleak', ipam: { type: 'cluster-ipam' } },
  ],
];

describe('a failed ADD closes every handle it opened (no fd leak in the daemon)', () => {
  for (const [name, p, conf] of cases) {
    for (const [why, netns] of [
      ['CNI_NETNS vanished after the check', '/var/run/netns/cni-ts-fdleak-gone'],
      ['CNI_NETNS is a UTS namespace', '/proc/self/ns/uts'],
    ] as const) {
      it(`${name}: ${CALLS} ADDs failing because ${why} leave the fd count unchanged`, async () => {
        overlayDeps.kv = () => new FakeKV();
        // one call first: lazy module loads and caches may open files once
        const first = await add(p, conf, netns);
        expect(first.code).toBe(1);
        const before = fdCount();
        for (let i = 0; i < CALLS; i++) {
          const r = await add(p, conf, netns);
          expect(r.code).toBe(1);
          expect(typeof r.out.code).toBe('number');
          expect(typeof r.out.msg).toBe('string');
        }
        expect(fdCount() - before).toBe(0);
      });
    }
  }
});
