/**
 * Chaos: a steady ping between containers on two simulated hosts while the
 * agents and etcd are killed and restarted in turn. The data path is the
 * kernel's static entries, which nobody removes while the control plane is
 * away, so not one reply may be lost.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, eventually, sleep } from '../../../testkit/overlay/lab';

describe('chaos on the control plane', () => {
  const lab = new Lab(2);
  let a = '';
  let ipB = '';

  beforeAll(async () => {
    await lab.setUp();
    lab.startAgent(0);
    lab.startAgent(1);
    await eventually(() => {
      try {
        return lab.snapshot().hosts.length === 2;
      } catch {
        return false;
      }
    });
    a = lab.addContainer();
    const b = lab.addContainer();
    const conf = (h: number) => lab.conf(h, 'chaos', '10.66.0.0/24');
    const ra = lab.plugin(0, 'ADD', a, conf(0));
    const rb = lab.plugin(1, 'ADD', b, conf(1));
    if (ra.status || rb.status) throw new Error(`ADD failed: ${ra.stdout} ${rb.stdout}`);
    ipB = rb.json.ips[0].address.split('/')[0];
    await eventually(() => lab.ping(a, ipB));
  });

  afterAll(async () => {
    await lab.tearDown();
  });

  it('killing each agent and etcd in turn during a steady ping loses no reply', async () => {
    const count = 60;
    const ping = spawn('ip', ['netns', 'exec', a, 'busybox', 'ping', '-i', '0.2', '-c', String(count), '-W', '5', ipB], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    ping.stdout!.on('data', (d) => (out += d.toString()));
    const done = new Promise<number>((r) => ping.once('exit', (code) => r(code ?? -1)));

    await sleep(1000);
    await lab.killAgent(0);
    await sleep(1000);
    lab.startAgent(0);
    await sleep(1000);
    await lab.killAgent(1);
    await sleep(1000);
    lab.startAgent(1);
    await sleep(1000);
    await lab.stopEtcd();
    await sleep(2000);
    await lab.startEtcd();
    await done;

    const m = /(\d+) packets transmitted, (\d+) packets received/.exec(out);
    expect(m, out).not.toBeNull();
    const lost = Number(m![1]) - Number(m![2]);
    expect(Number(m![1])).toBe(count);
    expect(lost).toBe(0);
    // and the control plane is whole again afterwards
    expect(await eventually(() => lab.snapshot().hosts.length === 2)).toBe(true);
  });
});
